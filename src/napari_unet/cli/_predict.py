"""``napari-unet predict``: segment images and write label TIFFs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from napari_unet.cli._blockwise import add_blockwise_options, route
from napari_unet.cli._common import PROG, add_command, add_model_option, logger
from napari_unet.cli._inference_options import (
    add_postprocess_options,
    add_tiling_options,
    inference_settings,
)
from napari_unet.cli._objects import add_objects_option, check_objects, write_objects
from napari_unet.cli._paths import (
    LABELS_SUFFIX,
    PROBABILITIES_SUFFIX,
    check_inputs,
    output_paths,
)
from napari_unet.cli._progress import ProgressReporter
from napari_unet.cli._rescale import add_rescale_options
from napari_unet.cli._stacks import (
    add_stack_options,
    number_ids,
    predict_image,
    warn_blockwise_stacks,
)

_DESCRIPTION = (
    "Segment images with a U-Net and write labels as TIFF (uint16, or uint32 beyond "
    "65535 objects), keeping each input's axes and pixel size."
)


def add_predict(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``predict`` sub-command to ``sub`` and return its parser."""
    p = add_command(sub, common, "predict", "segment images and write label TIFFs", _DESCRIPTION)
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files (TIFF, PNG, JPEG) or zarr / OME-Zarr stores",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help=(
            f"an existing folder (each INPUT NAME.tif gives NAME{LABELS_SUFFIX}) or, with one "
            "INPUT, a file name ending in .tif or .tiff"
        ),
    )
    add_model_option(
        p,
        "NAME|PATH",
        "a model name (see 'napari-unet models') or a .safetensors file (default: starter)",
    )
    add_tiling_options(p)
    p.add_argument(
        "--probabilities",
        metavar="PATH",
        help=(
            "also write float32 class probabilities (classes first): a folder "
            f"(NAME{PROBABILITIES_SUFFIX}) or, with one INPUT, a .tif file name"
        ),
    )
    add_postprocess_options(p)
    add_rescale_options(p)
    add_stack_options(p)
    add_objects_option(p)
    add_blockwise_options(p)
    return p


def cmd_predict(args: argparse.Namespace) -> int:
    """Run ``napari-unet predict``; returns the exit code."""
    special = route(args)  # blockwise (large images, zarr) or a batch on a dask cluster
    check_objects(args, blockwise=special is not None)
    if special is not None:
        if args.diameter is not None or args.pixel_size is not None:
            logger.warning("blockwise and cluster runs do not rescale: --diameter and "
                           "--pixel-size are ignored")  # fmt: skip
        warn_blockwise_stacks(args)
        return int(special(args))
    inputs = [Path(p).expanduser() for p in args.inputs]
    outputs = output_paths(inputs, Path(args.output).expanduser(), LABELS_SUFFIX, "-o")
    prob_outputs: list[Path | None] = [None] * len(inputs)
    if args.probabilities:
        prob_outputs = list(
            output_paths(
                inputs,
                Path(args.probabilities).expanduser(),
                PROBABILITIES_SUFFIX,
                "--probabilities",
            )
        )
    check_inputs(inputs, outputs + [p for p in prob_outputs if p is not None])

    from napari_unet.core.network.device import describe_device

    device, loaded, tiling, post = inference_settings(args)
    logger.info(
        "model %s (%s) on %s; tile %d px, overlap %s, batch %d",
        loaded.name,
        loaded.path,
        describe_device(device),
        tiling.tile_size,
        "exact" if tiling.exact else ("auto" if tiling.halo is None else f"{tiling.halo} px"),
        tiling.batch_size,
    )
    for index, (source, target, prob_target) in enumerate(
        zip(inputs, outputs, prob_outputs, strict=True), start=1
    ):
        label = source.name if len(inputs) == 1 else f"[{index}/{len(inputs)}] {source.name}"
        _predict_one(args, source, target, prob_target, loaded, tiling, device, post, label)
    return 0


def _predict_one(
    args: argparse.Namespace,
    source: Path,
    target: Path,
    prob_target: Path | None,
    loaded: Any,
    tiling: Any,
    device: Any,
    post: Any,
    label: str,
) -> None:
    """Read one image, predict, post-process and write its labels (and probabilities)."""
    from napari_unet.core.axes import Layout
    from napari_unet.core.io import reading, writing

    start = time.monotonic()
    image = reading.read_image(source)
    axes = Layout(image.axes, image.shape).label_axes
    reporter = ProgressReporter(sys.stderr, label, enabled=not args.quiet)
    try:
        probs, labels, pixel_size, z_spacing = predict_image(
            args, image, loaded, tiling, device, post, reporter
        )
    finally:
        reporter.close()
    if labels.ndim != len(axes):  # should not happen; keep the output readable anyway
        logger.warning("labels of shape %s do not fit axes %s", labels.shape, axes)
        axes = "".join("TZQ"[i] for i in range(labels.ndim - 2)) + "YX"
    labels = number_ids(args, labels, axes, loaded.task)
    written: list[Path] = []
    try:
        if prob_target is not None:
            writing.write_probabilities(prob_target, probs, "C" + axes, pixel_size, z_spacing)
            written.append(prob_target)
        writing.write_labels(target, labels, axes, pixel_size, z_spacing)
        write_objects(args, source, image, labels, probs, loaded.task)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    n_objects = int(labels.max()) if labels.size and loaded.task == "instances" else None
    found = ""
    if n_objects is not None:
        found = f", {n_objects} object{'' if n_objects == 1 else 's'}"
    if not args.quiet:
        sys.stderr.write(f"{PROG}: {label} -> {target}{found} ({time.monotonic() - start:.1f} s)\n")
