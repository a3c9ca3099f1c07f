"""Training targets: classes, border weight map, annotated mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.errors import InputMismatchError, UserError
from napari_unet.core.training.targets import (
    TargetConfig,
    exact_weight_map,
    instance_targets,
    semantic_targets,
    stack_targets,
)

NO_GAP = TargetConfig(w0=0.0)


def two_squares(gap: int, shape: tuple[int, int] = (40, 100)) -> np.ndarray:
    """Square 1 on columns 10..24, square 2 starting ``gap`` columns after it (0 = touching)."""
    labels = np.zeros(shape, np.uint16)
    labels[10:30, 10:25] = 1
    labels[10:30, 25 + gap : 40 + gap] = 2
    return labels


def packed_cells(size: int, n: int, seed: int) -> np.ndarray:
    """Random discs given to their nearest seed: some touch, some leave thin gaps."""
    rng = np.random.default_rng(seed)
    ys, xs = rng.integers(0, size, n), rng.integers(0, size, n)
    seeds = np.zeros((size, size), bool)
    seeds[ys, xs] = True
    dist, (iy, ix) = ndi.distance_transform_edt(~seeds, return_indices=True)
    ids = np.zeros((size, size), np.int64)
    ids[ys, xs] = np.arange(1, n + 1) * 7 + 1000  # non-sequential ids
    radius = np.zeros((size, size))
    radius[ys, xs] = rng.uniform(3.0, 9.0, n)
    return np.where(dist <= radius[iy, ix], ids[iy, ix], 0)


def brute_force_gap(labels: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The paper's border term by brute force: every pixel against every object pixel."""
    yy, xx = np.indices(labels.shape)
    pixels = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(float)
    per_object = []
    for obj_id in np.unique(labels[labels > 0]):
        points = np.argwhere(labels == obj_id).astype(float)
        dist = np.sqrt(((pixels[:, None, :] - points[None, :, :]) ** 2).sum(-1)).min(axis=1)
        per_object.append(dist)
    dists = np.sort(np.stack(per_object), axis=0)
    gap = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    return gap.reshape(labels.shape)


# ------------------------------------------------------------------------------ classes


def test_touching_squares_are_separated_by_a_boundary_line():
    labels = two_squares(gap=0)
    t = instance_targets(labels)
    assert t.classes.dtype == np.uint8 and t.classes.shape == labels.shape
    assert np.all(t.classes[labels == 0] == 0)
    # the contact: one boundary pixel on each side, interiors beyond
    assert np.all(t.classes[11:29, 24] == 2) and np.all(t.classes[11:29, 25] == 2)
    assert list(t.classes[20, 22:28]) == [1, 1, 2, 2, 1, 1]
    assert np.all(t.classes[12:28, 12:23] == 1) and np.all(t.classes[12:28, 27:38] == 1)
    # outer edges touching the background are boundary too
    assert t.classes[20, 10] == 2 and t.classes[10, 15] == 2 and t.classes[20, 11] == 1
    # the two interiors do not touch, not even diagonally
    _, n_interiors = ndi.label(t.classes == 1, structure=np.ones((3, 3)))
    assert n_interiors == 2


def test_boundary_width_two_doubles_the_line():
    t = instance_targets(two_squares(gap=0), TargetConfig(boundary_width=2))
    assert list(t.classes[20, 21:29]) == [1, 1, 2, 2, 2, 2, 1, 1]
    assert list(t.classes[20, 10:14]) == [2, 2, 1, 1]


def test_image_border_is_not_a_boundary():
    labels = np.zeros((20, 30), np.uint8)
    labels[:, :10] = 1
    t = instance_targets(labels)
    assert list(t.classes[10, :11]) == [1] * 9 + [2, 0]


def test_tiny_object_is_all_boundary():
    labels = np.zeros((10, 10), np.uint8)
    labels[4:6, 4:6] = 3
    t = instance_targets(labels)
    assert np.all(t.classes[4:6, 4:6] == 2) and t.classes.sum() == 8


# ------------------------------------------------------------------------------ weights


def test_weight_peaks_in_the_narrow_gap_between_close_objects():
    labels = two_squares(gap=1)  # column 25 is a one-pixel background gap
    t = instance_targets(labels)
    class_w = instance_targets(labels, NO_GAP).weights
    assert t.weights.dtype == np.float32
    gap, far = t.weights[20, 25], t.weights[20, 95]
    assert gap > far
    background = t.weights[labels == 0]
    assert gap == pytest.approx(background.max())
    # d1 = d2 = 1 in the gap: w0 * exp(-(1 + 1)^2 / (2 sigma^2)) on top of the class weight
    assert gap == pytest.approx(class_w[20, 25] + 10.0 * math.exp(-4 / 50), abs=1e-4)
    # far from both objects only the class weight is left
    assert far == pytest.approx(class_w[20, 95], abs=1e-3)
    assert class_w[20, 95] == class_w[20, 25]


