"""Class probabilities -> labels: instance labels by seeded watershed, or semantic class ids.

Post-processing is a pure function of the probabilities: thresholds and the minimum object size can
change (e.g. from a slider) without running the network again.

Instance mode expects three classes, in this order: background, interior, boundary. The steps:

1. foreground = pixels with ``1 - p(background) > foreground_threshold``;
2. seeds = 4-connected components of ``p(interior) > interior_threshold`` inside the foreground
   (the interior probability may first be smoothed a little, see ``seed_sigma``); seeds smaller
   than ``min_seed_size`` pixels are dropped as noise;
3. a foreground component that holds one seed becomes one object; one that holds no seed becomes
   one object too (the network saw something there but was unsure of its interior); only
   components with several seeds are split, by a watershed of ``1 - p(interior)`` from the seeds,
   limited to the component (4-connectivity);
4. objects smaller than ``min_size`` pixels are removed and the ids are made consecutive
   (1..N, 0 is background); the dtype is uint16 when N fits, else uint32.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from ..errors import InputMismatchError
from ..labels import IdOffsets, labels_dtype
from ..progress import Progress, drain

logger = logging.getLogger(__name__)

Mode = Literal["instances", "semantic"]


@dataclass(frozen=True)
class PostprocessConfig:
    """How probabilities become labels.

    Attributes:
        mode: ``"instances"`` (seeded watershed, needs the three classes background, interior,
            boundary) or ``"semantic"`` (the most probable class per pixel).
        interior_threshold: a pixel seeds an object where ``p(interior)`` exceeds this.
        foreground_threshold: objects grow only where ``1 - p(background)`` exceeds this.
        min_size: objects smaller than this many pixels are removed (0 or 1 keeps all).
        min_seed_size: seeds smaller than this many pixels are ignored as noise.
        seed_sigma: Gaussian smoothing (in pixels) of ``p(interior)`` before the seeds are
            thresholded and the watershed runs; 0 turns it off.
    """

    mode: Mode = "instances"
    interior_threshold: float = 0.5
    foreground_threshold: float = 0.5
    min_size: int = 16
    min_seed_size: int = 4
    seed_sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("instances", "semantic"):
            raise ValueError(f"unknown post-processing mode {self.mode!r}")
        for name in ("interior_threshold", "foreground_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.min_size < 0 or self.min_seed_size < 0:
            raise ValueError("min_size and min_seed_size must be zero or positive")
        if self.seed_sigma < 0:
            raise ValueError(f"seed_sigma must be zero or positive, got {self.seed_sigma}")


def semantic_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """The most probable class per pixel.

    Args:
        probs: class probabilities, shape (K, H, W), any float dtype.

    Returns:
        Class ids 0..K-1, shape (H, W), uint8 when K <= 256 else uint16.
    """
    probs = _check_planar(probs)
    n_classes = probs.shape[0]
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    return np.argmax(probs, axis=0).astype(dtype)


def instances_from_probabilities(
    probs: np.ndarray, config: PostprocessConfig | None = None
) -> np.ndarray:
    """Instance labels from (background, interior, boundary) probabilities by seeded watershed.

    Args:
        probs: probabilities, shape (3, H, W), float32 from the network or float16 as Segment
            keeps them (compared with the thresholds as float32).
        config: thresholds and sizes; the defaults when ``None``.

    Returns:
        Instance labels, shape (H, W), ids 1..N consecutive (0 background), uint16 when N fits,
        else uint32.

    Raises:
        InputMismatchError: ``probs`` does not have three classes.
    """
    config = config or PostprocessConfig()
    probs = _check_planar(probs)
    if probs.shape[0] != 3:
        raise InputMismatchError(
            "instance post-processing needs 3 classes (background, interior, boundary), "
            f"got {probs.shape[0]}"
        )
    interior = np.asarray(probs[1], dtype=np.float32)
    if config.seed_sigma > 0:
        interior = ndi.gaussian_filter(interior, config.seed_sigma, mode="nearest")
    # float16 probabilities are compared as float32, like the network's own output
    foreground = np.asarray(probs[0], dtype=np.float32) < 1.0 - config.foreground_threshold
    seeds = (interior > config.interior_threshold) & foreground
    seed_labels, n_raw = _label(seeds)
    del seeds  # each full-size temporary goes as soon as it is used: the peak is post-processing
    seed_ids = _seed_ids(seed_labels, n_raw, config.min_seed_size)
    labels = _grow(seed_labels, seed_ids, foreground, interior)
    return _drop_small_and_cast(labels, config.min_size)


def postprocess(
    probs: np.ndarray, task: str, config: PostprocessConfig | None = None
) -> Generator[Progress, None, np.ndarray]:
    """Labels from probabilities, plane by plane, as a generator of progress events.

    An instance model gives instance labels unless ``config.mode`` is ``"semantic"`` (then its
    class map); a semantic model always gives class ids.

    Args:
        probs: probabilities, shape (K, *leading, H, W) (class axis first, e.g. (K, Z, Y, X)).
        task: the model's task, ``"instances"`` or ``"semantic"``.
        config: post-processing settings; the defaults when ``None``.

    Yields:
        One :class:`Progress` (stage ``"postprocess"``) per plane.

    Returns:
        Labels, shape (*leading, H, W). Instance ids are unique across the whole stack (each
        plane's ids are offset by the ids used before it); uint16 when the largest id fits, else
        uint32. Semantic class ids are uint8 (uint16 beyond 256 classes).
    """
    config = config or PostprocessConfig()
    if task not in ("instances", "semantic"):
        raise ValueError(f"unknown task {task!r}; expected 'instances' or 'semantic'")
    if probs.ndim < 3:
        raise InputMismatchError(
            f"probabilities need a class axis and two image axes, got shape {probs.shape}"
        )
    semantic = task == "semantic" or config.mode == "semantic"
    leading = probs.shape[1:-2]
    plane_shape = probs.shape[-2:]
    total = int(np.prod(leading, dtype=np.int64))
    out = np.zeros(leading + plane_shape, dtype=np.uint8 if semantic else np.uint16)
    ids = IdOffsets()
    for done, index in enumerate(np.ndindex(*leading), start=1):
        plane = np.asarray(probs[(slice(None), *index)])
        if semantic:
            result = semantic_from_probabilities(plane)
            if result.dtype != out.dtype:
                out = out.astype(result.dtype)
            out[index] = result
        else:
            result = ids.add(instances_from_probabilities(plane, config))
            if result.dtype != out.dtype:
                out = out.astype(np.promote_types(result.dtype, out.dtype))
            out[index] = result
        yield Progress("postprocess", done, total, f"post-processed plane {done} of {total}")
    return out


def labels_from_probabilities(
    probs: np.ndarray, task: str, config: PostprocessConfig | None = None
) -> np.ndarray:
    """Labels from probabilities for one image or a stack (see :func:`postprocess`).

    Args:
        probs: probabilities, shape (K, *leading, H, W).
        task: ``"instances"`` or ``"semantic"``.
        config: post-processing settings; the defaults when ``None``.

    Returns:
        Labels, shape (*leading, H, W): instance ids unique across the stack (uint16 or uint32),
        or class ids (uint8).
    """
    return drain(postprocess(probs, task, config))


# --- helpers ---------------------------------------------------------------------------------


def _check_planar(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise InputMismatchError(
            f"expected probabilities of shape (classes, height, width), got shape {probs.shape}"
        )
    return probs


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean (H, W) mask -> int32 labels and their count."""
    labels, count = ndi.label(mask)
    return labels.astype(np.int32, copy=False), int(count)


def _seed_ids(seed_labels: np.ndarray, n_raw: int, min_seed_size: int) -> np.ndarray:
    """Lookup table raw seed id -> kept seed id (1..S, consecutive); 0 for seeds too small.

    Returns:
        int32 array of length ``n_raw + 1``.
    """
    seed_ids = np.zeros(n_raw + 1, dtype=np.int32)
    if min_seed_size > 1 and n_raw:
        keep = np.bincount(seed_labels.ravel(), minlength=n_raw + 1) >= min_seed_size
        keep[0] = False
    else:
        keep = np.ones(n_raw + 1, dtype=bool)
        keep[0] = False
    seed_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return seed_ids


def _grow(
    seed_labels: np.ndarray,
    seed_ids: np.ndarray,
    foreground: np.ndarray,
    interior: np.ndarray,
) -> np.ndarray:
    """Grow seeds over the foreground; returns int32 (H, W) labels (not yet consecutive).

    Args:
        seed_labels: raw seed components, int32 (H, W).
        seed_ids: lookup table raw seed id -> kept seed id (0 = ignored), int32 (R + 1,).
        foreground: bool (H, W).
        interior: interior probability, float32 (H, W).

    Components with one seed take its id, components with none get new ids, and only those with
    several seeds go through the watershed (restricted to their bounding box).
    """
    components, n_components = _label(foreground)
    if n_components == 0:
        return components
    n_seeds = int(seed_ids.max())
    component_of_raw = np.zeros(len(seed_ids), dtype=np.int32)
    component_of_raw[seed_labels.ravel()] = components.ravel()
    kept = seed_ids > 0
    component_of_seed = np.zeros(n_seeds + 1, dtype=np.int32)
    component_of_seed[seed_ids[kept]] = component_of_raw[kept]
    seeds_per_component = np.bincount(component_of_seed[1:], minlength=n_components + 1)
    seeds_per_component[0] = 0

    lut = np.zeros(n_components + 1, dtype=np.int32)
    ids = np.arange(1, n_seeds + 1, dtype=np.int32)
    alone = seeds_per_component[component_of_seed[1:]] == 1
    lut[component_of_seed[1:][alone]] = ids[alone]
    unseeded = np.flatnonzero(seeds_per_component == 0)[1:]
    lut[unseeded] = np.arange(n_seeds + 1, n_seeds + 1 + len(unseeded), dtype=np.int32)
    labels = lut[components]

    crowded = seeds_per_component >= 2
    if crowded.any():
        region = crowded[components]
        del components
        box = _bounding_box(region)
        markers = np.where(region[box], seed_ids[seed_labels[box]], 0)
        labels[box] = _split(labels[box], region[box], markers, interior[box])
    return labels


def _split(
    labels: np.ndarray, region: np.ndarray, markers: np.ndarray, interior: np.ndarray
) -> np.ndarray:
    """Watershed of ``1 - interior`` from the seeds inside ``region``.

    Args:
        labels: current labels, int32 (h, w); kept outside ``region``.
        region: pixels of components with several seeds, bool (h, w).
        markers: seed ids inside ``region`` (0 elsewhere), int32 (h, w).
        interior: interior probability, float (h, w).

    The elevation is quantised to 256 levels (uint8), which makes the flooding faster with no
    visible change. Seed pixels with no contested pixel among their four neighbours cannot
    change, so they are left out of the flooding; the work is proportional to the pixels that
    are actually contested.
    """
    contested = region & (markers == 0)
    near = contested.copy()
    near[1:, :] |= contested[:-1, :]
    near[:-1, :] |= contested[1:, :]
    near[:, 1:] |= contested[:, :-1]
    near[:, :-1] |= contested[:, 1:]
    flood = near & region
    del contested, near
    elevation = _quantised_elevation(interior)
    grown = watershed(elevation, np.where(flood, markers, 0), connectivity=1, mask=flood)
    grown = np.where(flood, grown, markers)
    return np.where(region, grown, labels).astype(np.int32, copy=False)


def _quantised_elevation(interior: np.ndarray) -> np.ndarray:
    """``1 - interior`` on 256 levels: uint8 (h, w), 0 where interior is 1, 255 where 0 or NaN."""
    scaled = np.multiply(interior, 255.0, dtype=np.float32)
    scaled += 0.5
    np.fmax(scaled, 0.0, out=scaled)  # NaN -> 0
    np.fmin(scaled, 255.0, out=scaled)
    return 255 - scaled.astype(np.uint8)


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    """Smallest (row, column) slices that hold every True pixel of a non-empty (H, W) mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _drop_small_and_cast(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Remove objects below ``min_size`` pixels, make ids consecutive, cast to uint16/uint32.

    Args:
        labels: int32 (H, W), ids 0..M (some ids may be unused).

    Returns:
        (H, W) labels with ids 1..N, uint16 when N fits, else uint32.
    """
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    count = int(keep.sum())
    dtype = labels_dtype(count)
    if count == len(sizes) - 1:  # nothing to remove, ids already consecutive
        return labels.astype(dtype)
    logger.debug("removed %d objects smaller than %d pixels", len(sizes) - 1 - count, min_size)
    lut = np.zeros(len(sizes), dtype=dtype)
    lut[keep] = np.arange(1, count + 1)
    return lut[labels]
