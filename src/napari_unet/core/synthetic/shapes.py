"""Objects of a synthetic image: their outlines, their placement and their exact labels.

Each object is a smooth, randomly perturbed ellipse (:class:`Shape`). :func:`place` draws them one
by one and puts some alone and some touching or overlapping earlier ones; :func:`rasterise` turns
them into labels where two touching objects split their contact by the nearer (size-normalised)
centre and an object placed on top owns the shared pixels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .config import SyntheticConfig

logger = logging.getLogger(__name__)

Stamp = tuple[tuple[slice, slice], np.ndarray]  # box in the image, rho (h, w) float32


@dataclass
class Shape:
    """One object: a perturbed ellipse with its appearance (internal)."""

    cy: float
    cx: float
    a: float  # semi-axis along theta
    b: float  # semi-axis across theta
    theta: float
    harm: np.ndarray  # (k, amplitude, phase) rows
    brightness: float
    texture: float
    dome: float  # exponent of the (1 - rho^2) intensity profile
    defocus: bool = False
    level: int = 0  # 0 touches its neighbours; k > 0 lies on top of everything below k
    plain: bool = False  # cells: no visible nucleus (dividing, dying)
    nucleus: tuple[float, float, float, float, float, float] | None = None  # dy dx a b th dim
    spots: list[tuple[float, float, float, float]] = field(default_factory=list)  # dy dx s depth
    shift: tuple[float, float] = (0.0, 0.0)  # displacement in the plane being drawn
    stamp0: Stamp | None = None  # geometry at zero displacement, kept from placement

    @property
    def extent(self) -> float:
        return max(self.a, self.b) * (1.0 + float(np.abs(self.harm[:, 1]).sum())) + 1.5

    @property
    def mean_radius(self) -> float:
        return math.sqrt(self.a * self.b)


def geometry(s: Shape, shape: tuple[int, int], dy: float = 0.0, dx: float = 0.0) -> Stamp | None:
    """Normalised radius ``rho`` of ``s`` (shifted by dy, dx) in its box; inside is rho <= 1."""
    cy, cx, ext = s.cy + dy, s.cx + dx, s.extent
    y0, y1 = max(math.floor(cy - ext), 0), min(math.ceil(cy + ext) + 1, shape[0])
    x0, x1 = max(math.floor(cx - ext), 0), min(math.ceil(cx + ext) + 1, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    c, sn = np.float32(math.cos(s.theta)), np.float32(math.sin(s.theta))
    u = (xx * c + yy * sn) / np.float32(s.a)
    v = (yy * c - xx * sn) / np.float32(s.b)
    rho = np.sqrt(u * u + v * v)
    if len(s.harm):  # radius scale 1 + sum_k amp_k cos(k phi + phase_k), by Horner in z = e^(i phi)
        inv = 1.0 / np.maximum(rho, np.float32(1e-6))
        z = (u * inv) + 1j * (v * inv)
        coef = (s.harm[:, 1] * np.exp(1j * s.harm[:, 2])).astype(np.complex64)
        poly = np.full(rho.shape, coef[-1], np.complex64)
        for c_k in coef[-2::-1]:
            poly *= z
            poly += c_k
        poly *= z ** int(s.harm[0, 0])
        rho /= 1.0 + poly.real
    return (slice(y0, y1), slice(x0, x1)), rho


def harmonics(rng: np.random.Generator, amount: float, kmax: int, decay: float = 0.8) -> np.ndarray:
    ks = np.arange(2, kmax + 1, dtype=np.float64)
    amps = amount * rng.normal(size=ks.size) / ks**decay
    total = np.abs(amps).sum()
    if total > 0.45:
        amps *= 0.45 / total
    return np.stack([ks, amps, rng.uniform(0, 2 * np.pi, ks.size)], axis=1)


def ellipse_axes(r: float, ratio: float) -> tuple[float, float]:
    return r / math.sqrt(ratio), r * math.sqrt(ratio)


def _base_shape(cfg: SyntheticConfig, rng: np.random.Generator, r: float) -> Shape:
    cells = cfg.kind == "cells"
    a, b = ellipse_axes(r, 1.0 - cfg.elongation * rng.random())
    sigma = cfg.brightness_variation
    shape = Shape(
        cy=0.0,
        cx=0.0,
        a=a,
        b=b,
        theta=rng.uniform(0, np.pi),
        harm=(
            harmonics(rng, 0.1 + 2.0 * cfg.irregularity, 7, 1.4)
            if cells
            else harmonics(rng, cfg.irregularity, 6)
        ),
        brightness=float(rng.lognormal(-0.5 * sigma**2, sigma)) if sigma > 0 else 1.0,
        texture=cfg.texture * rng.uniform(0.6, 1.4),
        dome=rng.uniform(0.1, 0.45),
        defocus=bool(rng.random() < cfg.defocus),
    )
    if cells:
        rn = r * cfg.nucleus_fraction * rng.uniform(0.85, 1.15)
        na, nb = ellipse_axes(rn, rng.uniform(0.65, 1.0))
        off = rng.uniform(0, 0.35) * (r - rn)
        ang = rng.uniform(0, 2 * np.pi)
        shape.nucleus = (
            off * math.sin(ang),
            off * math.cos(ang),
            na,
            nb,
            rng.uniform(0, np.pi),
            rng.uniform(0.45, 0.8),
        )
    elif rng.random() < 0.5 and cfg.texture > 0:
        for _ in range(rng.integers(1, 4)):  # nucleoli: darker spots
            d, ang = rng.uniform(0, 0.5) * r, rng.uniform(0, 2 * np.pi)
            shape.spots.append(
                (
                    d * math.sin(ang),
                    d * math.cos(ang),
                    rng.uniform(0.1, 0.2) * r,
                    rng.uniform(0.2, 0.5),
                )
            )
    return shape


def _group(
    cfg: SyntheticConfig, rng: np.random.Generator
) -> tuple[list[Shape], list[tuple[float, float]]]:
    """One object or a group (dividing pair, dying fragments) with offsets from its anchor."""
    r = rng.uniform(*cfg.radius)
    u = rng.random()
    main = _base_shape(cfg, rng, r)
    if u < cfg.dividing:
        return _dividing(cfg, rng, main, r)
    if u < cfg.dividing + cfg.dying:
        return _dying(cfg, rng, main, r)
    return [main], [(0.0, 0.0)]


def _dividing(
    cfg: SyntheticConfig, rng: np.random.Generator, main: Shape, r: float
) -> tuple[list[Shape], list[tuple[float, float]]]:
    cells = cfg.kind == "cells"
    rd = r * rng.uniform(0.55, 0.7) if cells else r * rng.uniform(0.6, 0.75)
    ratio = rng.uniform(0.8, 1.0) if cells else rng.uniform(0.5, 0.8)
    a, b = ellipse_axes(rd, ratio)
    axis = rng.uniform(0, np.pi)
    gap = rng.uniform(0.0, 2.0) if cells else rng.uniform(2.0, max(2.5, rd))
    half = b + gap / 2
    gain = rng.uniform(1.4, 2.2)
    shapes, offsets = [], []
    for sign in (-1.0, 1.0):
        d = Shape(
            cy=0.0,
            cx=0.0,
            a=a,
            b=b,
            theta=axis + np.pi / 2,
            harm=harmonics(rng, cfg.irregularity * 0.5, 4),
            brightness=main.brightness * gain,
            texture=main.texture * 0.5,
            dome=rng.uniform(0.05, 0.2),
            defocus=main.defocus,
            plain=True,
        )
        shapes.append(d)
        offsets.append((sign * half * math.sin(axis), sign * half * math.cos(axis)))
    return shapes, offsets


def _dying(
    cfg: SyntheticConfig, rng: np.random.Generator, main: Shape, r: float
) -> tuple[list[Shape], list[tuple[float, float]]]:
    min_r = math.sqrt(cfg.min_size / math.pi) + 0.8
    rd = max(r * rng.uniform(0.35, 0.6), min_r)
    bright = main.brightness * rng.uniform(1.8, 3.5)
    n = 1 if rng.random() < 0.5 else int(rng.integers(2, 6))
    shapes, offsets = [], []
    for i in range(n):
        rf = rd if n == 1 else max(rd * rng.uniform(0.4, 0.65), min_r)
        a, b = ellipse_axes(rf, rng.uniform(0.8, 1.0))
        shapes.append(
            Shape(
                cy=0.0,
                cx=0.0,
                a=a,
                b=b,
                theta=rng.uniform(0, np.pi),
                harm=harmonics(rng, 0.03, 3),
                brightness=bright * rng.uniform(0.8, 1.2),
                texture=main.texture * 0.2,
                dome=rng.uniform(0.0, 0.1),
                defocus=main.defocus,
                plain=True,
            )
        )
        d = 0.0 if i == 0 else rng.uniform(1.2, 2.2) * rd
        ang = rng.uniform(0, 2 * np.pi)
        offsets.append((d * math.sin(ang), d * math.cos(ang)))
    return shapes, offsets


def _target_count(cfg: SyntheticConfig) -> int:
    if cfg.n_objects is not None:
        return cfg.n_objects
    lo, hi = cfg.radius
    mean_area = math.pi * (lo * lo + lo * hi + hi * hi) / 3.0
    return round(cfg.coverage * cfg.shape[0] * cfg.shape[1] / mean_area)


class _Canvas:
    """Label and depth buffers: a pixel belongs to the object of least depth."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.labels = np.zeros(shape, np.int32)
        self.depth = np.full(shape, np.inf, np.float32)

    def stamp(self, ident: int, stamp: Stamp, level: int) -> None:
        sl, rho = stamp
        d = rho - np.float32(2 * level)
        win = (rho <= 1.0) & (d < self.depth[sl])
        self.labels[sl][win] = ident
        self.depth[sl][win] = d[win]


