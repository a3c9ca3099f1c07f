"""The weight map of the U-Net paper (Ronneberger et al., 2015): class weights plus a border term.

Per pixel::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``d1`` and ``d2`` are the Euclidean distances (pixel centre to pixel centre) to the nearest and
second-nearest object; a pixel's distance to its own object is 0. The gap term is given to
background pixels, as in the paper, where it peaks in narrow gaps between objects, and (by default,
``TargetConfig.gap_on_boundary``) to boundary pixels, where ``d1 = 0`` and ``d2`` is the
distance to the nearest other object: the line that separates two touching objects gets about
``w0`` on top of its class weight, like the paper's separating background. Interior pixels get no
gap term. With fewer than two objects the gap term is 0.

``w_c`` balances the classes over the annotated pixels: inverse class frequency, the ratio between
the largest and smallest class weight capped at ``TargetConfig.max_class_ratio``, normalised so
that the mean of ``w_c`` over the annotated pixels is exactly 1 (the gap term comes on top).
Outside the annotated mask every weight is 0, so nothing there counts in the loss.

The gap term is computed per object inside the object's bounding box plus a margin, keeping the
two smallest distances per pixel; the margin is derived from ``w0`` and ``sigma`` so that the
result is within ``GAP_TOLERANCE`` (1e-3) of the exact map (:func:`exact_gap_term`, one distance
transform per object over the whole image, is the slow reference). A 512 x 512 image with 150
objects takes about 20-25 ms of CPU time (``benchmarks/targets.py``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

#: Bound on the difference between the fast border term and the exact one; the margin follows.
GAP_TOLERANCE = 1e-3


def gap_margin(w0: float, sigma: float) -> int:
    """Pixels around an object's bounding box beyond which its border term is negligible.

    Where the second-nearest object is more than ``margin`` pixels away, ``w0 * exp(-(d1 +
    d2)**2 / (2 sigma**2)) <= w0 * exp(-margin**2 / (2 sigma**2)) <= GAP_TOLERANCE``, so
    distances beyond it need not be known.
    """
    if w0 <= GAP_TOLERANCE:
        return 0
    return math.ceil(sigma * math.sqrt(2.0 * math.log(w0 / GAP_TOLERANCE)))


def class_weight_table(
    counts: np.ndarray, balance: bool = True, max_ratio: float = 10.0
) -> np.ndarray:
    """Weight per class (float64 (K,)) from annotated pixel counts per class (int (K,)).

    Absent classes get 0; present ones inverse frequency, capped, with mean 1 over the pixels.
    """
    table = np.zeros(counts.shape, np.float64)
    present = counts > 0
    if not present.any():
        return table
    if not balance:
        table[present] = 1.0
        return table
    inv = 1.0 / counts[present]
    inv = np.minimum(inv, max_ratio * inv.min())
    table[present] = inv
    table /= (table * counts).sum() / counts.sum()
    return table


def class_weights(
    classes: np.ndarray,
    mask: np.ndarray,
    n_classes: int,
    balance: bool = True,
    max_ratio: float = 10.0,
) -> np.ndarray:
    """Per-pixel class weight float32 (H, W), 0 outside ``mask`` (bool (H, W)), from the classes
    (integer (H, W) in ``[0, n_classes)``): see :func:`class_weight_table`."""
    annotated = classes if mask.all() else classes[mask]
    counts = np.bincount(annotated.ravel(), minlength=n_classes)
    table = class_weight_table(counts, balance, max_ratio).astype(np.float32)
    weights = table[classes]
    weights[~mask] = 0.0
    return weights


def _update_two_smallest(d1: np.ndarray, d2: np.ndarray, dist: np.ndarray) -> None:
    """In place: keep in (d1, d2) the two smallest of (d1, d2, dist), d1 <= d2."""
    np.minimum(d2, np.maximum(d1, dist), out=d2)
    np.minimum(d1, dist, out=d1)


def _distance_to(region: np.ndarray, obj_id: int) -> np.ndarray:
    """Euclidean distance float32 (h, w) from each pixel of ``region`` to the pixels == obj_id."""
    nearest = ndi.distance_transform_edt(
        region != obj_id, return_distances=False, return_indices=True
    )
    if max(region.shape) > 40_000:  # squared offsets would overflow int32
        nearest = nearest.astype(np.int64)
    dy = nearest[0] - np.arange(region.shape[0], dtype=nearest.dtype)[:, None]
    dx = nearest[1] - np.arange(region.shape[1], dtype=nearest.dtype)[None, :]
    np.multiply(dy, dy, out=dy)
    np.multiply(dx, dx, out=dx)
    dy += dx
    return np.sqrt(dy, dtype=np.float32)


def _gap_from_distances(d1: np.ndarray, d2: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` in the distances' dtype; infinity gives 0.

    Overwrites ``d1``.
    """
    total = np.add(d1, d2, out=d1)
    np.multiply(total, total, out=total)
    total *= total.dtype.type(-1.0 / (2.0 * sigma * sigma))
    np.exp(total, out=total)
    total *= total.dtype.type(w0)
    return total