def test_contact_line_gets_the_border_term_and_interiors_do_not():
    labels = two_squares(gap=0)
    t = instance_targets(labels)
    class_w = instance_targets(labels, NO_GAP).weights
    # boundary pixel on the contact: d1 = 0 (own object), d2 = 1 (the neighbour)
    assert t.weights[20, 24] - class_w[20, 24] == pytest.approx(10 * math.exp(-1 / 50), abs=1e-4)
    assert np.array_equal(t.weights[t.classes == 1], class_w[t.classes == 1])
    off = instance_targets(labels, TargetConfig(gap_on_boundary=False))
    assert off.weights[20, 24] == pytest.approx(class_w[20, 24])


def test_class_balance_is_inverse_frequency_with_mean_one():
    labels = np.zeros((40, 40), np.uint8)
    labels[5:35, 5:35] = 1
    t = instance_targets(labels, NO_GAP)
    counts = np.bincount(t.classes.ravel(), minlength=3)
    per_class = [t.weights[t.classes == c] for c in range(3)]
    assert all(np.ptp(w) == 0 for w in per_class)  # one weight per class
    totals = [w[0] * n for w, n in zip(per_class, counts, strict=True)]
    assert np.allclose(totals, totals[0], rtol=1e-5)  # w_c proportional to 1 / frequency
    assert t.weights.mean() == pytest.approx(1.0, rel=1e-5)


def test_class_balance_cap_and_off():
    labels = np.zeros((100, 100), np.uint8)
    labels[40:46, 40:46] = 1  # 1 % foreground: the cap applies
    t = instance_targets(labels, NO_GAP)
    assert t.weights.max() / t.weights.min() == pytest.approx(10.0, rel=1e-5)
    assert t.weights.mean() == pytest.approx(1.0, rel=1e-5)
    flat = instance_targets(labels, TargetConfig(w0=0.0, class_balance=False))
    assert np.all(flat.weights == 1.0)


def test_outside_the_mask_weight_is_zero_and_balance_uses_the_mask():
    labels = two_squares(gap=1)
    mask = np.zeros(labels.shape, np.uint8)  # numbers are accepted, non-zero = annotated
    mask[:, :26] = 1
    t = instance_targets(labels, mask=mask)
    assert t.mask.dtype == bool and np.array_equal(t.mask, mask != 0)
    assert np.all(t.weights[:, 26:] == 0)
    assert np.all(t.weights[:, :26] > 0)
    assert np.array_equal(t.classes, instance_targets(labels).classes)
    assert instance_targets(labels, NO_GAP, mask).weights[:, :26].mean() == pytest.approx(1.0)
    empty = instance_targets(labels, mask=np.zeros(labels.shape, bool))
    assert not empty.weights.any()


def test_default_mask_is_everything_and_single_object_has_no_border_term():
    labels = np.zeros((30, 30), np.uint8)
    labels[10:20, 10:20] = 4
    t = instance_targets(labels)
    assert t.mask.all()
    assert np.array_equal(t.weights, instance_targets(labels, NO_GAP).weights)


def test_exact_reference_matches_brute_force():
    labels = np.zeros((24, 28), np.uint8)
    labels[3:9, 3:10] = 1
    labels[3:9, 12:20] = 2  # two-pixel gap
    labels[11:20, 6:14] = 3
    labels[20:23, 6:10] = 3
    config = TargetConfig(w0=10.0, sigma=5.0)
    t = instance_targets(labels, NO_GAP)
    expected = t.weights + np.where(t.classes != 1, brute_force_gap(labels, 10.0, 5.0), 0)
    assert np.allclose(exact_weight_map(labels, config), expected, atol=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        TargetConfig(),
        TargetConfig(w0=5.0, sigma=3.0),
        TargetConfig(w0=20.0, sigma=8.0, boundary_width=2),
        TargetConfig(gap_on_boundary=False, class_balance=False),
    ],
)
def test_fast_map_equals_exact_map(config):
    labels = packed_cells(120, 25, seed=3)
    mask = np.ones(labels.shape, bool)
    mask[:20] = False
    fast = instance_targets(labels, config, mask).weights
    exact = exact_weight_map(labels, config, mask)
    assert exact.max() > config.w0 / 2  # the border term is really there
    assert np.abs(fast - exact).max() < 1e-3


def test_small_annotated_region_in_a_crowded_image_matches_exact():
    labels = packed_cells(200, 80, seed=5)
    mask = np.zeros(labels.shape, bool)
    mask[120:160, 130:170] = True
    fast = instance_targets(labels, mask=mask).weights
    exact = exact_weight_map(labels, mask=mask)
    assert not fast[~mask].any()
    assert exact[mask].max() > 5
    assert np.abs(fast - exact).max() < 1e-3


