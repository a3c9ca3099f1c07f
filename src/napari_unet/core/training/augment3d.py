"""Augmentation of 3D training patches: flips, 90-degree rotations, rotation and scaling in YX,
and a 3D elastic deformation; batched torch on the tensors' device.

The 3D form of :mod:`.augment`, with the same :class:`~.augment.AugmentConfig`. Each sample gets
one sampling grid: an affine part that acts in the YX plane only (flips of Y and X, a rotation by
a multiple of 90 degrees plus a small one about the Z axis, a zoom of Y and X), a flip of Z, and
the elastic deformation: random displacements on a coarse grid of control points
(``elastic_points`` per axis) spanning the patch, interpolated to every voxel by separable cubic
interpolation. Z displacements are drawn in XY pixels and divided by the anisotropy (Z step over
XY pixel), so the deformation is the same in physical space along every axis. Z is never rotated
into XY: its sampling is coarser.

The grid is applied with one :func:`torch.nn.functional.grid_sample` for the images (trilinear,
reflection at the borders) and one for the per-voxel maps (nearest: class ids, weights and labels
are kept exactly); voxels whose source lies outside the patch leave the mask. Intensity changes
are those of the 2D augmentation, per sample and channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .augment import (
    AugmentConfig,
    Augmented,
    _adjust_intensity,
    _affine_matrices,
    _interpolation_matrix,
    _uniform,
)


def _elastic_field(
    batch: int,
    shape: tuple[int, int, int],
    config: AugmentConfig,
    anisotropy: float,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor | None:
    """(B, D, H, W, 3) displacements (x, y, z) in voxels, or ``None`` without elastic."""
    if not (config.elastic and config.elastic_std > 0 and config.strength > 0):
        return None
    p = config.elastic_points
    coarse = torch.randn((batch, 3, p, p, p), generator=generator, device=generator.device)
    scale = torch.tensor([1.0, 1.0, 1.0 / max(anisotropy, 1e-6)], device=generator.device)
    coarse = (coarse * scale[None, :, None, None, None] * config.elastic_std * config.strength).to(
        device
    )
    rz, ry, rx = (_interpolation_matrix(p, n, device) for n in shape)
    return torch.einsum("zi,yj,xk,bcijk->bzyxc", rz, ry, rx, coarse)


def sampling_grid_3d(
    batch: int,
    shape: tuple[int, int, int],
    config: AugmentConfig,
    generator: torch.Generator,
    anisotropy: float = 1.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random per-sample sampling grids for 3D :func:`~torch.nn.functional.grid_sample`.

    Args:
        batch: B.
        shape: (D, H, W) of the patches.
        config: the augmentation settings.
        generator: the source of randomness.
        anisotropy: Z step over XY pixel of the patches.
        device: where the grid is made.

    Returns:
        float32 (B, D, H, W, 3): source position (x, y, z) of every output voxel in grid_sample's
        normalised coordinates (``align_corners=False``).
    """
    device = torch.device(device)
    d, h, w = shape
    mats = _affine_matrices(batch, config, generator).to(device)  # (B, 2, 2) on (x, y)
    z_sign = torch.ones(batch, device=generator.device)
    if config.flip:
        z_sign = torch.where(_uniform((batch,), 0, 1, generator) < 0.5, -1.0, 1.0)
    zs = torch.arange(d, device=device, dtype=torch.float32) - (d - 1) / 2
    ys = torch.arange(h, device=device, dtype=torch.float32) - (h - 1) / 2
    xs = torch.arange(w, device=device, dtype=torch.float32) - (w - 1) / 2
    gz, gy, gx = torch.meshgrid(zs, ys, xs, indexing="ij")
    plane = torch.stack([gx, gy], dim=-1).reshape(-1, 2)  # (DHW, 2) output (x, y)
    source_xy = torch.einsum("bij,nj->bni", mats, plane).reshape(batch, d, h, w, 2)
    source_z = gz[None] * z_sign.to(device)[:, None, None, None]
    source = torch.cat([source_xy, source_z[..., None]], dim=-1)
    field = _elastic_field(batch, shape, config, anisotropy, generator, device)
    if field is not None:
        source = source + field
    to_norm = torch.tensor([2.0 / w, 2.0 / h, 2.0 / d], device=device)
    return source * to_norm


def _check(images: torch.Tensor, maps: dict[str, torch.Tensor | None]) -> None:
    if images.ndim != 5:
        raise ValueError(f"images must be (B, C, D, H, W), got shape {tuple(images.shape)}")
    expected = (images.shape[0], *images.shape[2:])
    for name, value in maps.items():
        if value is not None and tuple(value.shape) != expected:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)}")


def augment_volume_batch(
    images: torch.Tensor,
    classes: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    config: AugmentConfig,
    generator: torch.Generator,
    anisotropy: float = 1.0,
) -> Augmented:
    """Augment a batch of 3D patches: one random geometric transform per sample, shared by the
    image and its maps.

    Args:
        images: float32 (B, C, D, H, W), normalised.
        classes: per-voxel class ids (B, D, H, W), integer, or None.
        weights: per-voxel loss weights float32 (B, D, H, W), or None.
        mask: annotated voxels (B, D, H, W), bool or float, or None (all annotated).
        config: the augmentation settings (as in 2D).
        generator: the source of randomness (the same state gives the same output).
        anisotropy: Z step over XY pixel of the patches.

    Returns:
        :class:`~.augment.Augmented` with (B, C, D, H, W) images and (B, D, H, W) maps in their
        own dtypes; the mask is false where the source voxel lies outside the patch.
    """
    _check(images, {"classes": classes, "weights": weights, "mask": mask})
    b, c, d, h, w = images.shape
    images = images.float()
    if mask is None:
        mask = torch.ones((b, d, h, w), dtype=torch.bool, device=images.device)
    if not config.geometric:
        out = Augmented(
            images.clone(),
            None if classes is None else classes.clone(),
            None if weights is None else weights.clone(),
            mask.clone(),
        )
    else:
        grid = sampling_grid_3d(b, (d, h, w), config, generator, anisotropy, images.device)
        warped = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        maps = [m for m in (classes, weights) if m is not None] + [mask]
        stacked = torch.stack([m.to(torch.float32) for m in maps], dim=1)
        sampled = F.grid_sample(
            stacked, grid, mode="nearest", padding_mode="zeros", align_corners=False
        )
        planes = list(sampled.unbind(dim=1))
        out_classes = planes.pop(0).to(classes.dtype) if classes is not None else None
        out_weights = planes.pop(0).to(weights.dtype) if weights is not None else None
        out = Augmented(warped, out_classes, out_weights, planes.pop(0).to(mask.dtype))
    if config.intensity:  # per sample and channel: the 2D code on (B, C, D * H, W)
        flat = out.images.reshape(b, c, d * h, w)
        out.images = _adjust_intensity(flat, config, generator).reshape(b, c, d, h, w)
    return out
