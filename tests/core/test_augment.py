"""Augmentation: label values kept, image and maps aligned, out-of-patch mask, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_unet.core.config import from_dict, to_dict
from napari_unet.core.training.augment import AugmentConfig, augment_batch, preview, sampling_grid

NO_INTENSITY = {"gain": 0.0, "offset": 0.0, "gamma": 0.0, "noise_std": 0.0}
RIGID_OFF = {"flip": False, "rot90": False, "rotation": 0.0, "scale_min": 1.0, "scale_max": 1.0}


def blobs(size: int = 64, n: int = 6, seed: int = 0) -> np.ndarray:
    """(size, size) int64 labels: ``n`` discs of radius 6-9 px with ids 1..n, away from the edge."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int64)
    for i in range(1, n + 1):
        cy, cx = rng.integers(16, size - 16, 2)
        r = rng.uniform(6, 9)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return labels


def label_batch(batch: int, size: int = 64) -> torch.Tensor:
    return torch.from_numpy(np.stack([blobs(size, seed=i) for i in range(batch)]))


def interior(labels: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """(B, H, W) bool: pixels whose (2r+1)^2 neighbourhood holds a single label value."""
    x = labels.float()[:, None]
    k = 2 * radius + 1
    hi = F.max_pool2d(x, k, stride=1, padding=radius)
    lo = -F.max_pool2d(-x, k, stride=1, padding=radius)
    return (hi == lo)[:, 0]


def test_labels_keep_their_values():
    labels = label_batch(4)
    out = augment_batch(
        labels[:, None].float(), labels, config=AugmentConfig(), generator=torch.Generator()
    )
    assert out.classes.dtype == labels.dtype
    for b in range(4):
        assert set(out.classes[b].unique().tolist()) <= set(labels[b].unique().tolist())
    mild = AugmentConfig(strength=0.3)
    out = augment_batch(
        labels[:, None].float(), labels, config=mild, generator=torch.Generator().manual_seed(3)
    )
    for b in range(4):
        assert set(out.classes[b].unique().tolist()) == set(labels[b].unique().tolist())


@pytest.mark.parametrize("elastic", [True, False])
def test_image_and_maps_stay_aligned(elastic: bool):
    labels = label_batch(4)
    weights = labels.float() * 0.5 + 1.0
    config = AugmentConfig(elastic=elastic, elastic_std=6.0, rotation=30.0, **NO_INTENSITY)
    out = augment_batch(
        labels[:, None].float(),
        labels.to(torch.uint8),
        weights,
        config=config,
        generator=torch.Generator().manual_seed(1),
    )
    assert not torch.equal(out.classes.long(), labels)  # something moved
    # Away from label edges (2 px) the bilinear image and the nearest labels agree exactly.
    image = out.images[:, 0].round().long()
    keep = interior(out.classes) & out.mask
    assert keep.float().mean() > 0.5
    assert torch.equal(image[keep], out.classes.long()[keep])
    assert torch.equal(out.weights[keep], out.classes[keep].float() * 0.5 + 1.0)


def test_mask_is_zero_where_pixels_come_from_outside():
    size = 32
    # Zoom out by 2: output pixel at offset p from the centre samples the source at 2p, which is
    # inside the patch only for |p| < size / 4.
    config = AugmentConfig(
        elastic=False, **{**RIGID_OFF, "scale_min": 0.5, "scale_max": 0.5}, **NO_INTENSITY
    )
    images = torch.rand(2, 1, size, size)
    given = torch.ones(2, size, size, dtype=torch.bool)
    given[1, :, : size // 2] = False  # left half not annotated
    out = augment_batch(images, mask=given, config=config, generator=torch.Generator())
    offsets = torch.arange(size) - (size - 1) / 2
    inside_1d = offsets.abs() * 2 < size / 2 - 0.5
    expected = inside_1d[:, None] & inside_1d[None, :]
    assert torch.equal(out.mask[0], expected)
    left = (offsets * 2 + (size - 1) / 2).round() < size // 2
    assert torch.equal(out.mask[1], expected & ~left[None, :])
    assert out.mask.dtype == torch.bool


def test_mask_zero_outside_after_rotation_and_float_mask_kept():
    size = 40
    config = AugmentConfig(elastic=False, **{**RIGID_OFF, "rotation": 45.0}, **NO_INTENSITY)
    # The rotation angle is uniform in [-45, 45]: the corners of a square come from outside
    # for any angle above a few degrees; draw until the angle is large.
    out = augment_batch(
        torch.rand(8, 1, size, size),
        mask=torch.ones(8, size, size),
        config=config,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.mask.dtype == torch.float32
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
    c = size // 2
    assert (out.mask[:, c - 4 : c + 4, c - 4 : c + 4] == 1).all()
    corners = out.mask[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).all(dim=1).sum() >= 6  # nearly every sample rotated visibly


def test_sampling_grid_without_transforms_is_identity():
    config = AugmentConfig(elastic=False, **RIGID_OFF, **NO_INTENSITY)
    grid = sampling_grid(1, 5, 7, config, torch.Generator())
    image = torch.arange(35.0).reshape(1, 1, 5, 7)
    same = F.grid_sample(image, grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(same, image, atol=1e-4, rtol=0)


def test_flips_and_rot90_are_exact_symmetries_of_a_square():
    config = AugmentConfig(
        elastic=False, **{**RIGID_OFF, "flip": True, "rot90": True}, **NO_INTENSITY
    )
    image = torch.rand(1, 1, 9, 9).expand(16, 1, 9, 9).contiguous()
    out = augment_batch(image, config=config, generator=torch.Generator().manual_seed(0))
    square = image[0, 0]
    symmetries = [torch.rot90(s, k) for s in (square, square.T) for k in range(4)]
    seen = set()
    for b in range(16):
        found = [
            i for i, s in enumerate(symmetries) if torch.allclose(out.images[b, 0], s, atol=1e-5)
        ]
        assert found, f"sample {b} is not a flip or rotation by 90 degrees"
        seen.add(found[0])
    assert out.mask.all()
    assert len(seen) >= 4


def test_same_seed_same_output_and_different_seed_differs():
    labels = label_batch(3)
    images = labels[:, None].float() / 6
    weights = torch.rand(3, 64, 64)

    def run(seed: int):
        return augment_batch(
            images,
            labels,
            weights,
            config=AugmentConfig(),
            generator=torch.Generator().manual_seed(seed),
        )

    a, b, c = run(5), run(5), run(6)
    for name in ("images", "classes", "weights", "mask"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.images, c.images)


def test_strength_zero_is_identity():
    labels = label_batch(2).to(torch.uint8)
    images = torch.randn(2, 2, 64, 64)
    weights = torch.rand(2, 64, 64)
    mask = torch.rand(2, 64, 64) > 0.5
    out = augment_batch(
        images,
        labels,
        weights,
        mask,
        config=AugmentConfig(strength=0.0),
        generator=torch.Generator(),
    )
    assert torch.equal(out.images, images)
    assert torch.equal(out.classes, labels)
    assert torch.equal(out.weights, weights)
    assert torch.equal(out.mask, mask)


def test_each_sample_gets_its_own_transform():
    one = torch.from_numpy(blobs())
    labels = one.expand(6, -1, -1).clone()
    out = augment_batch(
        labels[:, None].float(),
        labels,
        config=AugmentConfig(**NO_INTENSITY),
        generator=torch.Generator().manual_seed(2),
    )
    for i in range(6):
        for j in range(i + 1, 6):
            assert not torch.equal(out.classes[i], out.classes[j])


def test_intensity_changes_the_image_only():
    labels = label_batch(2)
    images = torch.rand(2, 1, 64, 64)
    config = AugmentConfig(elastic=False, **RIGID_OFF)
    out = augment_batch(images, labels, config=config, generator=torch.Generator())
    assert torch.equal(out.classes, labels)
    assert out.mask.all()
    assert not torch.allclose(out.images, images, atol=1e-3)
    assert torch.isfinite(out.images).all()
    # Gamma keeps the sign of negative intensities (normalised images dip below 0).
    negative = -torch.rand(1, 1, 16, 16) - 0.01
    gamma_only = AugmentConfig(elastic=False, **RIGID_OFF, gamma=0.5, gain=0, offset=0, noise_std=0)
    out = augment_batch(negative, config=gamma_only, generator=torch.Generator())
    assert (out.images < 0).all()


def test_rejects_mismatched_shapes_and_bad_settings():
    with pytest.raises(ValueError, match="classes"):
        augment_batch(
            torch.rand(2, 1, 8, 8),
            torch.zeros(2, 8, 9, dtype=torch.long),
            config=AugmentConfig(),
            generator=torch.Generator(),
        )
    with pytest.raises(ValueError, match="strength"):
        AugmentConfig(strength=1.5)
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale_min=1.2, scale_max=1.1)


def test_config_round_trips_through_a_dict():
    config = AugmentConfig(elastic=False, rotation=5.0, strength=0.5)
    data = to_dict(config)
    assert all(isinstance(v, bool | int | float) for v in data.values())
    assert from_dict(AugmentConfig, data) == config
    assert dataclasses.replace(config, strength=0.0).geometric is False


@pytest.mark.parametrize("shape", [(48, 40), (2, 48, 40)])
def test_preview_returns_n_pairs(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, shape).astype(np.uint16)
    labels = np.zeros(shape[-2:], np.uint32)
    labels[10:20, 10:20] = 70_000  # an id beyond uint16
    labels[25:40, 15:35] = 3
    samples = preview(image, labels, AugmentConfig(), n=3, seed=1)
    assert len(samples) == 3
    for img, lab in samples:
        assert img.shape == shape and img.dtype == np.float32
        assert lab.shape == shape[-2:] and lab.dtype == np.uint32
        assert set(np.unique(lab)) <= {0, 3, 70_000}
    again = preview(image, labels, AugmentConfig(), n=3, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(samples, again, strict=True))
    assert not np.array_equal(samples[0][1], samples[1][1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_like_on_cpu():
    labels = label_batch(2).cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    out = augment_batch(
        labels[:, None].float(), labels, config=AugmentConfig(), generator=generator
    )
    assert out.images.is_cuda and out.classes.is_cuda and out.mask.is_cuda
    assert set(out.classes.unique().tolist()) <= set(labels.unique().tolist())
