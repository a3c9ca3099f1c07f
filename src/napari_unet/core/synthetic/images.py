"""Synthetic fluorescence images of nuclei or cells with exact instance ground truth.

The generator draws objects one by one (smooth, randomly perturbed ellipses), places some of them
alone and some touching or overlapping earlier ones, rasterises their exact labels and then forms
the image the way a widefield fluorescence microscope does: object brightness times chromatin-like
texture, out-of-focus blur, background and uneven illumination, then Poisson photon noise, camera
gain, Gaussian read noise and offset.

Labels: where two objects touch, each pixel goes to the object whose (size-normalised) centre is
nearer, which gives the flattened contact of nuclei pressed together; where an object was placed
*on top* (``overlap``), it owns the shared pixels and the intensities add up, as they do in a
fluorescence image. Objects left with fewer than ``min_size`` pixels are dropped (label and
intensity), pieces cut off an object are removed, and ids are consecutive (1..N).

Everything is seeded: the same configuration and seed give the same arrays.

Example::

    image, labels = make_image(SyntheticConfig(shape=(512, 512)), seed=0)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..labels import labels_dtype, stack_ids
from .config import SAMPLE_CONFIG, Seed, SyntheticConfig
from .render import debris, finish_image, form_image, illumination, render, textures
from .shapes import Shape, place, rasterise


def _rng(seed: Seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def _relabel(labels: np.ndarray, n_shapes: int) -> np.ndarray:
    """Consecutive ids 1..N in drawing order; keeps the leading axes."""
    present = np.zeros(n_shapes + 1, bool)
    present[np.unique(labels)] = True
    present[0] = False
    lut = np.zeros(n_shapes + 1, np.int64)
    lut[present] = np.arange(1, int(present.sum()) + 1)
    return lut[labels].astype(labels_dtype(int(present.sum())))


def _set_shift(shapes: list[Shape], shifts: np.ndarray) -> None:
    for s, d in zip(shapes, shifts, strict=True):
        s.shift = (float(d[0]), float(d[1]))


def make_image(
    config: SyntheticConfig, seed: Seed = None, *, dtype: np.dtype | type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its exact instance labels.

    Args:
        config: what to draw.
        seed: an int, a ``numpy.random.Generator`` (its state advances) or None (fresh entropy).
        dtype: ``np.float32`` (camera grey values, not normalised) or ``np.uint16`` (rounded and
            clipped to 0..65535).

    Returns:
        image (H, W) float32 or uint16, and labels (H, W) uint16 (uint32 beyond 65535 objects):
        0 is background, ids are 1..N.
    """
    images, labels = _make(config, 1, _rng(seed), dtype, speed=0.0)
    return images[0], labels[0]


def make_stack(
    config: SyntheticConfig,
    n_planes: int,
    seed: Seed = None,
    *,
    dtype: np.dtype | type = np.float32,
    speed: float = 0.5,
    independent: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A short time-lapse (or independent planes) with exact labels.

    By default the same objects appear in every plane and drift slowly (a random walk with about
    ``speed`` pixels per plane; texture moves with them); illumination and debris stay, the
    photon and camera noise are new in each plane. An object keeps its id in every plane where it
    is visible (ids 1..N over the whole stack), so the labels are also tracking ground truth.
    With ``independent=True`` each plane is a new scene and ids are unique across the stack.

    Returns:
        image (Z, H, W) float32 or uint16, labels (Z, H, W) uint16 (or uint32).
    """
    if n_planes < 1:
        raise ValueError(f"n_planes must be at least 1, got {n_planes}")
    rng = _rng(seed)
    if not independent:
        return _make(config, n_planes, rng, dtype, speed)
    images, labels = [], []
    for _ in range(n_planes):
        image, lab = make_image(config, rng, dtype=dtype)
        images.append(image)
        labels.append(lab)
    return np.stack(images), stack_ids(labels)


def _walk(rng: np.random.Generator, n_planes: int, n: int, speed: float) -> np.ndarray:
    """Displacements (Z, N, 2) float64, zero in the first plane."""
    if n_planes == 1 or speed <= 0:
        return np.zeros((n_planes, n, 2))
    velocity = rng.normal(0, speed / math.sqrt(2), (n, 2))
    steps = velocity[None] + rng.normal(0, 0.3 * speed, (n_planes - 1, n, 2))
    return np.concatenate([np.zeros((1, n, 2)), np.cumsum(steps, axis=0)])


def _make(
    cfg: SyntheticConfig,
    n_planes: int,
    rng: np.random.Generator,
    dtype: np.dtype | type,
    speed: float,
) -> tuple[np.ndarray, np.ndarray]:
    shapes = place(cfg, rng)
    shifts = _walk(rng, n_planes, len(shapes), speed)
    pad = int(np.ceil(np.abs(shifts).max())) + 1 if shifts.size else 1
    h, w = cfg.shape
    tex = textures(cfg, rng, (h + 2 * pad, w + 2 * pad))
    illum = illumination(cfg, rng)
    clutter = debris(cfg, rng)
    images, all_labels = [], []
    for z in range(n_planes):
        _set_shift(shapes, shifts[z])
        labels, stamps = rasterise(shapes, cfg.shape, shifts[z], cfg.min_size)
        signal = render(cfg, shapes, stamps, labels, tex, pad - np.rint(shifts[z]).astype(int))
        images.append(finish_image(form_image(cfg, rng, signal, clutter, illum), dtype))
        all_labels.append(labels)
    return np.stack(images), _relabel(np.stack(all_labels), len(shapes))


def sample_nuclei(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed 512 x 512 sample of nuclei: image (512, 512) uint16 and labels (512, 512) uint16."""
    return make_image(SAMPLE_CONFIG, seed, dtype=np.uint16)


def sample_stack(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed time-lapse of drifting nuclei: image (5, 256, 256) uint16, labels same shape."""
    config = dataclasses.replace(SAMPLE_CONFIG, shape=(256, 256))
    return make_stack(config, 5, seed, dtype=np.uint16, speed=1.0)
