"""Per-object quality, likely misses and the objects table, on real arrays."""

import csv
import dataclasses

import numpy as np
import pytest

from _object_columns import COLUMNS_2D
from napari_unet.core.analysis.object_table import is_volume, objects_table, write_csv
from napari_unet.core.analysis.objects import FEATURE_NAMES, likely_misses, object_features
from napari_unet.core.analysis.quality import (
    auroc,
    object_quality,
    quality_map,
    right_objects,
    tta_agreement,
)
from napari_unet.core.errors import InputMismatchError


def _disc(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _probs_for(confident, doubtful, shape=(64, 96)):
    """Probabilities (3, H, W) with confident objects (clear interior, clear boundary) and doubtful
    ones (interior barely above background, no boundary); and their labels."""
    probs = np.zeros((3, *shape), np.float32)
    probs[0] = 0.97
    probs[1] = 0.02
    probs[2] = 0.01
    labels = np.zeros(shape, np.uint16)
    for i, (centre, radius) in enumerate(confident + doubtful, start=1):
        disc = _disc(shape, centre, radius)
        edge = disc & ~_disc(shape, centre, radius - 1.5)
        if i <= len(confident):
            probs[:, disc] = np.array([[0.02], [0.95], [0.03]], np.float32)
            probs[:, edge] = np.array([[0.1], [0.1], [0.8]], np.float32)
        else:
            probs[:, disc] = np.array([[0.42], [0.38], [0.2]], np.float32)
        labels[disc] = i
    return probs, labels


def test_features_and_quality_rank_doubtful_objects_lower():
    confident = [((12, 12), 7), ((12, 40), 8), ((45, 70), 6)]
    doubtful = [((45, 20), 7), ((30, 85), 6)]
    probs, labels = _probs_for(confident, doubtful)
    feats = object_features(probs, labels)
    assert feats.matrix.shape == (5, len(FEATURE_NAMES))
    np.testing.assert_array_equal(feats.ids, [1, 2, 3, 4, 5])
    assert feats.column("seed_strength")[:3].min() > feats.column("seed_strength")[3:].max()
    assert feats.column("entropy_mean")[:3].max() < feats.column("entropy_mean")[3:].min()
    result = object_quality(probs, labels)
    assert ((result.quality >= 0) & (result.quality <= 1)).all()
    assert result.quality[:3].min() > result.quality[3:].max()
    assert set(result.worst_first()[:2]) == {4, 5}
    qmap = quality_map(labels, result)
    assert np.isnan(qmap[labels == 0]).all()
    assert qmap[labels == 4][0] == pytest.approx(result.quality[3])


def test_non_consecutive_ids_and_empty_labels():
    probs, labels = _probs_for([((20, 20), 6), ((20, 60), 6)], [])
    labels[labels == 2] = 17
    result = object_quality(probs, labels)
    np.testing.assert_array_equal(result.ids, [1, 17])
    empty = object_quality(probs, np.zeros_like(labels))
    assert empty.ids.size == 0 and empty.quality.size == 0
    with pytest.raises(InputMismatchError):
        object_quality(probs[:2], labels)


def test_touching_objects_are_measured():
    probs, labels = _probs_for([((20, 20), 8)], [])
    right_half = (labels == 1) & (np.indices(labels.shape)[1] >= 20)
    labels[right_half] = 2  # one object split in two touching halves
    feats = object_features(probs, labels)
    assert (feats.column("touching") > 0.2).all()


def test_auroc_matches_definition():
    assert auroc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([True, True, False, False])) == 1.0
    assert auroc(np.array([0.1, 0.9]), np.array([True, False])) == 0.0
    assert auroc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert np.isnan(auroc(np.array([0.5]), np.array([True])))


def test_quality_of_the_starter_separates_right_from_wrong_objects():
    """On synthetic images the starter was not trained on (dim, clumped, with debris), the
    objects that do not match the truth get a lower quality: AUROC well above chance."""
    from napari_unet.core.inference.predict import predict_labels
    from napari_unet.core.network.registry import get_model
    from napari_unet.core.progress import drain
    from napari_unet.core.synthetic.config import SyntheticConfig
    from napari_unet.core.synthetic.images import make_image

    model = get_model(None)
    config = SyntheticConfig(
        shape=(192, 192),
        photons=12.0,
        clustered=0.8,
        overlap=0.2,
        debris=1.5,
        defocus=0.3,
        coverage=0.35,
    )
    rng = np.random.default_rng(3)
    qualities, rights = [], []
    for _ in range(3):
        image, truth = make_image(config, rng)
        probs, pred = drain(predict_labels(image, "YX", model, device="cpu"))
        result = object_quality(probs, pred)
        qualities.append(result.quality)
        rights.append(right_objects(pred, truth, result.ids))
    right = np.concatenate(rights)
    assert 5 <= (~right).sum() and 5 <= right.sum()  # the case has errors of both kinds
    assert auroc(np.concatenate(qualities), right) > 0.75


