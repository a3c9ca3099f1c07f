"""Object-level metrics: one-to-one matching of predicted and true objects at IoU thresholds.

Conventions (those of the DSB2018 challenge and StarDist):

- a predicted and a true object *match* when their intersection over union (IoU) is at least the
  threshold; each object matches at most one other (one-to-one), and the assignment maximises
  the number of matches, then their total IoU (Hungarian algorithm);
- average precision ``AP = TP / (TP + FP + FN)``; precision ``TP / n_pred``; recall
  ``TP / n_true``; F1 ``2 TP / (2 TP + FP + FN)``; mean matched IoU is the mean IoU of the matched
  pairs;
- a ratio whose denominator is zero is 1.0 when both images are empty (nothing to find and
  nothing found is a perfect result) and 0.0 otherwise (e.g. predictions on an empty ground truth
  give AP 0, and no predictions give precision 0).

Label images are integer arrays of any shape (2D, or a 3D stack in which a 3D object is one
object); 0 is background and every other value is one object. The overlaps are counted once from
the (pred, true) pixel pairs, so the cost does not grow with the number of objects times the
image size.

With a mask (the annotated area), pixels outside it are ignored and an object counts only when at
least half of its pixels lie inside the mask (for predicted and true objects alike); IoUs are
measured inside the mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import InputMismatchError, UserError

logger = logging.getLogger(__name__)

#: IoU thresholds 0.5, 0.55, ..., 0.95 of the "AP 50:95" summary.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

# Label ids up to this bound are compacted with a lookup table; larger ones with np.unique.
_LUT_LIMIT = 1 << 24


@dataclass(frozen=True, eq=False)
class MatchResult:
    """Matching of predicted to true objects at one IoU threshold.

    Attributes:
        iou_threshold: the threshold used.
        n_pred, n_true: objects counted in the prediction and in the ground truth.
        tp, fp, fn: matched pairs, unmatched predictions, unmatched true objects.
        precision, recall, f1, ap: see the module docstring (``ap`` = TP / (TP + FP + FN)).
        mean_matched_iou: mean IoU of the matched pairs.
        pred_ids, true_ids: label ids of the matched pairs, int64 (tp,), pair by pair.
        ious: IoU of each matched pair, float64 (tp,).
    """

    iou_threshold: float
    n_pred: int
    n_true: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap: float
    mean_matched_iou: float
    pred_ids: np.ndarray
    true_ids: np.ndarray
    ious: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """The scores and counts as a JSON-ready dict (without the matched pairs)."""
        return {
            "iou_threshold": self.iou_threshold,
            "ap": self.ap,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "mean_matched_iou": self.mean_matched_iou,
            "n_pred": self.n_pred,
            "n_true": self.n_true,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


@dataclass(frozen=True, eq=False)
class Overlaps:
    """Every overlapping (pred, true) pair and its IoU; the input of the matching.

    Attributes:
        pred_ids: label id of each counted predicted object, int64 (n_pred,).
        true_ids: label id of each counted true object, int64 (n_true,).
        pred_index, true_index: for each overlapping pair, the positions of its objects in
            ``pred_ids`` and ``true_ids``, int64 (M,).
        iou: IoU of each pair, float64 (M,).
    """

    pred_ids: np.ndarray
    true_ids: np.ndarray
    pred_index: np.ndarray
    true_index: np.ndarray
    iou: np.ndarray


def overlaps(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> Overlaps:
    """IoU of every overlapping pair of objects, from a sparse contingency table.

    Args:
        pred: predicted labels, integer array of any shape (0 = background).
        gt: true labels, the same shape.
        mask: optional annotated area, bool array of the same shape (see the module docstring).

    Raises:
        InputMismatchError: the shapes differ.
        UserError: a label image holds negative or non-integer values.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise InputMismatchError(
            f"the predicted labels have shape {pred.shape} but the true labels have shape "
            f"{gt.shape}; they must be the same"
        )
    pred_codes, pred_ids = _compact(pred, "predicted")
    true_codes, true_ids = _compact(gt, "true")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != pred.shape:
            raise InputMismatchError(
                f"the mask has shape {mask.shape} but the labels have shape {pred.shape}; "
                "they must be the same"
            )
        inside = mask.ravel().astype(bool, copy=False)
        pred_codes = _restrict(pred_codes, len(pred_ids), inside)
        true_codes = _restrict(true_codes, len(true_ids), inside)

    pred_sizes = np.bincount(pred_codes, minlength=len(pred_ids))
    true_sizes = np.bincount(true_codes, minlength=len(true_ids))
    pairs, counts = _contingency(pred_codes, true_codes, len(pred_ids), len(true_ids))
    pred_code, true_code = np.divmod(pairs, len(true_ids))

    pred_present = np.flatnonzero(pred_sizes[1:] > 0) + 1
    true_present = np.flatnonzero(true_sizes[1:] > 0) + 1
    pred_position = np.zeros(len(pred_ids), dtype=np.int64)
    pred_position[pred_present] = np.arange(len(pred_present))
    true_position = np.zeros(len(true_ids), dtype=np.int64)
    true_position[true_present] = np.arange(len(true_present))

    union = pred_sizes[pred_code] + true_sizes[true_code] - counts
    return Overlaps(
        pred_ids=pred_ids[pred_present].astype(np.int64),
        true_ids=true_ids[true_present].astype(np.int64),
        pred_index=pred_position[pred_code],
        true_index=true_position[true_code],
        iou=counts / union,
    )


