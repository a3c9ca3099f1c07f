"""Settings of a synthetic image: what to draw and how the microscope sees it.

:class:`SyntheticConfig` holds every setting (all lengths in pixels), :func:`random_config` draws
one across realistic ranges, and :data:`SAMPLE_CONFIG` is the look of the shipped samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["nuclei", "cells"]
Seed = int | np.random.Generator | None


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
