"""Training data: pairs from images and labels, the validation split, patch sampling."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.config import NormalizeConfig
from napari_unet.core.errors import InputMismatchError, UserError
from napari_unet.core.training.data import PatchSampler, data_hash, make_pairs, split_validation

NORM = NormalizeConfig()


def discs(shape=(64, 64), centres=((20, 20), (40, 44)), radius=7, seed=0):
    """A noisy image with bright discs, and their instance labels (uint16)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    image = 100 + 400 * (labels > 0) + rng.normal(0, 20, shape)
    return image.astype(np.uint16), labels


# --------------------------------------------------------------------------------------------
# make_pairs


def test_single_image_is_one_fully_annotated_pair():
    image, labels = discs()
    (pair,) = make_pairs(image, labels, "YX", 1, NORM, name="a.tif")
    assert pair.image.shape == (1, 64, 64) and pair.image.dtype == np.float32
    assert pair.targets.mask.all()
    assert pair.annotated_pixels == 64 * 64
    np.testing.assert_array_equal(pair.labels, labels)
    # normalised over the whole image: background near 0, objects near 1
    assert pair.image[0][labels == 0].mean() < 0.2 < 0.8 < pair.image[0][labels > 0].mean()
    assert pair.name == "a.tif"


def test_shape_mismatch_is_refused():
    image, labels = discs()
    with pytest.raises(InputMismatchError, match=r"a\.tif.*\(64, 64\)"):
        make_pairs(image, labels[:40], "YX", 1, NORM, name="a.tif")


def test_negative_labels_are_refused():
    image, labels = discs()
    with pytest.raises(UserError, match="negative"):
        make_pairs(image, labels.astype(np.int32) - 1, "YX", 1, NORM)


def test_fractional_labels_are_refused_whole_floats_accepted():
    image, labels = discs()
    with pytest.raises(UserError, match="whole numbers"):
        make_pairs(image, labels + 0.5, "YX", 1, NORM)
    (pair,) = make_pairs(image, labels.astype(np.float32), "YX", 1, NORM)
    assert pair.targets.classes.max() == 2


def test_all_zero_labels_are_refused_without_a_mask():
    image, labels = discs()
    with pytest.raises(UserError, match="all zero"):
        make_pairs(image, np.zeros_like(labels), "YX", 1, NORM, name="a.tif")
    stack = np.stack([image, image])
    with pytest.raises(UserError, match="all zero"):
        make_pairs(stack, np.zeros((2, 64, 64), np.uint16), "ZYX", 1, NORM)


def test_all_zero_labels_inside_a_mask_are_annotated_background():
    image, labels = discs()
    mask = np.zeros(labels.shape, bool)
    mask[:16, :16] = True
    (pair,) = make_pairs(image, np.zeros_like(labels), "YX", 1, NORM, mask=mask)
    np.testing.assert_array_equal(pair.targets.mask, mask)
    assert (pair.targets.weights[~mask] == 0).all() and (pair.targets.weights[mask] > 0).all()
    assert (pair.targets.classes[mask] == 0).all()


def test_empty_mask_is_refused():
    image, labels = discs()
    with pytest.raises(UserError, match="no pixel"):
        make_pairs(image, labels, "YX", 1, NORM, mask=np.zeros(labels.shape, np.uint8))


def test_mask_of_another_shape_is_refused():
    image, labels = discs()
    with pytest.raises(InputMismatchError, match="mask"):
        make_pairs(image, labels, "YX", 1, NORM, mask=np.ones((64, 63), bool))


def test_mask_limits_the_loss_weights():
    image, labels = discs()
    mask = np.zeros(labels.shape, np.uint8)
    mask[10:30, 10:30] = 7  # non-zero = annotated
    (pair,) = make_pairs(image, labels, "YX", 1, NORM, mask=mask)
    assert pair.annotated_pixels == 400
    assert (pair.targets.weights[mask == 0] == 0).all()
    assert (pair.targets.weights[mask > 0] > 0).all()


def test_stack_planes_without_labels_are_skipped():
    image, labels = discs()
    stack = np.stack([image, image, image])
    stack_labels = np.zeros((3, 64, 64), np.uint16)
    stack_labels[1] = labels
    pairs = make_pairs(stack, stack_labels, "ZYX", 1, NORM, name="s.tif")
    assert [p.name for p in pairs] == ["s.tif, plane 2"]
    np.testing.assert_array_equal(pairs[0].labels, labels)
    assert pairs[0].targets.mask.all()


