"""Synthetic Z-stacks of nuclei (Z, Y, X) with exact 3D instance ground truth.

A widefield or spinning-disk Z-stack differs from a 2D image in three ways that matter for
segmentation, and the generator draws all three:

- **anisotropy**: planes are ``z_step`` times further apart than the XY pixels (2 by default);
- **z blur**: the point-spread function is longer along Z than across it, and out-of-focus light
  from each nucleus shows above and below it (``haze``) in planes where it has no label;
- **touching clusters**: nuclei pressed against each other, with a flattened contact surface.

The scene is built on an isotropic grid (Z resampled to the XY pixel): perturbed ellipsoids with
random orientation, each voxel belonging to the nucleus whose size-normalised centre is nearest
(as :mod:`.synthetic` does in 2D), textured, blurred with an anisotropic Gaussian PSF plus an
axially long haze, then sampled every ``z_step`` voxels along Z. Labels are the label volume
sampled at the same planes, so they are exact for the returned stack. Photon noise, camera gain,
read noise and offset come from :mod:`.synthetic`.

Example::

    image, labels = make_volume(Synthetic3DConfig(shape=(16, 48, 48)), seed=0)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..labels import labels_dtype
from .config import Seed, SyntheticConfig
from .render import camera, unit_noise

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Synthetic3DConfig:
    """Settings of one synthetic Z-stack (lengths in XY pixels unless said otherwise).

    Attributes:
        shape: (Z, Y, X) of the stack, in planes and pixels.
        z_step: distance between planes in XY pixels (2 means twice the pixel size).
        pixel_size: XY pixel size in micrometres (for :attr:`voxel_size`).
        radius: range (min, max) of the nuclei's equivalent radius.
        elongation: 0 gives spheres; up to 1 gives axis ratios down to 1 - elongation.
        irregularity: amplitude of the smooth random perturbation of the surface.
        coverage: fraction of the volume the nuclei aim to fill (ignored with ``n_objects``).
        n_objects: number of nuclei to place.
        clustered: probability that a nucleus is placed against an earlier one (clusters).
        texture: strength of the chromatin-like texture (0 = flat).
        brightness_variation: standard deviation of the log brightness between nuclei.
        blur_xy: lateral Gaussian PSF sigma.
        blur_z: axial Gaussian PSF sigma (longer than ``blur_xy`` in real microscopes).
        haze: out-of-focus light relative to the in-focus signal, spread far along Z.
        haze_z: axial sigma of the haze, relative to the mean radius.
        background: background level relative to the mean nucleus brightness.
        photons: expected photon count at a nucleus of mean brightness (sets the SNR).
        gain: camera gain in grey values per photon.
        read_noise: standard deviation of the camera read noise, in grey values.
        offset: camera offset in grey values.
        min_size: nuclei with fewer voxels than this (in the returned stack) are removed.
    """

    shape: tuple[int, int, int] = (24, 96, 96)
    z_step: float = 2.0
    pixel_size: float = 0.5
    radius: tuple[float, float] = (7.0, 11.0)
    elongation: float = 0.3
    irregularity: float = 0.08
    coverage: float = 0.2
    n_objects: int | None = None
    clustered: float = 0.5
    texture: float = 0.3
    brightness_variation: float = 0.3
    blur_xy: float = 1.0
    blur_z: float = 2.5
    haze: float = 0.35
    haze_z: float = 1.2
    background: float = 0.08
    photons: float = 150.0
    gain: float = 1.0
    read_noise: float = 2.0
    offset: float = 100.0
    min_size: int = 30

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be (Z, Y, X) with positive sizes, got {self.shape}")
        if self.z_step < 1.0:
            raise ValueError(f"z_step must be at least 1 (pixels), got {self.z_step}")
        if not 2.0 <= self.radius[0] <= self.radius[1]:
            raise ValueError(f"radius must be (min, max) with 2 <= min <= max, got {self.radius}")
        for name in ("clustered", "elongation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if not 0.0 < self.coverage <= 0.7:
            raise ValueError(f"coverage must be in (0, 0.7], got {self.coverage}")
        for name in (
            "irregularity",
            "texture",
            "brightness_variation",
            "blur_xy",
            "blur_z",
            "haze",
            "haze_z",
            "background",
            "read_noise",
            "offset",
            "min_size",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.photons <= 0 or self.gain <= 0 or self.pixel_size <= 0:
            raise ValueError("photons, gain and pixel_size must be positive")

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """(z, y, x) voxel size in micrometres."""
        return (self.z_step * self.pixel_size, self.pixel_size, self.pixel_size)

    @property
    def iso_shape(self) -> tuple[int, int, int]:
        """(Z', Y, X) of the isotropic grid the scene is drawn on."""
        z, y, x = self.shape
        return (max(1, math.ceil(z * self.z_step)), y, x)


@dataclass
class _Nucleus:
    centre: np.ndarray  # (z, y, x) on the isotropic grid
    axes: np.ndarray  # semi-axes (3,)
    rotation: np.ndarray  # (3, 3), rows are the ellipsoid's axes
    brightness: float
    dome: float

    @property
    def extent(self) -> float:
        return float(self.axes.max()) * 1.3 + 1.5

    @property
    def mean_radius(self) -> float:
        return float(np.prod(self.axes) ** (1 / 3))


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation matrix (3, 3)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _new_nucleus(cfg: Synthetic3DConfig, rng: np.random.Generator) -> _Nucleus:
    r = rng.uniform(*cfg.radius)
    ratios = 1.0 - cfg.elongation * rng.random(3)
    axes = r * ratios / np.prod(ratios) ** (1 / 3)
    sigma = cfg.brightness_variation
    bright = float(rng.lognormal(-0.5 * sigma**2, sigma)) if sigma > 0 else 1.0
    return _Nucleus(np.zeros(3), axes, _rotation(rng), bright, rng.uniform(0.1, 0.45))


def _box(n: _Nucleus, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    ext = n.extent
    box = []
    for c, size in zip(n.centre, shape, strict=True):
        lo, hi = max(math.floor(c - ext), 0), min(math.ceil(c + ext) + 1, size)
        if lo >= hi:
            return None
        box.append(slice(lo, hi))
    return tuple(box)


def _rho(n: _Nucleus, box: tuple[slice, ...], bumps: np.ndarray) -> np.ndarray:
    """Normalised radius (h, w, d) float32 of ``n`` in ``box``; inside is rho <= 1."""
    grids = [
        np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c)
        for s, c in zip(box, n.centre, strict=True)
    ]
    zz, yy, xx = np.meshgrid(*grids, indexing="ij", sparse=True)
    rho2 = np.zeros(np.broadcast_shapes(zz.shape, yy.shape, xx.shape), np.float32)
    for row, a in zip(n.rotation.astype(np.float32), n.axes, strict=True):
        u = (zz * row[0] + yy * row[1] + xx * row[2]) / np.float32(a)
        rho2 += u * u
    return np.sqrt(rho2) / (1.0 + bumps[box])


class _Canvas:
    """Label and depth buffers on the isotropic grid: a voxel goes to the least ``rho``."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.labels = np.zeros(shape, np.int32)
        self.depth = np.full(shape, np.inf, np.float32)

    def stamp(self, ident: int, box: tuple[slice, ...], rho: np.ndarray) -> None:
        win = (rho <= 1.0) & (rho < self.depth[box])
        self.labels[box][win] = ident
        self.depth[box][win] = rho[win]


def _target_count(cfg: Synthetic3DConfig) -> int:
    if cfg.n_objects is not None:
        return cfg.n_objects
    mean_r = 0.5 * sum(cfg.radius)
    return max(
        1, round(cfg.coverage * float(np.prod(cfg.iso_shape)) / (4 / 3 * math.pi * mean_r**3))
    )


def _place(
    cfg: Synthetic3DConfig, rng: np.random.Generator, bumps: np.ndarray
) -> tuple[list[_Nucleus], _Canvas]:
    shape = cfg.iso_shape
    canvas = _Canvas(shape)
    nuclei: list[_Nucleus] = []
    n_target, failures = _target_count(cfg), 0
    while len(nuclei) < n_target and failures < max(500, 5 * n_target):
        failures += 1
        n = _new_nucleus(cfg, rng)
        clustered = bool(nuclei) and rng.random() < cfg.clustered
        if clustered:
            parent = nuclei[int(rng.integers(len(nuclei)))]
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            dist = rng.uniform(0.8, 1.0) * (parent.mean_radius + n.mean_radius)
            n.centre = parent.centre + dist * direction
        else:
            n.centre = rng.uniform(0, 1, 3) * np.array(shape)
        box = _box(n, shape)
        if box is None:
            continue
        rho = _rho(n, box, bumps)
        inside = rho <= 1.0
        if not inside.any():
            continue
        taken = canvas.labels[box] > 0
        if clustered:
            if float(taken[inside].mean()) >= 0.3:
                continue
        elif taken[rho <= 1.0 + 2.0 / n.mean_radius].any():
            continue
        nuclei.append(n)
        canvas.stamp(len(nuclei), box, rho)
        failures = 0
    if len(nuclei) < n_target:
        logger.debug("placed %d of %d nuclei (volume full)", len(nuclei), n_target)
    return nuclei, canvas


def _signal(
    cfg: Synthetic3DConfig,
    rng: np.random.Generator,
    nuclei: list[_Nucleus],
    canvas: _Canvas,
    bumps: np.ndarray,
) -> np.ndarray:
    """Fluorescence (Z', Y, X) float32 on the isotropic grid, before blur."""
    shape = cfg.iso_shape
    r = 0.5 * sum(cfg.radius)
    texture = 0.7 * unit_noise(rng, shape, max(0.7, 0.08 * r))
    texture += 0.5 * unit_noise(rng, shape, max(1.5, 0.3 * r))
    out = np.zeros(shape, np.float32)
    for i, n in enumerate(nuclei, start=1):
        box = _box(n, shape)
        if box is None:
            continue
        rho = _rho(n, box, bumps)
        own = canvas.labels[box] == i
        value = np.exp(np.float32(cfg.texture) * texture[box] - np.float32(0.37 * cfg.texture**2))
        value *= np.clip(1.0 - rho * rho, 0, 1) ** np.float32(n.dome)
        out[box][own] += np.float32(n.brightness) * value[own]
    return out


def _optics(cfg: Synthetic3DConfig, signal: np.ndarray) -> np.ndarray:
    """Anisotropic PSF blur plus axial haze (out-of-focus light above and below each nucleus)."""
    sharp = ndimage.gaussian_filter(signal, (cfg.blur_z, cfg.blur_xy, cfg.blur_xy), truncate=3.0)
    if cfg.haze <= 0:
        return sharp
    r = 0.5 * sum(cfg.radius)
    haze_sigma = (cfg.haze_z * r, 2.0 * cfg.blur_xy + 0.15 * r, 2.0 * cfg.blur_xy + 0.15 * r)
    haze = ndimage.gaussian_filter(signal, haze_sigma, truncate=2.5, mode="constant")
    # Scale the haze by the in-focus peak ratio, so ``haze`` is its relative strength.
    peak_sharp, peak_haze = float(sharp.max()), float(haze.max())
    if peak_haze > 0:
        sharp += np.float32(cfg.haze * peak_sharp / peak_haze) * haze
    return sharp


def _plane_indices(cfg: Synthetic3DConfig) -> np.ndarray:
    """Isotropic-grid index of each returned plane (Z,) int."""
    z = np.arange(cfg.shape[0]) * cfg.z_step + 0.5 * (cfg.z_step - 1.0)
    return np.clip(np.rint(z).astype(int), 0, cfg.iso_shape[0] - 1)


def _clean_labels(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Keep each id's largest 6-connected piece, drop those under ``min_size`` voxels, and make
    ids consecutive: (Z, Y, X) uint16 (uint32 beyond 65535)."""
    out = np.zeros(labels.shape, np.int64)
    next_id = 1
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        own = labels[sl] == i
        comp, n = ndimage.label(own)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            own = comp == int(np.argmax(sizes))
        if int(own.sum()) < max(min_size, 1):
            continue
        out[sl][own] = next_id
        next_id += 1
    return out.astype(labels_dtype(next_id - 1))


def _camera_config(cfg: Synthetic3DConfig) -> SyntheticConfig:
    return SyntheticConfig(
        photons=cfg.photons, gain=cfg.gain, read_noise=cfg.read_noise, offset=cfg.offset
    )


def make_volume(
    config: Synthetic3DConfig, seed: Seed = None, *, dtype: np.dtype | type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic Z-stack of nuclei and its exact 3D instance labels.

    Args:
        config: what to draw.
        seed: an int, a ``numpy.random.Generator`` (its state advances) or None.
        dtype: ``np.float32`` (camera grey values) or ``np.uint16`` (rounded, clipped).

    Returns:
        image (Z, Y, X) float32 or uint16, and labels (Z, Y, X) uint16: 0 is background, one
        id (1..N) per nucleus across all its planes. The voxel size is ``config.voxel_size``.
    """
    rng = np.random.default_rng(seed)
    shape = config.iso_shape
    r = 0.5 * sum(config.radius)
    bumps = (
        np.float32(config.irregularity) * unit_noise(rng, shape, max(2.0, 0.6 * r))
        if config.irregularity > 0
        else np.zeros(shape, np.float32)
    )
    nuclei, canvas = _place(config, rng, bumps)
    clean = _optics(config, _signal(config, rng, nuclei, canvas, bumps))
    planes = _plane_indices(config)
    clean = clean[planes] + np.float32(config.background)
    labels = _clean_labels(canvas.labels[planes], config.min_size)
    adu = camera(_camera_config(config), rng, clean)
    dt = np.dtype(dtype)
    if dt == np.float32:
        image = adu.astype(np.float32, copy=False)
    elif dt == np.uint16:
        image = np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
    else:
        raise ValueError(f"dtype must be float32 or uint16, got {dt}")
    return image, labels


def sample_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed Z-stack of nuclei: image (24, 96, 96) uint16 and labels (24, 96, 96) uint16,
    voxel size (1.0, 0.5, 0.5) µm."""
    return make_volume(Synthetic3DConfig(), seed, dtype=np.uint16)


def random_volume_config(
    rng: np.random.Generator, yx: tuple[int, int] = (128, 128), depth_um: float = 32.0
) -> Synthetic3DConfig:
    """A Z-stack configuration with parameters drawn across realistic ranges, for training.

    Z step 1 to 4 times the pixel size (log-uniform), the stack ``depth_um`` micrometres deep;
    nuclei radius 5 to 16 px (log-uniform) with a spread; axial blur 1.5 to 4 times the lateral
    one, out-of-focus haze, crowding and clusters, texture, brightness spread, background and SNR
    (about 20 to 1500 photons at a nucleus of mean brightness).

    Args:
        rng: the random generator (its state advances).
        yx: (Y, X) of the stack in pixels.
        depth_um: the stack's depth in micrometres (at the 0.5 µm pixel size).
    """
    z_step = math.exp(rng.uniform(0.0, math.log(4.0)))
    n_z = max(8, round(depth_um / (0.5 * z_step)))
    r0 = math.exp(rng.uniform(math.log(5.0), math.log(16.0)))
    spread = rng.uniform(0.1, 0.3)
    blur_xy = rng.uniform(0.6, 1.8)
    return Synthetic3DConfig(
        shape=(n_z, *yx),
        z_step=z_step,
        radius=(max(2.0, r0 * (1 - spread)), r0 * (1 + spread)),
        elongation=rng.uniform(0.0, 0.5),
        irregularity=rng.uniform(0.0, 0.12),
        coverage=rng.uniform(0.08, 0.35),
        clustered=rng.uniform(0.2, 0.8),
        texture=rng.uniform(0.0, 0.5),
        brightness_variation=rng.uniform(0.1, 0.45),
        blur_xy=blur_xy,
        blur_z=blur_xy * rng.uniform(1.5, 4.0),
        haze=rng.uniform(0.0, 0.6),
        haze_z=rng.uniform(0.8, 1.6),
        background=math.exp(rng.uniform(math.log(0.01), math.log(0.3))),
        photons=math.exp(rng.uniform(math.log(20.0), math.log(1500.0))),
        min_size=8,
    )
