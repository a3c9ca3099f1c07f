"""``napari-unet predict --objects TABLE.csv``: the per-object table of each input."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_unet.cli._paths import image_stem

OBJECTS_SUFFIX = "_objects.csv"


def add_objects_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--objects`` to the ``predict`` parser."""
    parser.add_argument(
        "--objects",
        metavar="TABLE",
        help=(
            "also write one row per object (label, area, centroid, bbox, intensity_mean, "
            "quality: the estimated chance that the object is right, and physical units when "
            f"the pixel size is known) as CSV: a folder (NAME{OBJECTS_SUFFIX}) or, with one "
            "INPUT, a .csv file name"
        ),
    )


def objects_path(option: str, source: Path, n_inputs: int) -> Path:
    """Where the table of ``source`` goes for ``--objects option``.

    Raises:
        UserError: a .csv name for several inputs, or a folder that does not exist.
    """
    from napari_unet.core.errors import UserError

    target = Path(option).expanduser()
    if target.suffix.lower() == ".csv" and not target.is_dir():
        if n_inputs > 1:
            raise UserError(
                f"--objects {target} is a file name but {n_inputs} inputs were "
                "given; give an existing folder"
            )
        if not target.parent.is_dir():
            raise UserError(
                f"the output folder {target.parent} does not exist (--objects {target})"
            )
        return target
    if not target.is_dir():
        raise UserError(
            f"--objects {target}: give an existing folder or a file name ending in .csv"
        )
    return target / f"{image_stem(source)}{OBJECTS_SUFFIX}"


def check_objects(args: argparse.Namespace, blockwise: bool) -> None:
    """Check ``--objects`` before any work starts.

    Raises:
        UserError: the path is not usable, or the run is blockwise (no table there yet).
    """
    from napari_unet.core.errors import UserError

    if not getattr(args, "objects", None):
        return
    if blockwise:
        raise UserError(
            "--objects is not available for blockwise runs (large images, zarr); "
            "run on images that fit in memory"
        )
    for source in args.inputs:
        objects_path(args.objects, Path(source), len(args.inputs))


def write_objects(
    args: argparse.Namespace, source: Path, image: Any, labels: Any, probs: Any, task: str
) -> Path | None:
    """Write the table of one predicted image when ``--objects`` was given; returns its path.

    Raises:
        UserError: the model is not an instance model.
    """
    if not getattr(args, "objects", None):
        return None
    from napari_unet.core.analysis.object_table import objects_table, write_csv
    from napari_unet.core.axes import Layout
    from napari_unet.core.errors import UserError

    if task != "instances":
        raise UserError("--objects needs an instance model (this model gives semantic classes)")
    axes = Layout(image.axes, image.shape).label_axes
    intensity = image.data
    if labels.ndim != len(axes):
        axes = "".join("TZQ"[i] for i in range(labels.ndim - 2)) + "YX"
        intensity = None
    table = objects_table(
        labels, axes, intensity, image.axes.upper(), probs, image.pixel_size, image.z_spacing
    )
    return write_csv(objects_path(args.objects, source, len(args.inputs)), table)
