"""Synthetic images: determinism, exact and clean labels, image formation, stacks, options."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.core.synthetic.config import SyntheticConfig, random_config
from napari_unet.core.synthetic.images import make_image, make_stack, sample_nuclei, sample_stack

SMALL = SyntheticConfig(shape=(128, 128), radius=(6.0, 10.0), coverage=0.3)


def _adjacent_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different non-zero ids that are 4-neighbours."""
    pairs = set()
    for a, b in ((labels[1:], labels[:-1]), (labels[:, 1:], labels[:, :-1])):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs |= {(min(x, y), max(x, y)) for x, y in zip(a[touch], b[touch], strict=True)}
    return pairs


def _check_labels(labels: np.ndarray, min_size: int) -> None:
    ids = np.unique(labels)
    assert ids[0] == 0
    np.testing.assert_array_equal(ids, np.arange(ids.size))  # consecutive 0..N
    sizes = np.bincount(labels.ravel())[1:]
    assert (sizes >= min_size).all()
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        _, n = ndimage.label(labels[sl] == i)
        assert n == 1, f"object {i} is in {n} pieces"


def test_same_seed_same_output_and_different_seed_differs():
    a_img, a_lab = make_image(SMALL, 3)
    b_img, b_lab = make_image(SMALL, 3)
    c_img, c_lab = make_image(SMALL, 4)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_lab, c_lab)
    assert not np.array_equal(a_img, c_img)
    g_img, g_lab = make_image(SMALL, np.random.default_rng(3))
    np.testing.assert_array_equal(g_img, a_img)
    np.testing.assert_array_equal(g_lab, a_lab)


@pytest.mark.parametrize("kind", ["nuclei", "cells"])
def test_labels_are_consecutive_connected_and_large_enough(kind):
    config = dataclasses.replace(
        SMALL,
        shape=(192, 192),
        kind=kind,
        clustered=0.7,
        overlap=0.3,
        dividing=0.2,
        dying=0.2,
        min_size=15,
    )
    if kind == "cells":
        config = dataclasses.replace(config, radius=(14.0, 20.0), overlap=0.0, coverage=0.6)
    for seed in range(3):
        _, labels = make_image(config, seed)
        assert labels.dtype == np.uint16
        assert labels.max() >= 5
        _check_labels(labels, 15)


def test_clustered_objects_touch_and_isolated_ones_do_not():
    clumps = dataclasses.replace(SMALL, clustered=0.9, dividing=0.0, dying=0.0)
    alone = dataclasses.replace(SMALL, clustered=0.0, dividing=0.0, dying=0.0)
    _, lab_clumps = make_image(clumps, 1)
    _, lab_alone = make_image(alone, 1)
    assert len(_adjacent_pairs(lab_clumps)) >= 3
    assert len(_adjacent_pairs(lab_alone)) == 0


def test_objects_are_brighter_than_background():
    config = dataclasses.replace(SMALL, gradient=0.0, debris=0.0)
    image, labels = make_image(config, 2)
    inside = image[labels > 0].mean() - config.offset
    outside = image[labels == 0].mean() - config.offset
    assert inside > 3 * outside


def test_cells_are_brighter_than_background_and_dimmer_than_their_edges():
    config = SyntheticConfig(
        shape=(192, 192),
        kind="cells",
        radius=(16.0, 22.0),
        coverage=0.5,
        gradient=0.0,
        debris=0.0,
        blur=0.5,
        texture=0.1,
        dividing=0.0,
        dying=0.0,
        photons=2000.0,
    )
    image, labels = make_image(config, 0)
    fg = labels > 0
    interior = ndimage.binary_erosion(fg, iterations=5)
    edge = fg & ~ndimage.binary_erosion(fg, iterations=2)
    assert image[fg].mean() > 2 * image[~fg].mean()
    assert image[edge].mean() > image[interior].mean()


def test_image_dtype_and_shape_options():
    config = dataclasses.replace(SMALL, shape=(64, 96))
    img_f, lab_f = make_image(config, 0)
    img_u, lab_u = make_image(config, 0, dtype=np.uint16)
    assert img_f.dtype == np.float32 and img_f.shape == (64, 96)
    assert img_u.dtype == np.uint16 and img_u.shape == (64, 96)
    assert lab_f.shape == (64, 96)
    np.testing.assert_array_equal(lab_f, lab_u)
    np.testing.assert_array_equal(img_u, np.clip(np.rint(img_f), 0, 65535).astype(np.uint16))
    with pytest.raises(ValueError, match="dtype"):
        make_image(config, 0, dtype=np.int64)


