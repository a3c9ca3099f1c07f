"""Pixel size on the command line: ``predict --pixel-size/--diameter/--no-rescale`` and what
``train`` records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.cli import main
from napari_unet.core.config import ModelConfig
from napari_unet.core.io.reading import read_image
from napari_unet.core.io.writing import write_image, write_labels
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.model import build_model
from napari_unet.core.network.registry import load_model
from napari_unet.core.network.weights import save_model

CONFIG = ModelConfig(depth=2, base_channels=4)
FAST = ("--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--patch-size", "32")

pytestmark = pytest.mark.usefixtures("isolated_models")


def disks(shape, radius, spacing) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    n = 0
    for cy in range(spacing // 2, shape[0], spacing):
        for cx in range(spacing // 2, shape[1], spacing):
            n += 1
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = n
    return labels


@pytest.fixture
def model_file(tmp_path):
    model = build_model(CONFIG, seed=0)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 0.5, -0.5]))
    meta = new_metadata(CONFIG, name="m", pixel_size=[0.5, 0.5], object_diameter=10.0)
    return save_model(tmp_path / "m.safetensors", model, meta)


def test_predict_logs_the_rescaling_and_keeps_the_image_shape(tmp_path, model_file, capsys):
    image = (disks((64, 80), 6, 32) > 0).astype(np.uint16) * 1000
    write_image(tmp_path / "img.tif", image, "YX", pixel_size=(0.25, 0.25))
    out = tmp_path / "labels.tif"
    args = ["predict", str(tmp_path / "img.tif"), "-o", str(out), "--model", str(model_file), "-v"]
    assert main(args) == 0
    assert "scale (0.5, 0.5)" in capsys.readouterr().err
    labels = read_image(out)
    assert labels.data.shape == (64, 80) and labels.pixel_size == pytest.approx((0.25, 0.25))
    assert main([*args, "--no-rescale", "-o", str(tmp_path / "b.tif")]) == 0
    assert "scale" not in capsys.readouterr().err
    assert main([*args, "--pixel-size", "0.5", "-o", str(tmp_path / "c.tif")]) == 0
    assert "scale None" in capsys.readouterr().err  # the given pixel size is the model's


def test_predict_diameter_options(tmp_path, model_file, capsys):
    write_image(tmp_path / "img.tif", (disks((64, 64), 10, 32) > 0).astype(np.uint16), "YX")
    base = ["predict", str(tmp_path / "img.tif"), "--model", str(model_file), "-v"]
    assert main([*base, "-o", str(tmp_path / "a.tif"), "--diameter", "20"]) == 0
    assert "object diameter 20.0 px, model's 10.0 px: scale (0.5, 0.5)" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "b.tif"), "--diameter", "auto"]) == 0
    assert main([*base, "-o", str(tmp_path / "c.tif"), "--diameter", "-3"]) == 2
    assert "--diameter" in capsys.readouterr().err


def test_train_records_the_pixel_size_of_its_images(tmp_path, model_file):
    labels = disks((64, 64), 6, 32)
    write_image(tmp_path / "img.tif", (labels > 0).astype(np.uint16) * 500 + 50, "YX",
                pixel_size=(0.3, 0.3))  # fmt: skip
    write_labels(tmp_path / "lab.tif", labels, "YX")
    out = tmp_path / "new.safetensors"
    argv = ["train", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
            "--model", str(model_file), "-o", str(out), "-q", *FAST]  # fmt: skip
    assert main(argv) == 0
    trained = load_model(out)
    assert trained.pixel_size == pytest.approx((0.3, 0.3))
    assert trained.object_diameter == pytest.approx(12.0, abs=1.0)
