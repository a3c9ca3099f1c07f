"""The chance that each predicted object is right, from the evidence in the probabilities.

``quality`` is a logistic regression on the per-object features of :mod:`.objects` (and, when asked
for, on the agreement of the object with the labels predicted from flipped and rotated copies of
the image, test-time augmentation). Its coefficients were fitted on synthetic images of a domain
the starter model was not trained on (so that it makes errors to learn from); an object counts as
right when it matches a true object at IoU 0.5. The command that fitted them, and the AUROC it
measured on held-out images and on the shipped sample, are recorded next to the constants below.

Typical use::

    probs, labels = drain(predict_labels(image, "YX", model))
    q = object_quality(probs[:, ...], labels)          # QualityResult: ids, quality (N,)
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..progress import Progress
from .objects import FEATURE_NAMES, ObjectFeatures, object_features

if TYPE_CHECKING:
    from ..inference.engine import InferenceEngine
    from ..network.weights import LoadedModel

logger = logging.getLogger(__name__)

AGREEMENT = "tta_agreement"


@dataclass(frozen=True)
class QualityModel:
    """A logistic regression on standardised features: ``sigmoid(b + sum w_i (x_i - m_i) / s_i)``.

    Attributes:
        features: the feature names, in order.
        mean, scale: standardisation of each feature.
        coef: weight of each standardised feature.
        intercept: the bias.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities float64 (N,) for a float (N, F) matrix of ``features``."""
        z = (np.asarray(matrix, dtype=np.float64) - np.array(self.mean)) / np.array(self.scale)
        logit = self.intercept + z @ np.array(self.coef)
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -30.0, 30.0)))


# Fitted by: python benchmarks/fit_quality.py --write   (see that script for the data; figures in
# docs/benchmarks.md, "Per-object quality"). Do not edit by hand: re-run the script. Fitted with
# the previous starter (4 x 16); with today's (4 x 8) a refit ranked no better (AUROC 0.878
# against 0.877 on held-out images) and surfaced fewer merges, so these stay (`--shipped`).
PLAIN = QualityModel(
    features=FEATURE_NAMES,
    mean=(
        4.92159,
        0.44243,
        0.82576,
        0.40715,
        0.37313,
        0.9105,
        0.51245,
        0.69597,
        0.9546,
        0.32032,
        0.18561,
        1.1341,
        1.04728,
        0.92705,
        0.53629,
    ),
    scale=(
        0.98985,
        0.52202,
        0.17944,
        0.15351,
        0.19256,
        0.06002,
        0.14944,
        0.09875,
        0.04751,
        0.24231,
        0.32296,
        0.42394,
        0.23283,
        0.0437,
        0.1583,
    ),
    coef=(
        0.0448,
        -0.91869,
        -0.17595,
        0.31575,
        0.36225,
        0.00551,
        -0.60482,
        0.07766,
        0.49935,
        0.20603,
        -0.18871,
        -0.29671,
        -0.13538,
        0.22034,
        -0.19316,
    ),
    intercept=1.90107,
)
WITH_TTA = QualityModel(
    features=(*FEATURE_NAMES, AGREEMENT),
    mean=(
        4.92159,
        0.44243,
        0.82576,
        0.40715,
        0.37313,
        0.9105,
        0.51245,
        0.69597,
        0.9546,
        0.32032,
        0.18561,
        1.1341,
        1.04728,
        0.92705,
        0.53629,
        0.8193,
    ),
    scale=(
        0.98985,
        0.52202,
        0.17944,
        0.15351,
        0.19256,
        0.06002,
        0.14944,
        0.09875,
        0.04751,
        0.24231,
        0.32296,
        0.42394,
        0.23283,
        0.0437,
        0.1583,
        0.1997,
    ),
    coef=(
        0.04683,
        -0.91342,
        -0.22323,
        0.34121,
        0.34348,
        -0.04629,
        -0.57249,
        0.0507,
        0.37116,
        0.22742,
        -0.17846,
        -0.27215,
        -0.12362,
        0.19868,
        -0.19274,
        0.29184,
    ),
    intercept=1.89288,
)


@dataclass(frozen=True, eq=False)
class QualityResult:
    """The estimated quality of every object.

    Attributes:
        ids: label ids, int64 (N,), ascending.
        quality: chance that each object is right, float64 (N,) in [0, 1].
        features: the evidence it was computed from.
        agreement: mean IoU with the test-time-augmented labels, float64 (N,), or ``None``.
    """

    ids: np.ndarray
    quality: np.ndarray
    features: ObjectFeatures
    agreement: np.ndarray | None = None

    def worst_first(self) -> np.ndarray:
        """The ids ordered by quality, lowest first (ties by id), int64 (N,)."""
        return self.ids[np.lexsort((self.ids, self.quality))]


def feature_matrix(features: ObjectFeatures, agreement: np.ndarray | None) -> np.ndarray:
    """The model's input matrix (N, F) or (N, F + 1) with the agreement column."""
    if agreement is None:
        return features.matrix
    return np.column_stack([features.matrix, agreement])


