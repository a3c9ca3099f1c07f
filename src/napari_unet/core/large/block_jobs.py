"""The jobs of blockwise prediction (see :mod:`~.blockwise`): the whole-image intensity bounds,
one block predicted and labelled, one block's final labels written, and what they share.

The job functions take only picklable arguments (a :class:`~.blocks.Block`, the run's
:class:`~napari_unet.core.inference.engine.InferenceEngine`, a reader from :mod:`~.block_io` and
:class:`BlockSettings` holding zarr arrays on disk), so the same functions run in this process or
on a dask worker (which builds the engine's predictor once, when it receives the engine).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..axes import Layout
from ..errors import InputMismatchError, UserError
from ..io.lazy import LazyImage, lazy_from_array
from ..network.normalize import PERCENTILE_SAMPLE_LIMIT, as_planes, percentile_bounds
from ..progress import Progress
from .block_io import create_work_zarr, store_exists
from .block_read import ArrayReader, PathReader, compute_pixels
from .blocks import Block, BlockGrid, chunk_side, default_block_size, make_grid, relative
from .stitch import BlockLabels

if TYPE_CHECKING:
    from ..inference.engine import InferenceEngine

logger = logging.getLogger(__name__)

#: Default margin (pixels) around each block in which objects are labelled whole: objects up to
#: about this size are never split by a block border.
DEFAULT_OVERLAP = 64

#: Images with more pixels than this (all planes) go blockwise on the command line by default.
BLOCKWISE_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class BlockSettings:
    """Everything a block needs besides the engine, the reader and the block (picklable).

    Attributes:
        grid: the blocks.
        arrangement: how the image's axes make planes.
        bounds: the whole image's intensity bounds (C, 2), ``None`` without normalisation.
        semantic: class ids (no stitching) rather than instance ids.
        postprocess: the thresholds.
        work: the scratch zarr array of block-local ids (planes, Y, X).
        probabilities: the probabilities' zarr array, or ``None``.
        class_axis: position of the class axis in ``probabilities``.
    """

    grid: BlockGrid
    arrangement: Layout
    bounds: np.ndarray | None
    semantic: bool
    postprocess: Any
    work: Any
    probabilities: Any = None
    #: position of the class axis in ``probabilities`` (1 after a leading T axis: OME-Zarr
    #: orders time before channels)
    class_axis: int = 0


# --------------------------------------------------------------------------------------------
# the whole-image intensity bounds


def _sample_steps(shape: tuple[int, ...]) -> list[int]:
    """Steps along (planes, Y, X) of the evenly strided sample that
    :func:`~.normalize.percentile_bounds` takes of one channel of that shape."""
    steps = [1] * len(shape)

    def sampled() -> int:
        return math.prod(-(-n // s) for n, s in zip(shape, steps, strict=True))

    while sampled() > PERCENTILE_SAMPLE_LIMIT:
        longest = max(range(len(shape)), key=lambda i: -(-shape[i] // steps[i]))
        steps[longest] *= 2
    return steps


def global_bounds(
    image: LazyImage, arrangement: Layout, in_channels: int, normalize: Any
) -> np.ndarray | None:
    """Percentile bounds (C, 2) for the whole image, from a strided sample read block-free.

    The sample is the one a whole-image pass takes (:func:`~.normalize.percentile_bounds` on the
    image's planes), so both scale intensities identically.
    """
    if normalize.method == "none":
        return None
    n_planes = arrangement.n_planes
    height = image.data.shape[image.axes.index("Y")]
    width = image.data.shape[image.axes.index("X")]
    step_p, step_y, step_x = _sample_steps((n_planes, height, width))
    arranged = image.data.transpose(arrangement.order)
    rows, cols = slice(None, None, step_y), slice(None, None, step_x)
    parts = [
        arranged[(*arrangement.leading_index(p), Ellipsis, rows, cols)]
        for p in range(0, n_planes, step_p)
    ]
    import dask.array as da

    sample = compute_pixels(da.stack(parts), "to sample its intensities", "threads")
    planes, _, _ = as_planes(sample, "Q" + arrangement.plane_axes, in_channels)
    return percentile_bounds(planes, normalize.low, normalize.high, channel_axis=1)


# --------------------------------------------------------------------------------------------
# one block


def run_block_job(
    block: Block, engine: InferenceEngine, reader: Any, settings: BlockSettings
) -> Generator[Progress, None, BlockLabels]:
    """Predict and label one block; write its core to ``settings.work`` (block-local ids).

    The block is scaled with the whole image's bounds (``settings.bounds``).

    Yields:
        The tile events of the block's prediction.

    Returns:
        The block's :class:`~.stitch.BlockLabels` (ids in its core, labels of its face strips).
    """
    from ..inference.postprocess import labels_from_probabilities

    raw = reader.read(block.plane, block.read)
    gen = engine.predict_block(raw, settings.arrangement.plane_axes, settings.bounds)
    del raw
    probs = yield from gen
    index = settings.arrangement.leading_index(block.plane)
    if settings.probabilities is not None and store_exists(settings.probabilities):
        core = relative(block.core, block.read)
        at = settings.class_axis
        key = (*index[:at], slice(None), *index[at:], *block.core)
        settings.probabilities[key] = probs[(slice(None), *core)]
    in_labels = relative(block.labels, block.read)
    task = "semantic" if settings.semantic else "instances"
    labels = labels_from_probabilities(probs[(slice(None), *in_labels)], task, settings.postprocess)
    del probs
    core = labels[relative(block.core, block.labels)]
    if store_exists(settings.work):
        settings.work[(block.plane, *block.core)] = core
    if settings.semantic:
        return BlockLabels(block.index, 0, np.zeros(0, np.uint32))
    strips = {
        face: labels[relative(region, block.labels)].astype(np.uint32)
        for face, region in block.faces
    }
    ids = np.unique(core)
    return BlockLabels(
        block.index, int(labels.max(initial=0)), ids[ids > 0].astype(np.uint32), strips
    )


def run_block(
    block: Block, engine: InferenceEngine, reader: Any, settings: BlockSettings
) -> BlockLabels:
    """:func:`run_block_job` run to the end (what a dask worker runs)."""
    gen = run_block_job(block, engine, reader, settings)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def relabel_region(
    work: Any,
    plane: int,
    region: tuple[slice, slice],
    grid: BlockGrid,
    tables: dict[int, np.ndarray] | None,
    dtype: Any,
) -> np.ndarray:
    """Final labels of ``region`` of ``plane``: block-local ids mapped through their block's
    lookup table (``None``: class ids, copied). Returns ``dtype`` (h, w)."""
    local = np.asarray(work[(plane, *region)])
    if tables is None:
        return local.astype(dtype)
    out = np.zeros(local.shape, dtype=dtype)
    rows, cols = region
    b = grid.block
    per_plane = grid.rows * grid.cols
    for r in range(rows.start // b, -(-rows.stop // b)):
        for c in range(cols.start // b, -(-cols.stop // b)):
            y0, y1 = max(rows.start, r * b), min(rows.stop, (r + 1) * b)
            x0, x1 = max(cols.start, c * b), min(cols.stop, (c + 1) * b)
            part = (
                slice(y0 - rows.start, y1 - rows.start),
                slice(x0 - cols.start, x1 - cols.start),
            )
            table = tables[plane * per_plane + r * grid.cols + c]
            out[part] = table[local[part]]
    return out


def write_final_block(
    item: tuple[Block, np.ndarray | None], output: Any, settings: BlockSettings
) -> None:
    """Write a block's final labels (its core) into the zarr array ``output``.

    Args:
        item: the block and its lookup table local -> final id (``None``: class ids).
    """
    block, table = item
    index = settings.arrangement.leading_index(block.plane)
    tables = None if table is None else {block.index: table}
    values = relabel_region(
        settings.work, block.plane, block.core, settings.grid, tables, output.dtype
    )
    if store_exists(output):
        output[(*index, *block.core)] = values


# --------------------------------------------------------------------------------------------
# settings


def as_lazy_image(image: Any, axes: str | None) -> LazyImage:
    """``image`` as a :class:`~.lazy.LazyImage` (arrays need their ``axes``)."""
    if isinstance(image, LazyImage):
        return image
    if axes is None:
        raise UserError("The axes of the image must be given (e.g. 'YX', 'ZYX').")
    return lazy_from_array(image, axes)


def plan_blocks(
    image: LazyImage, engine: InferenceEngine, block_size: int | None, overlap: int
) -> tuple[Layout, BlockGrid]:
    """The arrangement of ``image`` into planes and the grid of blocks over them (each block's
    context is the engine's halo, its default size a whole number of the engine's tiles)."""
    if overlap < 0:
        raise UserError(f"The block overlap must be zero or positive, got {overlap}.")
    if block_size is not None and block_size < 1:
        raise UserError(f"The block size must be positive, got {block_size}.")
    arrangement = Layout(image.axes, image.data.shape)
    height = image.data.shape[image.axes.index("Y")]
    width = image.data.shape[image.axes.index("X")]
    if arrangement.n_planes == 0 or height == 0 or width == 0:
        raise InputMismatchError(f"The image has no pixels (shape {tuple(image.data.shape)}).")
    stride, halo = engine.config.stride, engine.halo
    _check_channels(image, arrangement, engine.in_channels)
    if block_size is None:
        block_size = default_block_size(
            engine.tiling.tile_size, overlap, halo, stride, (height, width)
        )
    grid = make_grid(arrangement.n_planes, height, width, block_size, overlap, halo, stride)
    return arrangement, grid


def _check_channels(image: LazyImage, arrangement: Layout, in_channels: int) -> None:
    """Raise before any work when the model cannot use the image's channels."""
    channel, n_channels = arrangement.channel, arrangement.n_channels
    dummy = np.zeros((n_channels, 1, 1) if channel else (1, 1), dtype=image.data.dtype)
    try:
        as_planes(dummy, arrangement.plane_axes, in_channels)
    except InputMismatchError:
        raise InputMismatchError(
            f"The image has {n_channels} channel{'s' if n_channels != 1 else ''} (axes "
            f"{image.axes!r}, shape {tuple(image.data.shape)}) but the model expects "
            f"{in_channels}."
        ) from None


def make_work_dir(near: Path | None, work_dir: str | os.PathLike[str] | None) -> Path:
    """A new scratch folder in ``work_dir``, else beside ``near`` (the output), else in the
    system's temporary folder; stale scratch folders of killed runs there are removed first."""
    from ..io.safe_paths import WORK_PREFIX, sweep_stale, temp_tag

    parent = Path(work_dir) if work_dir is not None else near.parent if near is not None else None
    folder = parent if parent is not None else Path(tempfile.gettempdir())
    sweep_stale(folder)
    return Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{temp_tag()}-", dir=folder))


def remove_work_dir(path: Path) -> None:
    """Remove a scratch folder made by :func:`make_work_dir`."""
    shutil.rmtree(path, ignore_errors=True)


def work_array(folder: Path, grid: BlockGrid) -> Any:
    """The scratch array of block-local ids, chunks aligned with the blocks."""
    side = chunk_side(grid.block)
    return create_work_zarr(
        folder / "local.zarr", (grid.n_planes, grid.height, grid.width), (1, side, side)
    )


def reader_for(image: LazyImage, arrangement: Layout, distributed: bool) -> Any:
    """How blocks are read: from the open image here, or by reopening its file on a worker."""
    if distributed and image.path is not None:
        return PathReader(str(image.path), arrangement)
    return ArrayReader(image.data, arrangement)