def test_huge_sparse_ids_give_the_same_targets():
    labels = two_squares(gap=2).astype(np.int64)
    big = np.where(labels == 1, 2**40, np.where(labels == 2, 5, 0))
    a, b = instance_targets(labels), instance_targets(big)
    assert np.array_equal(a.classes, b.classes) and np.allclose(a.weights, b.weights)


# ------------------------------------------------------------------------------ stacks


def test_stack_planes_without_labels_are_unannotated():
    labels = np.zeros((3, 40, 100), np.uint16)
    labels[0] = two_squares(gap=1)
    labels[2, 5:15, 5:15] = 9
    t = stack_targets(labels)
    assert t.classes.shape == t.weights.shape == t.mask.shape == labels.shape
    assert t.mask[0].all() and t.mask[2].all() and not t.mask[1].any()
    assert not t.weights[1].any()
    plane = instance_targets(labels[0])
    assert np.array_equal(t.classes[0], plane.classes)
    assert np.array_equal(t.weights[0], plane.weights)


def test_stack_mask_overrides_the_empty_plane_rule():
    labels = np.zeros((2, 20, 20), np.uint8)
    labels[0, 5:15, 5:15] = 1
    mask = np.ones(labels.shape, bool)
    mask[0, :, :10] = False
    t = stack_targets(labels, mask=mask)
    assert t.mask[1].all() and np.all(t.weights[1] == 1.0)  # annotated background only
    assert not t.weights[0, :, :10].any() and t.weights[0, :, 10:].all()
    with pytest.raises(InputMismatchError, match="shape"):
        stack_targets(labels, mask=mask[0])


# ------------------------------------------------------------------------------ semantic


def test_semantic_targets_keep_class_ids_and_balance():
    labels = np.zeros((20, 20), np.int32)
    labels[:, 10:] = 1
    labels[:5, :5] = 2
    t = semantic_targets(labels, n_classes=4)
    assert t.classes.dtype == np.uint8 and np.array_equal(t.classes, labels)
    counts = np.bincount(labels.ravel())
    w = [t.weights[labels == c][0] for c in range(3)]
    assert np.allclose([w[c] * counts[c] for c in range(3)], w[0] * counts[0])
    assert t.weights.mean() == pytest.approx(1.0)
    mask = labels != 1
    masked = semantic_targets(labels, 4, mask=mask)
    assert not masked.weights[~mask].any()
    assert masked.weights[mask].mean() == pytest.approx(1.0)
    with pytest.raises(UserError, match="class 2"):
        semantic_targets(labels, n_classes=2)


def test_semantic_stack_planes_without_labels_are_unannotated():
    labels = np.zeros((2, 10, 10), np.uint8)
    labels[1, :5] = 1
    t = semantic_targets(labels, 2)
    assert not t.mask[0].any() and not t.weights[0].any()
    assert t.mask[1].all() and t.weights[1].mean() == pytest.approx(1.0)


# ------------------------------------------------------------------------------ bad input


def test_negative_labels_are_refused():
    labels = np.zeros((8, 8), np.int32)
    labels[2, 2] = -3
    with pytest.raises(UserError, match="negative"):
        instance_targets(labels)
    with pytest.raises(UserError, match="negative"):
        semantic_targets(labels, 3)


@pytest.mark.parametrize("value", [1.5, np.nan])
def test_non_integer_labels_are_refused(value):
    labels = np.zeros((8, 8), np.float32)
    labels[2, 2] = value
    with pytest.raises(UserError, match="whole numbers"):
        instance_targets(labels)


def test_other_bad_label_inputs():
    with pytest.raises(UserError, match="data type"):
        instance_targets(np.full((4, 4), "a"))
    with pytest.raises(UserError, match="stack_targets"):
        instance_targets(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(UserError, match="dimensions"):
        stack_targets(np.zeros((4, 4), np.uint8))
    with pytest.raises(InputMismatchError, match="mask"):
        instance_targets(np.zeros((4, 4), np.uint8), mask=np.ones((4, 5), bool))


def test_whole_float_and_bool_labels_are_accepted():
    labels = two_squares(gap=1)
    ref = instance_targets(labels)
    as_float = instance_targets(labels.astype(np.float32))
    assert np.array_equal(as_float.classes, ref.classes)
    assert np.array_equal(as_float.weights, ref.weights)
    as_bool = instance_targets(labels > 0)
    assert set(np.unique(as_bool.classes)) == {0, 1, 2}


def test_config_is_validated():
    with pytest.raises(ValueError, match="sigma"):
        TargetConfig(sigma=0)
    with pytest.raises(ValueError, match="boundary_width"):
        TargetConfig(boundary_width=0)
    assert TargetConfig().margin >= 20
    assert TargetConfig(w0=0).margin == 0
