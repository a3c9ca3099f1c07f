"""Image formation of a synthetic image, the way a widefield fluorescence microscope does it.

Object brightness times chromatin-like texture (:func:`render`), out-of-focus blur, background and
uneven illumination, unlabelled debris, then Poisson photon noise, camera gain, Gaussian read noise
and offset (:func:`camera`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .config import SyntheticConfig
from .shapes import Shape, Stamp, ellipse_axes, geometry, harmonics

_DEBRIS_AREA = 1e4  # debris density is counted per 100 x 100 pixels


def unit_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, truncate=3.0)
    std = float(f.std())
    return f / std if std > 0 else f


def textures(
    cfg: SyntheticConfig, rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Fine and coarse zero-mean, unit-variance random fields (H', W') float32."""
    r = 0.5 * sum(cfg.radius)
    return (unit_noise(rng, shape, max(0.7, 0.08 * r)), unit_noise(rng, shape, max(1.5, 0.3 * r)))


def render(
    cfg: SyntheticConfig,
    shapes: list[Shape],
    stamps: list[Stamp | None],
    labels: np.ndarray,
    tex: tuple[np.ndarray, np.ndarray],
    tex_shift: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Object signal (in focus, out of focus), each (H, W) float32, before blur."""
    focus = np.zeros(cfg.shape, np.float32)
    blurred = np.zeros(cfg.shape, np.float32)
    levels = np.array([0] + [s.level for s in shapes], np.int32)
    fine, coarse = tex
    cells = cfg.kind == "cells"
    for i, (s, stamp) in enumerate(zip(shapes, stamps, strict=True)):
        if stamp is None:
            continue
        sl, rho = stamp
        lab = labels[sl]
        m = (rho <= 1.0) & ((lab == i + 1) | (levels[lab] > s.level))
        if not m.any():
            continue
        py, px = int(tex_shift[i, 0]), int(tex_shift[i, 1])
        tsl = (slice(sl[0].start + py, sl[0].stop + py), slice(sl[1].start + px, sl[1].stop + px))
        t = (0.7 * fine[tsl] + 0.5 * coarse[tsl]) if not cells else (0.4 * fine[tsl] + coarse[tsl])
        value = np.exp(np.float32(s.texture) * t - np.float32(0.37 * s.texture**2))
        if cells:
            value *= 0.45 + 0.3 * np.clip(1.0 - rho * rho, 0, 1) ** 0.6
            if not s.plain:
                value *= _nucleus_factor(s, sl)
        else:
            value *= np.clip(1.0 - rho * rho, 0, 1) ** np.float32(s.dome)
            if s.spots:
                value *= _spot_factor(s, sl)
        (blurred if s.defocus else focus)[sl][m] += np.float32(s.brightness) * value[m]
    if cells:
        _add_cell_edges(focus, labels, shapes)
    return focus, blurred


def _box_coords(s: Shape, sl: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    cy, cx = s.cy + s.shift[0], s.cx + s.shift[1]
    yy = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)[None, :] - np.float32(cx)
    return yy, xx


def _nucleus_factor(s: Shape, sl: tuple[slice, slice]) -> np.ndarray:
    """Dimming (h, w) float32 of the cell's nucleus, with a soft edge of about one pixel."""
    if s.nucleus is None:
        return np.ones((sl[0].stop - sl[0].start, sl[1].stop - sl[1].start), np.float32)
    dy, dx, a, b, th, dim = s.nucleus
    yy, xx = _box_coords(s, sl)
    yy, xx = yy - np.float32(dy), xx - np.float32(dx)
    c, sn = np.float32(math.cos(th)), np.float32(math.sin(th))
    rn = np.sqrt(((xx * c + yy * sn) / a) ** 2 + ((yy * c - xx * sn) / b) ** 2)
    inside = np.clip((1.0 - rn) * np.float32(0.5 * min(a, b)) + 0.5, 0.0, 1.0)
    return 1.0 - np.float32(1.0 - dim) * inside


def _spot_factor(s: Shape, sl: tuple[slice, slice]) -> np.ndarray:
    yy, xx = _box_coords(s, sl)
    factor = np.ones(np.broadcast_shapes(yy.shape, xx.shape), np.float32)
    for dy, dx, sigma, depth in s.spots:
        d2 = (yy - np.float32(dy)) ** 2 + (xx - np.float32(dx)) ** 2
        factor -= np.float32(depth) * np.exp(-d2 / np.float32(2 * sigma * sigma))
    return np.clip(factor, 0.2, 1.0)


def _add_cell_edges(signal: np.ndarray, labels: np.ndarray, shapes: list[Shape]) -> None:
    """Brighter cell borders (cortex / membrane), inside the cells only."""
    edge = np.zeros(labels.shape, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    ring = ndimage.gaussian_filter(edge.astype(np.float32), 1.2) * 2.5
    bright = np.array([0.0] + [s.brightness for s in shapes], np.float32)
    signal += 0.55 * np.minimum(ring, 1.0) * bright[labels]


def debris(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unlabelled blobs: (in focus, out of focus) signal, each (H, W) float32."""
    hw = cfg.shape
    focus = np.zeros(hw, np.float32)
    blurred = np.zeros(hw, np.float32)
    n = int(rng.poisson(cfg.debris * hw[0] * hw[1] / _DEBRIS_AREA)) if cfg.debris > 0 else 0
    rmin = cfg.radius[0]
    for _ in range(n):
        speck = rng.random() < 0.7
        r = rng.uniform(0.6, max(1.0, 0.3 * rmin)) if speck else rng.uniform(0.3, 0.6) * rmin
        a, b = ellipse_axes(max(r, 0.6), rng.uniform(0.5, 1.0))
        s = Shape(
            cy=rng.uniform(0, hw[0]),
            cx=rng.uniform(0, hw[1]),
            a=a,
            b=b,
            theta=rng.uniform(0, np.pi),
            harm=harmonics(rng, 0.2, 4),
            brightness=rng.uniform(0.5, 3.0) if speck else rng.uniform(0.15, 0.4),
            texture=0.0,
            dome=0.3,
        )
        stamp = geometry(s, hw)
        if stamp is None:
            continue
        sl, rho = stamp
        value = np.float32(s.brightness) * np.clip(1.0 - rho * rho, 0, 1) ** np.float32(s.dome)
        (focus if speck else blurred)[sl] += value
    return focus, blurred


def illumination(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative illumination field (H, W) float32 with mean 1."""
    h, w = cfg.shape
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    gy, gx = rng.normal(0, 0.5, 2).astype(np.float32)
    y0, x0 = rng.uniform(-0.7, 0.7, 2).astype(np.float32)
    vignette = np.float32(rng.uniform(0.0, 0.8))
    g = np.float32(cfg.gradient)
    field_ = np.exp(g * (gy * y - vignette * (y - y0) ** 2)) * np.exp(
        g * (gx * x - vignette * (x - x0) ** 2)
    )  # separable: two small exps, one product
    return field_ / np.float32(field_.mean())


def camera(cfg: SyntheticConfig, rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    """Poisson photon noise, gain, read noise and offset: grey values (H, W) float32."""
    lam = np.maximum(clean, 0) * np.float32(cfg.photons)
    counts = lam + np.sqrt(lam) * rng.standard_normal(lam.shape, dtype=np.float32)
    low = lam < 30  # exact Poisson where the normal approximation is poor
    if low.any():
        counts[low] = rng.poisson(lam[low])
    counts = np.maximum(np.rint(counts), 0)
    adu = counts * np.float32(cfg.gain) + np.float32(cfg.offset)
    if cfg.read_noise > 0:
        adu += np.float32(cfg.read_noise) * rng.standard_normal(clean.shape, dtype=np.float32)
    return adu


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0 or not a.any():
        return a
    return ndimage.gaussian_filter(a, sigma, truncate=3.5)


def form_image(
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    signal: tuple[np.ndarray, ...],
    debris: tuple[np.ndarray, np.ndarray],
    illum: np.ndarray,
) -> np.ndarray:
    focus, blurred = signal
    r = 0.5 * sum(cfg.radius)
    sigma_defocus = math.hypot(cfg.blur, 1.0 + 0.2 * r)
    image = _blur(focus + debris[0], cfg.blur) + _blur(blurred + debris[1], sigma_defocus)
    image += np.float32(cfg.background)
    image *= illum
    return camera(cfg, rng, image)


def finish_image(adu: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt == np.float32:
        return adu.astype(np.float32, copy=False)
    if dt == np.uint16:
        return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
    raise ValueError(f"dtype must be float32 or uint16, got {dt}")
