"""Post-processing: probabilities -> instance labels (seeded watershed) or class ids."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.errors import InputMismatchError, UserError
from napari_unet.core.inference.postprocess import (
    PostprocessConfig,
    instances_from_probabilities,
    labels_from_probabilities,
    postprocess,
    semantic_from_probabilities,
)
from napari_unet.core.labels import labels_dtype
from napari_unet.core.progress import drain


def disc(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def touching_discs() -> np.ndarray:
    """Two discs of radius 10 whose centres are 18 px apart: they share a contact line."""
    labels = np.zeros((40, 56), np.int32)
    labels[disc(labels.shape, (20, 18), 10)] = 1
    labels[disc(labels.shape, (20, 36), 10) & (labels == 0)] = 2
    return labels


def probs_from_labels(
    labels: np.ndarray, erosion: int = 2, confidence: float = 0.9, smooth: float = 0.0
) -> np.ndarray:
    """(background, interior, boundary) probabilities, float32 (3, H, W), from a label image.

    Interior = every object eroded by ``erosion`` px, boundary = the rest of the foreground
    (outer ring and contact lines).
    """
    interior = np.zeros(labels.shape, bool)
    for i in np.unique(labels[labels > 0]):
        interior |= ndi.binary_erosion(labels == i, iterations=erosion)
    foreground = labels > 0
    onehot = np.stack([~foreground, interior, foreground & ~interior]).astype(np.float32)
    probs = confidence * onehot + (1 - confidence) / 3
    if smooth:
        probs = ndi.gaussian_filter(probs, (0, smooth, smooth))
        probs /= probs.sum(axis=0, keepdims=True)
    return probs.astype(np.float32)


def best_iou(found: np.ndarray, true: np.ndarray) -> float:
    ids = np.unique(found[true])
    ids = ids[ids > 0]
    return max(((found == i) & true).sum() / ((found == i) | true).sum() for i in ids)


@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_touching_discs_are_split_into_two_objects(smooth: float) -> None:
    truth = touching_discs()
    probs = probs_from_labels(truth, smooth=smooth)
    # the two discs form one foreground component: only the seeds can split them
    assert ndi.label(probs[0] < 0.5)[1] == 1

    labels = instances_from_probabilities(probs)

    assert labels.shape == truth.shape
    assert labels.dtype == np.uint16
    assert set(np.unique(labels)) == {0, 1, 2}
    for i in (1, 2):
        assert best_iou(labels, truth == i) > 0.9
    # grown over the whole foreground, not only the seeds
    assert np.array_equal(labels > 0, probs[0] < 0.5)


def test_result_is_a_pure_function_of_the_probabilities() -> None:
    probs = probs_from_labels(touching_discs())
    before = probs.copy()
    first = instances_from_probabilities(probs)
    assert np.array_equal(probs, before)
    assert np.array_equal(instances_from_probabilities(probs), first)


def test_interior_threshold_changes_the_split() -> None:
    truth = touching_discs()
    probs = probs_from_labels(truth)
    # the network is sure of the left interior (0.9 + 0.1/3), unsure of the right one (0.6)
    right_interior = (truth == 2) & (probs[1] > 0.5)
    probs[:, right_interior] = np.array([0.1, 0.6, 0.3], np.float32)[:, None]

    low = instances_from_probabilities(probs, PostprocessConfig(interior_threshold=0.5))
    high = instances_from_probabilities(probs, PostprocessConfig(interior_threshold=0.7))

    assert low.max() == 2
    assert high.max() == 1
    assert np.array_equal(high > 0, truth > 0)


def test_foreground_threshold_limits_the_growth() -> None:
    truth = touching_discs()
    probs = probs_from_labels(truth)
    boundary = (truth > 0) & (probs[1] < 0.5)
    probs[:, boundary] = np.array([0.3, 0.1, 0.6], np.float32)[:, None]  # 1 - p(bg) = 0.7

    loose = instances_from_probabilities(probs, PostprocessConfig(foreground_threshold=0.5))
    tight = instances_from_probabilities(probs, PostprocessConfig(foreground_threshold=0.8))

    assert loose.max() == tight.max() == 2
    assert np.array_equal(loose > 0, truth > 0)
    assert np.array_equal(tight > 0, probs[1] > 0.5)  # only the seeds remain
    assert (tight > 0).sum() < (loose > 0).sum()


def test_min_size_removes_small_objects() -> None:
    truth = touching_discs()
    truth[2:5, 50:53] = 3  # a 9-pixel speck
    probs = probs_from_labels(truth)

    kept = instances_from_probabilities(probs, PostprocessConfig(min_size=1))
    default = instances_from_probabilities(probs)  # min_size 16
    bigger = instances_from_probabilities(probs, PostprocessConfig(min_size=400))

    assert kept.max() == 3
    assert kept[3, 51] > 0
    assert default.max() == 2
    assert default[3, 51] == 0
    assert set(np.unique(default)) == {0, 1, 2}  # ids stay consecutive
    assert bigger.max() == 0  # each disc has about 300 px


def test_tiny_seeds_are_ignored_as_noise() -> None:
    truth = touching_discs()
    probs = probs_from_labels(truth)
    probs[:, 20, 28] = [0.0, 1.0, 0.0]  # one interior pixel inside the contact band

    denoised = instances_from_probabilities(probs, PostprocessConfig(min_size=1))
    noisy = instances_from_probabilities(probs, PostprocessConfig(min_size=1, min_seed_size=1))

    assert denoised.max() == 2
    assert noisy.max() == 3


def test_foreground_without_a_seed_is_one_object() -> None:
    labels = np.zeros((30, 30), np.int32)
    labels[5:25, 5:25] = 1
    probs = probs_from_labels(labels)
    probs[1][probs[1] > 0.5] = 0.3  # interior unsure everywhere: no seed

    result = instances_from_probabilities(probs)

    assert result.max() == 1
    assert np.array_equal(result > 0, labels > 0)


def test_background_only_gives_empty_labels() -> None:
    probs = np.zeros((3, 17, 9), np.float32)
    probs[0] = 1.0
    result = instances_from_probabilities(probs)
    assert result.shape == (17, 9)
    assert result.dtype == np.uint16
    assert not result.any()


def test_nan_pixels_are_background() -> None:
    probs = probs_from_labels(touching_discs())
    probs[:, :, :3] = np.nan
    probs[1, 20, 18] = np.nan  # inside the left disc
    result = instances_from_probabilities(probs)
    assert result.max() == 2
    assert not result[:, :3].any()


def test_semantic_mode_is_the_most_probable_class() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((4, 13, 21)).astype(np.float32)
    result = semantic_from_probabilities(probs)
    assert result.dtype == np.uint8
    assert np.array_equal(result, np.argmax(probs, axis=0))

    many = rng.random((300, 3, 4)).astype(np.float32)
    assert semantic_from_probabilities(many).dtype == np.uint16


def test_semantic_task_and_mode_give_class_ids() -> None:
    probs = probs_from_labels(touching_discs())
    expected = np.argmax(probs, axis=0)
    stack = np.stack([probs, probs], axis=1)  # (3, Z=2, H, W)

    by_task = labels_from_probabilities(stack, "semantic")
    by_mode = labels_from_probabilities(stack, "instances", PostprocessConfig(mode="semantic"))

    for result in (by_task, by_mode):
        assert result.shape == (2, *expected.shape)
        assert result.dtype == np.uint8
        assert np.array_equal(result[0], expected)
        assert np.array_equal(result[1], expected)  # class ids are not offset per plane


@pytest.mark.parametrize(
    ("max_id", "dtype"),
    [(0, np.uint16), (65535, np.uint16), (65536, np.uint32), (2**32 - 1, np.uint32)],
)
def test_labels_dtype(max_id: int, dtype: type) -> None:
    assert labels_dtype(max_id) == np.dtype(dtype)


@pytest.mark.parametrize("max_id", [-1, 2**32])
def test_labels_dtype_rejects_ids_out_of_range(max_id: int) -> None:
    with pytest.raises(ValueError, match="label"):
        labels_dtype(max_id)


def test_label_ids_beyond_uint32_are_a_user_error() -> None:
    with pytest.raises(UserError, match="too large"):
        labels_dtype(2**32)


def dots(rows: int, cols: int) -> np.ndarray:
    """Probabilities with rows * cols one-pixel objects, each isolated by background."""
    probs = np.zeros((3, 2 * rows, 2 * cols), np.float32)
    probs[0] = 1.0
    probs[:, ::2, ::2] = np.array([0.0, 1.0, 0.0], np.float32)[:, None, None]
    return probs


def test_more_than_65535_objects_switch_to_uint32() -> None:
    keep_all = PostprocessConfig(min_size=1, min_seed_size=1)
    few = instances_from_probabilities(dots(255, 257), keep_all)  # 65535 objects
    many = instances_from_probabilities(dots(256, 257), keep_all)  # 65792 objects
    assert (few.dtype, int(few.max())) == (np.uint16, 65535)
    assert (many.dtype, int(many.max())) == (np.uint32, 65792)
    assert len(np.unique(many)) == 65793


def test_stack_ids_unique_across_planes() -> None:
    truth = touching_discs()
    planes = np.stack([probs_from_labels(truth), probs_from_labels(np.zeros_like(truth))], axis=1)
    probs = np.stack([planes, planes, planes], axis=1)  # (3, T=3, Z=2, H, W)
    single = instances_from_probabilities(planes[:, 0])

    result = labels_from_probabilities(probs, "instances")

    assert result.shape == (3, 2, *truth.shape)
    assert result.dtype == np.uint16
    assert set(np.unique(result)) == set(range(7))  # 3 planes x 2 objects, consecutive
    for t in range(3):
        assert not result[t, 1].any()
        shifted = np.where(single > 0, single + 2 * t, 0)
        assert np.array_equal(result[t, 0], shifted)


def test_stack_switches_to_uint32_when_the_total_needs_it() -> None:
    plane = dots(200, 200)  # 40000 objects per plane, 80000 in all
    probs = np.stack([plane, plane], axis=1)
    result = labels_from_probabilities(probs, "instances", PostprocessConfig(min_size=1))
    assert result.dtype == np.uint32
    assert int(result.max()) == 80000
    assert not np.intersect1d(result[0][result[0] > 0], result[1][result[1] > 0]).size


def test_postprocess_reports_progress_per_plane() -> None:
    probs = np.stack([probs_from_labels(touching_discs())] * 4, axis=1)
    events = []
    result = drain(postprocess(probs, "instances"), events.append)
    assert [e.done for e in events] == [1, 2, 3, 4]
    assert {e.total for e in events} == {4}
    assert {e.stage for e in events} == {"postprocess"}
    assert result.max() == 8


def test_single_image_through_labels_from_probabilities() -> None:
    probs = probs_from_labels(touching_discs())
    assert np.array_equal(
        labels_from_probabilities(probs, "instances"), instances_from_probabilities(probs)
    )


def test_wrong_number_of_classes_for_instances() -> None:
    probs = np.full((2, 8, 8), 0.5, np.float32)
    with pytest.raises(InputMismatchError, match="3 classes"):
        instances_from_probabilities(probs)
    with pytest.raises(InputMismatchError, match="3 classes"):
        labels_from_probabilities(probs, "instances")


def test_probabilities_without_class_axis_are_rejected() -> None:
    with pytest.raises(InputMismatchError, match="shape"):
        labels_from_probabilities(np.zeros((8, 8), np.float32), "semantic")
    with pytest.raises(InputMismatchError, match="shape"):
        instances_from_probabilities(np.zeros((3, 2, 8, 8), np.float32))


def test_unknown_task_is_rejected() -> None:
    with pytest.raises(ValueError, match="task"):
        labels_from_probabilities(np.zeros((3, 8, 8), np.float32), "panoptic")


@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "boxes"},
        {"interior_threshold": 1.0},
        {"foreground_threshold": -0.1},
        {"min_size": -1},
        {"seed_sigma": -1.0},
    ],
)
def test_invalid_settings_are_rejected(settings: dict) -> None:
    with pytest.raises(ValueError):
        PostprocessConfig(**settings)


def test_one_pixel_high_image() -> None:
    probs = np.zeros((3, 1, 30), np.float32)
    probs[0] = 1.0
    probs[:, 0, 2:10] = probs[:, 0, 12:20] = np.array([[0.0], [1.0], [0.0]])
    probs[:, 0, 10:12] = np.array([[0.1], [0.2], [0.7]])  # boundary between the two
    result = instances_from_probabilities(probs, PostprocessConfig(min_size=1))
    assert result.tolist() == [[0] * 2 + [1] * 9 + [2] * 9 + [0] * 10]


def test_ids_move_past_earlier_planes_and_widen_the_dtype():
    from napari_unet.core.labels import IdOffsets, offset_ids, stack_ids

    plane = np.array([[0, 1], [2, 0]], np.uint16)
    assert offset_ids(plane, 0).dtype == np.uint16
    moved = offset_ids(plane, 65_534)
    assert moved.dtype == np.uint32 and moved.tolist() == [[0, 65_535], [65_536, 0]]
    ids = IdOffsets()
    assert ids.add(plane).max() == 2 and ids.add(np.zeros((2, 2), np.uint16)).max() == 0
    assert ids.add(plane).tolist() == [[0, 3], [4, 0]] and ids.used == 4
    stacked = stack_ids([plane, plane, plane])
    assert stacked.shape == (3, 2, 2) and stacked.dtype == np.uint16
    assert sorted(np.unique(stacked).tolist()) == [0, 1, 2, 3, 4, 5, 6]