def object_quality(
    probs: np.ndarray,
    labels: np.ndarray,
    agreement: np.ndarray | None = None,
    spatial_ndim: int = 2,
    model: QualityModel | None = None,
) -> QualityResult:
    """The chance that each object of ``labels`` is right.

    Args:
        probs: float (3, *S) class probabilities (background, interior, boundary).
        labels: integer (*S) instance labels made from them (0 background).
        agreement: optional float (N,) per object (ascending ids), from :func:`tta_agreement`.
        spatial_ndim: 2, or 3 for volumes with 3D ids.
        model: the regression (default: the shipped one, with or without agreement).

    Returns:
        ids and quality of every object.
    """
    features = object_features(probs, labels, spatial_ndim)
    if model is None:
        model = PLAIN if agreement is None else WITH_TTA
    quality = model.predict(feature_matrix(features, agreement))
    return QualityResult(features.ids, quality, features, agreement)


def quality_map(labels: np.ndarray, result: QualityResult) -> np.ndarray:
    """Each object's quality painted on its pixels: float32 of labels' shape, NaN on background."""
    labels = np.asarray(labels)
    out = np.full(labels.shape, np.nan, dtype=np.float32)
    if result.ids.size == 0:
        return out
    position = np.searchsorted(result.ids, labels)
    position = np.clip(position, 0, len(result.ids) - 1)
    hit = (labels > 0) & (result.ids[position] == labels)
    out[hit] = result.quality[position[hit]]
    return out


# --- test-time augmentation -------------------------------------------------------------------

#: (flip Y, flip X, rot90 times) of the augmented copies.
TTA_TRANSFORMS: tuple[tuple[bool, bool, int], ...] = (
    (True, False, 0),
    (False, True, 0),
    (False, False, 1),
)


def _transform(a: np.ndarray, y: int, x: int, t: tuple[bool, bool, int], inverse: bool) -> Any:
    flip_y, flip_x, turns = t
    if inverse:
        a = np.rot90(a, -turns, axes=(y, x)) if turns else a
    if flip_y:
        a = np.flip(a, axis=y)
    if flip_x:
        a = np.flip(a, axis=x)
    if not inverse and turns:
        a = np.rot90(a, turns, axes=(y, x))
    return np.ascontiguousarray(a)


