"""Blockwise prediction of images larger than memory, with instance labels stitched across blocks.

:func:`predict_blockwise` cuts each plane into square blocks (:mod:`~.blocks`) and runs them one
after the other here, or on a dask cluster when given a client (:mod:`~.distributed`):

1. the intensity bounds are taken once for the whole image, from the same evenly strided sample
   a whole-image pass uses, so every block is scaled alike;
2. each block is read with its context (only that part of the file is read), predicted with the
   overlap-tile engine (:func:`~.predict.predict_probabilities`), post-processed on its core plus
   a margin (:func:`~.postprocess.labels_from_probabilities`), and its core written with
   block-local ids to a scratch zarr array; probabilities, when asked for, go straight to their
   own zarr array;
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
import shutil
import tempfile
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputMismatchError, UserError
from ..io.lazy import LazyImage
from ..io.storage import atomic_path, check_output_path
from ..progress import Cancelled, Progress
from .block_io import (
    add_pyramid,
    atomic_dir,
    check_store_path,
    create_label_zarr,
    create_probability_zarr,
    imagej_pages_fit,
    write_imagej_tiff,
    write_tiled_tiff,
)
from .block_jobs import (
    BLOCKWISE_PIXELS,
    DEFAULT_OVERLAP,
    BlockRegion,
    BlockSettings,
    as_lazy_image,
    global_bounds,
    inference_model,
    make_work_dir,
    plan_blocks,
    reader_for,
    relabel_region,
    remove_work_dir,
    resolve_tiling,
    run_block,
    run_block_job,
    work_array,
    write_final_block,
)
from .blocks import Block, BlockGrid, chunk_side
from .stitch import Stitcher

if TYPE_CHECKING:
    from ..config import TilingConfig
    from ..inference.postprocess import PostprocessConfig
    from ..network.weights import LoadedModel

__all__ = [
    "BLOCKWISE_PIXELS",
    "DEFAULT_OVERLAP",
    "BlockRegion",
    "BlockwiseResult",
    "predict_blockwise",
]

logger = logging.getLogger(__name__)

_ZARR = (".zarr",)
_TIFF = (".tif", ".tiff")


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


def _kind(target: Any, what: str) -> str:
    if target is None:
        return "none"
    if isinstance(target, str | os.PathLike):
        name = str(target).lower().rstrip("/")
        if name.endswith(_ZARR):
            return "zarr"
        if name.endswith(_TIFF) and what == "labels":
            return "tiff"
        allowed = ".zarr, .tif or .tiff" if what == "labels" else ".zarr"
        raise UserError(f"Cannot write {what} to '{target}': the name must end in {allowed}.")
    if hasattr(target, "shape") and hasattr(target, "dtype") and hasattr(target, "__setitem__"):
        return "array"
    raise UserError(f"Cannot write {what} to a {type(target).__name__}.")


def _check_array(array: Any, shape: tuple[int, ...], what: str) -> None:
    if tuple(array.shape) != shape:
        raise InputMismatchError(
            f"The {what} array has shape {tuple(array.shape)}, the image needs {shape}."
        )


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
        tiling, device, precision: as for :func:`~.predict.predict_probabilities`.
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
        (per tile batch and per block; payload :class:`BlockRegion` with ``final=False`` after
        each block), ``"stitch"`` (per block written; payload :class:`BlockRegion` with
        ``final=True``) or ``"write"`` (TIFF tiles).

    Returns:
        :class:`BlockwiseResult`.

    Raises:
        UserError: a bad output path, an image the model cannot use, a block size or overlap out
            of range, or a cluster that cannot run the blocks.
    """
    from ..config import NormalizeConfig
    from ..inference.postprocess import PostprocessConfig

    lazy = as_lazy_image(image, axes)
    normalize = getattr(model, "normalize", None) or NormalizeConfig()
    net = inference_model(model)
    post = postprocess or PostprocessConfig()
    semantic = net.task == "semantic" or post.mode == "semantic"
    tiling = resolve_tiling(tiling, net, str(device))
    arrangement, grid = plan_blocks(lazy, net, tiling, block_size, overlap)
    shape = (*arrangement.leading_shape, grid.height, grid.width)
    kind, prob_kind = _kind(output, "labels"), _kind(probabilities, "probabilities")
    _check_targets(output, kind, probabilities, prob_kind, shape, net.config.out_classes)
    blocks = grid.blocks()
    logger.info(
        "blockwise: %d block(s) of %d px (overlap %d, context %d) over %d plane(s) of %dx%d",
        len(blocks), grid.block, grid.margin, grid.context, grid.n_planes, grid.height,
        grid.width,
    )  # fmt: skip
    yield Progress("normalize", 0, 1, "sampling the image's intensities")
    bounds = global_bounds(lazy, arrangement, net.config.in_channels, normalize)
    yield Progress("normalize", 1, 1, "intensities sampled")
    near = Path(output).expanduser() if kind in ("zarr", "tiff") else None
    scratch = make_work_dir(near, work_dir)
    try:
        with ExitStack() as stack:
            probs = _probability_target(
                stack,
                probabilities,
                prob_kind,
                grid,
                arrangement,
                net.config.out_classes,
                lazy,
                getattr(model, "class_names", None),
            )
            settings = BlockSettings(
                grid,
                arrangement,
                bounds,
                net.config.in_channels,
                semantic,
                tiling,
                str(device),
                precision,
                post,
                work_array(scratch, grid),
                probs,
                _class_axis(prob_kind, arrangement),
            )
            reader = reader_for(lazy, arrangement, client is not None)
            stitcher = Stitcher()
            yield from _predict_blocks(blocks, net, reader, settings, stitcher, client)
            tables, n_objects = (
                (None, None) if semantic else stitcher.lookup_tables(b.index for b in blocks)
            )
            dtype = _labels_dtype(n_objects)
            if kind == "array" and n_objects is not None:
                _check_fits(n_objects, output.dtype)
            labels, path = yield from _write_labels(
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


def _labels_dtype(n_objects: int | None) -> np.dtype:
    from ..labels import labels_dtype

    return np.dtype(np.uint8) if n_objects is None else labels_dtype(n_objects)


def _check_fits(n_objects: int, dtype: Any) -> None:
    if n_objects > np.iinfo(np.dtype(dtype)).max:
        raise InputMismatchError(
            f"{n_objects} objects do not fit in the labels array's {np.dtype(dtype)}."
        )


def _check_targets(
    output: Any,
    kind: str,
    probabilities: Any,
    prob_kind: str,
    shape: tuple[int, ...],
    n_classes: int,
) -> None:
    """Check every output before any work starts."""
    if kind == "zarr":
        check_store_path(output)
    elif kind == "tiff":
        check_output_path(output)
    elif kind == "array":
        _check_array(output, shape, "labels")
        if np.dtype(output.dtype).kind not in "iu":
            raise InputMismatchError(
                f"The labels array must be of an integer dtype, not {output.dtype}."
            )
    if prob_kind == "zarr":
        check_store_path(probabilities)
    elif prob_kind == "array":
        _check_array(probabilities, (n_classes, *shape), "probabilities")
    if kind in ("zarr", "tiff") and prob_kind == "zarr":
        if Path(output).expanduser().resolve() == Path(probabilities).expanduser().resolve():
            raise UserError("The labels and the probabilities cannot go to the same path.")


def _class_axis(kind: str, arrangement: Any) -> int:
    """Where the classes go in a probability store we create: after T (OME-Zarr's order)."""
    return 1 if kind == "zarr" and arrangement.leading_axes.startswith("T") else 0


def _probability_target(
    stack: ExitStack,
    target: Any,
    kind: str,
    grid: BlockGrid,
    arrangement: Any,
    n_classes: int,
    lazy: LazyImage,
    class_names: list[str] | None,
) -> Any:
    if kind == "none":
        return None
    if kind == "array":
        return target
    side = chunk_side(grid.block)
    at = _class_axis(kind, arrangement)
    leading, letters = list(arrangement.leading_shape), arrangement.leading_axes
    shape = (*leading[:at], n_classes, *leading[at:], grid.height, grid.width)
    axes = letters[:at] + "C" + letters[at:] + "YX"
    chunks = (1,) * (1 + len(leading)) + (side, side)
    tmp = stack.enter_context(atomic_dir(target))
    return create_probability_zarr(
        tmp, shape, chunks, axes, lazy.pixel_size, lazy.z_spacing, class_names
    )


# --------------------------------------------------------------------------------------------
# pass 1: predict and label the blocks


def _predict_blocks(
    blocks: list[Block],
    model: LoadedModel,
    reader: Any,
    settings: BlockSettings,
    stitcher: Any,
    client: Any,
) -> Generator[Progress, None, None]:
    n = len(blocks)
    if client is None:
        for k, block in enumerate(blocks):
            gen = run_block_job(block, model, reader, settings)
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

    done = run_on_cluster(client, run_block, blocks, reader, settings, broadcast=[model])
    try:
        for k, (block, result) in enumerate(done, start=1):
            stitcher.add(result)
            yield _block_done(block, settings, k, n)
    finally:
        done.close()


def _block_done(block: Block, settings: BlockSettings, k: int, n: int) -> Progress:
    region = BlockRegion(settings.arrangement.leading_index(block.plane), *block.core, final=False)
    return Progress("predict", k * 100, n * 100, f"block {k}/{n}", payload=region)


# --------------------------------------------------------------------------------------------
# pass 2: the final labels


def _write_labels(
    stack: ExitStack,
    output: Any,
    kind: str,
    blocks: list[Block],
    settings: BlockSettings,
    tables: dict[int, np.ndarray] | None,
    dtype: np.dtype,
    lazy: LazyImage,
    client: Any,
) -> Generator[Progress, None, tuple[Any, Path | None]]:
    grid, arrangement = settings.grid, settings.arrangement
    if kind == "tiff":
        path = Path(output).expanduser()
        with atomic_path(path) as tmp:
            yield from _write_tiff(tmp, settings, tables, dtype, lazy)
        return None, path
    if kind == "array":
        yield from _write_blocks(output, blocks, settings, tables, client)
        return output, None
    side = chunk_side(grid.block)
    shape = (*arrangement.leading_shape, grid.height, grid.width)
    chunks = (1,) * len(arrangement.leading_shape) + (side, side)
    if kind == "none":
        path = Path(tempfile.mkdtemp(prefix="napari-unet-labels-")) / "labels.zarr"
        target = path
    else:
        path = Path(output).expanduser()
        target = stack.enter_context(atomic_dir(path))
    try:
        array = create_label_zarr(
            target, shape, dtype, chunks, arrangement.label_axes, lazy.pixel_size, lazy.z_spacing
        )
        yield from _write_blocks(array, blocks, settings, tables, client)
        if kind == "zarr":
            levels = add_pyramid(target)
            if levels:
                yield Progress("write", 1, 1, f"{levels} lower-resolution level(s) written")
    except BaseException:
        if kind == "none":
            shutil.rmtree(path.parent, ignore_errors=True)
        raise
    return None, path


def _write_blocks(
    output: Any,
    blocks: list[Block],
    settings: BlockSettings,
    tables: dict[int, np.ndarray] | None,
    client: Any,
) -> Generator[Progress, None, None]:
    items = [(b, None if tables is None else tables[b.index]) for b in blocks]
    n = len(items)
    if client is None:
        for k, item in enumerate(items, start=1):
            write_final_block(item, output, settings)
            yield _stitched(item[0], settings, k, n)
        return
    from .distributed import run_on_cluster

    done = run_on_cluster(client, write_final_block, items, output, settings)
    try:
        for k, (item, _) in enumerate(done, start=1):
            yield _stitched(item[0], settings, k, n)
    finally:
        done.close()


def _stitched(block: Block, settings: BlockSettings, k: int, n: int) -> Progress:
    region = BlockRegion(settings.arrangement.leading_index(block.plane), *block.core, final=True)
    return Progress("stitch", k, n, f"wrote block {k}/{n}", payload=region)


def _tiff_tiles(
    settings: BlockSettings,
    tables: dict[int, np.ndarray] | None,
    dtype: np.dtype,
    tile: int,
    counter: list[int],
    stop: threading.Event,
) -> Iterator[np.ndarray]:
    grid = settings.grid
    for plane in range(grid.n_planes):
        for y in range(0, grid.height, tile):
            for x in range(0, grid.width, tile):
                if stop.is_set():
                    raise Cancelled("TIFF writing cancelled")
                region = (slice(y, min(y + tile, grid.height)), slice(x, min(x + tile, grid.width)))
                yield relabel_region(settings.work, plane, region, grid, tables, dtype)
                counter[0] += 1


def _tiff_planes(
    settings: BlockSettings,
    tables: dict[int, np.ndarray] | None,
    dtype: np.dtype,
    rows: int,
    counter: list[int],
    stop: threading.Event,
) -> Iterator[np.ndarray]:
    """Whole planes of final labels, each assembled from strips of ``rows`` rows."""
    grid = settings.grid
    for plane in range(grid.n_planes):
        out = np.empty((grid.height, grid.width), dtype)
        for y in range(0, grid.height, rows):
            if stop.is_set():
                raise Cancelled("TIFF writing cancelled")
            region = (slice(y, min(y + rows, grid.height)), slice(0, grid.width))
            out[region] = relabel_region(settings.work, plane, region, grid, tables, dtype)
            counter[0] += 1
        yield out


def _write_tiff(
    path: Path,
    settings: BlockSettings,
    tables: dict[int, np.ndarray] | None,
    dtype: np.dtype,
    lazy: LazyImage,
) -> Generator[Progress, None, None]:
    """Write the final labels in a helper thread (tifffile pulls the planes or tiles),
    reporting progress meanwhile; closing the generator stops the writing.

    Labels that fit (:func:`~.block_io.imagej_pages_fit`) become a classic TIFF that ImageJ 1.x
    opens; larger ones a tiled BigTIFF, with a warning that ImageJ 1.x cannot open it."""
    grid, arrangement = settings.grid, settings.arrangement
    side = chunk_side(grid.block)
    tile = side if side % 16 == 0 else 256
    counter, stop = [0], threading.Event()
    shape = (*arrangement.leading_shape, grid.height, grid.width)
    axes = arrangement.label_axes
    if imagej_pages_fit(shape, dtype, axes):
        total = grid.n_planes * -(-grid.height // tile)
        planes = _tiff_planes(settings, tables, dtype, tile, counter, stop)
        job: tuple[Any, ...] = (write_imagej_tiff, path, planes, shape, dtype, axes)
    else:
        logger.warning(
            "%s: the labels (%d planes of %dx%d, %s) are written as a tiled BigTIFF, which "
            "ImageJ 1.x cannot open (Fiji opens it with Bio-Formats; or write -o NAME.zarr)",
            path.name.split(".tmp")[0].lstrip("."), grid.n_planes, grid.width, grid.height,
            np.dtype(dtype))  # fmt: skip
        total = grid.n_planes * -(-grid.height // tile) * -(-grid.width // tile)
        tiles = _tiff_tiles(settings, tables, dtype, tile, counter, stop)
        job = (write_tiled_tiff, path, tiles, shape, dtype, tile, axes)
    with ThreadPoolExecutor(1, thread_name_prefix="napari-unet-tiff") as pool:
        future = pool.submit(*job, pixel_size=lazy.pixel_size, z_spacing=lazy.z_spacing)
        try:
            while True:
                try:
                    future.result(timeout=0.2)
                    break
                except FutureTimeout:
                    yield Progress("write", counter[0], total, f"tile {counter[0]}/{total}")
        finally:
            stop.set()
            wait([future])
    yield Progress("write", total, total, f"tile {total}/{total}")
