"""The files we write, opened by the tools people use: ImageJ 1.x (headless, under the virtual
screen) and bioio. Each test is skipped when its tool is not installed (CI installs both)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from _blockwise_helpers import nuclei_image, nuclei_model
from napari_unet.core.io.writing import write_labels, write_probabilities

IJ_JAR = Path("/usr/share/java/ij.jar")
MACRO = """
path = getArgument();
open(path);
getDimensions(w, h, c, s, f);
getVoxelSize(pw, ph, pd, unit);
print("DIMS " + w + " " + h + " " + c + " " + s + " " + f + " " + bitDepth() + " " + pw + " "
      + ph + " " + pd + " " + unit);
run("Quit");
"""


def imagej_open(path: Path, tmp_path: Path) -> dict[str, object]:
    """Open ``path`` in ImageJ 1.x with ``-batch`` and return what it reports."""
    if not IJ_JAR.exists() or shutil.which("java") is None:
        pytest.skip("ImageJ 1.x is not installed (apt-get install imagej)")
    macro = tmp_path / "dims.ijm"
    macro.write_text(MACRO)
    command = ["java", "-jar", str(IJ_JAR), "-batch", str(macro), str(path)]
    if not os.environ.get("DISPLAY"):
        if shutil.which("xvfb-run") is None:
            pytest.skip("ImageJ needs a display and xvfb-run is not installed")
        command = ["xvfb-run", "-a", *command]
    # an error dialog would wait forever for a click: the timeout ends it
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(
        r"DIMS (\S+) (\S+) (\S+) (\S+) (\S+) (\S+) (\S+) (\S+) (\S+) (\S+)",
        done.stdout + done.stderr,
    )
    assert found, f"ImageJ could not open {path}: {done.stdout}{done.stderr}"
    w, h, c, s, f, bits = (int(v) for v in found.groups()[:6])
    pw, ph, pd = (float(v) for v in found.groups()[6:9])
    return {"shape": (f, s, c, h, w), "bits": bits, "voxel": (pd, ph, pw), "unit": found.group(10)}


def time_lapse_labels(dtype) -> np.ndarray:
    labels = np.zeros((4, 3, 24, 32), dtype)
    labels[:, :, 4:10, 4:12] = np.arange(1, 13, dtype=dtype).reshape(4, 3, 1, 1)
    if dtype == np.uint32:
        labels[3, 2, 20, 30] = 70_000
    return labels


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_imagej_opens_label_time_lapses_as_hyperstacks(tmp_path, dtype):
    path = write_labels(
        tmp_path / "labels.tif", time_lapse_labels(dtype), "TZYX", (0.25, 0.25), 2.0
    )
    seen = imagej_open(path, tmp_path)
    assert seen["shape"] == (4, 3, 1, 24, 32)  # 4 frames of 3 slices, not 12 slices
    assert seen["bits"] == (16 if dtype == np.uint16 else 32)
    assert seen["voxel"] == pytest.approx((2.0, 0.25, 0.25))
    assert seen["unit"] in ("micron", "microns", "µm")


def test_imagej_opens_probabilities_with_classes_as_channels(tmp_path):
    probs = np.random.default_rng(0).random((3, 5, 24, 32))
    path = write_probabilities(tmp_path / "p.tif", probs, "CZYX", (0.5, 0.5), 1.5)
    seen = imagej_open(path, tmp_path)
    assert seen["shape"] == (1, 5, 3, 24, 32) and seen["bits"] == 32
    assert seen["voxel"] == pytest.approx((1.5, 0.5, 0.5))


def test_imagej_opens_blockwise_tiff_output(tmp_path):
    from napari_unet.core.io.lazy import lazy_from_array
    from napari_unet.core.large.blockwise import predict_blockwise
    from napari_unet.core.progress import drain

    stack = np.stack([nuclei_image(96, seed=1), nuclei_image(96, seed=2)])
    image = lazy_from_array(stack, "TYX", pixel_size=(0.5, 0.5))
    drain(
        predict_blockwise(
            image, nuclei_model(), tmp_path / "labels.tif", block_size=48, overlap=16, device="cpu"
        )
    )
    seen = imagej_open(tmp_path / "labels.tif", tmp_path)
    assert seen["shape"] == (2, 1, 1, 96, 96) and seen["bits"] == 16
    assert seen["voxel"][1:] == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_bioio_reads_labels_exactly(tmp_path, dtype):
    bioio = pytest.importorskip("bioio")
    pytest.importorskip("bioio_tifffile")
    labels = time_lapse_labels(dtype)
    path = write_labels(tmp_path / "labels.tif", labels, "TZYX", (0.25, 0.25), 2.0)
    image = bioio.BioImage(path)
    assert image.dims.order == "TCZYX" and image.dtype == dtype
    np.testing.assert_array_equal(image.get_image_data("TZYX"), labels)
    sizes = image.physical_pixel_sizes
    assert (sizes.Z, sizes.Y, sizes.X) == pytest.approx((2.0, 0.25, 0.25))


def test_tifffile_reads_what_skimage_would_reorder(tmp_path):
    """The docs recommend tifffile.imread: a leading axis of 3 stays where it is."""
    import tifffile

    labels = time_lapse_labels(np.uint16)[:3, 0]  # (3, Y, X): skimage would make it (Y, X, 3)
    path = write_labels(tmp_path / "l.tif", labels, "ZYX")
    assert tifffile.imread(path).shape == (3, 24, 32)