def tta_agreement(
    image: np.ndarray,
    axes: str,
    model: LoadedModel | InferenceEngine,
    labels: np.ndarray,
    transforms: Sequence[tuple[bool, bool, int]] = TTA_TRANSFORMS,
    postprocess_config: Any = None,
    **predict_kwargs: Any,
) -> Generator[Progress, None, np.ndarray]:
    """How well each object survives flipped and rotated copies of the image.

    Each copy runs through the network; its probabilities are turned back and post-processed into
    labels; an object's agreement is its best IoU with an object of those labels, averaged over
    the copies. This costs one network pass per copy.

    Args:
        image: the raw image, one axis per letter of ``axes`` (as for prediction).
        axes: its axes, ending in Y, X (or Y, X, S).
        model: the model that made ``labels``, or an inference engine already built for it (a
            caller that has predicted the image itself runs the copies on the same engine).
        labels: integer instance labels (the image's shape without channel axes).
        transforms: the copies, as (flip Y, flip X, quarter turns).
        postprocess_config: thresholds for the copies (those used for ``labels``).
        **predict_kwargs: ``tiling``, ``device``, ``precision`` for the prediction (not with an
            engine, which has its own).

    Yields:
        The prediction's progress events, stage ``"tta"``.

    Returns:
        float64 (N,): agreement per object, in ascending id order (as ``object_features``).
    """
    from ..inference.engine import InferenceEngine
    from ..inference.postprocess import labels_from_probabilities
    from .metrics import overlaps

    ids = np.unique(labels)
    ids = ids[ids > 0]
    total = np.zeros(len(ids))
    y, x = axes.upper().index("Y"), axes.upper().index("X")
    engine = model  # one predictor for all the copies
    if not isinstance(engine, InferenceEngine):
        engine = InferenceEngine(model, **predict_kwargs)
    for i, t in enumerate(transforms):
        copy = _transform(np.asarray(image), y, x, t, inverse=False)
        gen = engine.predict_image(copy, axes)
        try:
            while True:
                event = next(gen)
                yield Progress(
                    "tta",
                    i * max(event.total, 1) + event.done,
                    len(transforms) * max(event.total, 1),
                    f"augmented copy {i + 1}/{len(transforms)}: {event.message}",
                )
        except StopIteration as stop:
            probs = stop.value
        finally:
            gen.close()
        back = _transform(probs, probs.ndim - 2, probs.ndim - 1, t, inverse=True)
        other = labels_from_probabilities(back, "instances", postprocess_config)
        total += _best_iou(overlaps(labels, other), ids)
    return total / max(len(transforms), 1)


def _best_iou(table: Any, ids: np.ndarray) -> np.ndarray:
    """Best IoU of each id of ``ids`` in an :class:`~.metrics.Overlaps` table, float64."""
    best = np.zeros(len(table.pred_ids))
    np.maximum.at(best, table.pred_index, table.iou)
    out = np.zeros(len(ids))
    out[np.searchsorted(ids, table.pred_ids)] = best
    return out


# --- measuring ------------------------------------------------------------------------------


def right_objects(pred: np.ndarray, truth: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which objects of ``pred`` match a true object one-to-one at IoU 0.5: bool (len(ids),)."""
    from .metrics import match

    matched = match(pred, truth, 0.5).pred_ids
    return np.isin(ids, matched)


def merged_objects(
    pred: np.ndarray, truth: np.ndarray, ids: np.ndarray, share: float = 0.5
) -> np.ndarray:
    """Which objects of ``pred`` are merges: each holds at least ``share`` of the area of two or
    more true objects. ``pred`` and ``truth`` integer labels of one shape; bool (len(ids),)."""
    pred, truth = np.asarray(pred).ravel(), np.asarray(truth).ravel()
    true_area = np.bincount(truth)
    both = (pred > 0) & (truth > 0)
    pairs, counts = np.unique(np.stack([pred[both], truth[both]]), axis=1, return_counts=True)
    held = counts >= share * true_area[pairs[1]]
    held_ids, held_counts = np.unique(pairs[0][held], return_counts=True)
    merged = held_ids[held_counts >= 2]
    return np.isin(ids, merged)


def auroc(scores: np.ndarray, right: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for telling right (True) from wrong objects: the
    chance that a random right object scores higher than a random wrong one (ties count half).
    NaN when either group is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    right = np.asarray(right, dtype=bool)
    n_pos, n_neg = int(right.sum()), int((~right).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks of ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[right].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
