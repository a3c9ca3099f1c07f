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
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from ..labels import labels_dtype, stack_ids

logger = logging.getLogger(__name__)

Kind = Literal["nuclei", "cells"]
Seed = int | np.random.Generator | None
_DEBRIS_AREA = 1e4  # debris density is counted per 100 x 100 pixels


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of one synthetic image (all lengths in pixels).

    Attributes:
        shape: (H, W) of the image.
        kind: ``"nuclei"`` (blobby textured ellipses) or ``"cells"`` (larger irregular cell bodies
            that tile the space around their nuclei, dimmer inside, brighter at the edge, with a
            darker nucleus; the labels are the cells).
        radius: range (min, max) of the labelled objects' equivalent radius; sets the
            magnification.
        elongation: 0 gives round objects; up to 1 gives aspect ratios down to 1 - elongation.
        irregularity: amplitude of the smooth random perturbation of the outline.
        coverage: fraction of the image area that the objects aim to cover (ignored when
            ``n_objects`` is given). Dense scenes may end with fewer objects than asked.
        n_objects: number of objects to place (daughters of a division count as two).
        clustered: probability that an object is placed against an earlier one (clumps).
        overlap: probability that a clustered object lies on top of its neighbour instead of
            touching it (the top object owns the shared pixels, intensities add up).
        texture: strength of the chromatin-like texture (0 = flat).
        brightness_variation: standard deviation of the log brightness between objects.
        blur: Gaussian point-spread sigma.
        defocus: fraction of objects that lie out of focus (blurred more; still labelled).
        background: background level relative to the mean object brightness.
        gradient: strength of the uneven illumination (0 = flat field).
        photons: expected photon count at an object of mean brightness (sets the SNR).
        gain: camera gain in grey values per photon.
        read_noise: standard deviation of the camera read noise, in grey values.
        offset: camera offset in grey values.
        dividing: fraction of objects drawn as a division (two daughters close together, each
            its own id).
        dying: fraction of objects drawn as dying (small, bright, condensed, half of them in
            fragments, each fragment its own id).
        debris: expected unlabelled blobs (bright specks and dim smudges) per 100 x 100 pixels.
        nucleus_fraction: for ``kind="cells"``, nucleus radius relative to the cell radius.
        min_size: objects with fewer pixels than this are removed from labels and image.
    """

    shape: tuple[int, int] = (256, 256)
    kind: Kind = "nuclei"
    radius: tuple[float, float] = (8.0, 14.0)
    elongation: float = 0.35
    irregularity: float = 0.08
    coverage: float = 0.25
    n_objects: int | None = None
    clustered: float = 0.3
    overlap: float = 0.0
    texture: float = 0.3
    brightness_variation: float = 0.35
    blur: float = 1.0
    defocus: float = 0.1
    background: float = 0.1
    gradient: float = 0.3
    photons: float = 200.0
    gain: float = 1.0
    read_noise: float = 2.0
    offset: float = 100.0
    dividing: float = 0.02
    dying: float = 0.02
    debris: float = 0.3
    nucleus_fraction: float = 0.45
    min_size: int = 12

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"shape must be (H, W) with positive sizes, got {self.shape}")
        if self.kind not in ("nuclei", "cells"):
            raise ValueError(f"kind must be 'nuclei' or 'cells', got {self.kind!r}")
        if not 1.0 <= self.radius[0] <= self.radius[1]:
            raise ValueError(f"radius must be (min, max) with 1 <= min <= max, got {self.radius}")
        for name in ("clustered", "overlap", "defocus", "dividing", "dying", "elongation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.dividing + self.dying > 1.0:
            raise ValueError("dividing + dying must not exceed 1")
        if not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {self.coverage}")
        if not 0.1 <= self.nucleus_fraction <= 0.9:
            raise ValueError(f"nucleus_fraction must be in [0.1, 0.9], got {self.nucleus_fraction}")
        nonneg = (
            "irregularity",
            "texture",
            "brightness_variation",
            "blur",
            "background",
            "gradient",
            "read_noise",
            "offset",
            "debris",
            "min_size",
        )
        for name in nonneg:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.photons <= 0 or self.gain <= 0:
            raise ValueError("photons and gain must be positive")
        if self.n_objects is not None and self.n_objects < 0:
            raise ValueError(f"n_objects must not be negative, got {self.n_objects}")


_Stamp = tuple[tuple[slice, slice], np.ndarray]  # box in the image, rho (h, w) float32


@dataclass
class _Shape:
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
    stamp0: _Stamp | None = None  # geometry at zero displacement, kept from placement

    @property
    def extent(self) -> float:
        return max(self.a, self.b) * (1.0 + float(np.abs(self.harm[:, 1]).sum())) + 1.5

    @property
    def mean_radius(self) -> float:
        return math.sqrt(self.a * self.b)


def _rng(seed: Seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def _geometry(s: _Shape, shape: tuple[int, int], dy: float = 0.0, dx: float = 0.0) -> _Stamp | None:
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


def _harmonics(
    rng: np.random.Generator, amount: float, kmax: int, decay: float = 0.8
) -> np.ndarray:
    ks = np.arange(2, kmax + 1, dtype=np.float64)
    amps = amount * rng.normal(size=ks.size) / ks**decay
    total = np.abs(amps).sum()
    if total > 0.45:
        amps *= 0.45 / total
    return np.stack([ks, amps, rng.uniform(0, 2 * np.pi, ks.size)], axis=1)


def _ellipse_axes(r: float, ratio: float) -> tuple[float, float]:
    return r / math.sqrt(ratio), r * math.sqrt(ratio)


def _base_shape(cfg: SyntheticConfig, rng: np.random.Generator, r: float) -> _Shape:
    cells = cfg.kind == "cells"
    a, b = _ellipse_axes(r, 1.0 - cfg.elongation * rng.random())
    sigma = cfg.brightness_variation
    shape = _Shape(
        cy=0.0,
        cx=0.0,
        a=a,
        b=b,
        theta=rng.uniform(0, np.pi),
        harm=(
            _harmonics(rng, 0.1 + 2.0 * cfg.irregularity, 7, 1.4)
            if cells
            else _harmonics(rng, cfg.irregularity, 6)
        ),
        brightness=float(rng.lognormal(-0.5 * sigma**2, sigma)) if sigma > 0 else 1.0,
        texture=cfg.texture * rng.uniform(0.6, 1.4),
        dome=rng.uniform(0.1, 0.45),
        defocus=bool(rng.random() < cfg.defocus),
    )
    if cells:
        rn = r * cfg.nucleus_fraction * rng.uniform(0.85, 1.15)
        na, nb = _ellipse_axes(rn, rng.uniform(0.65, 1.0))
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
) -> tuple[list[_Shape], list[tuple[float, float]]]:
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
    cfg: SyntheticConfig, rng: np.random.Generator, main: _Shape, r: float
) -> tuple[list[_Shape], list[tuple[float, float]]]:
    cells = cfg.kind == "cells"
    rd = r * rng.uniform(0.55, 0.7) if cells else r * rng.uniform(0.6, 0.75)
    ratio = rng.uniform(0.8, 1.0) if cells else rng.uniform(0.5, 0.8)
    a, b = _ellipse_axes(rd, ratio)
    axis = rng.uniform(0, np.pi)
    gap = rng.uniform(0.0, 2.0) if cells else rng.uniform(2.0, max(2.5, rd))
    half = b + gap / 2
    gain = rng.uniform(1.4, 2.2)
    shapes, offsets = [], []
    for sign in (-1.0, 1.0):
        d = _Shape(
            cy=0.0,
            cx=0.0,
            a=a,
            b=b,
            theta=axis + np.pi / 2,
            harm=_harmonics(rng, cfg.irregularity * 0.5, 4),
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
    cfg: SyntheticConfig, rng: np.random.Generator, main: _Shape, r: float
) -> tuple[list[_Shape], list[tuple[float, float]]]:
    min_r = math.sqrt(cfg.min_size / math.pi) + 0.8
    rd = max(r * rng.uniform(0.35, 0.6), min_r)
    bright = main.brightness * rng.uniform(1.8, 3.5)
    n = 1 if rng.random() < 0.5 else int(rng.integers(2, 6))
    shapes, offsets = [], []
    for i in range(n):
        rf = rd if n == 1 else max(rd * rng.uniform(0.4, 0.65), min_r)
        a, b = _ellipse_axes(rf, rng.uniform(0.8, 1.0))
        shapes.append(
            _Shape(
                cy=0.0,
                cx=0.0,
                a=a,
                b=b,
                theta=rng.uniform(0, np.pi),
                harm=_harmonics(rng, 0.03, 3),
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

    def stamp(self, ident: int, stamp: _Stamp, level: int) -> None:
        sl, rho = stamp
        d = rho - np.float32(2 * level)
        win = (rho <= 1.0) & (d < self.depth[sl])
        self.labels[sl][win] = ident
        self.depth[sl][win] = d[win]


def _place(cfg: SyntheticConfig, rng: np.random.Generator) -> list[_Shape]:
    """Draw and place objects; returns them in drawing order (later ones lie on top)."""
    hw = cfg.shape
    n_target = _target_count(cfg)
    canvas = _Canvas(hw)
    shapes: list[_Shape] = []
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
    shapes: list[_Shape],
    group: list[_Shape],
    offsets: list[tuple[float, float]],
    anchor: tuple[float, float],
    clustered: bool,
    level: int,
) -> bool:
    """Stamp the group's shapes that fit; False when its first shape does not."""
    for i, (s, (oy, ox)) in enumerate(zip(group, offsets, strict=True)):
        s.cy, s.cx, s.level = anchor[0] + oy, anchor[1] + ox, level
        stamp = _geometry(s, canvas.labels.shape)
        if stamp is None or not _fits(canvas, s, stamp, clustered and i == 0, level > 0):
            if i == 0:
                return False
            continue
        s.stamp0 = stamp
        shapes.append(s)
        canvas.stamp(len(shapes), stamp, s.level)
    return True


