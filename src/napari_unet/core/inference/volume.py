"""Native 3D inference: a 3D U-Net on a Z-stack, in exact-halo 3D tiles.

The volume is cut into a grid of 3D tiles. As in 2D (:mod:`.tiling`), each tile's *core* is what
it writes, the network sees the core plus a context margin (the *halo*) per axis, and the missing
context at the volume's borders is the volume mirrored. Window offsets are multiples of the
network's stride per axis (``config.z_stride`` in Z, ``config.stride`` in Y and X), so max-pooling
sees the same voxel groups in every tile; with the halo per axis at least the receptive-field
radius along that axis (:func:`~napari_unet.core.network.model.receptive_radii`, the default), the
tiled output equals one whole-volume pass to float rounding.

:func:`native_probabilities` gives the class probabilities of every volume of a ``ZYX``,
``ZCYX``, ``TZYX`` or ``TZCYX`` image, normalised over the whole image as 2D prediction is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ModelConfig, TilingConfig
from ..errors import InputMismatchError
from ..network.model import receptive_radii
from ..network.normalize import as_planes, normalize_bounds, normalize_plane
from ..progress import Progress
from .engine import InferenceEngine
from .tiling import _axis_cores, _round_up, mirror_indices

logger = logging.getLogger(__name__)

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class VolumeTile:
    """One tile of a :func:`volume_grid`.

    Attributes:
        start: (z, y, x) first voxel of the window (core + halo) in volume coordinates;
            negative or past the volume where it reaches into the mirrored border.
        size: (z, y, x) window size, the same for every tile of a grid, multiples of the stride.
        core: (z, y, x) slices of the volume this tile writes (clipped to the volume).
        inner: the same region as slices of the window.
    """

    start: Triple
    size: Triple
    core: tuple[slice, slice, slice]
    inner: tuple[slice, slice, slice]


def volume_halo(tiling: TilingConfig, config: ModelConfig) -> Triple:
    """The context margin (z, y, x) for a 3D network: the receptive-field radius per axis (exact
    tiles) unless ``tiling.halo`` asks for less, which is then used in Y and X and, scaled by
    the Z radius over the X one, in Z. ``tiling.exact`` takes at least the radius."""
    radii = receptive_radii(config)
    if tiling.halo is None:
        return radii
    halo = int(tiling.halo)
    z = math.ceil(halo * radii[0] / radii[2]) if radii[2] else 0
    given = (z, halo, halo)
    if tiling.exact:
        return tuple(max(r, g) for r, g in zip(radii, given, strict=True))  # type: ignore[return-value]
    return given


def volume_grid(shape: Triple, tile: Triple, halo: Triple, stride: Triple) -> list[VolumeTile]:
    """The tiles that cover a volume of ``shape`` (Z, Y, X), in row-major order.

    Args:
        shape: (Z, Y, X), each at least 1.
        tile: largest core side per axis (rounded down to the stride, at least one stride);
            cores are balanced, and a tile at least the volume gives one tile.
        halo: context margin per axis (>= 0).
        stride: the network's stride per axis.

    Returns:
        The list of :class:`VolumeTile`; all windows have the same size.
    """
    if min(shape) < 1:
        raise ValueError(f"cannot tile an empty volume of shape {shape}")
    if min(tile) < 1 or min(halo) < 0 or min(stride) < 1:
        raise ValueError(f"invalid 3D tiling: tile {tile}, halo {halo}, stride {stride}")
    axes = [_axis_cores(n, t, s) for n, t, s in zip(shape, tile, stride, strict=True)]
    size = tuple(
        _round_up(core + 2 * h, s) for (_, core), h, s in zip(axes, halo, stride, strict=True)
    )
    tiles = []
    for index in np.ndindex(*(count for count, _ in axes)):
        lo = [i * core for i, (_, core) in zip(index, axes, strict=True)]
        hi = [min(a + core, n) for a, (_, core), n in zip(lo, axes, shape, strict=True)]
        tiles.append(
            VolumeTile(
                start=tuple(a - h for a, h in zip(lo, halo, strict=True)),  # type: ignore[arg-type]
                size=size,  # type: ignore[arg-type]
                core=tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)),  # type: ignore[arg-type]
                inner=tuple(slice(h, h + b - a) for a, b, h in zip(lo, hi, halo, strict=True)),  # type: ignore[arg-type]
            )
        )
    return tiles


def read_volume_window(volume: np.ndarray, tile: VolumeTile, out: np.ndarray) -> np.ndarray:
    """The window of ``tile`` from ``volume`` (C, Z, Y, X), mirrored where it leaves the volume,
    written into ``out`` (float32 (C, *tile.size))."""
    shape = volume.shape[1:]
    spans = list(zip(tile.start, tile.size, shape, strict=True))
    if all(s >= 0 and s + n <= length for s, n, length in spans):
        out[...] = volume[(slice(None), *(slice(s, s + n) for s, n, _ in spans))]
    else:
        index = [mirror_indices(s, n, length) for s, n, length in spans]
        out[...] = volume[(slice(None), *np.ix_(*index))]
    return out


def predict_volume_tiled(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    volume: np.ndarray,
    out_channels: int,
    tile: Triple,
    halo: Triple,
    stride: Triple,
    batch_size: int = 1,
    out: np.ndarray | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """Overlap-tile prediction of one volume.

    Args:
        predictor: maps a CPU float32 batch (B, C, d, h, w) to float32 (B, K, d, h, w).
        volume: float32 (C, Z, Y, X), already normalised.
        out_channels: K.
        tile, halo, stride: (z, y, x) core size, context margin and network stride.
        batch_size: tiles per forward pass.
        out: optional float32 or float16 (K, Z, Y, X) to write into.

    Yields:
        One ``"predict"`` event per tile batch (no payload). Closing the generator stops the work.

    Returns:
        (K, Z, Y, X) probabilities: ``out`` when given, else float32.
    """
    if volume.ndim != 4:
        raise ValueError(f"expected a volume (C, Z, Y, X), got shape {volume.shape}")
    shape = volume.shape[1:]
    if out is None:
        out = np.empty((out_channels, *shape), dtype=np.float32)
    elif out.shape != (out_channels, *shape):
        raise ValueError(f"output shape {out.shape} != {(out_channels, *shape)}")
    tiles = volume_grid(shape, tile, halo, stride)  # type: ignore[arg-type]
    batch_size = max(1, min(batch_size, len(tiles)))
    n_batches = -(-len(tiles) // batch_size)
    buffer = np.empty((batch_size, volume.shape[0], *tiles[0].size), dtype=np.float32)
    for b in range(n_batches):
        batch = tiles[b * batch_size : (b + 1) * batch_size]
        for i, t in enumerate(batch):
            read_volume_window(volume, t, buffer[i])
        probs = predictor(torch.from_numpy(buffer[: len(batch)])).numpy()
        if probs.shape != (len(batch), out_channels, *tiles[0].size):
            raise ValueError(f"predictor returned shape {probs.shape}")
        for i, t in enumerate(batch):
            out[(slice(None), *t.core)] = probs[(i, slice(None), *t.inner)]
        yield Progress("predict", b + 1, n_batches, f"3D tile batch {b + 1}/{n_batches}")
    return out


def volume_tile(engine: InferenceEngine) -> Triple:
    """The core size (z, y, x) of the engine's 3D tiles: its tile size on every axis."""
    size = int(engine.tiling.tile_size)
    return size, size, size


