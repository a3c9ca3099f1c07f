"""Data augmentation for training: the U-Net paper's elastic deformation, rigid and scaling
transforms, and intensity changes; batched torch on the tensors' device (CPU or GPU).

Every sample of a batch gets its own geometric transform, built as one sampling grid: an affine
part (flips, 90-degree rotations, a small rotation, scaling about the patch centre) followed by the
paper's elastic deformation (random displacements on a coarse grid of control points spanning the
patch, e.g. 3x3 with a standard deviation of 10 pixels, interpolated smoothly to every pixel with
bicubic interpolation). The grid is applied with one :func:`torch.nn.functional.grid_sample` call
for the images (bilinear, reflection at the borders) and one for all per-pixel maps stacked
(nearest, so class ids, weights and label values are kept exactly). Pixels whose source lies
outside the patch are marked not annotated in the returned mask, so padding never counts in the
loss. Intensity changes (gain, offset, gamma, Gaussian noise) touch the images only.

:class:`AugmentConfig` holds the settings (stored in model files); its ``strength`` in [0, 1]
scales every magnitude at once (0 = no augmentation), for a single slider in the interface.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

#: Integers up to this value are exact in float32; larger label ids are remapped before sampling.
_FLOAT32_EXACT = 2**24


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings (serialised into model files with ``config.to_dict``).

    Magnitudes are the largest used at ``strength`` 1; each sample draws its own values.

    Attributes:
        elastic: apply the elastic deformation.
        elastic_points: control points per side of the coarse displacement grid (the grid spans
            the patch, so the deformation's wavelength scales with the patch size).
        elastic_std: standard deviation of the control-point displacements, in pixels.
        flip: random horizontal and vertical flips (each with probability 1/2).
        rot90: random rotation by a multiple of 90 degrees.
        rotation: largest small rotation, in degrees (uniform in [-rotation, rotation]).
        scale_min: smallest zoom factor (below 1 shrinks the content).
        scale_max: largest zoom factor (log-uniform between ``scale_min`` and ``scale_max``).
        gain: intensity gain drawn uniformly in [1 - gain, 1 + gain] per sample and channel.
        offset: intensity offset drawn uniformly in [-offset, offset] (normalised units).
        gamma: gamma drawn log-uniformly in [exp(-gamma), exp(gamma)]; applied as
            ``sign(x) * |x| ** g`` so the range [0, 1] maps onto itself and negative values of a
            normalised image stay negative.
        noise_std: largest standard deviation of additive Gaussian noise (normalised units);
            each sample draws its own level uniformly in [0, noise_std].
        strength: overall multiplier in [0, 1] of every magnitude above. 0 returns the data
            unchanged; flips and 90-degree rotations, which do not distort, apply whenever
            ``strength`` is above 0.
    """

    elastic: bool = True
    elastic_points: int = 3
    elastic_std: float = 10.0
    flip: bool = True
    rot90: bool = True
    rotation: float = 15.0
    scale_min: float = 0.85
    scale_max: float = 1.15
    gain: float = 0.2
    offset: float = 0.1
    gamma: float = 0.25
    noise_std: float = 0.03
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be between 0 and 1, got {self.strength}")
        if self.elastic_points < 2:
            raise ValueError(f"elastic_points must be at least 2, got {self.elastic_points}")
        if not 0.0 < self.scale_min <= self.scale_max:
            raise ValueError(
                f"scale range must satisfy 0 < scale_min <= scale_max, "
                f"got {self.scale_min}, {self.scale_max}"
            )
        if not 0.0 <= self.gain < 1.0:
            raise ValueError(f"gain must be in [0, 1), got {self.gain}")
        for name in ("elastic_std", "rotation", "offset", "gamma", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be zero or positive, got {getattr(self, name)}")

    @property
    def geometric(self) -> bool:
        """Whether any geometric transform is enabled at this strength."""
        if self.strength == 0:
            return False
        return (
            self.flip
            or self.rot90
            or (self.elastic and self.elastic_std > 0)
            or self.rotation > 0
            or self.scale_min != 1.0
            or self.scale_max != 1.0
        )

    @property
    def intensity(self) -> bool:
        """Whether any intensity change is enabled at this strength."""
        if self.strength == 0:
            return False
        return self.gain > 0 or self.offset > 0 or self.gamma > 0 or self.noise_std > 0


@dataclass
class Augmented:
    """The output of :func:`augment_batch`; tensors on the input's device.

    Attributes:
        images: float32 (B, C, H, W).
        classes: (B, H, W) with the input's dtype (e.g. uint8 or int64), or None if not given.
        weights: float32 (B, H, W), or None if not given.
        mask: (B, H, W) annotated pixels, the input mask's dtype (bool when no mask was given):
            false / 0 where the input mask was, and where the pixel came from outside the patch.
    """

    images: torch.Tensor
    classes: torch.Tensor | None
    weights: torch.Tensor | None
    mask: torch.Tensor


def _uniform(
    shape: tuple[int, ...], low: float, high: float, generator: torch.Generator
) -> torch.Tensor:
    """Float32 uniform samples in [low, high) drawn on the generator's device."""
    u = torch.rand(shape, generator=generator, device=generator.device)
    return low + (high - low) * u


def _affine_matrices(batch: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, 2, 2) float32 maps from output pixel offsets (x, y) to source offsets (about the
    patch centre, in pixels)."""
    s = config.strength
    eye = torch.eye(2, device=generator.device).expand(batch, 2, 2)
    mats = eye.clone()
    if config.flip:
        signs = torch.where(_uniform((batch, 2), 0, 1, generator) < 0.5, -1.0, 1.0)
        mats = mats * signs[:, None, :]  # flips act on the output coordinates first
    angle = torch.zeros(batch, device=generator.device)
    if config.rot90:
        k = torch.randint(0, 4, (batch,), generator=generator, device=generator.device)
        angle = angle + k.float() * (math.pi / 2)
    if config.rotation > 0:
        limit = math.radians(config.rotation) * s
        angle = angle + _uniform((batch,), -limit, limit, generator)
    cos, sin = torch.cos(angle), torch.sin(angle)
    if config.rot90:  # exact multiples of 90 degrees keep pixel centres on pixel centres
        cos = torch.where(cos.abs() < 1e-6, torch.zeros_like(cos), cos)
        sin = torch.where(sin.abs() < 1e-6, torch.zeros_like(sin), sin)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    log_lo, log_hi = math.log(config.scale_min) * s, math.log(config.scale_max) * s
    zoom = torch.exp(_uniform((batch,), log_lo, log_hi, generator))
    return rot @ mats / zoom[:, None, None]


def _interpolation_matrix(points: int, size: int, device: torch.device) -> torch.Tensor:
    """(size, points) float32 bicubic weights from ``points`` control points spanning ``size``.

    Bicubic up-sampling is linear and separable, so a coarse grid ``G`` (points, points) becomes
    ``R_y @ G @ R_x.T`` at full resolution: two small matrix products instead of a 2D resampling.
    """
    if points == 0:
        return torch.zeros((size, 0), device=device)
    basis = torch.eye(points, device=device).reshape(1, points, 1, points)
    rows = F.interpolate(basis, size=(1, size), mode="bicubic", align_corners=True)
    return rows.reshape(points, size).T.contiguous()


def _coarse_displacements(
    batch: int, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """(B, 2, P, P) float32 control-point displacements (x, y) in pixels; P = 0 without elastic."""
    if not (config.elastic and config.elastic_std > 0 and config.strength > 0):
        return torch.zeros((batch, 2, 0, 0), device=generator.device)
    p = config.elastic_points
    coarse = torch.randn((batch, 2, p, p), generator=generator, device=generator.device)
    return coarse * (config.elastic_std * config.strength)


def sampling_grid(
    batch: int,
    height: int,
    width: int,
    config: AugmentConfig,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random per-sample sampling grids for :func:`torch.nn.functional.grid_sample`.

    The source position of output pixel (y, x) is ``A (x, y) + D(y, x)`` about the patch centre,
    with ``A`` the sample's affine matrix and ``D = R_y G R_x^T`` the bicubic interpolation of its
    coarse displacement grid ``G``. Both terms are sums of outer products of per-row and
    per-column vectors, so the whole grid is ``L M R^T`` with ``L = [R_y, 1, y]``,
    ``R = [R_x, x, 1]`` and a small per-sample matrix ``M``: two small matrix products write it.

    Returns:
        float32 (B, H, W, 2): source position (x, y) of every output pixel in grid_sample's
        normalised coordinates (``align_corners=False``: -1 and 1 are the outer pixel edges).
    """
    device = torch.device(device)
    mats = _affine_matrices(batch, config, generator).to(device)
    coarse = _coarse_displacements(batch, config, generator).to(device)
    p = coarse.shape[-1]
    k = p + 2
    to_norm = torch.tensor([2.0 / width, 2.0 / height], device=device)
    # Output pixel centres relative to the patch centre, in pixels.
    xs = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2
    ys = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2
    ones_h = torch.ones(height, 1, device=device)
    ones_w = torch.ones(width, 1, device=device)
    left = torch.cat([_interpolation_matrix(p, height, device), ones_h, ys[:, None]], dim=1)
    right = torch.cat([_interpolation_matrix(p, width, device), xs[:, None], ones_w], dim=1)
    middle = torch.zeros((batch, 2, k, k), device=device)
    middle[:, :, :p, :p] = coarse
    middle[:, :, p, p] = mats[:, :, 0]  # coefficient of x
    middle[:, :, p + 1, p + 1] = mats[:, :, 1]  # coefficient of y
    middle = middle * to_norm[None, :, None, None]
    half = (left @ middle).permute(0, 2, 1, 3).reshape(batch, height, 2 * k)  # (B, H, 2K)
    # Block matrix (2K, 2W) that interleaves x and y so the product is already (B, H, W, 2).
    spread = torch.zeros((2, k, width, 2), device=device)
    spread[0, :, :, 0] = right.T
    spread[1, :, :, 1] = right.T
    grid = half @ spread.reshape(2 * k, 2 * width)
    return grid.reshape(batch, height, width, 2)


def _adjust_intensity(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Gamma, gain, offset and noise on float32 (B, C, H, W) images; returns a new tensor.

    ``sign(x) * |x| ** gamma * gain`` is computed as ``sign(x) * exp(gamma * log|x| + log gain)``
    (a tensor power is several times slower on the CPU).
    """
    b, c = images.shape[:2]
    s = config.strength
    device = images.device
    log_gamma = _uniform((b, c, 1, 1), -config.gamma * s, config.gamma * s, generator)
    gain = 1.0 + _uniform((b, c, 1, 1), -config.gain * s, config.gain * s, generator)
    offset = _uniform((b, c, 1, 1), -config.offset * s, config.offset * s, generator)
    if config.gamma > 0:
        log_abs = images.abs().log_()  # log 0 = -inf, and exp(-inf) = 0
        out = log_abs.mul_(torch.exp(log_gamma).to(device)).add_(torch.log(gain).to(device))
        out = out.exp_().mul_(torch.sign(images))
    else:
        out = images * gain.to(device)
    out = out.add_(offset.to(device))
    if config.noise_std > 0:
        level = _uniform((b, 1, 1, 1), 0.0, config.noise_std * s, generator).to(device)
        noise = torch.randn(out.shape, generator=generator, device=generator.device)
        out = out.add_(noise.to(device).mul_(level))
    return out


def _check_maps(images: torch.Tensor, maps: dict[str, torch.Tensor | None]) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    for name, value in maps.items():
        if value is not None and tuple(value.shape) != (b, h, w):
            raise ValueError(
                f"{name} must have shape {(b, h, w)} to match the images, got {tuple(value.shape)}"
            )


def augment_batch(
    images: torch.Tensor,
    classes: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    config: AugmentConfig,
    generator: torch.Generator,
) -> Augmented:
    """Augment a batch: one random geometric transform per sample, shared by image and maps.

    Args:
        images: float32 (B, C, H, W), normalised intensities, on any device.
        classes: per-pixel class ids (B, H, W), integer (e.g. uint8 or int64), or None.
        weights: per-pixel loss weights float32 (B, H, W), or None.
        mask: annotated pixels (B, H, W), bool or float, or None (all annotated).
        config: the augmentation settings.
        generator: the source of randomness. Small random parameters are drawn on its device
            and moved; for speed on a GPU pass a generator on the images' device (the noise is
            drawn on it). The same generator state gives the same output.

    Returns:
        :class:`Augmented`, tensors on the images' device: images float32 (B, C, H, W) resampled
        bilinearly (reflection at the borders); classes, weights and mask (B, H, W) resampled
        with nearest interpolation in their own dtypes; the mask is false where the source pixel
        lies outside the patch.
    """
    _check_maps(images, {"classes": classes, "weights": weights, "mask": mask})
    b, _, h, w = images.shape
    device = images.device
    images = images.float()
    if mask is None:
        mask = torch.ones((b, h, w), dtype=torch.bool, device=device)
    if not config.geometric:
        out = Augmented(
            images.clone(),
            None if classes is None else classes.clone(),
            None if weights is None else weights.clone(),
            mask.clone(),
        )
    else:
        grid = sampling_grid(b, h, w, config, generator, device)
        out = _resample(images, classes, weights, mask, grid)
    if config.intensity:
        out.images = _adjust_intensity(out.images, config, generator)
    return out


def _resample(
    images: torch.Tensor,
    classes: torch.Tensor | None,
    weights: torch.Tensor | None,
    mask: torch.Tensor,
    grid: torch.Tensor,
) -> Augmented:
    """Apply one sampling grid (B, H, W, 2) to the images (bilinear) and the maps (nearest)."""
    warped = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    maps = [m for m in (classes, weights) if m is not None] + [mask]
    b, _, h, w = images.shape
    stacked = torch.empty((b, len(maps), h, w), dtype=torch.float32, device=images.device)
    for i, m in enumerate(maps):
        stacked[:, i].copy_(m)  # one pass: copy and convert to float32
    # Zero padding: a pixel whose nearest source is outside the patch gets mask 0 (and class 0).
    sampled = F.grid_sample(
        stacked, grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    planes = list(sampled.unbind(dim=1))
    # Nearest sampling copies values, so the float planes hold the maps' values exactly.
    out_classes = planes.pop(0).to(classes.dtype) if classes is not None else None
    out_weights = planes.pop(0).to(weights.dtype) if weights is not None else None
    out_mask = planes.pop(0).to(mask.dtype)
    return Augmented(warped, out_classes, out_weights, out_mask)


def preview(
    image: np.ndarray,
    labels: np.ndarray,
    config: AugmentConfig,
    n: int = 4,
    seed: int = 0,
    normalize: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A few augmented samples of one patch, for display.

    Pass a patch of training size (a few hundred pixels): the elastic grid spans what is given,
    and each sample holds a full-size copy.

    Args:
        image: (H, W) or (C, H, W), any real dtype.
        labels: (H, W) integer labels (instance ids or class ids).
        config: the augmentation settings.
        n: number of samples.
        seed: random seed; the same seed gives the same samples.
        normalize: scale the image by percentiles first (as training does) so the intensity
            changes have their intended size; the returned images are then normalised.

    Returns:
        ``n`` pairs (image float32 with the input's shape, labels with the input's shape and
        dtype). Labels are resampled with nearest interpolation, so every value is one of the
        input's; pixels from outside the patch get 0.
    """
    if image.ndim not in (2, 3) or image.shape[-2:] != labels.shape or labels.ndim != 2:
        raise ValueError(
            f"image (H, W) or (C, H, W) and labels (H, W) must match, got {image.shape} and "
            f"{labels.shape}"
        )
    planes = image[None] if image.ndim == 2 else image
    planes = planes.astype(np.float32)
    if normalize:
        from ..network.normalize import percentile_normalize

        planes = percentile_normalize(planes, channel_axis=0)
    values, index = np.unique(labels, return_inverse=True)  # exact for any label id
    if len(values) > _FLOAT32_EXACT:
        raise ValueError(f"too many distinct labels to preview: {len(values)}")
    image_t = torch.from_numpy(np.ascontiguousarray(planes))[None]
    index_t = torch.from_numpy(index.reshape(labels.shape).astype(np.int64))[None]
    # Index 0 must stay "outside"; shift by one so zero padding maps to label 0 below.
    index_t = index_t + 1
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        out = augment_batch(image_t, index_t, config=config, generator=generator)
        idx = out.classes[0].numpy()
        lab = np.where(idx > 0, values[np.maximum(idx - 1, 0)], 0).astype(labels.dtype)
        img = out.images[0].numpy()
        samples.append((img[0] if image.ndim == 2 else img, lab))
    return samples
