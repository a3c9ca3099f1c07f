"""The rescaling options of ``napari-unet predict``: ``--pixel-size``, ``--diameter``,
``--no-rescale``."""

from __future__ import annotations

import argparse
from typing import Any

from napari_unet.cli._common import positive_float


def _diameter(text: str) -> float | str:
    """``auto`` or a positive number of pixels (an argparse type)."""
    if text.strip().lower() == "auto":
        return "auto"
    return positive_float(text)


def _pixel_size(text: str) -> tuple[float, float]:
    """``UM`` or ``Y,X`` in micrometres (an argparse type)."""
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected UM or Y,X in micrometres, got {text!r}")
    values = [positive_float(p.strip()) for p in parts]
    return (values[0], values[-1])


def add_rescale_options(parser: argparse.ArgumentParser) -> None:
    """Add the options that match an image's scale to the model's."""
    group = parser.add_argument_group(
        "scale (an image is resized to the model's pixel size before the network, and its "
        "labels mapped back)"
    )
    group.add_argument(
        "--pixel-size",
        type=_pixel_size,
        metavar="UM",
        help="the images' pixel size in micrometres (UM or Y,X), instead of the file's",
    )
    group.add_argument(
        "--diameter",
        type=_diameter,
        metavar="PX|auto",
        help=(
            "for images without a pixel size: the typical object diameter in pixels, or 'auto' "
            "to estimate it with a first pass (the model's own diameter is in 'napari-unet "
            "models')"
        ),
    )
    group.add_argument(
        "--no-rescale",
        dest="rescale",
        action="store_false",
        help="run the network on the images as they are, whatever their pixel size",
    )


def rescale_config(args: argparse.Namespace) -> Any:
    """The :class:`~napari_unet.core.inference.rescale.RescaleConfig` of the options given."""
    from napari_unet.core.inference.rescale import RescaleConfig

    return RescaleConfig(
        enabled=getattr(args, "rescale", True),
        diameter=getattr(args, "diameter", None),
        pixel_size=getattr(args, "pixel_size", None),
    )


def training_pixel_size(sizes: list[Any]) -> tuple[float, float] | None:
    """The pixel size a model trained on images of ``sizes`` ((y, x) in µm, or ``None``)
    records: theirs when all the images that have one agree, else their median (with a
    warning); ``None`` when none has one (the base model's is kept)."""
    from napari_unet.cli._common import logger

    known = [tuple(float(v) for v in s) for s in sizes if s is not None]
    if not known:
        return None
    if len(set(known)) > 1:
        values = sorted(known)
        chosen = values[len(values) // 2]
        logger.warning(
            "the training images have different pixel sizes (%s); the model records %s µm",
            ", ".join(f"{y:g} x {x:g}" for y, x in values),
            f"{chosen[0]:g} x {chosen[1]:g}",
        )
        return chosen
    if len(known) < len(sizes):
        logger.warning("some training images have no pixel size; the model records the others'")
    return known[0]


def predict_planes(
    args: argparse.Namespace,
    image: Any,
    loaded: Any,
    tiling: Any,
    device: Any,
    post: Any,
    reporter: Any,
) -> tuple[Any, Any]:
    """Probabilities (C, ...) and labels of ``image`` (``io.ImageData``) plane by plane, each
    plane resized to the model's scale first
    (:func:`~napari_unet.core.inference.calibrate.choose_scale`) and mapped back.

    The probabilities are float32 when ``--probabilities`` writes them, else float16: half the
    memory, and enough for the labels and ``--objects`` (labels may differ from float32's only
    at pixels within 2**-11 of a threshold)."""
    import numpy as np

    from napari_unet.core.inference.calibrate import choose_scale
    from napari_unet.core.inference.postprocess import postprocess
    from napari_unet.core.inference.predict import predict_probabilities
    from napari_unet.core.inference.rescale import scaled_postprocess
    from napari_unet.core.progress import drain

    scale = drain(
        choose_scale(image.data, image.axes, loaded, image.pixel_size, rescale_config(args),
                     tiling=tiling, device=device, precision=args.precision, postprocess=post),
        reporter,
    )  # fmt: skip
    dtype = np.float32 if getattr(args, "probabilities", None) else np.float16
    probs = drain(
        predict_probabilities(image.data, image.axes, loaded, tiling, device, args.precision,
                              scale=scale, dtype=dtype),
        reporter,
    )  # fmt: skip
    post = scaled_postprocess(post, scale)
    return probs, drain(postprocess(probs, loaded.task, post), reporter)
