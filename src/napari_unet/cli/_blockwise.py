"""``napari-unet predict`` for large images and clusters: blockwise prediction into zarr or
BigTIFF, and batches of files on a dask cluster.

``predict`` goes blockwise when an input is a zarr / OME-Zarr store, ``-o`` names a ``.zarr``
store, an image has more than :data:`~napari_unet.core.large.block_jobs.BLOCKWISE_PIXELS` pixels, or
``--blockwise``, ``--block-size`` or ``--bigtiff`` is given. Outputs: ``-o NAME.zarr`` (an
OME-Zarr label image), ``-o NAME.tif`` (a TIFF that ImageJ opens, or a tiled BigTIFF when the
labels pass 4 GB or a plane 512 MB), or a folder: ``NAME_labels.zarr`` for a
zarr input, ``NAME_labels.tif`` for a TIFF input (or any input with ``--bigtiff``).
``--probabilities`` then takes a ``.zarr`` name or a folder (``NAME_probabilities.zarr``).

With ``--scheduler ADDRESS`` (or dask's ``scheduler-address`` setting), the blocks run on that
dask cluster; images that are not blockwise run one file per task there instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from napari_unet.cli._common import PROG, logger, non_negative_int, positive_int

_ZARR = ".zarr"
_TIFF = (".tif", ".tiff")


def add_blockwise_options(p: argparse.ArgumentParser) -> None:
    """The large-image and cluster options of ``predict``."""
    group = p.add_argument_group("large images and clusters")
    group.add_argument(
        "--blockwise",
        action="store_true",
        help=(
            "predict block by block, never holding the image or its probabilities (automatic "
            "for zarr inputs, a .zarr output and images over 64 megapixels)"
        ),
    )
    group.add_argument(
        "--block-size",
        type=positive_int,
        metavar="PX",
        help="side of a block in pixels (default: about 4096 with its context)",
    )
    group.add_argument(
        "--block-overlap",
        type=non_negative_int,
        metavar="PX",
        help=(
            "margin around each block in which objects are labelled whole; larger objects "
            "may be split at block borders (default 64)"
        ),
    )
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help=(
            "run on the dask cluster whose scheduler is at ADDRESS (e.g. tcp://host:8786); "
            "default: dask's scheduler-address setting, else everything runs here"
        ),
    )
    group.add_argument(
        "--bigtiff",
        action="store_true",
        help=(
            "write blockwise labels as TIFF instead of zarr (a TIFF ImageJ "
            "opens; a tiled BigTIFF beyond 4 GB, which ImageJ 1.x cannot "
            "open)"
        ),
    )


def _is_zarr_name(text: str) -> bool:
    return text.lower().rstrip("/").endswith(_ZARR)


def _large(path: Path) -> bool:
    """Whether the TIFF at ``path`` has too many pixels for in-memory prediction (its header
    only is read)."""
    import tifffile

    from napari_unet.core.axes import CHANNEL_AXES
    from napari_unet.core.io.reading import open_tiff
    from napari_unet.core.large.block_jobs import BLOCKWISE_PIXELS

    if not path.is_file() or path.suffix.lower() not in _TIFF:
        return False
    try:
        with open_tiff(path) as tif:
            series = tif.series[0]
            shape, axes = series.shape, series.axes.upper()
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError, TypeError):
        return False  # the in-memory path reports the problem
    pixels = 1
    for size, letter in zip(shape, axes, strict=True):
        pixels *= 1 if letter in CHANNEL_AXES else int(size)
    return pixels > BLOCKWISE_PIXELS


def route(args: argparse.Namespace) -> Any:
    """The command that runs ``predict`` for these arguments: blockwise, a batch on a cluster,
    or ``None`` for the in-memory path."""
    from napari_unet.core.io.lazy import is_zarr_path

    inputs = [Path(p).expanduser() for p in args.inputs]
    if (
        args.blockwise
        or args.bigtiff
        or args.block_size is not None
        or args.block_overlap is not None
        or _is_zarr_name(args.output)
        or any(is_zarr_path(p) for p in inputs)
        or any(_large(p) for p in inputs)
    ):
        return cmd_predict_blockwise
    from napari_unet.core.large.distributed import configured_address

    if args.scheduler or configured_address():
        return cmd_predict_cluster
    return None


# --------------------------------------------------------------------------------------------
# paths


def _stem(path: Path) -> str:
    from napari_unet.cli._paths import image_stem

    name = path.name.rstrip("/")
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return image_stem(path)


def _targets(
    inputs: list[Path],
    target: Path,
    bigtiff: bool,
    suffix: str,
    option: str,
    tiff_allowed: bool = True,
) -> list[Path]:
    """Where each input's blockwise result goes (a .zarr store or a .tif file)."""
    from napari_unet.core.errors import UserError
    from napari_unet.core.io.lazy import is_zarr_path

    name = str(target).lower().rstrip("/")
    if bigtiff and name.endswith(_ZARR):
        raise UserError(f"--bigtiff writes a TIFF, but {option} {target} names a zarr store")
    if name.endswith(_ZARR) or (tiff_allowed and name.endswith(_TIFF)):
        if len(inputs) > 1:
            raise UserError(
                f"{option} {target} names one output but {len(inputs)} inputs were "
                "given; give an existing folder"
            )
        if name.endswith(_TIFF) and not target.parent.is_dir():
            raise UserError(f"the output folder {target.parent} does not exist ({option} {target})")
        return [target]
    if not target.is_dir():
        kinds = ".zarr or .tif" if tiff_allowed else ".zarr"
        raise UserError(f"{option} {target}: give an existing folder or a name ending in {kinds}")
    paths = []
    for source in inputs:
        tiff = tiff_allowed and (bigtiff or not is_zarr_path(source))
        paths.append(target / f"{_stem(source)}{suffix}{'.tif' if tiff else _ZARR}")
    if len(set(paths)) != len(paths):
        raise UserError(f"two inputs would write the same output in {target}; run them separately")
    return paths