def _object_slices(labels: np.ndarray) -> list[tuple[int, tuple[slice, ...]]]:
    """(id, bounding box) of every object in ``labels`` (non-negative integers, any shape)."""
    if labels.size == 0:
        return []
    top = int(labels.max())
    if top == 0:
        return []
    if top > 4 * labels.size + 1024:
        # sparse huge ids: find_objects would allocate one entry per id up to the largest
        ids = np.unique(labels)
        ids = ids[ids != 0]
        seq = np.searchsorted(ids, labels) + 1
        seq[labels == 0] = 0
        boxes = ndi.find_objects(seq)
        return [(int(ids[i]), box) for i, box in enumerate(boxes) if box is not None]
    boxes = ndi.find_objects(labels)
    return [(i + 1, box) for i, box in enumerate(boxes) if box is not None]


def gap_term(
    labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, mask: np.ndarray | None = None
) -> np.ndarray:
    """The border term ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` at every pixel, fast.

    Distances to each object are computed only inside its bounding box plus
    :func:`gap_margin`; the result is within ``GAP_TOLERANCE`` of the exact term.

    Args:
        labels: (H, W) non-negative integer instance ids.
        w0, sigma: height and width of the term.
        mask: optional (H, W) bool; objects farther than the margin from every True pixel are
            skipped (the result is then within the tolerance only inside the mask).

    Returns:
        float32 (H, W); a pixel's distance to its own object is 0.
    """
    labels = np.asarray(labels)
    objects = _object_slices(labels)
    if w0 <= 0 or len(objects) < 2:
        return np.zeros(labels.shape, np.float32)
    margin = gap_margin(w0, sigma)
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    for obj_id, box in objects:
        padded = tuple(
            slice(max(s.start - margin, 0), min(s.stop + margin, n))
            for s, n in zip(box, labels.shape, strict=True)
        )
        if mask is not None and not mask[padded].any():
            continue
        _update_two_smallest(d1[padded], d2[padded], _distance_to(labels[padded], obj_id))
    return _gap_from_distances(d1, d2, w0, sigma)


def exact_gap_term(
    labels: np.ndarray, w0: float, sigma: float, mask: np.ndarray | None = None
) -> np.ndarray:
    """Reference for :func:`gap_term`: one distance transform per object over the whole image.

    ``mask`` is accepted for the same signature and ignored: every object counts.
    """
    objects = _object_slices(labels)
    if w0 <= 0 or len(objects) < 2:
        return np.zeros(labels.shape, np.float32)
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for obj_id, _ in objects:
        _update_two_smallest(d1, d2, ndi.distance_transform_edt(labels != obj_id))
    return _gap_from_distances(d1, d2, w0, sigma).astype(np.float32)
