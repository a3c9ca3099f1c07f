"""Pixel size and object size: what models record, and images rescaled to the model's scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.config import ModelConfig, NormalizeConfig
from napari_unet.core.errors import UserError
from napari_unet.core.inference.calibrate import choose_scale
from napari_unet.core.inference.postprocess import PostprocessConfig
from napari_unet.core.inference.predict import predict_labels, predict_probabilities
from napari_unet.core.inference.rescale import (
    RescaleConfig,
    diameter_scale,
    object_diameter,
    pixel_size_scale,
    resize,
    scaled_postprocess,
    training_scale,
)
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.model import build_model
from napari_unet.core.network.registry import load_model
from napari_unet.core.network.weights import LoadedModel, save_model
from napari_unet.core.progress import drain
from napari_unet.core.training.data import make_pairs
from napari_unet.core.training.settings import TrainConfig
from napari_unet.core.training.train import train

CONFIG = ModelConfig(depth=2, base_channels=4)
SEEN: list[tuple[int, int]] = []  # the input sizes the stand-in network was called with


def disks(shape: tuple[int, int], radius: float, spacing: int) -> np.ndarray:
    """Instance labels of disks of ``radius`` on a grid of ``spacing`` pixels."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    n = 0
    for cy in range(spacing // 2, shape[0] - spacing // 2 + 1, spacing):
        for cx in range(spacing // 2, shape[1] - spacing // 2 + 1, spacing):
            n += 1
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = n
    return labels


class _Oracle(torch.nn.Module):
    """A stand-in network whose 'interior' logit is the image itself: objects are where the
    image is bright, whatever the scale, so only the rescaling is under test."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        SEEN.append(tuple(x.shape[-2:]))
        fg = (x[:, :1] - 0.5) * 20
        return torch.cat([-fg, fg, torch.zeros_like(fg)], dim=1)


def oracle_model(pixel_size=(0.5, 0.5), diameter=10.0) -> LoadedModel:
    net = _Oracle(CONFIG)
    meta = new_metadata(CONFIG, name="oracle", pixel_size=pixel_size, object_diameter=diameter)
    return LoadedModel(model=net, config=CONFIG, metadata=meta)


def test_metadata_records_pixel_size_and_diameter(tmp_path):
    model = build_model(CONFIG, seed=0)
    meta = new_metadata(CONFIG, pixel_size=[0.5, 0.5], object_diameter=21.5)
    assert meta["pixel_size_um"] == [0.5, 0.5]
    loaded = load_model(save_model(tmp_path / "m.safetensors", model, meta))
    assert loaded.pixel_size == (0.5, 0.5)
    assert loaded.object_diameter == 21.5
    plain = load_model(save_model(tmp_path / "p.safetensors", model, new_metadata(CONFIG)))
    assert plain.pixel_size is None and plain.object_diameter is None


def test_invalid_pixel_size_in_a_file_is_ignored():
    meta = new_metadata(CONFIG)
    meta["pixel_size_um"] = [0.5, -1]
    assert LoadedModel(build_model(CONFIG), CONFIG, meta).pixel_size is None


def test_the_starter_knows_its_pixel_size():
    from napari_unet.core.network.registry import get_model

    starter = get_model("starter")
    assert starter.pixel_size == (0.5, 0.5)
    assert 15 < starter.object_diameter < 30


def test_scale_factors():
    assert pixel_size_scale((0.25, 0.25), (0.5, 0.5)) == (0.5, 0.5)
    assert pixel_size_scale((1.0, 0.5), (2.0, 0.5, 0.5)) == (2.0, 1.0)  # a 3D model: y, x
    assert pixel_size_scale((0.505, 0.5), (0.5, 0.5)) is None  # close enough
    assert pixel_size_scale(None, (0.5, 0.5)) is None
    assert diameter_scale(44.0, 22.0) == (0.5, 0.5)
    with pytest.raises(UserError, match="turn rescaling off"):
        pixel_size_scale((0.001, 0.001), (0.5, 0.5))


def test_object_diameter_counts_only_objects_inside_the_mask():
    labels = disks((64, 64), 5, 32)
    assert object_diameter(labels) == pytest.approx(10.0, abs=1.0)
    assert object_diameter(np.zeros((8, 8), np.uint16)) is None
    mask = np.zeros(labels.shape, bool)
    mask[:32, :32] = True
    big = labels.copy()
    big[40:60, 40:60] = 99  # outside the mask: not counted
    assert object_diameter(big, mask) == object_diameter(labels[:32, :32])


def test_resize_keeps_probabilities_summing_to_one():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 17, 23)).astype(np.float32)
    probs /= probs.sum(0)
    for shape in ((40, 50), (8, 11)):
        out = resize(probs, shape)
        assert out.shape == (3, *shape)
        np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)


def test_an_enlarged_image_keeps_more_of_its_detail_than_linear_interpolation_gives():
    # a sine of period 5 px sampled on the image's grid, enlarged 2x: the bilinear kernel
    # attenuates it more than the cubic one, so the network would see a blurrier image
    x = np.arange(64, dtype=np.float64)
    period = 5.0
    image = np.sin(2 * np.pi * x / period)[None, None, :].repeat(8, axis=1).astype(np.float32)
    new_x = (np.arange(128) + 0.5) / 2 - 0.5  # the centres of the new pixels, align_corners=False
    truth = np.sin(2 * np.pi * new_x / period)[16:-16]
    as_image = resize(image, (16, 128), image=True)[0, 4, 16:-16]
    linear = resize(image, (16, 128))[0, 4, 16:-16]
    assert np.abs(as_image - truth).mean() < 0.6 * np.abs(linear - truth).mean()
    # shrinking is antialiased either way, and probabilities stay bilinear (within [0, 1])
    np.testing.assert_array_equal(resize(image, (4, 32), image=True), resize(image, (4, 32)))


def test_an_estimated_diameter_close_to_the_models_does_not_resample():
    model = oracle_model(pixel_size=None, diameter=10.0)
    labels = disks((160, 160), 5.3, 32)  # objects of about 10.6 px: within the zoom of training
    image = (labels > 0).astype(np.float32) * 1000
    auto = drain(choose_scale(image, "YX", model, None, RescaleConfig(diameter="auto"),
                              device="cpu"))  # fmt: skip
    assert auto is None
    given = drain(choose_scale(image, "YX", model, None, RescaleConfig(diameter=10.6)))
    assert given == pytest.approx((10 / 10.6, 10 / 10.6))  # a diameter given is applied


@pytest.mark.parametrize("factor", [2, 0.5])
def test_an_image_at_another_pixel_size_is_rescaled_and_mapped_back(factor):
    model = oracle_model(diameter=10.0)
    labels = disks((128, 128), 5 * factor, round(32 * factor)) if factor > 1 else None
    if labels is None:
        labels = disks((64, 64), 2.5, 16)
    image = (labels > 0).astype(np.float32) * 1000 + 100
    pixel_size = (0.5 / factor, 0.5 / factor)
    scale = drain(choose_scale(image, "YX", model, pixel_size, RescaleConfig(), device="cpu"))
    assert scale == pytest.approx((1 / factor, 1 / factor))
    SEEN.clear()
    probs, found = drain(predict_labels(image, "YX", model, device="cpu", scale=scale))
    network = SEEN[0]
    assert network[0] != image.shape[0]  # the network saw the image at its own scale
    assert probs.shape == (3, *image.shape) and found.shape == image.shape
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert found.max() == labels.max()
    inside = (found > 0) == (labels > 0)
    assert inside.mean() > 0.97


def test_diameter_auto_estimates_the_object_size():
    model = oracle_model(pixel_size=None, diameter=10.0)
    labels = disks((192, 192), 10, 48)  # objects of 20 px: twice the model's
    image = (labels > 0).astype(np.float32) * 1000
    config = RescaleConfig(diameter="auto")
    scale = drain(choose_scale(image, "YX", model, None, config, device="cpu"))
    assert scale == pytest.approx((0.5, 0.5), rel=0.05)
    given = drain(choose_scale(image, "YX", model, None, RescaleConfig(diameter=40), device="cpu"))
    assert given == (0.25, 0.25)
    off = RescaleConfig(enabled=False, diameter=40)
    assert drain(choose_scale(image, "YX", model, (0.25, 0.25), off)) is None


def test_the_pixel_size_wins_over_the_diameter_and_none_is_a_no_op():
    model = oracle_model()
    image = np.zeros((32, 32), np.float32)
    config = RescaleConfig(diameter=40)
    assert drain(choose_scale(image, "YX", model, (0.25, 0.25), config)) == (0.5, 0.5)
    assert drain(choose_scale(image, "YX", model, None, RescaleConfig())) is None


def test_unscaled_prediction_is_unchanged():
    net = build_model(CONFIG, seed=1).eval()
    image = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    a = drain(predict_probabilities(image, "YX", net, device="cpu"))
    b = drain(predict_probabilities(image, "YX", net, device="cpu", scale=(1.0, 1.0)))
    np.testing.assert_array_equal(a, b)


def test_sizes_count_in_the_networks_pixels_on_an_enlarged_image():
    post = PostprocessConfig(min_size=16, min_seed_size=4)
    assert scaled_postprocess(post, (0.5, 0.5)).min_size == 64
    assert scaled_postprocess(post, (2.0, 2.0)).min_size == 16
    assert scaled_postprocess(post, None) is post


def test_training_records_the_pixel_size_and_diameter(tmp_path):
    labels = disks((64, 64), 6, 32)
    image = (labels > 0).astype(np.float32) + 0.1
    pairs = make_pairs(image, labels, "YX", 1, NormalizeConfig())
    info = training_scale(pairs, "instances", None, (0.25, 0.25))
    assert info["pixel_size"] == [0.25, 0.25]
    assert info["object_diameter"] == pytest.approx(12.0, abs=1.0)
    config = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, patch_size=32,
                         val_fraction=0.0)  # fmt: skip
    result = drain(train(pairs, tmp_path / "t.safetensors", config=config, device="cpu",
                         model_config=CONFIG, pixel_size=(0.25, 0.25)))  # fmt: skip
    assert result.pixel_size == (0.25, 0.25)
    assert result.object_diameter == pytest.approx(12.0, abs=1.0)
    # fine-tuned on images of unknown pixel size: the base model's is kept
    tuned = drain(train(pairs, tmp_path / "u.safetensors", base=result, config=config,
                        device="cpu"))  # fmt: skip
    assert tuned.pixel_size == (0.25, 0.25)