def _check_inputs(inputs: list[Path], outputs: list[Path], probs: list[Path]) -> None:
    """Inputs that can be read, outputs apart from them, and no zarr output that would replace
    anything but a store napari-unet wrote."""
    from napari_unet.cli._paths import check_not_an_input
    from napari_unet.core.errors import ImageReadError
    from napari_unet.core.io.lazy import is_zarr_path
    from napari_unet.core.io.safe_paths import check_replaceable, require_regular_file

    for path in inputs:
        if not path.exists():
            raise ImageReadError(f"Cannot read image '{path}': the file does not exist.")
        require_regular_file(path)
        if path.is_dir() and not is_zarr_path(path):
            raise ImageReadError(
                f"Cannot read image '{path}': it is a folder, not a TIFF file or a zarr store."
            )
    check_not_an_input(inputs, outputs + probs)
    for option, paths in (("-o", outputs), ("--probabilities", probs)):
        for path in paths:
            if _is_zarr_name(str(path)):
                check_replaceable(path, option)


# --------------------------------------------------------------------------------------------
# commands


def cmd_predict_blockwise(args: argparse.Namespace) -> int:
    """``predict`` block by block; returns the exit code."""
    from napari_unet.core.large.distributed import connect

    inputs = [Path(p).expanduser() for p in args.inputs]
    outputs = _targets(inputs, Path(args.output).expanduser(), args.bigtiff, "_labels", "-o")
    probs: list[Path | None] = [None] * len(inputs)
    if args.probabilities:
        probs = list(
            _targets(
                inputs,
                Path(args.probabilities).expanduser(),
                False,
                "_probabilities",
                "--probabilities",
                tiff_allowed=False,
            )
        )
    _check_inputs(inputs, outputs, [p for p in probs if p is not None])
    from napari_unet.cli._inference_options import inference_settings

    device, loaded, tiling, post = inference_settings(args)
    client = connect(args.scheduler)
    try:
        for index, (source, target, prob) in enumerate(
            zip(inputs, outputs, probs, strict=True), start=1
        ):
            label = source.name if len(inputs) == 1 else f"[{index}/{len(inputs)}] {source.name}"
            _blockwise_one(args, source, target, prob, loaded, tiling, device, post, client, label)
    finally:
        if client is not None:
            client.close()
    return 0


