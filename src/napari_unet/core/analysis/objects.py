"""Per-object measurements: what the network's probabilities say about each predicted object.

For instance labels and the class probabilities they were made from (background, interior,
boundary), :func:`object_features` measures, for every object, the evidence behind it: how strongly
the network saw an interior (seed strength), how sure it was of the pixels (entropy), how clearly
the object is separated from its surroundings (interior/boundary margins on its rim and just
outside it), how much of its outline touches another object, its size, and the signs that it is
two objects merged into one (:mod:`.shape`). :mod:`.quality` turns
these into the chance that the object is right.

:func:`likely_misses` finds the opposite error: regions the network calls foreground that carry no
label (objects that a threshold, the minimum size or an edit removed).

Everything works on N-dimensional arrays: a plane (Y, X), or a volume (Z, Y, X) with 3D ids. The
neighbourhood (rim, outside ring) is taken along the last ``spatial_ndim`` axes only, so that a
stack labelled plane by plane is measured plane by plane.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputMismatchError
from .shape import SHAPE_FEATURES, shape_features

logger = logging.getLogger(__name__)

#: The features of :func:`object_features`, in the order of :attr:`ObjectFeatures.matrix`.
FEATURE_NAMES: tuple[str, ...] = (
    "log_area",
    "size_deviation",
    "seed_strength",
    "interior_mean",
    "interior_fraction",
    "foreground_mean",
    "entropy_mean",
    "rim_boundary",
    "outside_separation",
    "touching",
    "size_excess",
    *SHAPE_FEATURES,
)

_EPS = 1e-6


@dataclass(frozen=True, eq=False)
class ObjectFeatures:
    """Per-object evidence from the probabilities.

    Attributes:
        ids: label id of each object, int64 (N,), ascending.
        matrix: float64 (N, F), the features of :data:`FEATURE_NAMES` in that order:

            - ``log_area``: natural log of the pixel count;
            - ``size_deviation``: absolute log ratio of the area to the median area of all the
              objects;
            - ``seed_strength``: highest interior probability, smoothed over 3 pixels;
            - ``interior_mean``, ``interior_fraction``: mean of p(interior), share of pixels
              where it exceeds 0.5;
            - ``foreground_mean``: mean of 1 - p(background);
            - ``entropy_mean``: mean class entropy, 0..1;
            - ``rim_boundary``: mean p(boundary) on the object's own edge pixels;
            - ``outside_separation``: mean 1 - p(interior) just outside the object;
            - ``touching``: share of the outside ring that belongs to another object;
            - ``size_excess``: how far the area exceeds the median area, ``max(0, log ratio)``;
            - ``interior_peaks``, ``shape_peaks``, ``solidity``, ``interior_ridge``: the merge
              evidence of :func:`.shape.shape_features` (several interior-probability peaks or
              distance maxima, a waist, a boundary ridge inside).
    """

    ids: np.ndarray
    matrix: np.ndarray

    def column(self, name: str) -> np.ndarray:
        """One feature for every object, float64 (N,)."""
        return self.matrix[:, FEATURE_NAMES.index(name)]


def _check(probs: np.ndarray, labels: np.ndarray) -> None:
    if probs.ndim != labels.ndim + 1 or probs.shape[1:] != labels.shape:
        raise InputMismatchError(
            f"probabilities of shape {probs.shape} do not fit labels of shape {labels.shape} "
            "(expected the labels' shape with a class axis first)"
        )
    if probs.shape[0] != 3:
        raise InputMismatchError(
            "per-object quality needs the 3 classes of an instance model (background, interior, "
            f"boundary), got {probs.shape[0]}"
        )


def _codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label ids -> consecutive codes: (codes int64 of labels' shape, ids int64 (N,))."""
    ids, inverse = np.unique(labels, return_inverse=True)
    codes = inverse.reshape(labels.shape).astype(np.int64, copy=False)
    if ids.size and ids[0] == 0:
        return codes, ids[1:].astype(np.int64)
    return codes + 1, ids.astype(np.int64)