def _volumes(image: np.ndarray, axes: str, in_channels: int) -> tuple[np.ndarray, int, int]:
    """``(planes (N, C, Y, X), volumes T, planes per volume Z)`` of a stack with a Z axis."""
    axes = axes.upper()
    if len(axes) != image.ndim:
        raise InputMismatchError(f"axes {axes!r} do not fit an image of shape {image.shape}")
    leading = "".join(a for a in axes if a not in "CSYX")
    if leading not in ("Z", "TZ"):
        raise InputMismatchError(
            f"a 3D model predicts Z-stacks (axes ZYX, ZCYX, TZYX or TZCYX), not axes {axes!r}"
        )
    planes, shape, _ = as_planes(image, axes, in_channels)
    n_z = shape[-1]
    return planes, planes.shape[0] // n_z, n_z


def native_probabilities(
    engine: InferenceEngine, image: np.ndarray, axes: str, dtype: type = np.float32
) -> Generator[Progress, None, np.ndarray]:
    """Class probabilities of every volume of a Z-stack from a 3D network, in 3D tiles.

    Args:
        engine: an engine of a 3D network (``config.spatial_dims == 3``).
        image: the raw stack, one axis per letter of ``axes`` (Z, optionally T before it, C).
        axes: letters from ``"TZCYX"``.
        dtype: float32 or float16 probabilities.

    Yields:
        ``"predict"`` events counted over all tile batches of all volumes.

    Returns:
        ``dtype`` (K, T?, Z, Y, X), summing to 1 over K.

    Raises:
        InputMismatchError: a 2D network, no Z axis, or channels that do not fit.
    """
    config = engine.config
    if config.spatial_dims != 3:
        raise InputMismatchError("native 3D prediction needs a 3D model (spatial_dims 3)")
    planes, n_t, n_z = _volumes(image, axes, config.in_channels)
    height, width = planes.shape[-2:]
    bounds = normalize_bounds(planes, engine.normalize)
    tile, halo = volume_tile(engine), volume_halo(engine.tiling, config)
    stride = (config.z_stride, config.stride, config.stride)
    logger.info(
        "native 3D U-Net: %d volume(s) of %dx%dx%d on %s, tiles %s, halo %s", n_t, n_z, height,
        width, engine.device, tile, halo,
    )  # fmt: skip
    out = np.empty((config.out_classes, n_t, n_z, height, width), dtype=dtype)
    for t in range(n_t):
        part = planes[t * n_z : (t + 1) * n_z]
        volume = np.stack([normalize_plane(p, bounds) for p in part], axis=1)  # (C, Z, Y, X)
        gen = predict_volume_tiled(
            engine.predictor, volume, config.out_classes, tile, halo, stride,
            engine.tiling.batch_size, out[:, t],
        )  # fmt: skip
        try:
            for event in gen:
                yield Progress(
                    "predict", t * event.total + event.done, n_t * event.total,
                    event.message if n_t == 1 else f"volume {t + 1}/{n_t}, {event.message}",
                )  # fmt: skip
        finally:
            gen.close()
    return out if "T" in axes.upper() else out[:, 0]
