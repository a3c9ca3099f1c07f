"""The inference options of ``napari-unet predict`` (tiles, device, precision, thresholds): their
arguments, and the settings they give to both the in-memory and the blockwise paths."""

from __future__ import annotations

import argparse
from typing import Any

from napari_unet.cli._common import (
    add_device_option,
    chosen_device,
    fraction,
    given,
    non_negative_int,
    positive_int,
)
from napari_unet.core.config import PRECISIONS


def add_tiling_options(p: argparse.ArgumentParser) -> None:
    """``--tile-size``, ``--overlap``, ``--exact``, ``--batch-size``, ``--device`` and
    ``--precision``."""
    p.add_argument(
        "--tile-size",
        type=positive_int,
        metavar="PX",
        help="side of a tile in pixels, without the overlap (default: 1024)",
    )
    p.add_argument(
        "--overlap",
        type=non_negative_int,
        metavar="PX",
        help=(
            "context margin added on each side of a tile (default: the network's receptive-"
            "field reach, which makes tiles exact; smaller is faster but approximate)"
        ),
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="never use less than the receptive-field reach as overlap, whatever --overlap says",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="tiles per forward pass (default: 1 on the CPU, 4 on a GPU)",
    )
    add_device_option(p, "the network")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help=(
            "arithmetic of the network (default auto: bf16/fp16 on CUDA, bf16 on CPUs with "
            "native bfloat16 instructions, where it is about twice as fast as fp32 with the "
            "same accuracy; fp32 elsewhere)"
        ),
    )


def add_postprocess_options(p: argparse.ArgumentParser) -> None:
    """``--min-size``, ``--interior-threshold`` and ``--foreground-threshold``."""
    p.add_argument(
        "--min-size",
        type=non_negative_int,
        metavar="PX",
        help="remove objects smaller than this many pixels (instance models; default 16)",
    )
    p.add_argument(
        "--interior-threshold",
        type=fraction,
        metavar="P",
        help="probability of 'interior' that seeds an object (default 0.5)",
    )
    p.add_argument(
        "--foreground-threshold",
        type=fraction,
        metavar="P",
        help="probability of foreground within which objects grow (default 0.5)",
    )


def tiling_from_args(args: argparse.Namespace, loaded: Any, device_type: str) -> Any:
    """Tile settings: the options given, over the model file's tile defaults, else the device's
    defaults (:func:`~napari_unet.core.inference.engine.choose_tiling`)."""
    from dataclasses import replace

    from napari_unet.core.inference.engine import choose_tiling
    from napari_unet.core.network.limits import check_tiling

    tiling = choose_tiling(None, loaded.tiling, loaded.config, device_type)
    options = {
        "exact": True if args.exact else None,
        "tile_size": args.tile_size,
        "halo": args.overlap,
        "batch_size": args.batch_size,
    }
    return check_tiling(replace(tiling, **given(options)))


def postprocess_from_args(args: argparse.Namespace) -> Any:
    """The post-processing settings: the options given over the defaults."""
    from napari_unet.core.inference.postprocess import PostprocessConfig

    options = {
        "min_size": args.min_size,
        "interior_threshold": args.interior_threshold,
        "foreground_threshold": args.foreground_threshold,
    }
    return PostprocessConfig(**given(options))


def inference_settings(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """``(device, model, tiling, post-processing)`` from the arguments.

    Raises:
        UserError: an unavailable device, a precision it cannot run, a model that cannot be
            found or read, tile settings out of range.
    """
    from napari_unet.core.network.device import resolve_precision
    from napari_unet.core.network.registry import get_model

    device = chosen_device(args.device)
    resolve_precision(args.precision, device)  # an unsupported precision is a user error
    loaded = get_model(args.model)
    return device, loaded, tiling_from_args(args, loaded, device.type), postprocess_from_args(args)
