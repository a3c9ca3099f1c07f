"""Stack options of ``napari-unet predict``: ``--stack``, ``--voxel-size`` and ``--ids``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

STACK_CHOICES = ("auto", "planes", "link", "ortho", "native")


def voxel_size_type(text: str) -> tuple[float, float, float]:
    """``Z,Y,X`` in µm (an argparse type)."""
    from napari_unet.core.errors import UserError
    from napari_unet.core.io.voxels import parse_voxel_size

    try:
        return parse_voxel_size(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_stack_options(p: argparse.ArgumentParser) -> None:
    """Add ``--stack``, ``--voxel-size`` and ``--ids`` to the ``predict`` parser."""
    from napari_unet.core.labels import ID_SCOPES

    p.add_argument(
        "--stack",
        choices=STACK_CHOICES,
        default="auto",
        help=(
            "how a Z-stack is labelled by a 2D model: ortho (3D ids from XY, XZ and YZ planes "
            "fused, then a 3D watershed), link (per-plane labels linked across Z by overlap: "
            "about 3x cheaper), planes (each plane on its own). auto (default): ortho for a Z "
            "axis, planes for time series of 2D frames. The mode follows the model: a 3D model "
            "file (trained with 'train --dims 3') always predicts natively (native: 3D tiles, "
            "then the 3D watershed)"
        ),
    )
    p.add_argument(
        "--voxel-size",
        type=voxel_size_type,
        metavar="Z,Y,X",
        help=(
            "voxel size in µm, e.g. 1.0,0.5,0.5 (default: from the file's ImageJ or OME "
            "metadata; without a Z step isotropic voxels are assumed, with a note)"
        ),
    )
    p.add_argument(
        "--ids",
        choices=ID_SCOPES,
        default=ID_SCOPES[0],
        help=(
            "instance ids of a time-lapse (a T axis): per-frame (default) numbers the objects "
            "of each time point 1..N afresh, so that a time-lapse stays uint16 and ImageJ opens "
            "it as a hyperstack; stack makes ids unique across all time points (uint32 beyond "
            "65535 objects). A Z-stack's ids follow --stack either way"
        ),
    )


def number_ids(args: argparse.Namespace, labels: Any, axes: str, task: str) -> Any:
    """``labels`` (one axis per letter of ``axes``) with the time-lapse id numbering of
    ``--ids``: renumbered per time point by default; as they are for semantic labels, images
    without T and ``--ids stack``."""
    if task != "instances" or "T" not in axes or getattr(args, "ids", "per-frame") == "stack":
        return labels
    from napari_unet.core.labels import ids_per_time_point

    return ids_per_time_point(labels, axes)


def stack_mode(args: argparse.Namespace, axes: str, spatial_dims: int = 2) -> str:
    """The mode for an image with ``axes``: native for a 3D model; else ``--stack``, or ortho
    with a Z axis, else planes."""
    from napari_unet.core.errors import UserError
    from napari_unet.core.inference.stack3d import default_mode

    mode = getattr(args, "stack", "auto") or "auto"
    if spatial_dims == 3:
        if "Z" not in axes:
            raise UserError(f"a 3D model predicts Z-stacks; this image has axes {axes}")
        if mode not in ("auto", "native"):
            raise UserError(f"--stack {mode} is for 2D models; a 3D model predicts stacks natively")
        return "native"
    if mode == "native":
        raise UserError("--stack native needs a 3D model (trained with 'train --dims 3')")
    if mode != "auto":
        if mode != "planes" and "Z" not in axes:
            from napari_unet.core.errors import UserError

            raise UserError(
                f"--stack {mode} needs an image with a Z axis; this one has axes {axes}"
            )
        return mode
    return default_mode(axes)


def predict_image(
    args: argparse.Namespace,
    image: Any,
    loaded: Any,
    tiling: Any,
    device: Any,
    post: Any,
    reporter: Any,
) -> tuple[Any, Any, Any, Any]:
    """Probabilities, labels, pixel size and Z step to write, for one image (an ``ImageData``)."""
    from napari_unet.core.inference.stack3d import Stack3DConfig, predict_stack
    from napari_unet.core.io.voxels import resolve_voxel_size
    from napari_unet.core.progress import drain

    mode = stack_mode(args, image.axes, loaded.config.spatial_dims)
    if mode == "native":
        _note_native(args, loaded)
    voxel = None
    pixel_size, z_spacing = image.pixel_size, image.z_spacing
    given = getattr(args, "voxel_size", None)
    if "Z" in image.axes:
        voxel = resolve_voxel_size(
            image.pixel_size, image.z_spacing, given, str(image.path or "the image")
        )
        if voxel.note and mode in ("ortho", "native") and not args.quiet:
            sys.stderr.write(f"note: {voxel.note}\n")
        if given is not None:
            z_spacing, pixel_size = given[0], (given[1], given[2])
    if mode == "planes":
        from napari_unet.cli._rescale import predict_planes

        probs, labels = predict_planes(args, image, loaded, tiling, device, post, reporter)
        return probs, labels, pixel_size, z_spacing
    if getattr(args, "diameter", None) is not None or getattr(args, "pixel_size", None):
        from napari_unet.cli._common import logger

        logger.warning("3D labels (--stack %s) are made at the image's own XY scale: "
                       "--diameter and --pixel-size are ignored", mode)  # fmt: skip
    size = voxel.size if voxel is not None else (1.0, 1.0, 1.0)
    min_size = getattr(args, "min_size", None)  # with ortho: in voxels
    config = Stack3DConfig(min_size=min_size) if min_size is not None else None
    probs, labels = drain(
        predict_stack(
            image.data,
            image.axes,
            loaded,
            mode,
            size,
            tiling,
            device,
            args.precision,
            post,
            config,
        ),
        reporter,
    )
    return probs, labels, pixel_size, z_spacing


def _note_native(args: argparse.Namespace, loaded: Any) -> None:
    """Say (log, and stderr unless quiet) that a 3D model predicts natively."""
    from napari_unet.cli._common import logger

    voxel = loaded.voxel_size
    trained = f" (trained at voxel size {','.join(f'{v:g}' for v in voxel)} µm)" if voxel else ""
    message = f"{loaded.name} is a 3D model{trained}: the stack is predicted natively in 3D tiles"
    logger.info(message)
    if not args.quiet:
        sys.stderr.write(f"note: {message}\n")


def add_voxel_size_option(p: argparse.ArgumentParser) -> None:
    """Add ``--voxel-size`` to the ``train`` parser."""
    p.add_argument(
        "--voxel-size",
        type=voxel_size_type,
        metavar="Z,Y,X",
        help=(
            "voxel size of the Z-stacks given, in µm (default: from each file; without a Z "
            "step isotropic voxels are assumed, with a note)"
        ),
    )


def read_stack_training_data(
    args: argparse.Namespace,
    inputs: Any,
    base: Any,
    model_config: Any,
    target_config: Any,
    volumes_3d: bool = False,
) -> tuple[list, list, Any]:
    """Training pairs for ``train``, each image file read once, in order: Z-stacks (axes with
    Z, without T) as volumes cut in three orientations (:mod:`napari_unet.core.training.data3d`),
    other images as their 2D planes; with ``volumes_3d`` (a 3D network), Z-stacks as whole
    volumes with 3D targets (:mod:`napari_unet.core.training.patches3d`) and nothing else.

    Returns:
        ``(pairs, pixel sizes, voxel size)``: the pairs; the (y, x) pixel size in µm (or None)
        of each image that is not a volume; the voxel size (z, y, x) of the first volume in µm,
        or None when no input is a volume with a known pixel size.
    """
    from napari_unet.cli._readers import read_labels, read_mask
    from napari_unet.core.errors import UserError
    from napari_unet.core.io import reading
    from napari_unet.core.io.voxels import resolve_voxel_size
    from napari_unet.core.training.data import AnnotatedImage
    from napari_unet.core.training.data3d import (
        AnnotatedVolume,
        annotated_training_pairs,
        is_volume,
    )

    pixel_sizes: list = []
    first_voxel = None

    def annotated() -> Any:  # one file at a time, checked in order
        nonlocal first_voxel
        for item in inputs:
            image = reading.read_image(item.image)
            labels = read_labels(item.labels, "labels")
            mask = read_mask(item.mask) if item.mask is not None else None
            if not is_volume(image.axes):
                pixel_sizes.append(image.pixel_size)
                yield AnnotatedImage(image.data, labels, image.axes, mask, str(item.image))
                continue
            voxel = resolve_voxel_size(
                image.pixel_size,
                image.z_spacing,
                getattr(args, "voxel_size", None),
                str(item.image),
            )
            if voxel.note and not args.quiet:
                sys.stderr.write(f"note: {voxel.note}\n")
            if first_voxel is None and voxel.unit == "um":
                first_voxel = voxel.size
            yield AnnotatedVolume(
                image.data, labels, voxel.size, mask, channel_axis="C" in image.axes,
                name=str(item.image),
            )  # fmt: skip

    if volumes_3d:
        from napari_unet.core.training.patches3d import volume_training_pairs

        def volumes() -> Any:
            for item in annotated():
                if not isinstance(item, AnnotatedVolume):
                    raise UserError(f"a 3D model trains on Z-stacks; {item.name} is not one "
                                    "(axes with Z and without T)")  # fmt: skip
                yield item

        pairs = volume_training_pairs(volumes(), base, model_config, target_config)
        return pairs, pixel_sizes, first_voxel
    pairs = annotated_training_pairs(annotated(), base, model_config, target_config)
    return pairs, pixel_sizes, first_voxel


def warn_blockwise_stacks(args: argparse.Namespace) -> None:
    """Say, on stderr, that Z-stacks predicted blockwise are labelled plane by plane (3D labels
    need the whole stack in memory for now), and that time-lapses keep ids unique across time."""
    from pathlib import Path

    from napari_unet.core.errors import UserError
    from napari_unet.core.io.lazy import open_lazy

    if args.quiet:
        return
    for name in args.inputs:
        try:
            axes = open_lazy(Path(name).expanduser()).axes
        except (UserError, OSError, ValueError):
            continue  # the blockwise command reports unreadable inputs itself
        if "T" in axes and getattr(args, "ids", "per-frame") == "per-frame":
            sys.stderr.write(
                f"note: {name} is predicted blockwise, where the ids of a time-lapse are unique "
                "across all time points (as with --ids stack)\n"
            )
        if "Z" in axes and getattr(args, "stack", "auto") != "planes":
            sys.stderr.write(
                f"note: {name} is predicted blockwise, where a Z-stack is labelled plane by "
                "plane (ids unique across planes, not 3D objects); 3D labels (--stack ortho or "
                "link) need a stack that fits in memory\n"
            )
