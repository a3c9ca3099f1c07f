"""The native 3D U-Net: its settings, any input size, the per-axis receptive field, BatchNorm
folding, and model files that record the voxel size (2D files unchanged)."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from napari_unet.core.config import ModelConfig, from_dict, to_dict, xy_only_levels_for
from napari_unet.core.errors import ModelFileError
from napari_unet.core.network.metadata import METADATA_KEY, new_metadata, validate_metadata
from napari_unet.core.network.model import (
    build_model,
    fuse_for_inference,
    receptive_radii,
    receptive_radius,
)
from napari_unet.core.network.weights import load_model_file, save_model


def test_3d_settings_are_validated() -> None:
    config = ModelConfig(depth=3, spatial_dims=3, xy_only_levels=1)
    assert config.stride == 8 and config.z_stride == 4
    assert config.pool_factors("z") == (1, 2, 2) and config.pool_factors("x") == (2, 2, 2)
    assert from_dict(ModelConfig, to_dict(config)) == config
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        ModelConfig(spatial_dims=1)
    with pytest.raises(ValueError, match="needs spatial_dims=3"):
        ModelConfig(xy_only_levels=1)
    with pytest.raises(ValueError, match="at most the depth"):
        ModelConfig(depth=2, spatial_dims=3, xy_only_levels=3)
    with pytest.raises(ValueError, match="whole number"):
        ModelConfig(spatial_dims=3, xy_only_levels=-1)


def test_old_config_without_the_field_is_2d() -> None:
    raw = to_dict(ModelConfig(depth=2))
    del raw["spatial_dims"], raw["xy_only_levels"]
    assert from_dict(ModelConfig, raw).spatial_dims == 2


@pytest.mark.parametrize("anisotropy,levels", [(1.0, 0), (1.4, 0), (2.0, 1), (3.0, 2), (9.0, 3)])
def test_xy_only_levels_for_anisotropy(anisotropy: float, levels: int) -> None:
    assert xy_only_levels_for(anisotropy, depth=3) == levels


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
@pytest.mark.parametrize("size", [(1, 1, 1), (5, 17, 9), (8, 16, 16)])
def test_3d_network_any_size(upsampling: str, size: tuple[int, int, int]) -> None:
    config = ModelConfig(
        depth=2, base_channels=2, spatial_dims=3, xy_only_levels=1, upsampling=upsampling
    )
    net = build_model(config, seed=0).eval()
    assert any(isinstance(m, torch.nn.Conv3d) for m in net.modules())
    with torch.no_grad():
        out = net(torch.randn(2, 1, *size))
    assert out.shape == (2, 3, *size)
    with pytest.raises(ValueError, match="3D network"):
        net(torch.randn(1, 1, 8, 8))


def test_2d_radius_unchanged() -> None:
    assert receptive_radius(ModelConfig()) == 96  # depth 4, transposed convolutions


@pytest.mark.parametrize("levels", [0, 1, 2])
def test_3d_radii_are_exact_per_axis(levels: int) -> None:
    """A window starting on the stride grid with the per-axis radius as margin reproduces the
    whole-volume output; one stride less in Z does not."""
    config = ModelConfig(depth=2, base_channels=2, spatial_dims=3, xy_only_levels=levels,
                         norm="none")  # fmt: skip
    rz, ry, rx = receptive_radii(config)
    sz, s = config.z_stride, config.stride
    assert ry == rx == receptive_radius(ModelConfig(depth=2)) and rz % sz == 0
    assert rz <= ry
    net = build_model(config, seed=0).double().eval()
    n = (2 * rz + 2 * sz, 2 * ry + 2 * s, 2 * rx + 2 * s)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, *n)))
    with torch.no_grad():
        full = net(x)[..., rz : rz + 2 * sz, ry : ry + 2 * s, rx : rx + 2 * s]
        for margin_z, exact in ((rz, True), (rz - sz, False)):
            window = x[..., rz - margin_z : rz + 2 * sz + margin_z, :, :]
            out = net(window)[..., margin_z : margin_z + 2 * sz, ry : ry + 2 * s, rx : rx + 2 * s]
            assert ((out - full).abs().max().item() < 1e-12) == exact


def test_fused_batchnorm_3d_matches_eval() -> None:
    net = build_model(ModelConfig(depth=1, base_channels=2, spatial_dims=3), seed=1)
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, 1, 8, 16, 16) * 2 + 1)
    net.eval()
    fused = fuse_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fused.modules())
    x = torch.randn(1, 1, 6, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), atol=1e-4, rtol=1e-4)


def test_3d_model_file_round_trip_with_voxel_size(tmp_path) -> None:
    config = ModelConfig(depth=2, base_channels=2, spatial_dims=3, xy_only_levels=1)
    net = build_model(config, seed=0).eval()
    meta = new_metadata(config, pixel_size=(2.0, 0.5, 0.5))
    path = save_model(tmp_path / "m3d", net, meta)
    with safe_open(str(path), framework="pt") as handle:
        stored = json.loads(handle.metadata()[METADATA_KEY])
    assert stored["format_version"] == 2 and stored["config"]["spatial_dims"] == 3
    assert stored["pixel_size_um"] == [2.0, 0.5, 0.5]
    loaded = load_model_file(path)
    assert loaded.config == config and loaded.spatial_dims == 3
    assert loaded.voxel_size == (2.0, 0.5, 0.5)
    x = torch.randn(1, 1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), net(x))
    with pytest.raises(ValueError, match="voxel size"):
        new_metadata(config, pixel_size=(0.5, 0.5))


def test_2d_files_keep_format_1_and_old_files_load(tmp_path) -> None:
    config = ModelConfig(depth=1, base_channels=2)
    net = build_model(config, seed=0).eval()
    meta = new_metadata(config, pixel_size=(0.5, 0.5))
    meta["config"] = {k: v for k, v in meta["config"].items()
                      if k not in ("spatial_dims", "xy_only_levels")}  # fmt: skip
    path = save_model(tmp_path / "m2d", net, meta)
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()[METADATA_KEY])["format_version"] == 1
    old = {**meta, "format_version": 1}  # as written before 3D networks existed
    assert validate_metadata(old).spatial_dims == 2
    loaded = load_model_file(path)
    assert loaded.spatial_dims == 2 and loaded.voxel_size is None
    assert loaded.pixel_size == (0.5, 0.5)


def test_3d_file_refused_by_a_reader_of_format_1_only(tmp_path) -> None:
    meta = new_metadata(ModelConfig(depth=1, spatial_dims=3))
    with pytest.raises(ModelFileError, match="upgrade"):
        validate_metadata({**meta, "format_version": 3})
