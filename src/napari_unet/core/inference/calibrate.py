"""Choosing the scale of an image for the network: from the pixel sizes, from an object
diameter given, or from one estimated by a first pass of the model (like Cellpose's calibrate).

The first pass runs :func:`~.predict.predict_labels`, so it lives here rather than in
:mod:`.rescale`, which the inference engine itself uses.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..progress import Progress
from .rescale import (
    AUTO_TOLERANCE,
    CALIBRATION_CROP,
    RescaleConfig,
    Scale,
    diameter_scale,
    object_diameter,
    pixel_size_scale,
)

if TYPE_CHECKING:
    from ..network.weights import LoadedModel

logger = logging.getLogger(__name__)


def _calibration_crop(image: np.ndarray, axes: str, in_channels: int) -> np.ndarray:
    """The central plane of ``image`` as (C, h, w), cropped to :data:`CALIBRATION_CROP`."""
    from ..network.normalize import as_planes

    planes, _, _ = as_planes(image, axes, in_channels)
    plane = np.asarray(planes[len(planes) // 2])
    height, width = plane.shape[-2:]
    top = max(0, (height - CALIBRATION_CROP) // 2)
    left = max(0, (width - CALIBRATION_CROP) // 2)
    return plane[:, top : top + CALIBRATION_CROP, left : left + CALIBRATION_CROP]


def estimate_diameter(
    image: np.ndarray,
    axes: str,
    model: LoadedModel,
    rounds: int = 2,
    **predict_options: Any,
) -> Generator[Progress, None, float | None]:
    """The typical object diameter in ``image``, in its pixels, from the model's own labels.

    A first pass segments the central plane (cropped to :data:`CALIBRATION_CROP` pixels) at the
    image's scale; when the objects found are far from the model's training size, a second pass
    at the scale they suggest measures them again (objects far too large or small are often split
    or missed at first).

    Args:
        image, axes: as for :func:`~.predict.predict_labels`.
        model: an instance model with a recorded object diameter.
        rounds: passes at most.
        predict_options: ``tiling``, ``device``, ``precision``, ``postprocess``.

    Yields:
        The passes' progress events.

    Returns:
        The median diameter in pixels, or ``None`` when no object was found.
    """
    from .predict import predict_labels

    crop = _calibration_crop(image, axes, model.config.in_channels)
    target = model.object_diameter
    scale: Scale | None = None
    diameter = None
    for _ in range(max(1, rounds)):
        _, labels = yield from predict_labels(crop, "CYX", model, scale=scale, **predict_options)
        measured = object_diameter(labels)
        if measured is None:
            return diameter
        diameter = measured
        if target is None:
            break
        new = diameter_scale(diameter, target)
        if new is None or (scale is not None and abs(new[0] / scale[0] - 1) <= 0.1):
            break
        scale = new
    logger.info("estimated object diameter: %.1f px", diameter)
    return diameter


def choose_scale(
    image: np.ndarray,
    axes: str,
    model: LoadedModel,
    image_pixel_size: Sequence[float] | None,
    config: RescaleConfig,
    **predict_options: Any,
) -> Generator[Progress, None, Scale | None]:
    """The (y, x) factors for ``image``: from its pixel size when both it and the model's are
    known, else from the object diameter given (or estimated, for ``"auto"``).

    Yields:
        The calibration pass's events (diameter ``"auto"`` only).

    Returns:
        ``None`` to run the network on the image as it is.
    """
    if not config.enabled:
        return None
    pixel_size = config.pixel_size or image_pixel_size
    if pixel_size is not None and model.pixel_size is not None:
        scale = pixel_size_scale(pixel_size, model.pixel_size)
        logger.info("pixel size %s µm, model's %s: scale %s", pixel_size, model.pixel_size, scale)
        return scale
    diameter = config.diameter
    if diameter is None:
        return None
    if model.object_diameter is None or model.task != "instances":
        logger.warning("%s records no object diameter: the image is not rescaled", model.name)
        return None
    if diameter == "auto":
        diameter = yield from estimate_diameter(image, axes, model, **predict_options)
        if diameter is None:
            logger.warning("no object found to estimate the diameter: the image is not rescaled")
            return None
    scale = diameter_scale(float(diameter), model.object_diameter)
    if config.diameter == "auto" and scale is not None:
        if all(abs(f - 1.0) <= AUTO_TOLERANCE for f in scale):
            logger.info("estimated object diameter %.1f px, model's %.1f px: close enough, "
                        "not rescaled", float(diameter), model.object_diameter)  # fmt: skip
            return None
    logger.info("object diameter %.1f px, model's %.1f px: scale %s", float(diameter),
                model.object_diameter, scale)  # fmt: skip
    return scale
