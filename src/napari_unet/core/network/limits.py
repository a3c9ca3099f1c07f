"""Bounds on what a model file, an option or a header may ask for, checked before any work.

A model's metadata, a tiling option or a training option can ask for a network, a tile or a
batch that no machine holds; checked here, they give one clear message instead of a
``MemoryError`` (or a machine that swaps for an hour). The bounds are far above any real use:

- networks: at most :data:`MAX_PARAMETERS` weights (about 2 GB as float32), at most
  :data:`MAX_CHANNELS` feature channels, whole numbers only;
- inference tiles: at most :data:`MAX_TILE` px a side, :data:`MAX_HALO` px of context,
  :data:`MAX_BATCH` tiles per batch;
- training: patches of at most :data:`MAX_PATCH` px, :data:`MAX_BATCH` patches per step, and a
  batch whose activations fit the memory available.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..errors import UserError

MAX_PARAMETERS = 500_000_000
MAX_CHANNELS = 4096
MAX_IN_CHANNELS = 64
MAX_CLASSES = 256
MAX_TILE = 16384
MAX_HALO = 4096
MAX_BATCH = 1024
MAX_PATCH = 4096

_INT_FIELDS = (
    "in_channels", "out_classes", "depth", "base_channels", "max_channels", "spatial_dims",
    "xy_only_levels",
)  # fmt: skip


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_architecture(raw: Mapping[str, Any]) -> None:
    """Refuse an architecture ``config`` (a model file's JSON) with non-integer sizes or a
    network too large to build.

    Raises:
        ValueError: the reason, for the caller to wrap with the file's name.
    """
    for key in _INT_FIELDS:
        if key in raw and not _whole(raw[key]):
            raise ValueError(f"{key} must be a whole number, got {raw[key]!r}")
    channels = int(raw.get("max_channels", 512))
    base = int(raw.get("base_channels", 16))
    depth = int(raw.get("depth", 4))
    if not 1 <= int(raw.get("in_channels", 1)) <= MAX_IN_CHANNELS:
        raise ValueError(f"in_channels must be between 1 and {MAX_IN_CHANNELS}")
    if not 1 <= int(raw.get("out_classes", 3)) <= MAX_CLASSES:
        raise ValueError(f"out_classes must be between 1 and {MAX_CLASSES}")
    if base > MAX_CHANNELS or channels > MAX_CHANNELS:
        raise ValueError(f"base_channels and max_channels must be at most {MAX_CHANNELS}")
    if not 0 <= depth <= 8 or base < 1 or channels < 1:
        return  # ModelConfig gives its own message
    dims = 3 if raw.get("spatial_dims") == 3 else 2
    count = parameter_count(int(raw.get("in_channels", 1)), base, depth, channels, dims)
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"the network would have about {count / 1e6:,.0f} million weights "
            f"({count * 4 / 2**30:,.0f} GiB), more than the {MAX_PARAMETERS // 10**6} million "
            "napari-unet builds"
        )


def parameter_count(
    in_channels: int, base: int, depth: int, max_channels: int, spatial_dims: int = 2
) -> int:
    """About how many weights a U-Net of these sizes has (two 3x3 convolutions per level; 3x3x3
    for ``spatial_dims`` 3)."""
    k, t = 3**spatial_dims, 2**spatial_dims

    def ch(level: int) -> int:
        return min(base * 2**level, max_channels)

    total, previous = 0, in_channels
    for level in range(depth + 1):
        c = ch(level)
        total += k * (previous * c + c * c)
        previous = c
    for level in range(depth - 1, -1, -1):
        c, below = ch(level), ch(level + 1)
        total += t * below * c + k * (2 * c * c + c * c)
    return total


def tiling_problem(tile_size: Any, halo: Any, batch_size: Any) -> str | None:
    """What is wrong with these tiling values (a model file's or the options'), or None."""
    for name, value in (("tile size", tile_size), ("batch size", batch_size)):
        if not _whole(value) or value < 1:
            return f"the {name} must be a positive whole number, got {value!r}"
    if halo is not None and (not _whole(halo) or halo < 0):
        return f"the overlap must be a whole number of pixels, got {halo!r}"
    if tile_size > MAX_TILE:
        return f"a tile size of {tile_size} px is more than the {MAX_TILE} px allowed"
    if halo is not None and halo > MAX_HALO:
        return (
            f"an overlap of {halo} px is more than the {MAX_HALO} px allowed (no network "
            "needs that much context)"
        )
    if batch_size > MAX_BATCH:
        return f"a batch of {batch_size} tiles is more than the {MAX_BATCH} allowed"
    return None


def check_tiling(tiling: Any) -> Any:
    """``tiling`` (a :class:`~.config.TilingConfig`) when its values are within bounds.

    Raises:
        UserError: a tile, overlap or batch beyond the bounds.
    """
    problem = tiling_problem(tiling.tile_size, tiling.halo, tiling.batch_size)
    if problem is not None:
        raise UserError(problem[0].upper() + problem[1:] + ".")
    return tiling


def check_training(
    patch_size: int, batch_size: int, base_channels: int, available: int | None
) -> None:
    """Refuse training patches and batches beyond the bounds or the memory ``available``.

    Raises:
        UserError: the reason and what to lower.
    """
    if patch_size > MAX_PATCH:
        raise UserError(f"--patch-size {patch_size} is more than the {MAX_PATCH} px allowed.")
    if batch_size > MAX_BATCH:
        raise UserError(f"--batch-size {batch_size} is more than the {MAX_BATCH} allowed.")
    # activations kept for the backward pass: about 12 feature maps of base_channels per pixel
    needed = batch_size * patch_size**2 * max(base_channels, 1) * 4 * 12
    if available is not None and needed > available:
        raise UserError(
            f"--batch-size {batch_size} patches of {patch_size} px need about "
            f"{needed / 2**30:.1f} GiB of memory, more than the {available / 2**30:.1f} GiB "
            "available; lower --batch-size or --patch-size."
        )


def finite_problem(tensors: Mapping[str, Any]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, or None."""
    import torch

    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def normalize_problem(raw: Any) -> str | None:
    """What is wrong with a model file's ``normalize`` block, or None."""
    if raw is None:
        return None
    from ..config import NormalizeConfig, from_dict

    for key in ("low", "high"):
        value = raw.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return f"normalize '{key}' must be a number, got {value!r}"
    if "method" in raw and not isinstance(raw["method"], str):
        return f"normalize 'method' must be a name, got {raw['method']!r}"
    try:
        from_dict(NormalizeConfig, dict(raw))
    except (TypeError, ValueError) as exc:
        return f"invalid normalize block ({exc})"
    return None