def test_noise_follows_photon_count():
    flat = SyntheticConfig(
        shape=(64, 64),
        n_objects=0,
        debris=0.0,
        gradient=0.0,
        background=1.0,
        photons=100.0,
        gain=2.0,
        read_noise=0.0,
        offset=10.0,
    )
    image, labels = make_image(flat, 0)
    assert labels.max() == 0
    assert image.mean() == pytest.approx(10 + 2 * 100, rel=0.02)
    assert image.std() == pytest.approx(2 * 10, rel=0.1)  # Poisson: sqrt(100) photons


def test_debris_is_not_labelled():
    config = SyntheticConfig(
        shape=(128, 128),
        n_objects=0,
        debris=8.0,
        gradient=0.0,
        background=0.05,
        photons=500.0,
        read_noise=1.0,
    )
    image, labels = make_image(config, 0)
    assert labels.max() == 0
    median = np.median(image)
    noise = 1.4826 * np.median(np.abs(image - median))
    _, n_blobs = ndimage.label(image > median + 10 * noise)
    assert n_blobs >= 5
    clean, _ = make_image(dataclasses.replace(config, debris=0.0), 0)
    assert image.max() > 3 * clean.max()


def test_n_objects_is_honoured_when_there_is_room():
    config = SyntheticConfig(
        shape=(256, 256), radius=(8.0, 10.0), n_objects=12, clustered=0.0, dividing=0.0, dying=0.0
    )
    for seed in range(3):
        _, labels = make_image(config, seed)
        assert 10 <= labels.max() <= 12  # a few may be cut by the border below min_size


def test_stack_objects_drift_and_keep_their_ids():
    config = dataclasses.replace(SMALL, dividing=0.0, dying=0.0)
    image, labels = make_stack(config, 4, 0, speed=1.0)
    assert image.shape == labels.shape == (4, 128, 128)
    assert image.dtype == np.float32 and labels.dtype == np.uint16
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(ids.size))
    common = sorted(set(np.unique(labels[0])) & set(np.unique(labels[1])) - {0})
    assert len(common) >= 0.8 * (len(np.unique(labels[0])) - 1)
    c0 = np.array(ndimage.center_of_mass(labels[0] > 0, labels[0], common))
    c1 = np.array(ndimage.center_of_mass(labels[1] > 0, labels[1], common))
    assert np.median(np.hypot(*(c1 - c0).T)) < 4.0
    assert not np.array_equal(labels[0], labels[3])


def test_independent_stack_planes_have_disjoint_ids():
    image, labels = make_stack(SMALL, 3, 0, independent=True, dtype=np.uint16)
    assert image.shape == labels.shape == (3, 128, 128)
    assert image.dtype == np.uint16
    sets = [set(np.unique(p)) - {0} for p in labels]
    assert all(sets)
    assert not (sets[0] & sets[1]) and not (sets[1] & sets[2])


def test_random_configs_span_realistic_ranges_and_render():
    rng = np.random.default_rng(0)
    configs = [random_config(rng, (96, 96)) for _ in range(40)]
    radii = [c.radius[0] for c in configs]
    photons = [c.photons for c in configs]
    assert min(radii) < 8 and max(radii) > 15
    assert min(photons) < 40 and max(photons) > 300
    assert {c.kind for c in configs} == {"nuclei", "cells"}
    for i, config in enumerate(configs[:8]):
        image, labels = make_image(config, i)
        assert np.isfinite(image).all()
        _check_labels(labels, config.min_size)


def test_samples_are_fixed_and_sized():
    image, labels = sample_nuclei()
    assert image.shape == labels.shape == (512, 512)
    assert image.dtype == np.uint16
    assert labels.max() >= 80
    again, _ = sample_nuclei()
    np.testing.assert_array_equal(image, again)
    stack, stack_labels = sample_stack()
    assert stack.shape == stack_labels.shape == (5, 256, 256)
    assert stack.dtype == np.uint16


@pytest.mark.parametrize(
    "change",
    [
        {"radius": (10.0, 5.0)},
        {"kind": "bacteria"},
        {"clustered": 1.5},
        {"photons": 0.0},
        {"shape": (0, 10)},
        {"dividing": 0.6, "dying": 0.6},
    ],
)
def test_invalid_settings_are_rejected(change):
    with pytest.raises(ValueError):
        SyntheticConfig(**change)
