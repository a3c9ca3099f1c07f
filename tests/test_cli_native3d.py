"""``napari-unet train --dims 3`` and ``predict`` with a 3D model file: native 3D labels, the
voxel size stored in the model, and clear errors where the mode cannot follow the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from _cli_helpers import one_error, run, train_argv
from napari_unet.core.io.reading import read_image
from napari_unet.core.network.weights import load_model_file
from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume

pytestmark = pytest.mark.usefixtures("isolated_models")  # see conftest.py


def _write(path: Path, data: np.ndarray, axes: str = "ZYX") -> Path:
    metadata = {"axes": axes, "unit": "um", "spacing": 1.0}
    tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 2.0), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("stack")
    image, labels = make_volume(Synthetic3DConfig(shape=(16, 32, 32), n_objects=4), 0,
                                dtype=np.uint16)  # fmt: skip
    return _write(folder / "stack.tif", image), _write(folder / "labels.tif", labels), image


@pytest.fixture(scope="module")
def model3d(stack, tmp_path_factory) -> Path:
    """A tiny 3D model trained for a few steps by ``train --dims 3``."""
    from napari_unet.cli import main

    image, labels, _ = stack
    out = tmp_path_factory.mktemp("model") / "m3d.safetensors"
    code = main([str(a) for a in train_argv(
        image, labels, out, "scratch", "--dims", "3", "--depth", "2", "--base-channels", "2",
        "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "1", "--patch-size", "16",
        "--validation-fraction", "0",
    )])  # fmt: skip
    assert code == 0
    return out


def test_train_dims_3_writes_a_3d_model_with_its_voxel_size(model3d):
    model = load_model_file(model3d)
    assert model.spatial_dims == 3
    assert model.voxel_size == pytest.approx((1.0, 0.5, 0.5))  # from the file's metadata
    assert model.config.xy_only_levels == 1  # Z twice as coarse: one level pools YX only


def test_predict_with_a_3d_model_is_native(capsys, stack, model3d, tmp_path):
    image, _, data = stack
    out = tmp_path / "labels.tif"
    code, err = run(capsys, "predict", image, "-o", out, "-m", model3d, "--device", "cpu",
                    "--precision", "fp32", "--probabilities", tmp_path / "p.tif")  # fmt: skip
    assert code == 0, err
    assert "3D model" in err and "natively" in err
    labels = read_image(out, memmap=False)
    assert labels.axes == "ZYX" and labels.data.shape == data.shape
    assert labels.data.dtype in (np.uint16, np.uint32)
    probs = read_image(tmp_path / "p.tif", memmap=False)
    assert sorted(probs.data.shape) == sorted((3, *data.shape)) and "C" in probs.axes


def test_mode_follows_the_model(capsys, stack, model3d, tmp_path):
    image, _, data = stack
    code, err = run(capsys, "predict", image, "-o", tmp_path / "a.tif", "-m", model3d,
                    "--device", "cpu", "--stack", "ortho")  # fmt: skip
    one_error(code, err, "--stack ortho", "3D model")
    plane = _write(tmp_path / "plane.tif", data[0], axes="YX")
    code, err = run(capsys, "predict", plane, "-o", tmp_path / "b.tif", "-m", model3d,
                    "--device", "cpu")  # fmt: skip
    one_error(code, err, "3D model", "Z-stacks")
    out = tmp_path / "c.safetensors"
    code, err = run(capsys, "train", "--image", image, "--labels", image, "-o", out,
                    "--model", model3d, "--dims", "2", "-q")  # fmt: skip
    one_error(code, err, "--dims 2", "3D model")


def test_a_3d_model_fine_tunes_from_the_command_line(capsys, stack, model3d, tmp_path):
    image, labels, _ = stack
    out = tmp_path / "tuned.safetensors"
    code, err = run(capsys, *train_argv(
        image, labels, out, model3d, "--epochs", "1", "--steps-per-epoch", "2",
        "--batch-size", "1", "--patch-size", "16", "--validation-fraction", "0",
    ))  # fmt: skip
    assert code == 0, err
    tuned = load_model_file(out)
    assert tuned.spatial_dims == 3 and tuned.voxel_size == pytest.approx((1.0, 0.5, 0.5))