def _sums(codes: np.ndarray, n: int, values: np.ndarray | None = None) -> np.ndarray:
    """Per-code sums of ``values`` (counts when None), float64 (n + 1,)."""
    weights = None if values is None else values.ravel()
    return np.bincount(codes.ravel(), weights=weights, minlength=n + 1).astype(np.float64)


def _neighbour_pairs(codes: np.ndarray, spatial_ndim: int):
    """For each of the 2 * spatial_ndim axis-neighbour shifts: (codes at p, codes at the
    neighbour q, flat index of q), over pixels p whose neighbour q exists."""
    ndim = codes.ndim
    for axis in range(ndim - spatial_ndim, ndim):
        for step in (1, -1):
            here = [slice(None)] * ndim
            there = [slice(None)] * ndim
            if step == 1:
                here[axis], there[axis] = slice(0, -1), slice(1, None)
            else:
                here[axis], there[axis] = slice(1, None), slice(0, -1)
            yield tuple(here), tuple(there)


def object_features(probs: np.ndarray, labels: np.ndarray, spatial_ndim: int = 2) -> ObjectFeatures:
    """Measure every object of ``labels`` in ``probs``.

    Args:
        probs: float (3, *S) class probabilities (background, interior, boundary), S the labels'
            shape.
        labels: integer (*S) instance labels, 0 background; ids need not be consecutive.
        spatial_ndim: 2 (plane by plane) or 3 (volumes): the axes, counted from the last, along
            which neighbours are taken.

    Returns:
        The features of every object (none for empty labels).

    Raises:
        InputMismatchError: the shapes do not fit or there are not 3 classes.
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    _check(probs, labels)
    codes, ids = _codes(labels)
    n = len(ids)
    if n == 0:
        return ObjectFeatures(ids, np.zeros((0, len(FEATURE_NAMES))))
    p_bg = np.asarray(probs[0], dtype=np.float32)
    p_in = np.asarray(probs[1], dtype=np.float32)
    p_bd = np.asarray(probs[2], dtype=np.float32)
    area = _sums(codes, n)
    inside = np.maximum(area, 1.0)

    smooth_axes = tuple(range(p_in.ndim - spatial_ndim, p_in.ndim))
    sigma = [1.0 if a in smooth_axes else 0.0 for a in range(p_in.ndim)]
    smoothed = ndi.gaussian_filter(p_in, sigma, mode="nearest")
    seed = np.zeros(n + 1)
    np.maximum.at(seed, codes.ravel(), smoothed.ravel().astype(np.float64))

    clipped = np.clip(np.stack([p_bg, p_in, p_bd]), _EPS, 1.0)
    entropy = -(clipped * np.log(clipped)).sum(axis=0) / np.log(3.0)

    rim = np.zeros(n + 1)
    rim_count = np.zeros(n + 1)
    ring_sep = np.zeros(n + 1)
    ring_count = np.zeros(n + 1)
    touch = np.zeros(n + 1)
    for here, there in _neighbour_pairs(codes, spatial_ndim):
        a, b = codes[here], codes[there]
        edge = (a != b) & (a > 0)
        a_edge = a[edge]
        # p is on the object's rim; q is just outside it
        rim += np.bincount(a_edge, weights=p_bd[here][edge], minlength=n + 1)
        rim_count += np.bincount(a_edge, minlength=n + 1)
        ring_sep += np.bincount(a_edge, weights=1.0 - p_in[there][edge], minlength=n + 1)
        ring_count += np.bincount(a_edge, minlength=n + 1)
        touch += np.bincount(a_edge, weights=(b[edge] > 0).astype(np.float64), minlength=n + 1)
    ring_count = np.maximum(ring_count, 1.0)

    smoothed_boundary = ndi.gaussian_filter(p_bd, sigma, mode="nearest")
    log_ratio = np.log(inside) - np.median(np.log(inside[1:]))
    columns = {
        "log_area": np.log(inside),
        "size_deviation": np.abs(log_ratio),
        "size_excess": np.maximum(log_ratio, 0.0),
        **shape_features(codes, n, smoothed, smoothed_boundary, spatial_ndim),
        "seed_strength": seed,
        "interior_mean": _sums(codes, n, p_in) / inside,
        "interior_fraction": _sums(codes, n, (p_in > 0.5).astype(np.float32)) / inside,
        "foreground_mean": 1.0 - _sums(codes, n, p_bg) / inside,
        "entropy_mean": _sums(codes, n, entropy) / inside,
        "rim_boundary": rim / np.maximum(rim_count, 1.0),
        "outside_separation": ring_sep / ring_count,
        "touching": touch / ring_count,
    }
    matrix = np.stack([columns[name][1:] for name in FEATURE_NAMES], axis=1)
    return ObjectFeatures(ids, matrix)


@dataclass(frozen=True, eq=False)
class Misses:
    """Foreground regions that carry no label.

    Attributes:
        labels: int32 (*S): region ids 1..M where a miss is, 0 elsewhere.
        area: pixels of each region, int64 (M,).
        score: mean foreground probability of each region, float64 (M,).
        centroid: float64 (M, len(S)), in array coordinates.
    """

    labels: np.ndarray
    area: np.ndarray
    score: np.ndarray
    centroid: np.ndarray

    def __len__(self) -> int:
        return len(self.area)


def _structure(ndim: int, spatial_ndim: int) -> np.ndarray:
    """4- (6-) connectivity along the last ``spatial_ndim`` axes only: bool (3,) * ndim."""
    spatial_ndim = min(spatial_ndim, ndim)
    structure = np.zeros((3,) * ndim, dtype=bool)
    structure[(1,) * (ndim - spatial_ndim)] = ndi.generate_binary_structure(spatial_ndim, 1)
    return structure


def likely_misses(
    probs: np.ndarray,
    labels: np.ndarray,
    threshold: float = 0.5,
    min_size: int = 16,
    spatial_ndim: int = 2,
) -> Misses:
    """Regions where the network sees foreground but ``labels`` has none: likely missed objects.

    A region is a connected component (along the last ``spatial_ndim`` axes) of the pixels with
    ``1 - p(background) > threshold`` and label 0, eroded by one pixel first so that the thin
    foreground margin around every labelled object does not count.

    Args:
        probs: float (3, *S) class probabilities.
        labels: integer (*S) labels, 0 background.
        threshold: foreground probability above which an unlabelled pixel counts.
        min_size: smallest region reported, in pixels (before the erosion is undone).
        spatial_ndim: 2 or 3, as in :func:`object_features`.

    Returns:
        The regions, largest score first.
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    _check(probs, labels)
    foreground = 1.0 - np.asarray(probs[0], dtype=np.float32)
    free = (foreground > threshold) & (labels == 0)
    structure = _structure(labels.ndim, spatial_ndim)
    core = ndi.binary_erosion(free, structure)
    regions, count = ndi.label(ndi.binary_dilation(core, structure) & free, structure)
    if count == 0:
        return Misses(
            regions.astype(np.int32), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, labels.ndim))
        )
    index = np.arange(1, count + 1)
    area = ndi.sum_labels(np.ones_like(foreground), regions, index).astype(np.int64)
    keep = area >= max(min_size, 1)
    lut = np.zeros(count + 1, dtype=np.int32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    score = ndi.mean(foreground, regions, index)[keep]
    centroid = np.array(ndi.center_of_mass(free, regions, index[keep])).reshape(-1, labels.ndim)
    regions = lut[regions]
    order = np.argsort(-score, kind="stable")
    relabel = np.zeros(len(order) + 1, dtype=np.int32)
    relabel[order + 1] = np.arange(1, len(order) + 1)
    return Misses(relabel[regions], area[keep][order], score[order], centroid[order])
