"""Where blockwise prediction writes (see :mod:`~.blockwise`): the outputs checked before any work,
the probabilities' store, and pass 2, the final labels written block by block into a zarr array
or tile by tile into a TIFF.
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
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputMismatchError, UserError
from ..inference.events import BlockDone
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
from .block_jobs import BlockSettings, relabel_region, write_final_block
from .blocks import Block, BlockGrid, chunk_side

logger = logging.getLogger(__name__)

_ZARR = (".zarr",)
_TIFF = (".tif", ".tiff")


# --------------------------------------------------------------------------------------------
# the outputs


def target_kind(target: Any, what: str) -> str:
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


def labels_dtype_for(n_objects: int | None) -> np.dtype:
    from ..labels import labels_dtype

    return np.dtype(np.uint8) if n_objects is None else labels_dtype(n_objects)


def check_fits(n_objects: int, dtype: Any) -> None:
    if n_objects > np.iinfo(np.dtype(dtype)).max:
        raise InputMismatchError(
            f"{n_objects} objects do not fit in the labels array's {np.dtype(dtype)}."
        )


def check_targets(
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


def class_axis(kind: str, arrangement: Any) -> int:
    """Where the classes go in a probability store we create: after T (OME-Zarr's order)."""
    return 1 if kind == "zarr" and arrangement.leading_axes.startswith("T") else 0


def probability_target(
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
    at = class_axis(kind, arrangement)
    leading, letters = list(arrangement.leading_shape), arrangement.leading_axes
    shape = (*leading[:at], n_classes, *leading[at:], grid.height, grid.width)
    axes = letters[:at] + "C" + letters[at:] + "YX"
    chunks = (1,) * (1 + len(leading)) + (side, side)
    tmp = stack.enter_context(atomic_dir(target))
    return create_probability_zarr(
        tmp, shape, chunks, axes, lazy.pixel_size, lazy.z_spacing, class_names
    )


# --------------------------------------------------------------------------------------------
# pass 2: the final labels


def write_labels(
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


def _stitched(block: Block, settings: BlockSettings, k: int, n: int) -> Progress[BlockDone]:
    index = settings.arrangement.leading_index(block.plane)
    done = BlockDone(block.index, index, *block.core, final=True)
    return Progress("stitch", k, n, f"wrote block {k}/{n}", payload=done)


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
