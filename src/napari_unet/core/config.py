"""Frozen settings: the network architecture, the intensity normalisation and the tiling of
inference.

Settings are frozen dataclasses so they can be hashed, compared and serialised into a model file
(:func:`to_dict` / :func:`from_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

Norm = Literal["batch", "group", "instance", "none"]
Upsampling = Literal["transpose", "bilinear"]
Task = Literal["instances", "semantic"]
NormalizeMethod = Literal["percentile", "none"]

T = TypeVar("T")

#: The model used when none is named: the built-in starter.
DEFAULT_MODEL = "starter"
#: Arithmetic a predictor accepts (see :func:`~napari_unet.core.network.device.resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a 2D or 3D U-Net.

    Attributes:
        in_channels: channels of the input image (1 for a grayscale fluorescence image).
        out_classes: classes predicted per pixel (3 for instances: background, interior, boundary).
        depth: number of 2x down-sampling steps; the network's stride is ``2**depth``.
        base_channels: feature channels at full resolution; doubled at each level (8, as the
            starter; docs/benchmarks.md, *Starter candidates*, compares 8 with 16).
        norm: normalisation after each convolution. ``"batch"`` (default) uses running statistics
            at inference, so a tile's output does not depend on the rest of the tile, and it folds
            into the convolutions for speed; ``"group"`` and ``"instance"`` use per-image
            statistics and make tiled and whole-image results differ.
        upsampling: ``"transpose"`` (learned 2x2 transposed convolution) or ``"bilinear"``.
        max_channels: upper bound on feature channels at any level.
        spatial_dims: 2 (the default: (H, W) planes, 3x3 convolutions) or 3 (native 3D: (Z, Y, X)
            volumes, 3x3x3 convolutions). Model files without this field are 2D.
        xy_only_levels: 3D only: the first this many down-sampling steps pool Y and X but not Z
            (anisotropic pooling, for stacks whose Z step is coarser than their XY pixel: with a
            Z step twice the pixel, one such level makes the voxels of the next levels about
            isotropic; see :func:`xy_only_levels_for`). Between 0 and ``depth``.
    """

    in_channels: int = 1
    out_classes: int = 3
    depth: int = 4
    base_channels: int = 8
    norm: Norm = "batch"
    upsampling: Upsampling = "transpose"
    max_channels: int = 512
    spatial_dims: int = 2
    xy_only_levels: int = 0

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.out_classes < 1:
            raise ValueError("in_channels and out_classes must be at least 1")
        if not 0 <= self.depth <= 8:
            raise ValueError(f"depth must be between 0 and 8, got {self.depth}")
        if self.base_channels < 1:
            raise ValueError("base_channels must be at least 1")
        if self.norm not in ("batch", "group", "instance", "none"):
            raise ValueError(f"unknown norm {self.norm!r}")
        if self.upsampling not in ("transpose", "bilinear"):
            raise ValueError(f"unknown upsampling {self.upsampling!r}")
        if isinstance(self.spatial_dims, bool) or self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        levels = self.xy_only_levels
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 0:
            raise ValueError(f"xy_only_levels must be a whole number >= 0, got {levels!r}")
        if self.spatial_dims == 2 and levels:
            raise ValueError("xy_only_levels (anisotropic pooling) needs spatial_dims=3")
        if levels > self.depth:
            raise ValueError(
                f"xy_only_levels must be at most the depth ({self.depth}), got {levels}"
            )

    @property
    def stride(self) -> int:
        """Down-sampling factor in Y and X, ``2**depth``: tile offsets are aligned to it."""
        return 2**self.depth

    @property
    def z_stride(self) -> int:
        """Down-sampling factor in Z of a 3D network, ``2**(depth - xy_only_levels)``."""
        return 2 ** (self.depth - self.xy_only_levels)

    def pool_factors(self, axis: str = "x") -> tuple[int, ...]:
        """Pooling factor per down-sampling step along ``axis`` (``"z"``, ``"y"`` or ``"x"``):
        2 for every step in Y and X; in Z, 1 for the first ``xy_only_levels`` steps, then 2."""
        if axis == "z":
            return tuple(1 if level < self.xy_only_levels else 2 for level in range(self.depth))
        return (2,) * self.depth

    def pool_kernel(self, level: int) -> int | tuple[int, int, int]:
        """The max-pooling kernel (= stride) after ``level``: 2 in 2D, (1 or 2, 2, 2) in 3D."""
        if self.spatial_dims == 2:
            return 2
        return (self.pool_factors("z")[level], 2, 2)

    def channels(self, level: int) -> int:
        """Feature channels at ``level`` (0 = full resolution)."""
        return min(self.base_channels * 2**level, self.max_channels)


def xy_only_levels_for(anisotropy: float, depth: int) -> int:
    """Down-sampling steps that should pool only Y and X for voxels ``anisotropy`` times as
    deep as wide (Z step over XY pixel): ``round(log2(anisotropy))``, between 0 and ``depth``,
    so that Z is not pooled while it is coarser than XY."""
    if not math.isfinite(anisotropy) or anisotropy <= 1.0:
        return 0
    return int(min(max(round(math.log2(anisotropy)), 0), depth))


@dataclass(frozen=True)
class TilingConfig:
    """How an image is cut into tiles for inference.

    Attributes:
        tile_size: side of the central (kept) part of a tile, in pixels. A tile size at least the
            image size means one whole-image pass.
        halo: context margin added on every side of a tile, in pixels; ``None`` derives it from
            the network (see :func:`napari_unet.core.inference.tiling.default_halo`).
        batch_size: tiles run together in one forward pass.
        exact: use a halo at least the network's receptive-field radius, so tiled and whole-image
            results agree to float precision.
    """

    tile_size: int = 256
    halo: int | None = None
    batch_size: int = 4
    exact: bool = False

    def __post_init__(self) -> None:
        if self.tile_size < 1:
            raise ValueError(f"tile size must be positive, got {self.tile_size}")
        if self.halo is not None and self.halo < 0:
            raise ValueError(f"halo must be zero or positive, got {self.halo}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be positive, got {self.batch_size}")


@dataclass(frozen=True)
class NormalizeConfig:
    """How raw intensities are scaled before the network (stored in model files).

    Attributes:
        method: ``"percentile"`` maps the ``low`` percentile to 0 and the ``high`` percentile to 1
            per channel over the whole image; ``"none"`` passes intensities on as float32.
        low: lower percentile in [0, 100].
        high: upper percentile in [0, 100], above ``low``.
    """

    method: NormalizeMethod = "percentile"
    low: float = 1.0
    high: float = 99.8

    def __post_init__(self) -> None:
        if self.method not in ("percentile", "none"):
            raise ValueError(f"unknown normalisation method {self.method!r}")
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(
                f"percentiles must satisfy 0 <= low < high <= 100, got {self.low}, {self.high}"
            )


def to_dict(settings: Any) -> dict[str, Any]:
    """A frozen settings dataclass as a JSON-ready dict."""
    return dataclasses.asdict(settings)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a settings dataclass from a dict, ignoring keys it does not know (newer files)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})
