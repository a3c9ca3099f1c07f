"""Validation: a model scored on held-out crops through the real inference path.

The same crops score the starting model and the trained one, so their numbers can be compared;
:func:`scored_on` says, with the scores in the model file, what data they come from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..analysis.metrics import evaluate
from ..config import TilingConfig
from ..inference.engine import InferenceEngine
from ..inference.postprocess import PostprocessConfig, labels_from_probabilities
from ..network.model import UNet
from ..progress import drain
from .data import ValidationCrop

#: How training predicts the planes it trains on (validation crops, the base model's
#: pseudo-labels): tiles of 256 px in batches of 4, the default halo and precision.
TRAINING_TILING = TilingConfig(tile_size=256, batch_size=4)


def _foreground_iou(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> float:
    p, t = (pred > 0) & mask, (true > 0) & mask
    union = int((p | t).sum())
    return 1.0 if union == 0 else float((p & t).sum()) / union


def validate(
    model: UNet,
    crops: Sequence[ValidationCrop],
    task: str,
    device: torch.device,
    postprocess: PostprocessConfig | None = None,
) -> dict[str, float]:
    """Score ``model`` on held-out crops through tiled inference and post-processing.

    One :class:`~napari_unet.core.inference.engine.InferenceEngine` (tiles of 256 px in batches of
    4, the default halo and precision) predicts every crop; the crops are normalised already.

    Returns:
        ``{"ap_50", "pixel_iou", "score"}``: AP at IoU 0.5 over all crops' objects (instances),
        foreground IoU, and the score used to keep the best model (their mean for instances, the
        pixel IoU for semantic models).
    """
    engine = InferenceEngine(model, TRAINING_TILING, device)
    tp = fp = fn = 0
    ious = []
    for crop in crops:
        probs = drain(engine.predict_plane(crop.image))
        labels = labels_from_probabilities(probs, task, postprocess)
        ious.append(_foreground_iou(labels, crop.labels, crop.mask))
        if task == "instances":
            result = evaluate(labels, crop.labels, crop.mask, thresholds=(0.5,))
            tp, fp, fn = tp + result["tp"], fp + result["fp"], fn + result["fn"]
    pixel_iou = float(np.mean(ious)) if ious else 0.0
    if task != "instances":
        return {"pixel_iou": pixel_iou, "score": pixel_iou}
    ap = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    return {"ap_50": float(ap), "pixel_iou": pixel_iou, "score": 0.5 * (float(ap) + pixel_iou)}


def scored_on(crops: Sequence[ValidationCrop]) -> str:
    """What validation scores come from, in words (stored with them in the model file)."""
    if not crops:
        return "no held-out data (too little annotation)"
    pixels = sum(int(c.mask.sum()) for c in crops)
    return (
        f"{len(crops)} held-out crop{'s' if len(crops) != 1 else ''} ({pixels} annotated "
        "px) of the fine-tuning annotation"
    )
