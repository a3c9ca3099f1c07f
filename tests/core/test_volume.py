"""Native 3D inference: exact-halo 3D tiles equal one whole-volume pass, identity predictors come
back exactly, and predict_stack follows the model (native for a 3D model)."""

import numpy as np
import pytest
import torch

from napari_unet.core.config import ModelConfig, TilingConfig
from napari_unet.core.errors import InputMismatchError
from napari_unet.core.inference.engine import InferenceEngine
from napari_unet.core.inference.stack3d import predict_stack
from napari_unet.core.inference.volume import (
    native_probabilities,
    predict_volume_tiled,
    volume_grid,
    volume_halo,
)
from napari_unet.core.network.model import build_model, receptive_radii
from napari_unet.core.progress import drain


def _trained_like(config: ModelConfig) -> torch.nn.Module:
    """A tiny 3D network whose BatchNorm has non-trivial running statistics."""
    net = build_model(config, seed=0)
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(2, config.in_channels, 8, 16, 16) * 2 + 0.5)
    return net.eval()


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 13, 7), (16, 32, 32)])
def test_grid_covers_the_volume_once(shape):
    tiles = volume_grid(shape, (4, 8, 8), (2, 3, 5), (2, 4, 4))
    count = np.zeros(shape, int)
    for t in tiles:
        count[t.core] += 1
        assert all(n % s == 0 for n, s in zip(t.size, (2, 4, 4), strict=True))
        assert all((a + h) % s == 0 for a, h, s in zip(t.start, (2, 3, 5), (2, 4, 4), strict=True))
    assert (count == 1).all()
    assert len({t.size for t in tiles}) == 1


def test_identity_predictor_comes_back_exactly():
    rng = np.random.default_rng(0)
    volume = rng.random((2, 7, 19, 11)).astype(np.float32)
    out = drain(
        predict_volume_tiled(lambda x: x + 1, volume, 2, (3, 8, 4), (2, 5, 3), (1, 4, 4), 2)
    )
    np.testing.assert_array_equal(out, volume + 1)


@pytest.mark.parametrize("depth,levels", [(1, 0), (2, 1)])
def test_tiled_equals_whole_volume(depth, levels):
    """fp32, eval mode, forced small tiles with the exact halo: the same probabilities as one
    whole-volume pass."""
    config = ModelConfig(depth=depth, base_channels=4, spatial_dims=3, xy_only_levels=levels)
    net = _trained_like(config)
    image = np.random.default_rng(1).random((12, 32, 24)).astype(np.float32) * 1000
    whole = InferenceEngine(net, TilingConfig(tile_size=64), "cpu", "fp32")
    tiled = InferenceEngine(net, TilingConfig(tile_size=8, batch_size=4), "cpu", "fp32")
    assert volume_halo(tiled.tiling, config) == receptive_radii(config)
    events = []
    gen = native_probabilities(tiled, image, "ZYX")
    a = drain(gen, events.append)
    b = drain(native_probabilities(whole, image, "ZYX"))
    assert a.shape == b.shape == (3, 12, 32, 24)
    assert len(events) >= 3  # several tile batches
    assert np.abs(a - b).max() < 1e-5
    np.testing.assert_allclose(a.sum(axis=0), 1.0, atol=1e-5)


def test_smaller_halo_is_approximate_and_scaled_in_z():
    config = ModelConfig(depth=2, spatial_dims=3, xy_only_levels=1)
    rz, ry, rx = receptive_radii(config)
    z, y, x = volume_halo(TilingConfig(halo=rx // 2), config)
    assert (y, x) == (rx // 2, rx // 2) and 0 < z <= rz
    assert volume_halo(TilingConfig(halo=4, exact=True), config) == (rz, ry, rx)


def test_predict_stack_follows_a_3d_model_and_time_series():
    config = ModelConfig(depth=1, base_channels=2, spatial_dims=3)
    net = _trained_like(config)
    image = np.random.default_rng(2).random((2, 6, 16, 16)).astype(np.float32)
    probs, labels = drain(predict_stack(image, "TZYX", net, "ortho", device="cpu"))
    assert probs.shape == (3, 2, 6, 16, 16) and labels.shape == (2, 6, 16, 16)
    assert labels.dtype in (np.uint16, np.uint32)
    with pytest.raises(InputMismatchError, match="3D model"):
        drain(InferenceEngine(net, device="cpu").predict_image(image[0], "ZYX"))
    with pytest.raises(InputMismatchError, match="Z-stacks"):
        drain(predict_stack(image[0, 0], "YX", net, "native", device="cpu"))
    flat = build_model(ModelConfig(depth=1, base_channels=2), seed=0).eval()
    with pytest.raises(InputMismatchError, match="needs a 3D model"):
        drain(predict_stack(image[0], "ZYX", flat, "native", device="cpu"))