def _fits(canvas: _Canvas, s: _Shape, stamp: _Stamp, clustered: bool, on_top: bool) -> bool:
    sl, rho = stamp
    taken = canvas.labels[sl] > 0
    if clustered:
        inside = rho <= 1.0
        if not inside.any():
            return False
        return float(taken[inside].mean()) < (0.6 if on_top else 0.35)
    margin = 1.0 + 2.0 / s.mean_radius
    return not taken[rho <= margin].any()


def _rasterise(
    shapes: list[_Shape], hw: tuple[int, int], shifts: np.ndarray, min_size: int
) -> tuple[np.ndarray, list[_Stamp | None]]:
    """Labels (H, W) int32 with id i + 1 for ``shapes[i]`` (0 where dropped) and the stamps."""
    canvas = _Canvas(hw)
    stamps: list[_Stamp | None] = []
    for i, s in enumerate(shapes):
        dy, dx = float(shifts[i, 0]), float(shifts[i, 1])
        stamp = s.stamp0 if dy == dx == 0.0 else _geometry(s, hw, dy, dx)
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


def _unit_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, truncate=3.0)
    std = float(f.std())
    return f / std if std > 0 else f


def _textures(
    cfg: SyntheticConfig, rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Fine and coarse zero-mean, unit-variance random fields (H', W') float32."""
    r = 0.5 * sum(cfg.radius)
    return (_unit_noise(rng, shape, max(0.7, 0.08 * r)), _unit_noise(rng, shape, max(1.5, 0.3 * r)))


def _render(
    cfg: SyntheticConfig,
    shapes: list[_Shape],
    stamps: list[_Stamp | None],
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


def _box_coords(s: _Shape, sl: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    cy, cx = s.cy + s.shift[0], s.cx + s.shift[1]
    yy = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)[None, :] - np.float32(cx)
    return yy, xx


def _nucleus_factor(s: _Shape, sl: tuple[slice, slice]) -> np.ndarray:
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


def _spot_factor(s: _Shape, sl: tuple[slice, slice]) -> np.ndarray:
    yy, xx = _box_coords(s, sl)
    factor = np.ones(np.broadcast_shapes(yy.shape, xx.shape), np.float32)
    for dy, dx, sigma, depth in s.spots:
        d2 = (yy - np.float32(dy)) ** 2 + (xx - np.float32(dx)) ** 2
        factor -= np.float32(depth) * np.exp(-d2 / np.float32(2 * sigma * sigma))
    return np.clip(factor, 0.2, 1.0)


def _add_cell_edges(signal: np.ndarray, labels: np.ndarray, shapes: list[_Shape]) -> None:
    """Brighter cell borders (cortex / membrane), inside the cells only."""
    edge = np.zeros(labels.shape, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    ring = ndimage.gaussian_filter(edge.astype(np.float32), 1.2) * 2.5
    bright = np.array([0.0] + [s.brightness for s in shapes], np.float32)
    signal += 0.55 * np.minimum(ring, 1.0) * bright[labels]


def _debris(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unlabelled blobs: (in focus, out of focus) signal, each (H, W) float32."""
    hw = cfg.shape
    focus = np.zeros(hw, np.float32)
    blurred = np.zeros(hw, np.float32)
    n = int(rng.poisson(cfg.debris * hw[0] * hw[1] / _DEBRIS_AREA)) if cfg.debris > 0 else 0
    rmin = cfg.radius[0]
    for _ in range(n):
        speck = rng.random() < 0.7
        r = rng.uniform(0.6, max(1.0, 0.3 * rmin)) if speck else rng.uniform(0.3, 0.6) * rmin
        a, b = _ellipse_axes(max(r, 0.6), rng.uniform(0.5, 1.0))
        s = _Shape(
            cy=rng.uniform(0, hw[0]),
            cx=rng.uniform(0, hw[1]),
            a=a,
            b=b,
            theta=rng.uniform(0, np.pi),
            harm=_harmonics(rng, 0.2, 4),
            brightness=rng.uniform(0.5, 3.0) if speck else rng.uniform(0.15, 0.4),
            texture=0.0,
            dome=0.3,
        )
        stamp = _geometry(s, hw)
        if stamp is None:
            continue
        sl, rho = stamp
        value = np.float32(s.brightness) * np.clip(1.0 - rho * rho, 0, 1) ** np.float32(s.dome)
        (focus if speck else blurred)[sl] += value
    return focus, blurred


def _illumination(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
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


def _camera(cfg: SyntheticConfig, rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
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


def _form_image(
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
    return _camera(cfg, rng, image)


def _finish_image(adu: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt == np.float32:
        return adu.astype(np.float32, copy=False)
    if dt == np.uint16:
        return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
    raise ValueError(f"dtype must be float32 or uint16, got {dt}")


def _relabel(labels: np.ndarray, n_shapes: int) -> np.ndarray:
    """Consecutive ids 1..N in drawing order; keeps the leading axes."""
    present = np.zeros(n_shapes + 1, bool)
    present[np.unique(labels)] = True
    present[0] = False
    lut = np.zeros(n_shapes + 1, np.int64)
    lut[present] = np.arange(1, int(present.sum()) + 1)
    return lut[labels].astype(labels_dtype(int(present.sum())))


def _set_shift(shapes: list[_Shape], shifts: np.ndarray) -> None:
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
    shapes = _place(cfg, rng)
    shifts = _walk(rng, n_planes, len(shapes), speed)
    pad = int(np.ceil(np.abs(shifts).max())) + 1 if shifts.size else 1
    h, w = cfg.shape
    tex = _textures(cfg, rng, (h + 2 * pad, w + 2 * pad))
    illum = _illumination(cfg, rng)
    debris = _debris(cfg, rng)
    images, all_labels = [], []
    for z in range(n_planes):
        _set_shift(shapes, shifts[z])
        labels, stamps = _rasterise(shapes, cfg.shape, shifts[z], cfg.min_size)
        signal = _render(cfg, shapes, stamps, labels, tex, pad - np.rint(shifts[z]).astype(int))
        images.append(_finish_image(_form_image(cfg, rng, signal, debris, illum), dtype))
        all_labels.append(labels)
    return np.stack(images), _relabel(np.stack(all_labels), len(shapes))


def random_config(
    rng: np.random.Generator, shape: tuple[int, int] = (256, 256), *, cells_fraction: float = 0.2
) -> SyntheticConfig:
    """A configuration with parameters drawn across realistic ranges.

    Magnification (radius 4..30 px, log-uniform), crowding, clumping and overlap, texture,
    brightness spread, blur and defocus, background and illumination, SNR (about 8 to 3000
    photons per object pixel, read noise 0.5 to 5 electrons), camera gain and offset, divisions,
    dying cells and debris. ``cells_fraction`` of the configurations are ``kind="cells"``
    (radius 8..40 px).

    Args:
        rng: the random generator (its state advances).
        shape: (H, W) of the images.
        cells_fraction: probability of ``kind="cells"``.
    """
    cells = bool(rng.random() < cells_fraction)
    r0 = math.exp(rng.uniform(math.log(8 if cells else 4), math.log(40 if cells else 30)))
    spread = rng.uniform(0.1, 0.35)
    lo = max(3.0, r0 * (1 - spread))
    clumpy = rng.random() < 0.7
    gain = math.exp(rng.uniform(math.log(0.3), math.log(5.0)))
    read_electrons = rng.uniform(0.5, 5.0)
    return SyntheticConfig(
        shape=shape,
        kind="cells" if cells else "nuclei",
        radius=(lo, max(lo, r0 * (1 + spread))),
        elongation=rng.uniform(0.0, 0.6),
        irregularity=rng.uniform(0.0, 0.15),
        coverage=rng.uniform(0.3, 0.7) if cells else rng.uniform(0.05, 0.5),
        clustered=rng.uniform(0.2, 0.9) if clumpy else rng.uniform(0.0, 0.2),
        overlap=0.0 if cells or rng.random() < 0.6 else rng.uniform(0.0, 0.4),
        texture=rng.uniform(0.0, 0.6),
        brightness_variation=rng.uniform(0.1, 0.5),
        blur=rng.uniform(0.4, 2.5),
        defocus=rng.uniform(0.0, 0.3),
        background=math.exp(rng.uniform(math.log(0.01), math.log(0.5))),
        gradient=rng.uniform(0.0, 0.8),
        photons=math.exp(rng.uniform(math.log(8.0), math.log(3000.0))),
        gain=gain,
        read_noise=read_electrons * gain,
        offset=float(rng.choice([0.0, 100.0, 500.0])),
        dividing=rng.uniform(0.0, 0.08),
        dying=rng.uniform(0.0, 0.08),
        debris=rng.uniform(0.0, 0.8),
        nucleus_fraction=rng.uniform(0.3, 0.55),
    )


SAMPLE_CONFIG = SyntheticConfig(
    shape=(512, 512),
    radius=(9.0, 15.0),
    elongation=0.4,
    irregularity=0.08,
    coverage=0.3,
    clustered=0.5,
    overlap=0.1,
    texture=0.35,
    brightness_variation=0.4,
    blur=1.2,
    defocus=0.1,
    background=0.08,
    gradient=0.4,
    photons=120.0,
    gain=2.0,
    read_noise=3.0,
    offset=100.0,
    dividing=0.04,
    dying=0.03,
    debris=0.4,
)


def sample_nuclei(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed 512 x 512 sample of nuclei: image (512, 512) uint16 and labels (512, 512) uint16."""
    return make_image(SAMPLE_CONFIG, seed, dtype=np.uint16)


def sample_stack(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed time-lapse of drifting nuclei: image (5, 256, 256) uint16, labels same shape."""
    config = dataclasses.replace(SAMPLE_CONFIG, shape=(256, 256))
    return make_stack(config, 5, seed, dtype=np.uint16, speed=1.0)