def test_stack_mask_marks_an_empty_plane_as_annotated():
    image, labels = discs()
    stack = np.stack([image, image])
    stack_labels = np.stack([np.zeros_like(labels), labels])
    mask = np.zeros((2, 64, 64), bool)
    mask[0, :32] = True
    pairs = make_pairs(stack, stack_labels, "ZYX", 1, NORM, mask=mask)
    assert len(pairs) == 1  # plane 2 has labels but is outside the mask
    assert pairs[0].name.endswith("plane 1")
    assert pairs[0].annotated_pixels == 32 * 64


def test_time_lapse_with_channels():
    image, labels = discs()
    data = np.stack([np.stack([image, image // 2])] * 2)  # TCYX
    pairs = make_pairs(data, np.stack([labels, labels]), "TCYX", 2, NORM)
    assert len(pairs) == 2
    assert pairs[0].image.shape == (2, 64, 64)


def test_rgb_image():
    image, labels = discs()
    rgb = np.stack([image // 4, image // 8, np.zeros_like(image)], axis=-1).astype(np.uint8)
    (gray,) = make_pairs(rgb, labels, "YXS", 1, NORM)
    assert gray.image.shape == (1, 64, 64)
    assert gray.image[0][labels > 0].mean() > 0.8 > 0.2 > gray.image[0][labels == 0].mean()
    (colour,) = make_pairs(rgb, labels, "YXS", 3, NORM)
    assert colour.image.shape == (3, 64, 64)
    with pytest.raises(InputMismatchError):
        make_pairs(rgb, labels, "YXS", 2, NORM)


def test_semantic_labels():
    image, labels = discs()
    classes = np.minimum(labels, 2)
    (pair,) = make_pairs(image, classes, "YX", 1, NORM, task="semantic", n_classes=3)
    np.testing.assert_array_equal(pair.targets.classes, classes)
    with pytest.raises(UserError, match="class"):
        make_pairs(image, classes + 1, "YX", 1, NORM, task="semantic", n_classes=3)


def test_data_hash():
    image, labels = discs()
    assert data_hash(image, labels) == data_hash(image.copy(), labels.copy())
    changed = labels.copy()
    changed[0, 0] = 9
    assert data_hash(image, changed) != data_hash(image, labels)
    assert data_hash(labels.astype(np.uint32)) != data_hash(labels)
    assert data_hash(image).startswith("sha256:")


# --------------------------------------------------------------------------------------------
# split_validation


def _grid(n=16, size=128, seed=0):
    rng = np.random.default_rng(seed)
    centres = [(y, x) for y in range(12, size, 26) for x in range(12, size, 26)][:n]
    return discs((size, size), centres, radius=8, seed=int(rng.integers(1000)))


def _locate(crop_image: np.ndarray, image: np.ndarray) -> tuple[int, int]:
    """Where ``crop_image`` (C, h, w) lies in ``image`` (C, H, W)."""
    h, w = crop_image.shape[1:]
    hits = [
        (y, x)
        for y in range(image.shape[1] - h + 1)
        for x in range(image.shape[2] - w + 1)
        if np.array_equal(image[:, y : y + h, x : x + w], crop_image)
    ]
    assert len(hits) == 1
    return hits[0]


def test_validation_blocks_leave_the_training_mask():
    image, labels = _grid()
    pairs = make_pairs(image, labels, "YX", 1, NORM)
    original = pairs[0]
    training, crops = split_validation(pairs, 0.25, np.random.default_rng(0), block=32, context=8)
    assert crops and len(training) == 1
    trained = training[0].targets
    held_out = original.targets.mask & ~trained.mask
    assert held_out.sum() == sum(int(c.mask.sum()) for c in crops)
    assert 0.15 * original.annotated_pixels <= held_out.sum() <= 0.5 * original.annotated_pixels
    assert (trained.weights[held_out] == 0).all()
    for crop in crops:
        y, x = _locate(crop.image, original.image)
        h, w = crop.labels.shape
        np.testing.assert_array_equal(crop.labels, original.labels[y : y + h, x : x + w])
        # scored pixels are never trained on; the context around them is
        scored = np.zeros(original.labels.shape, bool)
        scored[y : y + h, x : x + w] = crop.mask
        assert not (scored & trained.mask).any()
        assert (trained.weights[scored] == 0).all()
        assert crop.mask.sum() < crop.mask.size  # context is not scored
    # the pairs given are not modified
    assert original.targets.mask.all()


def test_no_validation_with_little_annotation_or_fraction_zero():
    image, labels = _grid()
    pairs = make_pairs(image, labels, "YX", 1, NORM)
    assert split_validation(pairs, 0.0, np.random.default_rng(0), block=32)[1] == []
    training, crops = split_validation(pairs, 0.25, np.random.default_rng(0))  # 192 px blocks
    assert crops == [] and training[0].targets.mask.all()


def test_a_strip_of_corrected_objects_gets_held_out_blocks():
    # 60 corrected nuclei in the left fifth of a 512 px image (what a user corrects in a few
    # minutes): enough for a before/after score at the default 128 px blocks
    centres = [(y, x) for y in range(16, 512, 26) for x in (16, 46, 76)]
    image, labels = discs((512, 512), centres, radius=10, seed=0)
    from scipy import ndimage

    mask = ndimage.binary_dilation(labels > 0, iterations=4)  # the objects with a margin
    pairs = make_pairs(image, labels, "YX", 1, NORM, mask=mask)
    assert pairs[0].annotated_pixels < 3 * 128 * 128
    _, crops = split_validation(pairs, 0.2, np.random.default_rng(0), block=128)
    assert crops
    assert all(c.labels[c.mask].any() for c in crops)


# --------------------------------------------------------------------------------------------
# PatchSampler


def test_patches_centre_on_a_small_annotated_region():
    image, labels = discs((256, 256), centres=((200, 40),), radius=4)
    mask = np.zeros(labels.shape, bool)
    mask[195:206, 35:46] = True  # one reviewed cell in a large image
    pairs = make_pairs(image, labels, "YX", 1, NORM, mask=mask)
    sampler = PatchSampler(pairs, 64, np.random.default_rng(0))
    batch = sampler.sample(40)
    assert batch.images.shape == (40, 1, 64, 64) and batch.images.dtype == np.float32
    assert batch.classes.shape == (40, 64, 64) and batch.classes.dtype == np.int64
    assert batch.weights.dtype == np.float32 and batch.mask.dtype == bool
    with_annotation = batch.mask.any(axis=(1, 2))
    assert with_annotation.mean() >= 0.75  # by chance alone: about 5%
    assert (batch.weights[~batch.mask] == 0).all()
    # patches with the annotated cell show its (bright) pixels
    assert (batch.classes[with_annotation] > 0).any(axis=(1, 2)).all()


def test_pairs_are_chosen_by_annotated_pixels():
    a_image, a_labels = discs(seed=1)
    b_image, b_labels = discs(seed=2)
    small = np.zeros(a_labels.shape, bool)
    small[:4, :4] = True
    pairs = make_pairs(a_image, a_labels, "YX", 1, NORM, mask=small, name="a")
    pairs += make_pairs(b_image, b_labels, "YX", 1, NORM, name="b")
    sampler = PatchSampler(pairs, 32, np.random.default_rng(0))
    batch = sampler.sample(200)
    from_a = batch.mask.sum(axis=(1, 2)) <= 16  # a's patches hold at most its 16 annotated px
    assert from_a.mean() < 0.05


def test_image_smaller_than_the_patch_is_padded_without_annotation():
    image, labels = discs((40, 50), centres=((20, 25),))
    pairs = make_pairs(image, labels, "YX", 1, NORM)
    batch = PatchSampler(pairs, 64, np.random.default_rng(0)).sample(2)
    assert batch.images.shape == (2, 1, 64, 64)
    assert batch.mask[:, :40, :50].all() and not batch.mask[:, 40:].any()
    assert not batch.mask[:, :, 50:].any() and (batch.weights[:, 40:] == 0).all()


def test_sampler_needs_annotation():
    with pytest.raises(UserError):
        PatchSampler([], 64, np.random.default_rng(0))