def test_tta_agreement_is_high_for_a_clean_image():
    from napari_unet.core.inference.predict import predict_labels
    from napari_unet.core.network.registry import get_model
    from napari_unet.core.progress import drain
    from napari_unet.core.synthetic.config import SAMPLE_CONFIG
    from napari_unet.core.synthetic.images import make_image

    model = get_model(None)
    config = dataclasses.replace(SAMPLE_CONFIG, shape=(96, 128), photons=2000.0, debris=0.0)
    image, _ = make_image(config, 1)
    probs, pred = drain(predict_labels(image, "YX", model, device="cpu"))
    agreement = drain(tta_agreement(image, "YX", model, pred, device="cpu"))
    assert agreement.shape == (len(np.unique(pred)) - 1,)
    assert ((agreement >= 0) & (agreement <= 1)).all()
    assert np.median(agreement) > 0.8
    with_tta = object_quality(probs, pred, agreement=agreement)
    assert with_tta.quality.shape == agreement.shape


def test_likely_misses_finds_unlabelled_foreground_only():
    probs, labels = _probs_for([((20, 20), 7), ((40, 70), 7)], [])
    labels[labels == 2] = 0  # the user (or a threshold) removed the second object
    misses = likely_misses(probs, labels)
    assert len(misses) == 1
    np.testing.assert_allclose(misses.centroid[0], (40, 70), atol=0.5)
    assert misses.score[0] > 0.9
    assert misses.labels[40, 70] == 1 and misses.labels[20, 20] == 0
    assert (
        len(
            likely_misses(
                probs,
                np.where(labels > 0, labels, 0)
                + (_disc(labels.shape, (40, 70), 8) * 2).astype(labels.dtype),
            )
        )
        == 0
    )


def test_objects_table_2d_columns_and_physical_units():
    probs, labels = _probs_for([((12, 12), 5), ((40, 60), 7)], [])
    image = np.where(labels == 1, 100.0, np.where(labels == 2, 300.0, 10.0)).astype(np.float32)
    table = objects_table(labels, "YX", image, "YX", probs, pixel_size=(0.5, 0.25))
    names = list(table)
    assert names[:11] == [*COLUMNS_2D, "area_um2"]
    assert {"centroid-0_um", "centroid-1_um"} <= set(names)
    np.testing.assert_array_equal(table["label"], [1, 2])
    assert table["area"][1] == (labels == 2).sum()
    np.testing.assert_allclose(table["intensity_mean"], [100.0, 300.0])
    np.testing.assert_allclose(table["area_um2"], table["area"] * 0.125)
    np.testing.assert_allclose(table["centroid-1_um"], table["centroid-1"] * 0.25)
    np.testing.assert_allclose(table["centroid-0"], [12, 40], atol=0.01)


def test_objects_table_stacks(tmp_path):
    volume = np.zeros((4, 32, 32), np.uint16)
    volume[1:3, 5:12, 5:12] = 1  # one 3D object over two planes
    volume[0, 20:25, 20:25] = 2
    assert is_volume(volume, "ZYX")
    table = objects_table(volume, "ZYX", pixel_size=(0.5, 0.5), z_spacing=2.0)
    assert "centroid-2" in table and "bbox-5" in table and "z" not in table
    assert table["area"][0] == 2 * 49 and table["area_um3"][0] == pytest.approx(98 * 0.5)
    assert table["centroid-0_um"][0] == pytest.approx(1.5 * 2.0)

    series = volume.copy()
    series[2][series[2] == 1] = 3  # ids per plane: a time-lapse or plane-by-plane labels
    table = objects_table(series, "TYX", np.ones((4, 32, 32)), "TYX")
    np.testing.assert_array_equal(table["t"], [0, 1, 2])
    np.testing.assert_array_equal(table["label"], [2, 1, 3])
    assert "centroid-2" not in table
    path = write_csv(tmp_path / "t.csv", table)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["t"] == "0" and rows[0]["label"] == "2" and rows[0]["area"] == "25"
    assert list(rows[0])[:3] == ["t", "label", "area"]


def test_objects_table_multichannel_and_mismatch():
    labels = np.zeros((16, 16), np.uint16)
    labels[2:6, 2:6] = 1
    image = np.stack([np.full((16, 16), 2.0), np.full((16, 16), 5.0)])
    table = objects_table(labels, "YX", image, "CYX")
    assert table["intensity_mean-0"][0] == 2.0 and table["intensity_mean-1"][0] == 5.0
    with pytest.raises(InputMismatchError):
        objects_table(labels, "ZYX")


def test_objects_table_rgb_and_z_stack_labelled_plane_by_plane():
    labels = np.zeros((2, 16, 16), np.uint16)
    labels[0, 2:6, 2:6], labels[1, 8:12, 8:12] = 1, 2  # ids per plane, no object over two planes
    assert not is_volume(labels, "ZYX")
    table = objects_table(labels, "ZYX")
    np.testing.assert_array_equal(table["z"], [0, 1])
    assert "centroid-2" not in table
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 1] = 9
    table = objects_table(labels[0], "YX", rgb, "YXS")
    assert table["intensity_mean-1"][0] == 9 and table["intensity_mean-0"][0] == 0
