"""Overlap-tile inference (Ronneberger et al. 2015): seamless predictions of any image size.

The image is cut into a grid of tiles. Each tile's *core* is the part of the output it writes;
the network sees the core plus a context margin (the *halo*) on every side, and the output is
cropped back to the core, so neighbouring tiles never blend. At the image borders the missing
context is the image mirrored (reflection without repeating the edge pixel, repeated for images
smaller than the margin). Every tile input has the same shape.

Coordinates: the *padded image* is the image extended by mirroring, with its origin ``halo``
pixels above and left of the image's. Tile windows start at multiples of the network's stride
in the padded image, so the pooling grid is the same in every tile and in one whole-image pass;
with a halo at least the receptive-field radius (``TilingConfig(exact=True)``) tiled results
equal the whole-image pass to float rounding. A tile size at least the image size gives one tile:
the reference whole-image pass.

Nothing the size of the padded image is ever allocated: each window is gathered from the image
with mirrored indices into a reused batch buffer, and cores are written into the output array.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..config import ModelConfig, TilingConfig
from ..errors import Hint, UserError
from ..network.device import is_out_of_memory
from ..network.model import receptive_radius
from ..progress import Progress
from .events import TileBatchDone

logger = logging.getLogger(__name__)

# Defaults, measured with the trained starter model on a 2048 px image (benchmarks/tiling.py):
# margins smaller than the receptive-field radius left seams (64 px: up to 0.09 in probability,
# 80 px: 0.02), so the default margin is the exact one, and tiles are large so that the margin
# costs little.
#: Default tile side (core, without halo) and batch on the CPU.
CPU_TILE_SIZE = 1024
CPU_BATCH_SIZE = 1
#: Default tile side and batch on a GPU, where large tiles keep the device busy.
GPU_TILE_SIZE = 1024
GPU_BATCH_SIZE = 4
#: Default tile core side (Z, Y and X) and batch of a native 3D network, on any device.
TILE_SIZE_3D = 128
BATCH_SIZE_3D = 1
#: Smallest tile core the out-of-memory retry goes down to (at least the stride).
MIN_TILE_SIZE = 64


@dataclass(frozen=True)
class Tile:
    """One tile of a :func:`tile_grid`.

    Attributes:
        y, x: top-left corner of the window (core + halo) in image coordinates; negative or
            past the image where the window reaches into the mirrored border.
        height, width: window size (the same for every tile of a grid, multiples of the stride).
        core: (rows, cols) slices of the image this tile writes (clipped to the image).
        inner: the same region as (rows, cols) slices of the window.
    """

    y: int
    x: int
    height: int
    width: int
    core: tuple[slice, slice]
    inner: tuple[slice, slice]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _axis_cores(length: int, tile_size: int, stride: int) -> tuple[int, int]:
    """(number of tiles, core size) along one axis: one tile when ``tile_size >= length``, else
    balanced cores, multiples of ``stride``, each at most ``tile_size`` rounded down to the
    stride (at least one stride)."""
    if length <= tile_size:
        count = 1
    else:
        count = -(-length // max(stride, tile_size // stride * stride))
    core = _round_up(-(-length // count), stride)
    return count, core


def tile_grid(shape: tuple[int, int], tile_size: int, halo: int, stride: int) -> list[Tile]:
    """The tiles that cover an image of ``shape`` (H, W), in row-major order.

    Args:
        shape: (H, W) of the image, each at least 1.
        tile_size: largest core side in pixels (rounded down to the stride; at least one stride).
            Cores are balanced: an axis of length L gets ``ceil(L / tile)`` cores of equal size,
            so a tile size at least the image size gives one tile.
        halo: context margin on every side of the core, in pixels (>= 0).
        stride: the network's total down-sampling factor; window offsets in the padded image and
            window sizes are multiples of it.

    Returns:
        The list of :class:`Tile`; all windows have the same height and width.
    """
    if tile_size < 1 or halo < 0 or stride < 1:
        raise ValueError(f"invalid tiling: tile {tile_size}, halo {halo}, stride {stride}")
    height, width = shape
    if height < 1 or width < 1:
        raise ValueError(f"cannot tile an empty image of shape {shape}")
    ny, core_y = _axis_cores(height, tile_size, stride)
    nx, core_x = _axis_cores(width, tile_size, stride)
    win_h = _round_up(core_y + 2 * halo, stride)
    win_w = _round_up(core_x + 2 * halo, stride)
    tiles = []
    for iy in range(ny):
        y0, y1 = iy * core_y, min((iy + 1) * core_y, height)
        for ix in range(nx):
            x0, x1 = ix * core_x, min((ix + 1) * core_x, width)
            tiles.append(
                Tile(
                    y=y0 - halo,
                    x=x0 - halo,
                    height=win_h,
                    width=win_w,
                    core=(slice(y0, y1), slice(x0, x1)),
                    inner=(slice(halo, halo + y1 - y0), slice(halo, halo + x1 - x0)),
                )
            )
    return tiles


def mirror_indices(start: int, size: int, length: int) -> np.ndarray:
    """Indices ``start .. start + size - 1`` mapped into ``[0, length)`` by mirroring at the
    borders without repeating the edge (numpy's ``"reflect"``), repeated as often as needed, so
    images smaller than the margin (even 1 pixel) work. Returns int64 (size,)."""
    idx = np.arange(start, start + size, dtype=np.int64)
    if length == 1:
        return np.zeros(size, dtype=np.int64)
    period = 2 * (length - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= length, period - idx, idx)


def read_window(image: np.ndarray, tile: Tile, out: np.ndarray | None = None) -> np.ndarray:
    """The window of ``tile`` from ``image`` (C, H, W), mirrored where it leaves the image.

    Returns float32 (C, tile.height, tile.width) (written into ``out`` when given).
    """
    _, height, width = image.shape
    if out is None:
        out = np.empty((image.shape[0], tile.height, tile.width), dtype=np.float32)
    inside = (
        tile.y >= 0
        and tile.x >= 0
        and tile.y + tile.height <= height
        and tile.x + tile.width <= width
    )
    if inside:
        out[...] = image[:, tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
    else:
        rows = mirror_indices(tile.y, tile.height, height)
        cols = mirror_indices(tile.x, tile.width, width)
        out[...] = image[:, rows[:, None], cols[None, :]]
    return out


def default_halo(config: ModelConfig) -> int:
    """The default context margin for ``config``: the receptive-field radius, rounded up to the
    stride, so that tiles reproduce a whole-image pass to float rounding (no seams).

    A smaller margin (``TilingConfig(halo=...)``, ``--overlap``) is faster and approximate: a
    trained network uses context up to its receptive field.
    """
    return receptive_radius(config)


def resolve_halo(tiling: TilingConfig, config: ModelConfig) -> int:
    """The halo to use: at least the receptive-field radius when ``tiling.exact``, else
    ``tiling.halo`` when set, else :func:`default_halo`."""
    if tiling.exact:
        return max(receptive_radius(config), tiling.halo or 0)
    if tiling.halo is not None:
        return tiling.halo
    return default_halo(config)


def default_tiling(config: ModelConfig, device_type: str = "cpu") -> TilingConfig:
    """Default tiling for ``config`` on a device type (``"cpu"``, ``"cuda"``, ``"mps"``); the halo
    is left to :func:`default_halo` (to :func:`~.volume.volume_halo` for a 3D network)."""
    if config.spatial_dims == 3:
        return TilingConfig(tile_size=TILE_SIZE_3D, halo=None, batch_size=BATCH_SIZE_3D)
    if device_type == "cpu":
        return TilingConfig(tile_size=CPU_TILE_SIZE, halo=None, batch_size=CPU_BATCH_SIZE)
    return TilingConfig(tile_size=GPU_TILE_SIZE, halo=None, batch_size=GPU_BATCH_SIZE)


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _smaller(tiling: TilingConfig, core_size: int, stride: int) -> TilingConfig | None:
    """The next tiling to try after running out of memory: half the batch, then half the tile;
    ``None`` when both are at their minimum. ``core_size`` is the core side actually used."""
    if tiling.batch_size > 1:
        return replace(tiling, batch_size=max(1, tiling.batch_size // 2))
    floor = max(stride, MIN_TILE_SIZE)
    half = core_size // 2 // stride * stride
    if half >= floor:
        return replace(tiling, tile_size=half)
    return None


class _OutOfMemory(Exception):
    """Internal: a batch ran out of device memory after ``tiles_done`` tiles were written."""

    def __init__(self, tiles_done: int) -> None:
        super().__init__(f"out of memory after {tiles_done} tiles")
        self.tiles_done = tiles_done


@dataclass
class _Count:
    """Batches reported so far for one image (across out-of-memory retries)."""

    batches: int = 0


def _run_grid(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    out: np.ndarray,
    tiles: list[Tile],
    batch_size: int,
    count: _Count,
) -> Generator[Progress[TileBatchDone], None, None]:
    """Run ``tiles`` in batches, writing cores into ``out``; one event per batch.

    Raises :class:`_OutOfMemory` (from the original error) when the device runs out of memory.
    """
    batch_size = max(1, min(batch_size, len(tiles)))  # never a buffer for tiles that are not
    n_batches = -(-len(tiles) // batch_size)
    total = count.batches + n_batches
    first = tiles[0]
    buffer = np.empty((batch_size, image.shape[0], first.height, first.width), dtype=np.float32)
    for b in range(n_batches):
        batch = tiles[b * batch_size : (b + 1) * batch_size]
        for i, tile in enumerate(batch):
            read_window(image, tile, buffer[i])
        inputs = torch.from_numpy(buffer[: len(batch)])
        try:
            result = predictor(inputs)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise _OutOfMemory(b * batch_size) from exc
            raise
        expected = (len(batch), out.shape[0], first.height, first.width)
        if tuple(result.shape) != expected:
            raise ValueError(f"predictor returned shape {tuple(result.shape)}, expected {expected}")
        probs = result.detach().to("cpu", torch.float32).numpy()
        del result
        for i, tile in enumerate(batch):
            out[(slice(None), *tile.core)] = probs[(i, slice(None), *tile.inner)]
        count.batches += 1
        yield Progress(
            "predict",
            count.batches,
            total,
            f"tile batch {count.batches}/{total}",
            payload=TileBatchDone(tuple(tile.core for tile in batch)),
        )


def predict_tiled(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    out_channels: int,
    tiling: TilingConfig,
    halo: int,
    stride: int = 1,
    out: np.ndarray | None = None,
) -> Generator[Progress[TileBatchDone], None, np.ndarray]:
    """Overlap-tile prediction of one plane.

    Args:
        predictor: maps a CPU float32 batch (B, C, h, w) to a float32 (B, out_channels, h, w)
            tensor (it moves data to its device itself). Called with h, w multiples of ``stride``.
        image: float32 (C, H, W), already normalised.
        out_channels: K, the channels the predictor returns.
        tiling: tile size and batch size (its ``halo``/``exact`` are not read: pass ``halo``).
        halo: context margin in pixels (see :func:`resolve_halo`).
        stride: the network's stride (``config.stride``).
        out: optional preallocated float32 (K, H, W) to write into (may be a view).

    Yields:
        One :class:`Progress` per tile batch (payload: :class:`~.events.TileBatchDone`).
        Closing the generator between batches stops the work.

    Returns:
        float32 (K, H, W): ``out`` when given.

    Raises:
        UserError: the device runs out of memory even with one tile of the smallest size.

    On a device out-of-memory error the batch is halved (the grid resumes at the failed batch),
    then the tile (the grid restarts), with a warning in the log each time.
    """
    if image.ndim != 3:
        raise ValueError(f"expected an image (C, H, W), got shape {image.shape}")
    height, width = image.shape[1:]
    if out is None:
        out = np.empty((out_channels, height, width), dtype=np.float32)
    elif out.shape != (out_channels, height, width):
        raise ValueError(f"output shape {out.shape} != {(out_channels, height, width)}")
    current = tiling
    tiles = tile_grid((height, width), current.tile_size, halo, stride)
    count = _Count()
    while True:
        try:
            yield from _run_grid(predictor, image, out, tiles, current.batch_size, count)
        except _OutOfMemory as oom:
            _free_device_memory()
            core = tiles[0].inner[0].stop - tiles[0].inner[0].start
            core = max(core, tiles[0].inner[1].stop - tiles[0].inner[1].start)
            smaller = _smaller(current, core, stride)
            if smaller is None:
                raise UserError(
                    f"The device ran out of memory even with one {core} px tile per batch; "
                    "use a smaller network or the CPU.",
                    hint=Hint("device", "cpu"),
                ) from oom.__cause__
            logger.warning(
                "out of device memory with %d tile(s) of %d px per batch; "
                "retrying with %d tile(s) of %d px",
                current.batch_size,
                core,
                smaller.batch_size,
                smaller.tile_size if smaller.tile_size != current.tile_size else core,
            )
            if smaller.tile_size == current.tile_size:
                tiles = tiles[oom.tiles_done :]
            else:
                tiles = tile_grid((height, width), smaller.tile_size, halo, stride)
            current = smaller
            continue
        return out
