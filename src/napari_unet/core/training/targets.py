"""Training targets from labels: per-pixel classes, the U-Net border weight map, the annotated mask.

Instance labels (0 = background, one positive id per object) become three classes:

* ``0`` background,
* ``1`` interior: object pixels whose whole ``(2 w + 1) x (2 w + 1)`` neighbourhood belongs to the
  same object (``w`` = :attr:`TargetConfig.boundary_width`),
* ``2`` boundary: the other object pixels, i.e. those within ``w`` pixels (chessboard distance) of
  another object or of the background. The boundary is *inner*: it lies on the object, so two
  touching objects are separated by a line ``2 w`` pixels wide (``w`` from each side) and their
  interiors never touch, not even diagonally. The image border is not a boundary: an object cut by
  the border keeps its interior up to the edge.

The weight map (:mod:`.weight_map`) is the one of the U-Net paper; :func:`instance_targets` gives
the border term to background pixels and, by default (:attr:`TargetConfig.gap_on_boundary`), to
boundary pixels. Outside the annotated mask every weight is 0, so nothing there counts in the loss.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from napari_unet.core.errors import InputMismatchError, UserError

from .weight_map import class_weights, exact_gap_term, gap_margin, gap_term

logger = logging.getLogger(__name__)

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
N_INSTANCE_CLASSES = 3
INSTANCE_CLASS_NAMES = ("background", "interior", "boundary")


@dataclass(frozen=True)
class TargetConfig:
    """How labels become training targets.

    Attributes:
        w0: height of the border term of the weight map (0 turns it off).
        sigma: width of the border term, in pixels.
        boundary_width: width ``w`` of the inner boundary class, in pixels, on each object; two
            touching objects are separated by ``2 w`` boundary pixels.
        class_balance: weight the classes by inverse frequency over the annotated pixels (else
            every annotated pixel has class weight 1).
        max_class_ratio: cap on the ratio between the largest and smallest class weight, so a
            rare class in a sparse image does not get a huge weight.
        gap_on_boundary: also give the border term to boundary pixels (``d1 = 0``, ``d2`` = distance
            to the nearest other object), not only to background pixels.
    """

    w0: float = 10.0
    sigma: float = 5.0
    boundary_width: int = 1
    class_balance: bool = True
    max_class_ratio: float = 10.0
    gap_on_boundary: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.w0) and self.w0 >= 0):
            raise ValueError(f"w0 must be a finite number >= 0, got {self.w0}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {self.sigma}")
        if int(self.boundary_width) != self.boundary_width or self.boundary_width < 1:
            raise ValueError(f"boundary_width must be an integer >= 1, got {self.boundary_width}")
        if not self.max_class_ratio >= 1:
            raise ValueError(f"max_class_ratio must be >= 1, got {self.max_class_ratio}")

    @property
    def margin(self) -> int:
        """Pixels around an object's bounding box beyond which its border term is negligible
        (see :func:`~.weight_map.gap_margin`)."""
        return gap_margin(self.w0, self.sigma)


@dataclass(frozen=True, eq=False)
class Targets:
    """Per-pixel training targets; all arrays share the labels' shape ``(H, W)`` or ``(Z, H, W)``.

    Attributes:
        classes: uint8 (uint16 for more than 256 semantic classes) class id per pixel; for
            instances 0 background, 1 interior, 2 boundary.
        weights: float32 loss weight per pixel, 0 outside ``mask``.
        mask: bool, True where the pixel is annotated (counts in the loss).
    """

    classes: np.ndarray
    weights: np.ndarray
    mask: np.ndarray


# --------------------------------------------------------------------------------------------
# validation


def check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as a non-negative integer array, or raise :class:`UserError`.

    Accepts any integer dtype, bool (as 0/1) and floats that hold whole numbers (some tools save
    labels as float32). Negative, fractional, NaN or non-numeric labels are refused.

    Args:
        labels: array of any shape.
        name: how the message names the array.

    Returns:
        the same values with an unsigned or signed integer dtype (no copy when already integer).
    """
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.view(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.all(np.isfinite(arr)):
            raise UserError(
                f"The {name} contain NaN or infinite values; labels must be whole "
                "numbers (0 for background, 1, 2, ... for objects)."
            )
        if arr.size and not np.array_equal(arr, np.round(arr)):
            bad = arr[arr != np.round(arr)].flat[0]
            raise UserError(
                f"The {name} contain fractional values (such as {bad:g}); labels must "
                "be whole numbers (0 for background, 1, 2, ... for objects)."
            )
        if arr.size and arr.min() < 0:
            raise UserError(
                f"The {name} contain negative values (smallest {arr.min():g}); labels "
                "must be 0 for background and positive whole numbers for objects."
            )
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise UserError(
            f"The {name} have data type {arr.dtype}; labels must be whole numbers "
            "(0 for background, 1, 2, ... for objects)."
        )
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and arr.min() < 0:
        raise UserError(
            f"The {name} contain negative values (smallest {arr.min()}); labels must "
            "be 0 for background and positive whole numbers for objects."
        )
    return arr


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """``mask`` as a bool array of ``shape`` (non-zero = annotated), or None when not given."""
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.shape != shape:
        raise InputMismatchError(
            f"The mask has shape {arr.shape} but the labels have shape "
            f"{shape}; they must be the same."
        )
    if arr.dtype == bool:
        return arr.copy()
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise UserError(
            f"The mask has data type {arr.dtype}; it must hold numbers (non-zero = annotated)."
        )
    return arr != 0


def _check_ndim(labels: np.ndarray, ndim: int, hint: str) -> None:
    if labels.ndim != ndim:
        raise UserError(
            f"The labels have shape {labels.shape}; expected {ndim} dimensions ({hint})."
        )
    if labels.size == 0:
        raise UserError(f"The labels have shape {labels.shape}; they hold no pixels.")


# --------------------------------------------------------------------------------------------
# pieces


def instance_classes(labels: np.ndarray, boundary_width: int = 1) -> np.ndarray:
    """Classes of an instance label image: 0 background, 1 interior, 2 boundary.

    Args:
        labels: (H, W) non-negative integer instance ids.
        boundary_width: width of the inner boundary on each object, in pixels.

    Returns:
        uint8 (H, W).
    """
    width = int(boundary_width)
    height, wide = labels.shape
    padded = np.pad(labels, width, mode="edge")
    differs = np.zeros(labels.shape, bool)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            if dy or dx:
                shifted = padded[width + dy : width + dy + height, width + dx : width + dx + wide]
                differs |= shifted != labels
    obj = labels > 0
    classes = obj.view(np.uint8).copy()
    classes[obj & differs] = BOUNDARY
    return classes


def _assemble(
    labels: np.ndarray, mask: np.ndarray, config: TargetConfig, gap_fn: Callable[..., np.ndarray]
) -> Targets:
    """Classes, class weights plus the border term from ``gap_fn``, and the mask."""
    classes = instance_classes(labels, config.boundary_width)
    weights = class_weights(
        classes, mask, N_INSTANCE_CLASSES, config.class_balance, config.max_class_ratio
    )
    if config.w0 > 0 and mask.any():
        gap = gap_fn(labels, config.w0, config.sigma, None if mask.all() else mask)
        gets_gap = classes == BACKGROUND
        if config.gap_on_boundary:
            gets_gap |= classes == BOUNDARY
        gets_gap &= mask
        np.add(weights, gap, out=weights, where=gets_gap)
    return Targets(classes=classes, weights=weights, mask=mask)


# --------------------------------------------------------------------------------------------
# public entry points


def _checked_2d(
    labels: np.ndarray, mask: np.ndarray | None, config: TargetConfig | None, hint: str
) -> tuple[TargetConfig, np.ndarray, np.ndarray]:
    """Validated 2D labels, their mask (all annotated by default) and the settings."""
    labels = check_labels(labels)
    _check_ndim(labels, 2, hint)
    mask_arr = _check_mask(mask, labels.shape)
    if mask_arr is None:
        mask_arr = np.ones(labels.shape, bool)
    return config or TargetConfig(), labels, mask_arr


def instance_targets(
    labels: np.ndarray, config: TargetConfig | None = None, mask: np.ndarray | None = None
) -> Targets:
    """Targets of a 2D instance label image.

    Args:
        labels: (H, W) integer instance ids, 0 = background (bool, and floats holding whole
            numbers, are accepted).
        config: target settings; default :class:`TargetConfig`.
        mask: optional (H, W) annotated pixels (bool or non-zero); default all annotated.

    Returns:
        :class:`Targets` with classes uint8 (H, W) in {0, 1, 2}, weights float32 (H, W) (0 outside
        the mask) and mask bool (H, W).

    Raises:
        UserError: labels not 2D, negative, fractional or not numbers.
        InputMismatchError: mask shape differs from the labels.
    """
    config, labels, mask_arr = _checked_2d(
        labels, mask, config, "an (H, W) image; use stack_targets for a stack"
    )
    return _assemble(labels, mask_arr, config, gap_term)


def exact_weight_map(
    labels: np.ndarray, config: TargetConfig | None = None, mask: np.ndarray | None = None
) -> np.ndarray:
    """The weights of :func:`instance_targets` computed the slow, exact way (the reference).

    Same arguments as :func:`instance_targets`; the border term takes one distance transform per
    object over the whole image (seconds and gigabytes for large images: tests and benchmarks only).

    Returns:
        float32 (H, W).
    """
    config, labels, mask_arr = _checked_2d(labels, mask, config, "an (H, W) image")
    return _assemble(labels, mask_arr, config, exact_gap_term).weights


def _plane_masks(labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """(Z, H, W) bool: the given mask, else planes with any label fully annotated, others not."""
    if mask is not None:
        return mask
    has_label = labels.reshape(labels.shape[0], -1).any(axis=1)
    return np.broadcast_to(has_label[:, None, None], labels.shape).copy()


def _stack(planes: Sequence[Targets]) -> Targets:
    return Targets(
        classes=np.stack([t.classes for t in planes]),
        weights=np.stack([t.weights for t in planes]),
        mask=np.stack([t.mask for t in planes]),
    )


def stack_targets(
    labels: np.ndarray, mask: np.ndarray | None = None, config: TargetConfig | None = None
) -> Targets:
    """Targets of a stack of instance label planes, plane by plane.

    Without a mask, a plane without any label is unannotated (its weights are 0) and a plane with
    labels is fully annotated; a given mask is used as is (a plane of zeros inside the mask is
    annotated background). Class balance is per plane.

    Args:
        labels: (Z, H, W) integer instance ids, 0 = background.
        mask: optional (Z, H, W) annotated pixels.
        config: target settings; default :class:`TargetConfig`.

    Returns:
        :class:`Targets` with (Z, H, W) arrays: classes uint8, weights float32, mask bool.
    """
    config = config or TargetConfig()
    labels = check_labels(labels)
    _check_ndim(labels, 3, "a (Z, H, W) stack")
    masks = _plane_masks(labels, _check_mask(mask, labels.shape))
    planes = []
    for plane, plane_mask in zip(labels, masks, strict=True):
        if plane_mask.any():
            planes.append(instance_targets(plane, config, plane_mask))
        else:
            planes.append(
                Targets(
                    classes=np.zeros(plane.shape, np.uint8),
                    weights=np.zeros(plane.shape, np.float32),
                    mask=plane_mask,
                )
            )
    logger.debug(
        "stack targets: %d of %d planes annotated", int(masks.any(axis=(1, 2)).sum()), len(planes)
    )
    return _stack(planes)


def semantic_targets(
    labels: np.ndarray,
    n_classes: int,
    mask: np.ndarray | None = None,
    config: TargetConfig | None = None,
) -> Targets:
    """Targets of semantic labels (class ids): the classes are the label values, class-balanced.

    A 2D image without a mask is fully annotated. A (Z, H, W) stack follows the rule of
    :func:`stack_targets`: without a mask, planes without any non-zero label are unannotated.
    Class balance (``config.class_balance`` and ``max_class_ratio``) is per plane; ``w0``,
    ``sigma`` and ``boundary_width`` do not apply.

    Args:
        labels: (H, W) or (Z, H, W) integer class ids in ``[0, n_classes)``.
        n_classes: number of classes the model predicts (at least 2).
        mask: optional annotated pixels, same shape as ``labels``.
        config: target settings; default :class:`TargetConfig`.

    Returns:
        :class:`Targets`: classes uint8 (uint16 beyond 256 classes), weights float32, mask bool.

    Raises:
        UserError: bad labels, or a label value not below ``n_classes``.
    """
    config = config or TargetConfig()
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    labels = check_labels(labels)
    if labels.ndim not in (2, 3):
        raise UserError(
            f"The labels have shape {labels.shape}; expected an (H, W) image or a (Z, H, W) stack."
        )
    top = int(labels.max()) if labels.size else 0
    if top >= n_classes:
        raise UserError(
            f"The labels contain class {top}, but the model has {n_classes} classes "
            f"(0 to {n_classes - 1})."
        )
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    classes = labels.astype(dtype)
    mask_arr = _check_mask(mask, labels.shape)
    if labels.ndim == 2:
        if mask_arr is None:
            mask_arr = np.ones(labels.shape, bool)
        weights = class_weights(
            classes, mask_arr, n_classes, config.class_balance, config.max_class_ratio
        )
        return Targets(classes=classes, weights=weights, mask=mask_arr)
    masks = _plane_masks(labels, mask_arr)
    weights = np.stack(
        [
            class_weights(c, m, n_classes, config.class_balance, config.max_class_ratio)
            for c, m in zip(classes, masks, strict=True)
        ]
    )
    return Targets(classes=classes, weights=weights, mask=masks)
