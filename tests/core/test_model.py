"""The U-Net: any input size, the receptive-field bound, BatchNorm folding, settings."""

import numpy as np
import pytest
import torch

from napari_unet.core.config import ModelConfig, TilingConfig, from_dict, to_dict
from napari_unet.core.network.model import (
    build_model,
    count_parameters,
    fuse_for_inference,
    receptive_radius,
)


@pytest.mark.parametrize("norm", ["batch", "group", "instance", "none"])
@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
@pytest.mark.parametrize("size", [(1, 1), (1, 37), (17, 5), (64, 64)])
def test_any_input_size(norm: str, upsampling: str, size: tuple[int, int]) -> None:
    config = ModelConfig(
        in_channels=2, out_classes=4, depth=2, base_channels=4, norm=norm, upsampling=upsampling
    )
    net = build_model(config, seed=0).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 2, *size))
    assert out.shape == (2, 4, *size)
    assert torch.isfinite(out).all()


def test_seed_makes_identical_networks() -> None:
    config = ModelConfig(depth=2, base_channels=4)
    a, b = build_model(config, seed=3), build_model(config, seed=3)
    c = build_model(config, seed=4)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(
        not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    "depth,upsampling",
    [(1, "transpose"), (2, "transpose"), (2, "bilinear"), (3, "transpose"), (3, "bilinear")],
)
def test_receptive_radius_is_the_exact_margin_for_aligned_windows(
    depth: int, upsampling: str
) -> None:
    """A window that starts on the stride grid and reaches ``radius`` beyond a block of output
    pixels reproduces them exactly; one stride less of margin does not."""
    config = ModelConfig(depth=depth, base_channels=4, upsampling=upsampling, norm="none")
    net = build_model(config, seed=0).double().eval()
    s, radius = config.stride, receptive_radius(config)
    assert radius % s == 0
    n = 2 * radius + 4 * s
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, n, n)))
    with torch.no_grad():
        full = net(x)
        block = slice(radius, radius + 4 * s)  # the block's outputs, aligned to the stride
        for margin, exact in ((radius, True), (radius - s, False)):
            window = slice(radius - margin, radius + 4 * s + margin)
            out = net(x[..., window, window])
            core = slice(margin, margin + 4 * s)
            diff = (out[..., core, core] - full[..., block, block]).abs().max().item()
            assert (diff < 1e-12) == exact, (margin, diff)


def test_fused_batchnorm_matches_eval_model() -> None:
    config = ModelConfig(depth=2, base_channels=4)
    net = build_model(config, seed=1)
    net.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(5):
            net(torch.randn(4, 1, 32, 32) * 3 + 1)
    net.eval()
    fused = fuse_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # original untouched
    x = torch.randn(2, 1, 40, 24)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), atol=1e-4, rtol=1e-4)


def test_count_parameters_grows_with_width() -> None:
    small = count_parameters(build_model(ModelConfig(depth=2, base_channels=4)))
    large = count_parameters(build_model(ModelConfig(depth=2, base_channels=8)))
    assert 0 < small < large


def test_settings_round_trip_and_validation() -> None:
    config = ModelConfig(in_channels=3, out_classes=2, depth=3, base_channels=8, norm="group")
    assert from_dict(ModelConfig, to_dict(config)) == config
    assert from_dict(ModelConfig, {**to_dict(config), "unknown_future_key": 1}) == config
    assert config.stride == 8
    for bad in (
        {"depth": -1},
        {"base_channels": 0},
        {"norm": "layer"},
        {"upsampling": "nearest"},
        {"in_channels": 0},
    ):
        with pytest.raises(ValueError):
            ModelConfig(**bad)
    for bad in ({"tile_size": 0}, {"halo": -1}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            TilingConfig(**bad)
