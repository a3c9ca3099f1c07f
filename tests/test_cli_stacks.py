"""``napari-unet predict`` on Z-stacks: 3D ids by default, --stack, --voxel-size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core.inference.postprocess import postprocess
from napari_unet.core.inference.predict import predict_probabilities
from napari_unet.core.io.reading import read_image
from napari_unet.core.labels import ids_per_time_point
from napari_unet.core.network.registry import get_model
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume

pytestmark = pytest.mark.usefixtures("isolated_models")  # see conftest.py

CONFIG = Synthetic3DConfig(shape=(12, 40, 40))


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    return make_volume(CONFIG, 0, dtype=np.uint16)


def _write(path: Path, data: np.ndarray, axes: str = "ZYX", spacing: float | None = 1.0) -> Path:
    metadata = {"axes": axes, "unit": "um"}
    if spacing is not None:
        metadata["spacing"] = spacing
    tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 2.0), metadata=metadata)
    return path


def _predict(capsys, *argv) -> tuple[int, str]:
    code = main(["predict", *[str(a) for a in argv], "--precision", "fp32", "--device", "cpu"])
    return code, capsys.readouterr().err


def _per_plane(image: np.ndarray, axes: str) -> np.ndarray:
    """Per-plane labels as ``predict`` makes them without ``--probabilities``: from float16."""
    probs = drain(
        predict_probabilities(image, axes, get_model(None), device="cpu", precision="fp32",
                              dtype=np.float16)
    )  # fmt: skip
    return drain(postprocess(probs, "instances"))


@pytest.mark.slow
def test_zstack_gets_3d_ids_by_default(capsys, tmp_path, volume):
    image, truth = volume
    src = _write(tmp_path / "stack.tif", image)
    code, err = _predict(capsys, src, "-o", tmp_path / "ortho.tif")
    assert code == 0, err
    assert "isotropic" not in err
    labels = read_image(tmp_path / "ortho.tif", memmap=False)
    assert labels.axes == "ZYX" and labels.data.shape == image.shape
    assert labels.z_spacing == pytest.approx(1.0) and labels.pixel_size == pytest.approx((0.5, 0.5))
    n_3d = int(labels.data.max())
    assert 0 < n_3d < 2 * int(truth.max())
    # --stack planes keeps the old per-plane behaviour
    code, err = _predict(capsys, src, "-o", tmp_path / "planes.tif", "--stack", "planes")
    assert code == 0, err
    planes = np.asarray(read_image(tmp_path / "planes.tif", memmap=False).data)
    np.testing.assert_array_equal(planes, _per_plane(image, "ZYX"))
    assert planes.max() > 2 * n_3d
    code, err = _predict(capsys, src, "-o", tmp_path / "link.tif", "--stack", "link")
    assert code == 0, err
    linked = np.asarray(read_image(tmp_path / "link.tif", memmap=False).data)
    assert 0 < linked.max() < planes.max()


@pytest.mark.slow
def test_missing_z_step_is_noted_and_voxel_size_option(capsys, tmp_path, volume):
    image, _ = volume
    src = _write(tmp_path / "nospacing.tif", image[:6], spacing=None)
    code, err = _predict(capsys, src, "-o", tmp_path / "a.tif")
    assert code == 0, err
    assert "isotropic voxels are assumed" in err and "--voxel-size" in err
    code, err = _predict(capsys, src, "-o", tmp_path / "b.tif", "--voxel-size", "1.5,0.5,0.5")
    assert code == 0, err
    assert "isotropic" not in err
    written = read_image(tmp_path / "b.tif", memmap=False)
    assert written.z_spacing == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--voxel-size", "1,2"], "Z,Y,X"),
        (["--voxel-size", "0,1,1"], "Z,Y,X"),
        (["--stack", "ortho"], "Z axis"),
        (["--stack", "link"], "Z axis"),
    ],
)
def test_stack_usage_errors(capsys, tmp_path, volume, options, expected):
    src = tmp_path / "plane.tif"
    tifffile.imwrite(src, volume[0][5])
    code, err = _predict(capsys, src, "-o", tmp_path / "out.tif", *options)
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.tif").exists()


def test_time_series_of_frames_stays_per_plane(capsys, tmp_path, volume):
    frames = volume[0][3:6]
    src = _write(tmp_path / "movie.tif", frames, axes="TYX", spacing=None)
    code, err = _predict(capsys, src, "-o", tmp_path / "movie_labels.tif")
    assert code == 0, err
    assert "isotropic" not in err
    labels = read_image(tmp_path / "movie_labels.tif", memmap=False)
    assert labels.axes == "TYX"
    # labelled plane by plane, ids numbered per time point (the default --ids per-frame)
    np.testing.assert_array_equal(labels.data, ids_per_time_point(_per_plane(frames, "TYX"), "TYX"))


def test_blockwise_zstack_says_it_is_labelled_plane_by_plane(capsys, tmp_path, volume):
    src = _write(tmp_path / "stack.tif", volume[0][:3])
    code, err = _predict(capsys, src, "-o", tmp_path / "out.tif", "--blockwise")
    assert code == 0, err
    assert "plane by plane" in err
    code, err = _predict(capsys, src, "-o", tmp_path / "out2.tif", "--blockwise",
                         "--stack", "planes")  # fmt: skip
    assert code == 0, err
    assert "plane by plane" not in err


@pytest.mark.slow
def test_min_size_counts_voxels_with_ortho(capsys, tmp_path, volume):
    src = _write(tmp_path / "stack.tif", volume[0][:6])
    code, err = _predict(capsys, src, "-o", tmp_path / "all.tif")
    assert code == 0, err
    assert read_image(tmp_path / "all.tif", memmap=False).data.max() > 0
    code, err = _predict(capsys, src, "-o", tmp_path / "none.tif", "--min-size", "100000")
    assert code == 0, err
    assert read_image(tmp_path / "none.tif", memmap=False).data.max() == 0