def match(
    pred: np.ndarray,
    gt: np.ndarray,
    iou_threshold: float = 0.5,
    mask: np.ndarray | None = None,
) -> MatchResult:
    """Match predicted to true objects one-to-one at an IoU threshold.

    Args:
        pred: predicted labels, integer array of any shape (0 = background).
        gt: true labels, the same shape.
        iou_threshold: a pair matches when its IoU is at least this, in (0, 1].
        mask: optional annotated area, bool array of the same shape.

    Returns:
        The counts, scores and matched pairs.

    Raises:
        InputMismatchError: the shapes differ.
    """
    return match_overlaps(overlaps(pred, gt, mask), iou_threshold)


def match_overlaps(table: Overlaps, iou_threshold: float) -> MatchResult:
    """Match the objects of an :class:`Overlaps` table at one IoU threshold."""
    _check_threshold(iou_threshold)
    candidate = table.iou >= iou_threshold
    rows = table.pred_index[candidate]
    cols = table.true_index[candidate]
    ious = table.iou[candidate]
    chosen = _assign(rows, cols, ious, len(table.pred_ids), len(table.true_ids))
    rows, cols, ious = rows[chosen], cols[chosen], ious[chosen]
    return _scores(
        iou_threshold,
        n_pred=len(table.pred_ids),
        n_true=len(table.true_ids),
        pred_ids=table.pred_ids[rows],
        true_ids=table.true_ids[cols],
        ious=ious,
    )


def evaluate(
    pred: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """The usual summary of a segmentation against its ground truth, JSON-ready.

    Args:
        pred: predicted labels, integer array of any shape (0 = background).
        gt: true labels, the same shape.
        mask: optional annotated area, bool array of the same shape.
        thresholds: IoU thresholds averaged in ``"ap_50_95"``.

    Returns:
        ``"ap_50"`` (AP at IoU 0.5), ``"ap_50_95"`` (mean AP over ``thresholds``), and at IoU 0.5:
        ``"precision"``, ``"recall"``, ``"f1"``, ``"mean_matched_iou"``, ``"tp"``, ``"fp"``,
        ``"fn"``; ``"n_pred"``, ``"n_true"``; ``"ap_by_threshold"`` ({"0.50": AP, ...}).

    Raises:
        InputMismatchError: the shapes of ``pred``, ``gt`` and ``mask`` differ.
    """
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("at least one IoU threshold is needed")
    table = overlaps(pred, gt, mask)
    at_50 = match_overlaps(table, 0.5)
    by_threshold = {
        f"{t:.2f}": (at_50.ap if t == 0.5 else match_overlaps(table, t).ap) for t in thresholds
    }
    result = at_50.to_dict()
    del result["iou_threshold"], result["ap"]
    return {
        "ap_50": at_50.ap,
        "ap_50_95": float(np.mean(list(by_threshold.values()))),
        **result,
        "ap_by_threshold": by_threshold,
    }


# --- helpers ---------------------------------------------------------------------------------


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"an IoU threshold must be in (0, 1], got {threshold}")


