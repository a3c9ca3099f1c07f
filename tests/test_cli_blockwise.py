"""``napari-unet predict`` on zarr and large images: blockwise, into zarr or BigTIFF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from _blockwise_helpers import nuclei_image, save_nuclei_model
from napari_unet.cli import main
from napari_unet.core.analysis.metrics import match
from napari_unet.core.io.lazy import open_lazy
from napari_unet.core.io.reading import read_image

pytestmark = pytest.mark.usefixtures("isolated_models")  # see conftest.py


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_nuclei_model(tmp_path_factory.mktemp("models") / "nuclei.safetensors")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return nuclei_image(256, seed=8)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ome_zarr(path: Path, data: np.ndarray, pixel: float = 0.5) -> Path:
    """A two-level OME-Zarr 0.5 image (y, x) written with zarr itself."""
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", data=data, chunks=(128, 128))
    group.create_array("1", data=data[::2, ::2], chunks=(128, 128))
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    datasets = [
        {
            "path": str(i),
            "coordinateTransformations": [{"type": "scale", "scale": [pixel * 2**i] * 2}],
        }
        for i in range(2)
    ]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    return path


def test_zarr_in_zarr_out_matches_in_memory(capsys, tmp_path, model_file, image):
    source = ome_zarr(tmp_path / "scan.ome.zarr", image)
    tifffile.imwrite(tmp_path / "scan.tif", image)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run(
        capsys,
        "predict",
        source,
        "-o",
        tmp_path / "labels.zarr",
        "-m",
        model_file,
        "--block-size",
        "64",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert "labels.zarr" in err and "objects" in err
    labels = open_lazy(tmp_path / "labels.zarr")
    assert labels.axes == "YX" and labels.pixel_size == pytest.approx((0.5, 0.5))
    assert zarr.open_group(str(tmp_path / "labels.zarr")).attrs["image-label"]
    code, _, err = run(
        capsys, "predict", tmp_path / "scan.tif", "-o", out, "-m", model_file, "--device", "cpu"
    )
    assert code == 0, err
    expected = read_image(out / "scan_labels.tif").data
    assert match(labels.data.compute(), expected, 0.5).ap >= 0.99


def test_blockwise_tiff_to_folder_writes_an_imagej_tiff(capsys, tmp_path, model_file, image):
    source = tmp_path / "big.tif"
    tifffile.imwrite(source, image, resolution=(4.0, 4.0), resolutionunit="MICROMETER")
    code, _, err = run(
        capsys,
        "predict",
        source,
        "-o",
        tmp_path,
        "-m",
        model_file,
        "--blockwise",
        "--block-size",
        "128",
        "--device",
        "cpu",
        "--probabilities",
        tmp_path,
    )
    assert code == 0, err
    written = read_image(tmp_path / "big_labels.tif")
    assert written.axes == "YX" and written.pixel_size == pytest.approx((0.25, 0.25))
    with tifffile.TiffFile(tmp_path / "big_labels.tif") as tif:  # what ImageJ 1.x opens
        assert tif.is_imagej and not tif.is_bigtiff and not tif.pages[0].is_tiled
        assert tif.pages[0].software == "napari-unet labels"
    probs = zarr.open_array(str(tmp_path / "big_probabilities.zarr" / "0"))
    assert probs.shape == (3, *image.shape) and probs.dtype == np.float32


def test_large_images_go_blockwise_by_themselves(capsys, tmp_path, model_file, image, monkeypatch):
    monkeypatch.setattr("napari_unet.core.large.block_jobs.BLOCKWISE_PIXELS", 100 * 100)
    tifffile.imwrite(tmp_path / "large.tif", image)
    code, _, err = run(
        capsys,
        "predict",
        tmp_path / "large.tif",
        "-o",
        tmp_path,
        "-m",
        model_file,
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert "stitch" in err or "write" in err  # the blockwise stages
    with tifffile.TiffFile(tmp_path / "large_labels.tif") as tif:
        assert tif.is_imagej and tif.pages[0].software == "napari-unet labels"


def test_bad_input_exits_2_and_leaves_nothing(capsys, tmp_path, model_file):
    two_channels = np.zeros((2, 96, 96), np.uint16)
    source = tmp_path / "two.zarr"
    arr = zarr.create_array(str(source), data=two_channels, dimension_names=["c", "y", "x"])
    assert arr.shape == (2, 96, 96)
    before = sorted(tmp_path.iterdir())
    code, out, err = run(
        capsys,
        "predict",
        source,
        "-o",
        tmp_path / "labels.zarr",
        "-m",
        model_file,
        "--device",
        "cpu",
        "--probabilities",
        tmp_path / "p.zarr",
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("napari-unet: error:") and "channel" in err
    assert sorted(tmp_path.iterdir()) == before
    for argv in (
        ["--probabilities", tmp_path / "p.tif"],  # blockwise probabilities are zarr
        ["--block-size", "0"],
        ["--bigtiff"],  # a TIFF cannot go to a .zarr name
    ):
        code, _, err = run(
            capsys, "predict", source, "-o", tmp_path / "l.zarr", "-m", model_file, *argv
        )
        assert code == 2 and err.count("\n") == 1, err
    code, _, err = run(capsys, "predict", tmp_path / "missing.zarr", "-o", tmp_path / "x.zarr")
    assert code == 2 and "does not exist" in err
    assert sorted(tmp_path.iterdir()) == before