def _blockwise_one(
    args: argparse.Namespace,
    source: Path,
    target: Path,
    prob: Path | None,
    loaded: Any,
    tiling: Any,
    device: Any,
    post: Any,
    client: Any,
    label: str,
) -> None:
    from napari_unet.cli._progress import ProgressReporter
    from napari_unet.core.io.lazy import open_lazy
    from napari_unet.core.large.blockwise import DEFAULT_OVERLAP, predict_blockwise
    from napari_unet.core.progress import drain

    start = time.monotonic()
    image = open_lazy(source)
    overlap = DEFAULT_OVERLAP if args.block_overlap is None else args.block_overlap
    reporter = ProgressReporter(sys.stderr, label, enabled=not args.quiet)
    try:
        result = drain(
            predict_blockwise(
                image,
                loaded,
                target,
                block_size=args.block_size,
                overlap=overlap,
                tiling=tiling,
                device=str(device),
                precision=args.precision,
                postprocess=post,
                probabilities=prob,
                client=client,
            ),
            reporter,
        )
    finally:
        reporter.close()
    found = ""
    if result.n_objects is not None:
        found = f", {result.n_objects} object{'' if result.n_objects == 1 else 's'}"
    logger.info(
        "%d blocks of %d px, %d objects merged across borders",
        result.n_blocks,
        result.block_size,
        result.merges,
    )
    if not args.quiet:
        sys.stderr.write(f"{PROG}: {label} -> {target}{found} ({time.monotonic() - start:.1f} s)\n")


def cmd_predict_cluster(args: argparse.Namespace) -> int:
    """``predict`` with one task per file on a dask cluster; returns the exit code."""
    from napari_unet.cli._paths import (
        LABELS_SUFFIX,
        PROBABILITIES_SUFFIX,
        check_inputs,
        output_paths,
    )
    from napari_unet.core.large.distributed import FileJob, connect, predict_files

    inputs = [Path(p).expanduser() for p in args.inputs]
    outputs = output_paths(inputs, Path(args.output).expanduser(), LABELS_SUFFIX, "-o")
    probs: list[Path | None] = [None] * len(inputs)
    if args.probabilities:
        probs = list(
            output_paths(
                inputs,
                Path(args.probabilities).expanduser(),
                PROBABILITIES_SUFFIX,
                "--probabilities",
            )
        )
    check_inputs(inputs, outputs + [p for p in probs if p is not None])
    from napari_unet.cli._inference_options import inference_settings

    device, loaded, tiling, post = inference_settings(args)
    jobs = [
        FileJob(s.resolve(), t.resolve(), p.resolve() if p else None)
        for s, t, p in zip(inputs, outputs, probs, strict=True)
    ]
    client = connect(args.scheduler)
    start = time.monotonic()
    try:
        for k, (job, n_objects) in enumerate(
            predict_files(client, jobs, loaded, tiling, args.device, args.precision, post),
            start=1,
        ):
            found = "" if n_objects is None else f", {n_objects} objects"
            if not args.quiet:
                sys.stderr.write(
                    f"{PROG}: [{k}/{len(jobs)}] {job.source.name} -> "
                    f"{job.target}{found} ({time.monotonic() - start:.1f} s)\n"
                )
    finally:
        client.close()
    logger.info("%d files on the cluster, model on %s", len(jobs), device)
    return 0
