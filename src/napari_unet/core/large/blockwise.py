"""Blockwise prediction of images larger than memory, with instance labels stitched across blocks.

:func:`predict_blockwise` cuts each plane into square blocks (:mod:`~.blocks`) and runs them one
after the other here, or on a dask cluster when given a client (:mod:`~.distributed`):

1. the intensity bounds are taken once for the whole image, from the same evenly strided sample
   a whole-image pass uses, so every block is scaled alike;
2. each block is read with its context (only that part of the file is read), predicted by the
   run's inference engine (:class:`~.engine.InferenceEngine`, built once: one predictor for all
   the blocks), post-processed on its core plus a margin
   (:func:`~.postprocess.labels_from_probabilities`), and its core written with block-local ids
   to a scratch zarr array; probabilities, when asked for, go straight to their own zarr array;
3. the blocks are stitched (:mod:`~.stitch`): two neighbours both label the strip along their
   border, objects that coincide there (IoU > 0.5) are one object, and ids are made consecutive
   and unique across the whole image (and across the planes of a stack);
4. a second pass writes the final labels block by block into a zarr array (an OME-Zarr label
   image), or into a TIFF: plane by plane with an ImageJ header when ImageJ 1.x can open the
   result (under 4 GB), else tile by tile into a tiled BigTIFF.

Why it agrees with in-memory prediction: the context is at least the network's receptive field
and aligned to its stride, so a block's probabilities equal those of a whole-image pass to float
rounding; post-processing is local (each foreground component is handled on its own), so with a
margin larger than the objects a block labels every object it writes exactly as a whole-image
pass does, and its neighbour labels the same object identically in their common strip. Objects
larger than the margin (``overlap``) may be split or cut differently at a block border.

Memory is set by the block size, not by the image: one block's pixels, probabilities and labels
at a time (per worker), plus the border strips of blocks whose neighbours have not finished.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..inference.events import BlockDone
from ..io.lazy import LazyImage
from ..progress import Progress
from .block_jobs import (
    BLOCKWISE_PIXELS,
    DEFAULT_OVERLAP,
    BlockSettings,
    as_lazy_image,
    global_bounds,
    make_work_dir,
    plan_blocks,
    reader_for,
    remove_work_dir,
    run_block,
    run_block_job,
    work_array,
)
from .block_output import (
    check_fits,
    check_targets,
    class_axis,
    labels_dtype_for,
    probability_target,
    target_kind,
    write_labels,
)
from .blocks import Block
from .stitch import Stitcher

if TYPE_CHECKING:
    from ..config import TilingConfig
    from ..inference.engine import InferenceEngine
    from ..inference.postprocess import PostprocessConfig
    from ..network.weights import LoadedModel

__all__ = [
    "BLOCKWISE_PIXELS",
    "DEFAULT_OVERLAP",
    "BlockDone",
    "BlockwiseResult",
    "predict_blockwise",
]

logger = logging.getLogger(__name__)


@dataclass
class BlockwiseResult:
    """What :func:`predict_blockwise` made.

    Attributes:
        labels: the zarr array of the labels (``None`` when written to a TIFF file).
        path: the file or store written (``None`` for a zarr array given by the caller).
        axes: axes of the labels: the image's, without channels (e.g. ``"YX"``, ``"TZYX"``).
        n_objects: number of objects (instance labels), ``None`` for class ids.
        dtype: dtype of the labels (uint16/uint32 instance ids, uint8 class ids).
        n_blocks: blocks run (over all planes).
        block_size: core side of the blocks in pixels.
        merges: objects merged across block borders.
        pixel_size, z_spacing: the image's, in µm (or None).
    """

    labels: Any
    path: Path | None
    axes: str
    n_objects: int | None
    dtype: np.dtype
    n_blocks: int
    block_size: int
    merges: int
    pixel_size: tuple[float, float] | None
    z_spacing: float | None


def predict_blockwise(
    image: LazyImage | Any,
    model: LoadedModel | Any,
    output: str | os.PathLike[str] | Any = None,
    *,
    axes: str | None = None,
    block_size: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    tiling: TilingConfig | None = None,
    device: str = "auto",
    precision: str = "auto",
    postprocess: PostprocessConfig | None = None,
    probabilities: str | os.PathLike[str] | Any = None,
    client: Any = None,
    work_dir: str | os.PathLike[str] | None = None,
) -> Generator[Progress, None, BlockwiseResult]:
    """Labels (and optionally probabilities) of an image of any size, block by block.

    Args:
        image: a :class:`~.lazy.LazyImage` (:func:`~.lazy.open_lazy`), or an array (dask, zarr,
            numpy) with ``axes``.
        model: a :class:`~.weights.LoadedModel` or a bare :class:`~.model.UNet`.
        output: where the labels go: a ``.zarr`` path (an OME-Zarr label image, array ``"0"``),
            a ``.tif``/``.tiff`` path (an ImageJ TIFF, or a tiled BigTIFF with OME metadata
            beyond 4 GB), a zarr array of shape
            (*leading, Y, X) and an integer dtype wide enough (written in place, e.g. one
            backing a napari Labels layer), or ``None`` (a new zarr store in a temporary
            folder, returned in the result). Paths are written under a temporary name and
            renamed when complete; a failure or cancellation leaves nothing behind.
        axes: the image's axes when ``image`` is an array (letters of "TZCYXS").
        block_size: core side of a block in pixels (rounded up to the network's stride);
            ``None`` picks about 4096 pixels with the context, a whole number of tiles.
        overlap: margin in pixels around each block in which objects are labelled whole;
            objects larger than this may be split at block borders.
        tiling, device, precision: as for :func:`~.predict.predict_probabilities`; one
            :class:`~.engine.InferenceEngine` with them runs every block.
        postprocess: thresholds and minimum size; the defaults when ``None``.
        probabilities: optional ``.zarr`` path (an OME-Zarr image, array ``"0"``: (K, *leading,
            Y, X), or (T, K, ...) for a time-lapse, as OME-Zarr orders time before channels) or
            a zarr array (K, *leading, Y, X) for the float32 probabilities.
        client: a :class:`distributed.Client`: blocks run on its cluster (the workers must share
            the file system of the image, the outputs and ``work_dir``). ``None``: here.
        work_dir: folder for the scratch store of block-local ids (default: beside ``output``
            when it is a path, else the system's temporary folder).

    Yields:
        :class:`~.progress.Progress`: stage ``"normalize"`` (the intensity sample), ``"predict"``
        (per tile batch and per block; payload :class:`~.events.BlockDone` with ``final=False``
        after each block), ``"stitch"`` (per block written; payload :class:`~.events.BlockDone`
        with ``final=True``) or ``"write"`` (TIFF tiles).

    Returns:
        :class:`BlockwiseResult`.

    Raises:
        UserError: a bad output path, an image the model cannot use, a block size or overlap out
            of range, or a cluster that cannot run the blocks.
    """
    from ..inference.engine import InferenceEngine
    from ..inference.postprocess import PostprocessConfig

    lazy = as_lazy_image(image, axes)
    engine = InferenceEngine(model, tiling, device, precision)
    post = postprocess or PostprocessConfig()
    semantic = engine.task == "semantic" or post.mode == "semantic"
    arrangement, grid = plan_blocks(lazy, engine, block_size, overlap)
    shape = (*arrangement.leading_shape, grid.height, grid.width)
    kind, prob_kind = target_kind(output, "labels"), target_kind(probabilities, "probabilities")
    check_targets(output, kind, probabilities, prob_kind, shape, engine.out_classes)
    blocks = grid.blocks()
    logger.info(
        "blockwise: %d block(s) of %d px (overlap %d, context %d) over %d plane(s) of %dx%d",
        len(blocks), grid.block, grid.margin, grid.context, grid.n_planes, grid.height,
        grid.width,
    )  # fmt: skip
    yield Progress("normalize", 0, 1, "sampling the image's intensities")
    bounds = global_bounds(lazy, arrangement, engine.in_channels, engine.normalize)
    yield Progress("normalize", 1, 1, "intensities sampled")
    near = Path(output).expanduser() if kind in ("zarr", "tiff") else None
    scratch = make_work_dir(near, work_dir)
    try:
        with ExitStack() as stack:
            probs = probability_target(
                stack, probabilities, prob_kind, grid, arrangement, engine.out_classes, lazy,
                engine.source.class_names,
            )  # fmt: skip
            settings = BlockSettings(
                grid, arrangement, bounds, semantic, post, work_array(scratch, grid), probs,
                class_axis(prob_kind, arrangement),
            )  # fmt: skip
            reader = reader_for(lazy, arrangement, client is not None)
            stitcher = Stitcher()
            yield from _predict_blocks(blocks, engine, reader, settings, stitcher, client)
            tables, n_objects = (
                (None, None) if semantic else stitcher.lookup_tables(b.index for b in blocks)
            )
            dtype = labels_dtype_for(n_objects)
            if kind == "array" and n_objects is not None:
                check_fits(n_objects, output.dtype)
            labels, path = yield from write_labels(
                stack, output, kind, blocks, settings, tables, dtype, lazy, client
            )
    finally:
        remove_work_dir(scratch)
    if labels is None and kind in ("zarr", "none"):
        import zarr

        labels = zarr.open_array(str(path / "0"), mode="r")
    return BlockwiseResult(
        labels,
        path,
        arrangement.label_axes,
        n_objects,
        dtype,
        len(blocks),
        grid.block,
        stitcher.merges,
        lazy.pixel_size,
        lazy.z_spacing,
    )


# --------------------------------------------------------------------------------------------
# pass 1: predict and label the blocks


def _predict_blocks(
    blocks: list[Block],
    engine: InferenceEngine,
    reader: Any,
    settings: BlockSettings,
    stitcher: Any,
    client: Any,
) -> Generator[Progress, None, None]:
    n = len(blocks)
    if client is None:
        for k, block in enumerate(blocks):
            gen = run_block_job(block, engine, reader, settings)
            try:
                while True:
                    try:
                        event = next(gen)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    part = int(100 * event.fraction)
                    yield Progress(
                        "predict", k * 100 + part, n * 100, f"block {k + 1}/{n}, {event.message}"
                    )
            finally:
                gen.close()
            stitcher.add(result)
            yield _block_done(block, settings, k + 1, n)
        return
    from .distributed import run_on_cluster

    done = run_on_cluster(client, run_block, blocks, reader, settings, broadcast=[engine])
    try:
        for k, (block, result) in enumerate(done, start=1):
            stitcher.add(result)
            yield _block_done(block, settings, k, n)
    finally:
        done.close()


def _block_done(block: Block, settings: BlockSettings, k: int, n: int) -> Progress[BlockDone]:
    index = settings.arrangement.leading_index(block.plane)
    done = BlockDone(block.index, index, *block.core, final=False)
    return Progress("predict", k * 100, n * 100, f"block {k}/{n}", payload=done)