def place(cfg: SyntheticConfig, rng: np.random.Generator) -> list[Shape]:
    """Draw and place objects; returns them in drawing order (later ones lie on top)."""
    hw = cfg.shape
    n_target = _target_count(cfg)
    canvas = _Canvas(hw)
    shapes: list[Shape] = []
    level, failures = 0, 0
    k = max(1, int(0.6 * cfg.radius[0]))
    while len(shapes) < n_target and failures < max(1000, 3 * n_target):
        failures += 1
        clustered = bool(shapes) and rng.random() < cfg.clustered
        if not clustered:  # a free spot: cheap rejection before drawing a shape
            ay, ax = rng.uniform(0, hw[0]), rng.uniform(0, hw[1])
            iy, ix = int(ay), int(ax)
            if canvas.labels[max(iy - k, 0) : iy + k + 1, max(ix - k, 0) : ix + k + 1].any():
                continue
        group, offsets = _group(cfg, rng)
        on_top = clustered and rng.random() < cfg.overlap
        if clustered:
            recent = shapes[-3:] if rng.random() < 0.5 else shapes
            parent = recent[int(rng.integers(len(recent)))]
            ang = rng.uniform(0, 2 * np.pi)
            f = rng.uniform(0.45, 0.8) if on_top else rng.uniform(0.8, 1.0)
            dist = f * (parent.mean_radius + group[0].mean_radius)
            ay, ax = parent.cy + dist * math.sin(ang), parent.cx + dist * math.cos(ang)
        lvl = level + 1 if on_top else 0
        if _put_group(canvas, shapes, group, offsets, (ay, ax), clustered, lvl):
            level, failures = max(level, lvl), 0
    if len(shapes) < n_target:
        logger.debug("placed %d of %d objects (scene full)", len(shapes), n_target)
    return shapes


