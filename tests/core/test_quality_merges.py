"""Per-object quality sees merges: two touching nuclei labelled as one object."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.analysis.objects import object_features
from napari_unet.core.analysis.quality import merged_objects, object_quality
from napari_unet.core.analysis.shape import shape_features

SHAPE = (80, 120)
RADIUS = 9.0
#: Two nuclei that touch (centres 16 px apart, radius 9: they overlap by 2 px).
PAIR = ((40, 52), (40, 68))
#: Single nuclei elsewhere, so that the image has a typical object size.
SINGLES = ((14, 14), (14, 104), (66, 14), (66, 104), (14, 60))


def _nucleus_distance(centre):
    """Distance inside a disc of RADIUS around centre, 0 outside: float (H, W)."""
    yy, xx = np.indices(SHAPE)
    return np.clip(RADIUS - np.hypot(yy - centre[0], xx - centre[1]), 0, None)


def _probabilities():
    """Class probabilities (3, H, W) as a network gives them for these nuclei: interior high in
    each nucleus and lower towards its edge, boundary on each nucleus's outline, including where
    the two touching ones meet (the border it half-saw); and the true labels."""
    truth = np.zeros(SHAPE, np.int32)
    p_in = np.zeros(SHAPE, np.float32)
    p_bd = np.zeros(SHAPE, np.float32)
    for i, centre in enumerate((*PAIR, *SINGLES), start=1):
        d = _nucleus_distance(centre)
        inside = d > 0
        truth[inside & (truth == 0)] = i
        profile = np.where(inside, 0.5 + 0.45 * np.minimum(d / 5.0, 1.0), 0.0)
        p_in = np.maximum(p_in, profile.astype(np.float32))
        p_bd = np.maximum(p_bd, np.where(inside & (d < 1.5), 0.6, 0.0).astype(np.float32))
    # where the pair meets: interior dips but stays above 0.5 (one seed), boundary rises
    xx = np.indices(SHAPE)[1]
    seam = (np.abs(xx - 60) <= 1) & (truth > 0) & (truth <= 2)
    p_in[seam] = 0.55
    p_bd[seam] = 0.4
    p_bd = np.minimum(p_bd, 1.0 - p_in)
    p_bg = 1.0 - p_in - p_bd
    return np.stack([p_bg, p_in, p_bd]).astype(np.float32), truth


def test_two_touching_nuclei_labelled_as_one_get_a_lower_quality_than_the_split_pair():
    probs, truth = _probabilities()
    merged = truth.copy()
    merged[merged == 2] = 1  # the pair as one object
    split = object_quality(probs, truth)
    joined = object_quality(probs, merged)
    q_split = dict(zip(split.ids.tolist(), split.quality.tolist(), strict=True))
    q_joined = dict(zip(joined.ids.tolist(), joined.quality.tolist(), strict=True))
    assert q_joined[1] < min(q_split[1], q_split[2]) - 0.05
    assert all(0.0 <= q <= 1.0 for q in (*q_split.values(), *q_joined.values()))
    # the merge is the worst object of its image; the single nuclei are scored alike in both
    assert joined.worst_first()[0] == 1
    for ident in range(3, 3 + len(SINGLES)):
        assert q_joined[ident] == pytest.approx(q_split[ident], abs=0.05)


def test_merge_evidence_two_peaks_a_waist_and_a_ridge():
    probs, truth = _probabilities()
    merged = truth.copy()
    merged[merged == 2] = 1
    one = object_features(probs, merged)
    two = object_features(probs, truth)
    assert one.column("interior_peaks")[0] == 2
    assert one.column("shape_peaks")[0] == 2
    assert (two.column("interior_peaks") == 1).all() and (two.column("shape_peaks") == 1).all()
    assert one.column("solidity")[0] < 0.95 < two.column("solidity")[:2].min()
    assert one.column("interior_ridge")[0] > two.column("interior_ridge")[:2].max()
    assert one.column("size_excess")[0] > 0.5
    assert two.column("size_excess").max() < 0.1


def test_shape_features_plane_by_plane_match_the_plane():
    """A stack labelled plane by plane is measured per plane, with the same values as a plane."""
    probs, truth = _probabilities()
    merged = truth.copy()
    merged[merged == 2] = 1
    stack_labels = np.stack([merged, np.where(merged > 0, merged + 20, 0)])
    stack_probs = np.stack([probs, probs], axis=1)
    plane = object_features(probs, merged)
    stack = object_features(stack_probs, stack_labels, spatial_ndim=2)
    np.testing.assert_allclose(stack.matrix[: len(plane.ids)], plane.matrix, atol=1e-6)
    np.testing.assert_allclose(stack.matrix[len(plane.ids) :], plane.matrix, atol=1e-6)


def test_shape_features_of_a_volume_and_of_flat_objects():
    volume = np.zeros((9, 20, 40), np.int64)
    zz, yy, xx = np.indices(volume.shape)
    for code, cx in ((1, 10), (1, 22)):  # two touching balls, one code
        volume[(zz - 4) ** 2 + (yy - 10) ** 2 + (xx - cx) ** 2 <= 36] = code
    volume[4, 2, 30:36] = 2  # a flat line: no 3D hull
    smooth = ndi.gaussian_filter(ndi.distance_transform_edt(volume > 0), 1.0).astype(np.float32)
    interior = smooth / smooth.max()
    out = shape_features(volume, 2, interior, np.zeros_like(interior), spatial_ndim=3)
    assert out["shape_peaks"][1] == 2
    assert out["solidity"][1] < 0.95
    assert out["solidity"][2] == 1.0


def test_merged_objects_needs_half_of_two_true_objects():
    truth = np.zeros((10, 30), np.int32)
    truth[:, 0:10], truth[:, 10:20], truth[:, 20:30] = 1, 2, 3
    pred = np.zeros_like(truth)
    pred[:, 0:20] = 5  # all of 1 and 2: a merge
    pred[:, 20:24] = 6  # 40 % of 3 and nothing else: a fragment, not a merge
    pred[:, 24:30] = 7
    np.testing.assert_array_equal(merged_objects(pred, truth, np.array([5, 6, 7])), [1, 0, 0])
