"""Rescaling images to the pixel size (or object size) a model was trained at.

A model records the pixel size of its training data (``LoadedModel.pixel_size``, micrometres per
pixel, ``(y, x)`` or ``(z, y, x)``) and the typical diameter of the objects in it, in pixels
(``LoadedModel.object_diameter``). An image whose pixel size is known is resized in Y and X by
``image pixel size / model pixel size`` before the network; the class probabilities are resized
back to the image's grid, so the labels are made at the image's own resolution and have its
shape. An image without a pixel size can be given the diameter of its objects in pixels, or
``"auto"``: a first pass at the image's own scale finds objects and their median diameter, as
Cellpose's calibrate does (:func:`estimate_diameter`).

Scale factors here are always "new size / old size" of the image on its way to the network:
``0.5`` halves an image whose pixels are half the model's (0.25 µm/px for a 0.5 µm/px model).

How each array is resampled (``benchmarks/pixel_size.py`` and ``docs/benchmarks.md`` measure it):

- the image, shrunk: bilinear with antialiasing (a low-pass filter as wide as the new pixel), so
  detail finer than the network's pixel does not alias into false texture;
- the image, enlarged: bicubic (Keys, a = -0.75). Linear interpolation is itself a low-pass
  filter that blurs the enlarged image beyond the optics' blur the network was trained with; the
  cubic kernel passes more of the image's real frequencies (on the shipped sample at half size
  AP50 0.835 against 0.820 with bilinear, on rendered synthetic images 0.780 against 0.776);
- the probabilities, back to the image's grid: bilinear (a convex combination: they stay in
  [0, 1] and sum to 1), and the labels are made there, with the size settings counted in the
  network's pixels (:func:`scaled_postprocess`). Labels made at the network's scale and mapped
  back by nearest neighbour are blockier and, when shrunk back, lose or merge small objects
  (AP50 0.801 against 0.819 on the 2x sample, 0.794 against 0.820 at half size).

A factor estimated from the objects (``diameter="auto"``) is applied only when it is more than
:data:`AUTO_TOLERANCE` from 1: a model is trained with zoom augmentation of about that size, and
the median diameter of a first pass is not more precise, while every resampling blurs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..progress import Progress

if TYPE_CHECKING:
    from ..network.weights import LoadedModel
    from .postprocess import PostprocessConfig

logger = logging.getLogger(__name__)

Scale = tuple[float, float]

#: Factors within this relative distance of 1 are not worth an interpolation.
TOLERANCE = 0.02
#: An estimated factor (``diameter="auto"``) within this relative distance of 1 is not applied:
#: it is within the zoom augmentation of training (0.85-1.15) and the estimate's precision.
AUTO_TOLERANCE = 0.1
#: The range of factors accepted; beyond it the pixel size (or diameter) is most likely wrong.
MIN_FACTOR, MAX_FACTOR = 1 / 16, 8.0
#: Side of the central crop of one plane that :func:`estimate_diameter` segments.
CALIBRATION_CROP = 1024


@dataclass(frozen=True)
class RescaleConfig:
    """How an image is matched to the model's scale.

    Attributes:
        enabled: ``False`` runs the network on the image as it is.
        diameter: for images without a pixel size: the typical object diameter in the image's
            pixels, ``"auto"`` to estimate it with a first pass, or ``None`` (no rescaling).
        pixel_size: the image's pixel size in µm, ``(y, x)``, overriding the file's; ``None``
            takes the file's.
    """

    enabled: bool = True
    diameter: float | str | None = None
    pixel_size: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        d = self.diameter
        if isinstance(d, str) and d != "auto":
            raise ValueError(f"diameter must be a number of pixels or 'auto', got {d!r}")
        if isinstance(d, int | float) and not (math.isfinite(d) and d > 0):
            raise ValueError(f"diameter must be a positive number of pixels, got {d!r}")


def is_identity(scale: Sequence[float] | None) -> bool:
    """Whether ``scale`` leaves the image as it is (``None``, or both factors close to 1)."""
    return scale is None or all(abs(float(f) - 1.0) <= TOLERANCE for f in scale)


def _checked(scale: Scale, why: str) -> Scale | None:
    for factor in scale:
        if not (MIN_FACTOR <= factor <= MAX_FACTOR):
            raise UserError(
                f"{why} asks to resize the image by {factor:.3g}, outside "
                f"[{MIN_FACTOR:.3g}, {MAX_FACTOR:g}]; check it, or turn rescaling off"
            )
    return None if is_identity(scale) else scale


def pixel_size_scale(
    image_pixel_size: Sequence[float] | None, model_pixel_size: Sequence[float] | None
) -> Scale | None:
    """The (y, x) factors that bring an image at ``image_pixel_size`` to the model's pixel size,
    or ``None`` when either is unknown or they agree (within :data:`TOLERANCE`).

    Both pixel sizes are in µm per pixel, ``(y, x)`` (a model's ``(z, y, x)`` uses its last two).
    """
    if image_pixel_size is None or model_pixel_size is None:
        return None
    image_yx = [float(v) for v in tuple(image_pixel_size)[-2:]]
    model_yx = [float(v) for v in tuple(model_pixel_size)[-2:]]
    scale = (image_yx[0] / model_yx[0], image_yx[1] / model_yx[1])
    text = f"the pixel size {image_yx[0]:.4g} x {image_yx[1]:.4g} µm (model: {model_yx[0]:.4g})"
    return _checked(scale, text)


def diameter_scale(diameter: float | None, model_diameter: float | None) -> Scale | None:
    """The factors that bring objects of ``diameter`` pixels to the model's ``model_diameter``."""
    if diameter is None or model_diameter is None or diameter <= 0:
        return None
    factor = float(model_diameter) / float(diameter)
    return _checked((factor, factor), f"an object diameter of {diameter:.3g} px")


def resized_shape(shape: tuple[int, int], scale: Sequence[float]) -> tuple[int, int]:
    """The (Y, X) size of a plane of ``shape`` resized by ``scale`` (at least 1 pixel)."""
    return (max(1, round(shape[0] * scale[0])), max(1, round(shape[1] * scale[1])))


def resize(array: np.ndarray, shape: tuple[int, int], image: bool = False) -> np.ndarray:
    """Resize float32 (C, H, W) to (C, *shape): bilinear, antialiased when shrinking.

    Args:
        array: float32 (C, H, W).
        shape: the new (H, W).
        image: ``array`` is an image (not probabilities): enlarged with bicubic interpolation,
            which blurs less than bilinear (see the module docstring).

    Linear interpolation keeps a per-pixel sum over C: probabilities still sum to 1 (cubic does
    not stay within [0, 1], so it is only used for images).
    """
    if tuple(array.shape[-2:]) == tuple(shape):
        return np.asarray(array, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    shrinking = shape[0] < array.shape[-2] or shape[1] < array.shape[-1]
    mode = "bicubic" if image and not shrinking else "bilinear"
    with torch.inference_mode():
        out = F.interpolate(tensor, size=shape, mode=mode, align_corners=False,
                            antialias=shrinking)  # fmt: skip
    return out[0].numpy()


def scaled_postprocess(config: PostprocessConfig | None, scale: Sequence[float] | None) -> Any:
    """``config`` with its object and seed sizes counted in the network's pixels, for labels
    made from probabilities mapped back by ``scale``; a size is never below the one given.

    An image enlarged 2x holds objects 4x the area the network saw, so the noise that
    ``min_size`` removes is 4x larger too; on a shrunk image the sizes given are kept (smaller
    ones keep fragments of the interpolation as objects).
    """
    from dataclasses import replace

    from .postprocess import PostprocessConfig

    config = config or PostprocessConfig()
    if is_identity(scale):
        return config
    area = 1.0 / (float(scale[0]) * float(scale[1]))  # image pixels per network pixel
    if area <= 1.0:
        return config
    return replace(
        config,
        min_size=max(config.min_size, round(config.min_size * area)),
        min_seed_size=max(config.min_seed_size, round(config.min_seed_size * area)),
        seed_sigma=config.seed_sigma * math.sqrt(area),
    )


def predict_plane_rescaled(
    predict_tiled: Callable[..., Generator[Progress, None, np.ndarray]],
    scale: Scale,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    plane: np.ndarray,
    out_channels: int,
    tiling: Any,
    halo: int,
    stride: int,
    out: np.ndarray,
) -> Generator[Progress, None, np.ndarray]:
    """:func:`~.tiling.predict_tiled` of one plane at the model's scale, written back at the
    plane's own size.

    Args:
        predict_tiled: the tiled prediction function.
        scale: (y, x) factors from the plane to the network's scale.
        plane: float32 (C, H, W), normalised.
        out: float32 (K, H, W) to write into; it is complete before the last event is yielded.

    Yields:
        The tiled prediction's events (their tile coordinates are at the network's scale).

    Returns:
        ``out``.
    """
    height, width = plane.shape[-2:]
    small = resize(plane, resized_shape((height, width), scale), image=True)
    gen = predict_tiled(predictor, small, out_channels, tiling, halo, stride)
    last: Progress | None = None
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                probs = stop.value
                break
            if last is not None:
                yield last
            last = event
    finally:
        gen.close()
    out[...] = resize(probs, (height, width))
    if last is not None:
        yield last
    return out


def _object_areas(labels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Pixel counts of the objects of ``labels`` (..., H, W), plane by plane; with ``mask``
    (bool, same shape) only objects wholly inside it."""
    labels = np.asarray(labels)
    planes = labels.reshape(-1, *labels.shape[-2:]) if labels.ndim >= 2 else labels[None, None]
    masks = None if mask is None else np.asarray(mask, bool).reshape(planes.shape)
    areas: list[np.ndarray] = [np.zeros(0, np.int64)]
    for i, plane in enumerate(planes):
        ids = plane.astype(np.int64, copy=False).ravel()
        if ids.size == 0 or ids.max() <= 0:
            continue
        counts = np.bincount(np.clip(ids, 0, None))
        counts[0] = 0
        if masks is not None:
            outside = np.bincount(np.clip(ids[~masks[i].ravel()], 0, None), minlength=counts.size)
            counts[outside > 0] = 0
        areas.append(counts[counts > 0])
    return np.concatenate(areas)


def _median_diameter(areas: np.ndarray) -> float | None:
    if areas.size == 0:
        return None
    return float(np.median(2.0 * np.sqrt(areas / np.pi)))


def object_diameter(labels: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """Median equivalent-circle diameter (pixels) of the objects in ``labels``.

    Args:
        labels: integer instance labels (..., H, W), 0 = background; planes are measured apart.
        mask: optional bool of the same shape; only objects that lie wholly inside it count.

    Returns:
        The median of ``2 * sqrt(area / pi)`` over the objects, or ``None`` when there are none.
    """
    return _median_diameter(_object_areas(labels, mask))


def training_scale(
    pairs: Sequence[Any],
    task: str,
    base: LoadedModel | None = None,
    pixel_size: Sequence[float] | None = None,
) -> dict[str, Any]:
    """What a model trained on ``pairs`` records of its scale: ``pixel_size`` (else the base
    model's) and the typical diameter of the annotated objects, the median over the pairs of
    each pair's median (else the base model's).

    Args:
        pairs: :class:`~.data.TrainingPair` items (their ``labels`` and ``targets.mask``).
        task: ``"instances"`` measures objects; other tasks record no diameter.

    Returns:
        ``{"pixel_size": ..., "object_diameter": ...}`` for :func:`~.weights.new_metadata`.
    """
    if pixel_size is None and base is not None:
        pixel_size = base.pixel_size
    diameter = None
    if task == "instances":
        # the median over planes of each plane's median: a crowded plane of small objects does
        # not outvote the others
        medians = [_median_diameter(_object_areas(p.labels, p.targets.mask)) for p in pairs]
        found = [m for m in medians if m is not None]
        diameter = float(np.median(found)) if found else None
        if diameter is None and base is not None:
            diameter = base.object_diameter
    return {
        "pixel_size": None if pixel_size is None else [float(v) for v in pixel_size],
        "object_diameter": diameter,
    }