def _put_group(
    canvas: _Canvas,
    shapes: list[Shape],
    group: list[Shape],
    offsets: list[tuple[float, float]],
    anchor: tuple[float, float],
    clustered: bool,
    level: int,
) -> bool:
    """Stamp the group's shapes that fit; False when its first shape does not."""
    for i, (s, (oy, ox)) in enumerate(zip(group, offsets, strict=True)):
        s.cy, s.cx, s.level = anchor[0] + oy, anchor[1] + ox, level
        stamp = geometry(s, canvas.labels.shape)
        if stamp is None or not _fits(canvas, s, stamp, clustered and i == 0, level > 0):
            if i == 0:
                return False
            continue
        s.stamp0 = stamp
        shapes.append(s)
        canvas.stamp(len(shapes), stamp, s.level)
    return True


def _fits(canvas: _Canvas, s: Shape, stamp: Stamp, clustered: bool, on_top: bool) -> bool:
    sl, rho = stamp
    taken = canvas.labels[sl] > 0
    if clustered:
        inside = rho <= 1.0
        if not inside.any():
            return False
        return float(taken[inside].mean()) < (0.6 if on_top else 0.35)
    margin = 1.0 + 2.0 / s.mean_radius
    return not taken[rho <= margin].any()


def rasterise(
    shapes: list[Shape], hw: tuple[int, int], shifts: np.ndarray, min_size: int
) -> tuple[np.ndarray, list[Stamp | None]]:
    """Labels (H, W) int32 with id i + 1 for ``shapes[i]`` (0 where dropped) and the stamps."""
    canvas = _Canvas(hw)
    stamps: list[Stamp | None] = []
    for i, s in enumerate(shapes):
        dy, dx = float(shifts[i, 0]), float(shifts[i, 1])
        stamp = s.stamp0 if dy == dx == 0.0 else geometry(s, hw, dy, dx)
        stamps.append(stamp)
        if stamp is not None:
            canvas.stamp(i + 1, stamp, s.level)
    labels = canvas.labels
    areas = np.bincount(labels.ravel(), minlength=len(shapes) + 1)
    for i, stamp in enumerate(stamps):
        if stamp is None or areas[i + 1] == 0:
            continue
        sl, rho = stamp
        clipped = sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == hw[0] or sl[1].stop == hw[1]
        if clipped or areas[i + 1] < np.count_nonzero(rho <= 1.0):  # may be cut in pieces
            own = labels[sl] == i + 1
            comp, n = ndimage.label(own)
            if n > 1:
                sizes = np.bincount(comp.ravel())
                sizes[0] = 0
                labels[sl][own & (comp != int(np.argmax(sizes)))] = 0
                areas[i + 1] = sizes.max()
        if areas[i + 1] < min_size:
            labels[sl][labels[sl] == i + 1] = 0
    return labels, stamps