def _compact(labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Label ids -> consecutive codes.

    Returns:
        codes: int64 (N,) over the flattened image, 0 for background, 1..K for the objects;
        ids: the original id of each code, (K + 1,), ``ids[0] == 0``.
    """
    flat = labels.ravel()
    if flat.dtype == bool:
        flat = flat.view(np.uint8)
    elif not np.issubdtype(flat.dtype, np.integer):
        if not np.issubdtype(flat.dtype, np.floating) or not np.array_equal(flat, np.floor(flat)):
            raise UserError(f"the {name} labels must be whole numbers, got dtype {labels.dtype}")
        flat = flat.astype(np.int64)
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    low, high = int(flat.min()), int(flat.max())
    if low < 0:
        raise UserError(f"the {name} labels hold negative values (down to {low})")
    if high < _LUT_LIMIT:
        present = np.bincount(flat, minlength=high + 1) > 0
        present[0] = True
        ids = np.flatnonzero(present)
        lut = np.cumsum(present) - 1
        return lut[flat].astype(np.int64, copy=False), ids
    ids, codes = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        ids = np.concatenate([[0], ids])
        codes = codes + 1
    return codes.astype(np.int64, copy=False).ravel(), ids


def _restrict(codes: np.ndarray, n_codes: int, inside: np.ndarray) -> np.ndarray:
    """Codes of the pixels inside the mask, objects mostly outside it set to background."""
    total = np.bincount(codes, minlength=n_codes)
    kept = np.bincount(codes[inside], minlength=n_codes)
    counted = 2 * kept >= total
    counted[0] = False
    lut = np.where(counted, np.arange(n_codes), 0)
    return lut[codes[inside]]


def _contingency(
    pred_codes: np.ndarray, true_codes: np.ndarray, n_pred: int, n_true: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts of every (pred, true) pair of objects that overlap.

    Returns:
        pairs: ``pred_code * n_true + true_code`` of each overlapping pair, int64 (M,);
        counts: its number of pixels, int64 (M,).
    """
    both = (pred_codes > 0) & (true_codes > 0)
    keys = pred_codes[both] * n_true + true_codes[both]
    n_keys = n_pred * n_true
    if n_keys <= max(4 * keys.size, 1 << 22):
        counts = np.bincount(keys, minlength=n_keys)
        pairs = np.flatnonzero(counts)
        return pairs, counts[pairs]
    return np.unique(keys, return_counts=True)


def _assign(
    rows: np.ndarray, cols: np.ndarray, ious: np.ndarray, n_rows: int, n_cols: int
) -> np.ndarray:
    """One-to-one choice among candidate pairs: most pairs, then highest total IoU.

    Args:
        rows, cols: object positions of each candidate pair, int64 (M,).
        ious: IoU of each candidate pair, float64 (M,).
        n_rows, n_cols: number of predicted and true objects.

    Returns:
        bool (M,): the chosen pairs.

    Pairs whose objects take part in no other candidate pair are chosen directly; the rest is
    split into connected groups, each solved by the Hungarian algorithm.
    """
    chosen = np.zeros(len(rows), dtype=bool)
    if len(rows) == 0:
        return chosen
    row_degree = np.bincount(rows, minlength=n_rows)
    col_degree = np.bincount(cols, minlength=n_cols)
    simple = (row_degree[rows] == 1) & (col_degree[cols] == 1)
    chosen[simple] = True
    tangled = np.flatnonzero(~simple)
    if len(tangled) == 0:
        return chosen
    graph = coo_matrix(
        (np.ones(len(tangled)), (rows[tangled], n_rows + cols[tangled])),
        shape=(n_rows + n_cols, n_rows + n_cols),
    )
    _, group = connected_components(graph, directed=False)
    edge_group = group[rows[tangled]]
    order = np.argsort(edge_group, kind="stable")
    starts = np.flatnonzero(np.diff(edge_group[order], prepend=-1))
    for edges in np.split(tangled[order], starts[1:]):
        chosen[edges[_hungarian(rows[edges], cols[edges], ious[edges])]] = True
    return chosen


def _hungarian(rows: np.ndarray, cols: np.ndarray, ious: np.ndarray) -> np.ndarray:
    """Indices into the given candidate pairs of an optimal one-to-one choice."""
    row_ids, r = np.unique(rows, return_inverse=True)
    col_ids, c = np.unique(cols, return_inverse=True)
    n_match = min(len(row_ids), len(col_ids))
    # every pair is worth 1 (most matches first) plus a tie-break by IoU worth less than 1 in all
    cost = np.zeros((len(row_ids), len(col_ids)))
    cost[r, c] = -1.0 - ious / (2.0 * n_match)
    edge = np.full((len(row_ids), len(col_ids)), -1, dtype=np.int64)
    edge[r, c] = np.arange(len(rows))
    picked_r, picked_c = linear_sum_assignment(cost)
    picked = edge[picked_r, picked_c]
    return picked[picked >= 0]


def _ratio(numerator: float, denominator: float, both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return float(numerator / denominator)


def _scores(
    threshold: float,
    n_pred: int,
    n_true: int,
    pred_ids: np.ndarray,
    true_ids: np.ndarray,
    ious: np.ndarray,
) -> MatchResult:
    tp = len(ious)
    fp, fn = n_pred - tp, n_true - tp
    both_empty = n_pred == 0 and n_true == 0
    return MatchResult(
        iou_threshold=float(threshold),
        n_pred=int(n_pred),
        n_true=int(n_true),
        tp=int(tp),
        fp=int(fp),
        fn=int(fn),
        precision=_ratio(tp, n_pred, both_empty),
        recall=_ratio(tp, n_true, both_empty),
        f1=_ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        ap=_ratio(tp, tp + fp + fn, both_empty),
        mean_matched_iou=_ratio(float(ious.sum()), tp, both_empty),
        pred_ids=pred_ids,
        true_ids=true_ids,
        ious=ious,
    )
