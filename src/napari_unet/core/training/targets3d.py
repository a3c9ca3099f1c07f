"""Training targets of a 3D network, computed in 3D: classes, the border weight map, the mask.

The 3D form of :mod:`.targets` for instance labels (Z, Y, X), one id per object across planes:

* classes: 0 background, 1 interior, 2 boundary, where a boundary voxel is an object voxel with a
  voxel of another id (or background) within ``w`` voxels in Y and X and within ``w_z`` planes in
  Z (a (2 w_z + 1) x (2 w + 1) x (2 w + 1) box), ``w = TargetConfig.boundary_width`` and
  ``w_z = max(1, round(w / anisotropy))``: at least one plane, so the planes above and below a
  nucleus are its boundary as its outline is in XY;
* weights: the class balance over the annotated voxels (:func:`~.weight_map.class_weights`) plus
  the U-Net paper's border term ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` with ``d1``, ``d2`` the
  Euclidean distances to the nearest and second-nearest object measured in XY pixels, Z steps
  counted as ``anisotropy`` pixels (given to background and, by default, boundary voxels);
* mask: the annotated voxels (all by default); weights are 0 outside it.

As in 2D the border term is computed per object inside its bounding box plus a margin
(:func:`~.weight_map.gap_margin`, in Z divided by the anisotropy).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from ..errors import UserError
from .targets import (
    BACKGROUND,
    BOUNDARY,
    N_INSTANCE_CLASSES,
    TargetConfig,
    Targets,
    _check_mask,
    check_labels,
)
from .weight_map import _gap_from_distances, _object_slices, _update_two_smallest, class_weights


def instance_classes_3d(
    labels: np.ndarray, boundary_width: int = 1, anisotropy: float = 1.0
) -> np.ndarray:
    """Classes of a 3D instance label volume: 0 background, 1 interior, 2 boundary.

    Args:
        labels: (Z, Y, X) non-negative integer ids.
        boundary_width: ``w``, the boundary's width in XY pixels.
        anisotropy: Z step over XY pixel; the boundary is ``max(1, round(w / anisotropy))``
            planes deep.

    Returns:
        uint8 (Z, Y, X).
    """
    w = int(boundary_width)
    wz = max(1, round(w / max(anisotropy, 1e-6)))
    widths = (wz, w, w)
    padded = np.pad(labels, [(n, n) for n in widths], mode="edge")
    differs = np.zeros(labels.shape, bool)
    for dz in range(-wz, wz + 1):
        for dy in range(-w, w + 1):
            for dx in range(-w, w + 1):
                if not (dz or dy or dx):
                    continue
                window = tuple(
                    slice(n + d, n + d + size)
                    for n, d, size in zip(widths, (dz, dy, dx), labels.shape, strict=True)
                )
                differs |= padded[window] != labels
    obj = labels > 0
    classes = obj.view(np.uint8).copy()
    classes[obj & differs] = BOUNDARY
    return classes


def gap_term_3d(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    anisotropy: float = 1.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """The border term of the weight map in 3D, distances in XY pixels (Z steps of
    ``anisotropy`` pixels).

    Args:
        labels: (Z, Y, X) non-negative integer ids.
        w0, sigma: height and width (XY pixels) of the term.
        anisotropy: Z step over XY pixel.
        mask: optional bool (Z, Y, X): objects farther than the margin from it are skipped.

    Returns:
        float32 (Z, Y, X).
    """
    from .weight_map import gap_margin

    objects = _object_slices(labels)
    if w0 <= 0 or len(objects) < 2:
        return np.zeros(labels.shape, np.float32)
    margin = gap_margin(w0, sigma)
    margins = (math.ceil(margin / max(anisotropy, 1e-6)), margin, margin)
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    sampling = (float(anisotropy), 1.0, 1.0)
    for obj_id, box in objects:
        padded = tuple(
            slice(max(s.start - m, 0), min(s.stop + m, n))
            for s, m, n in zip(box, margins, labels.shape, strict=True)
        )
        if mask is not None and not mask[padded].any():
            continue
        dist = ndi.distance_transform_edt(labels[padded] != obj_id, sampling=sampling)
        _update_two_smallest(d1[padded], d2[padded], dist.astype(np.float32))
    return _gap_from_distances(d1, d2, w0, sigma)


def instance_targets_3d(
    labels: np.ndarray,
    config: TargetConfig | None = None,
    mask: np.ndarray | None = None,
    anisotropy: float = 1.0,
) -> Targets:
    """Targets of a 3D instance label volume (see the module docstring).

    Args:
        labels: (Z, Y, X) integer instance ids, 0 = background, one id per object across planes.
        config: target settings; default :class:`~.targets.TargetConfig`.
        mask: optional (Z, Y, X) annotated voxels; default all annotated.
        anisotropy: Z step over XY pixel of the volume.

    Returns:
        :class:`~.targets.Targets` of (Z, Y, X) arrays: classes uint8 in {0, 1, 2}, weights
        float32 (0 outside the mask), mask bool.

    Raises:
        UserError: labels that are not a (Z, Y, X) volume of whole non-negative numbers.
        InputMismatchError: a mask of another shape.
    """
    config = config or TargetConfig()
    labels = check_labels(labels)
    if labels.ndim != 3 or labels.size == 0:
        raise UserError(f"3D targets need (Z, Y, X) labels, got shape {labels.shape}")
    mask_arr = _check_mask(mask, labels.shape)
    if mask_arr is None:
        mask_arr = np.ones(labels.shape, bool)
    classes = instance_classes_3d(labels, config.boundary_width, anisotropy)
    weights = class_weights(
        classes, mask_arr, N_INSTANCE_CLASSES, config.class_balance, config.max_class_ratio
    )
    if config.w0 > 0 and mask_arr.any():
        gap = gap_term_3d(
            labels, config.w0, config.sigma, anisotropy, None if mask_arr.all() else mask_arr
        )
        gets_gap = classes == BACKGROUND
        if config.gap_on_boundary:
            gets_gap |= classes == BOUNDARY
        gets_gap &= mask_arr
        np.add(weights, gap, out=weights, where=gets_gap)
    return Targets(classes=classes, weights=weights, mask=mask_arr)
