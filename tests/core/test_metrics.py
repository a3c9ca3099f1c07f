"""Object matching and average precision on hand-built label images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from napari_unet.core.analysis.metrics import DEFAULT_THRESHOLDS, evaluate, match, overlaps
from napari_unet.core.errors import InputMismatchError, UserError

KEYS = {
    "ap_50", "ap_50_95", "precision", "recall", "f1", "mean_matched_iou",
    "n_pred", "n_true", "tp", "fp", "fn",
}  # fmt: skip


def squares(shape: tuple[int, ...], boxes: dict[int, tuple[slice, ...]]) -> np.ndarray:
    labels = np.zeros(shape, np.uint16)
    for label, box in boxes.items():
        labels[box] = label
    return labels


def three_objects() -> np.ndarray:
    return squares(
        (40, 40),
        {1: np.s_[2:12, 2:12], 2: np.s_[2:12, 20:30], 7: np.s_[25:35, 5:35]},
    )


def test_perfect_match() -> None:
    gt = three_objects()
    pred = np.zeros_like(gt, dtype=np.int32)
    for new, old in ((5, 1), (3, 2), (9, 7)):  # other ids, other dtype
        pred[gt == old] = new

    result = evaluate(pred, gt)

    assert KEYS <= set(result)
    assert result["ap_50"] == result["ap_50_95"] == 1.0
    assert result["precision"] == result["recall"] == result["f1"] == 1.0
    assert result["mean_matched_iou"] == 1.0
    assert (result["n_pred"], result["n_true"]) == (3, 3)
    assert (result["tp"], result["fp"], result["fn"]) == (3, 0, 0)
    json.dumps(result)  # JSON-ready


def test_one_missed_object() -> None:
    gt = three_objects()
    pred = np.where(gt == 2, 0, gt)

    result = evaluate(pred, gt)

    assert (result["tp"], result["fp"], result["fn"]) == (2, 0, 1)
    assert result["ap_50"] == pytest.approx(2 / 3)
    assert result["precision"] == 1.0
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(0.8)


def test_split_object() -> None:
    gt = squares((20, 30), {1: np.s_[5:15, 5:25]})  # 10 x 20
    pred = squares((20, 30), {1: np.s_[5:15, 5:17], 2: np.s_[5:15, 17:25]})  # 12 and 8 columns

    result = match(pred, gt, 0.5)

    assert (result.tp, result.fp, result.fn) == (1, 1, 0)
    assert result.ap == pytest.approx(0.5)
    assert result.pred_ids.tolist() == [1]
    assert result.ious.tolist() == pytest.approx([0.6])


@pytest.mark.parametrize(
    ("shift", "threshold", "tp"),
    [(2, 0.5, 1), (2, 0.65, 1), (2, 0.7, 0), (4, 0.5, 0), (0, 0.95, 1)],
)
def test_shifted_object_against_threshold(shift: int, threshold: float, tp: int) -> None:
    gt = squares((20, 30), {1: np.s_[5:15, 5:15]})
    pred = squares((20, 30), {4: np.s_[5:15, 5 + shift : 15 + shift]})
    # IoU = (10 - shift) / (10 + shift): 0.667 for 2 px, 0.429 for 4 px

    result = match(pred, gt, threshold)

    assert (result.tp, result.fp, result.fn) == (tp, 1 - tp, 1 - tp)
    assert result.ap == float(tp)
    if tp:
        assert result.mean_matched_iou == pytest.approx((10 - shift) / (10 + shift))


def test_ap_50_95_averages_the_thresholds() -> None:
    gt = squares((20, 30), {1: np.s_[5:15, 5:15]})
    pred = squares((20, 30), {1: np.s_[5:15, 7:17]})  # IoU 2/3

    result = evaluate(pred, gt)

    assert list(result["ap_by_threshold"]) == [f"{t:.2f}" for t in DEFAULT_THRESHOLDS]
    assert list(result["ap_by_threshold"].values()) == [1.0] * 4 + [0.0] * 6
    assert result["ap_50_95"] == pytest.approx(0.4)
    assert evaluate(pred, gt, thresholds=(0.5, 0.9))["ap_50_95"] == pytest.approx(0.5)


def test_one_prediction_over_two_objects_matches_one() -> None:
    gt = squares((20, 30), {1: np.s_[5:15, 5:15], 2: np.s_[5:15, 15:25]})
    pred = squares((20, 30), {1: np.s_[5:15, 5:25]})  # IoU 0.5 with each

    result = match(pred, gt, 0.5)

    assert (result.tp, result.fp, result.fn) == (1, 0, 1)
    assert result.ap == pytest.approx(0.5)


def test_assignment_maximises_the_number_of_matches() -> None:
    # On one row: gt 1 = 10 px, gt 2 = 10 px; pred A covers 7 px of gt 1 and 5 of gt 2,
    # pred B the other 3 px of gt 1. IoU(A, 1) = 7/15, IoU(A, 2) = 5/17, IoU(B, 1) = 3/10.
    # Taking the best pair first leaves one match; A-2 and B-1 give two.
    gt = np.array([[1] * 10 + [2] * 10])
    pred = np.array([[8] * 7 + [9] * 3 + [8] * 5 + [0] * 5])

    result = match(pred, gt, 0.25)

    assert result.tp == 2
    assert sorted(zip(result.pred_ids.tolist(), result.true_ids.tolist(), strict=True)) == [
        (8, 2),
        (9, 1),
    ]


def brute_force_tp(pred: np.ndarray, gt: np.ndarray, threshold: float) -> int:
    """Dense IoU matrix object by object, then the most matches among pairs >= threshold."""
    p_ids = [i for i in np.unique(pred) if i]
    g_ids = [j for j in np.unique(gt) if j]
    if not p_ids or not g_ids:
        return 0
    iou = np.zeros((len(p_ids), len(g_ids)))
    for a, i in enumerate(p_ids):
        for b, j in enumerate(g_ids):
            inter = ((pred == i) & (gt == j)).sum()
            iou[a, b] = inter / ((pred == i) | (gt == j)).sum()
    rows, cols = linear_sum_assignment(-(iou >= threshold).astype(float))
    return int((iou[rows, cols] >= threshold).sum())


def random_labels(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        y, x = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        h, w = rng.integers(3, 12, size=2)
        labels[y : y + h, x : x + w] = i
    return labels


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_a_dense_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = random_labels(rng, (48, 48), 14)
    pred = random_labels(rng, (48, 48), 14)
    pred[:24] = np.roll(gt, 1, axis=1)[:24]  # half of it close to the truth
    for threshold in (0.1, 0.3, 0.5, 0.7):
        result = match(pred, gt, threshold)
        assert result.tp == brute_force_tp(pred, gt, threshold)
        assert result.n_pred == len(np.unique(pred)) - 1
        assert result.n_true == len(np.unique(gt)) - 1
        assert np.all(result.ious >= threshold)
        assert len(set(result.pred_ids.tolist())) == result.tp  # one-to-one
        assert len(set(result.true_ids.tolist())) == result.tp


def test_overlap_table_ious() -> None:
    gt = squares((20, 30), {3: np.s_[5:15, 5:15]})
    pred = squares((20, 30), {1: np.s_[5:15, 5:10], 2: np.s_[5:15, 10:20]})
    table = overlaps(pred, gt)
    pairs = {
        (int(table.pred_ids[p]), int(table.true_ids[t])): iou
        for p, t, iou in zip(table.pred_index, table.true_index, table.iou, strict=True)
    }
    assert pairs == pytest.approx({(1, 3): 0.5, (2, 3): 50 / 150})


def test_mask_limits_evaluation_to_the_annotated_area() -> None:
    mask = np.zeros((40, 60), bool)
    mask[:, :30] = True
    gt = squares(mask.shape, {1: np.s_[5:15, 5:15], 2: np.s_[5:15, 40:50]})  # 2 outside
    pred = squares(
        mask.shape,
        {
            1: np.s_[5:15, 5:15],
            2: np.s_[20:30, 45:55],  # a false positive outside the mask
            3: np.s_[20:30, 24:34],  # 6 of 10 columns inside: counts, a false positive
            4: np.s_[30:40, 27:37],  # 3 of 10 columns inside: does not count
        },
    )
    result = evaluate(pred, gt, mask=mask)
    assert (result["n_pred"], result["n_true"]) == (2, 1)
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 0)

    unmasked = evaluate(pred, gt)
    assert (unmasked["tp"], unmasked["fp"], unmasked["fn"]) == (1, 3, 1)


def test_mask_measures_iou_inside_the_annotated_area() -> None:
    mask = np.zeros((20, 30), bool)
    mask[:, :15] = True
    gt = squares(mask.shape, {1: np.s_[5:15, 5:15]})
    pred = squares(mask.shape, {1: np.s_[5:15, 5:19]})  # spills 4 columns over the mask edge
    assert match(pred, gt, 0.75, mask=mask).mean_matched_iou == 1.0
    assert match(pred, gt, 0.75).tp == 0  # IoU 10/14 on the whole image


def test_both_empty_is_a_perfect_score() -> None:
    empty = np.zeros((10, 10), np.uint16)
    result = evaluate(empty, empty)
    assert result["ap_50"] == result["ap_50_95"] == result["f1"] == 1.0
    assert result["precision"] == result["recall"] == 1.0
    assert (result["n_pred"], result["n_true"], result["tp"]) == (0, 0, 0)


def test_predictions_on_empty_ground_truth_score_zero() -> None:
    pred = squares((10, 10), {1: np.s_[2:5, 2:5]})
    result = evaluate(pred, np.zeros_like(pred))
    assert result["ap_50"] == result["ap_50_95"] == result["precision"] == 0.0
    assert result["recall"] == result["f1"] == result["mean_matched_iou"] == 0.0
    assert (result["fp"], result["fn"]) == (1, 0)


def test_no_predictions_score_zero() -> None:
    gt = squares((10, 10), {1: np.s_[2:5, 2:5]})
    result = evaluate(np.zeros_like(gt), gt)
    assert result["ap_50"] == result["precision"] == result["recall"] == 0.0
    assert (result["fp"], result["fn"]) == (0, 1)


def test_a_3d_object_is_one_object() -> None:
    gt = squares((3, 10, 10), {1: np.s_[0:2, 2:6, 2:6], 2: np.s_[2, 5:9, 5:9]})
    pred = gt.astype(np.uint32) * 1000
    result = evaluate(pred, gt)
    assert (result["n_pred"], result["n_true"], result["tp"]) == (2, 2, 2)


def test_unusual_label_values() -> None:
    gt = three_objects()
    huge = np.where(gt > 0, gt.astype(np.uint32) + 4_000_000_000, 0).astype(np.uint32)
    as_float = gt.astype(np.float32)
    assert evaluate(huge, gt)["ap_50"] == 1.0
    assert evaluate(as_float, gt)["ap_50"] == 1.0
    assert evaluate(gt > 0, gt)["n_pred"] == 1  # a bool image holds one object, id 1


@pytest.mark.parametrize("bad", [np.full((4, 4), -1, np.int32), np.full((4, 4), 0.5, np.float32)])
def test_invalid_label_values_are_rejected(bad: np.ndarray) -> None:
    with pytest.raises(UserError, match="labels"):
        evaluate(bad, np.zeros((4, 4), np.uint16))


def test_shape_mismatch_is_an_input_error() -> None:
    with pytest.raises(InputMismatchError, match=r"\(10, 10\).*\(10, 11\)"):
        evaluate(np.zeros((10, 10), np.uint16), np.zeros((10, 11), np.uint16))
    with pytest.raises(InputMismatchError, match="mask"):
        evaluate(np.zeros((10, 10)), np.zeros((10, 10)), mask=np.ones((5, 5), bool))


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_thresholds_outside_the_unit_interval_are_rejected(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        match(np.zeros((4, 4)), np.zeros((4, 4)), threshold)
