"""Keeping what the base model knew where the user annotated nothing (sparse fine-tuning).

A user who corrected ten objects trains on ten small regions. Nothing else counts in the loss of
the annotation, so the gradient steps that fit those regions are free to change the model
everywhere else, and with a few regions they do: in ``benchmarks/loop.py`` fine-tuning on ten
corrected objects made the model worse on held-out images than the model it started from.

The remedy here is self-distillation toward the base model. Before training, the base model
predicts every training plane; where it is confident (its largest class probability is at least
``TrainConfig.keep_base_confidence``) and the user annotated nothing, its most likely class
becomes a pseudo-label (:func:`keep_base_targets`). Training adds the cross-entropy toward these
pseudo-labels, averaged over such pixels and weighted ``TrainConfig.keep_base_weight`` against
the loss of the annotation (:func:`keep_base_loss`). Annotated pixels always follow the user;
pixels where the base model hesitates (the objects the review queue ranks worst, mostly) follow
neither. A fully annotated plane has no such pixel, so full annotation trains as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.engine import InferenceEngine
from ..network.model import UNet
from ..progress import drain
from .data import KeepBase, TrainingPair
from .validation import TRAINING_TILING

logger = logging.getLogger(__name__)


def pseudo_labels(probs: np.ndarray, annotated: np.ndarray, confidence: float) -> KeepBase:
    """Pseudo-labels from a base model's class probabilities.

    Args:
        probs: float (K, H, W) class probabilities of the base model.
        annotated: bool (H, W), the pixels the user annotated (never pseudo-labelled).
        confidence: smallest largest-class probability that makes a pseudo-label.

    Returns:
        :class:`KeepBase` with the argmax classes and the confident, unannotated pixels.
    """
    probs = np.asarray(probs, dtype=np.float32)
    classes = probs.argmax(axis=0).astype(np.uint8)
    mask = (probs.max(axis=0) >= confidence) & ~np.asarray(annotated, dtype=bool)
    return KeepBase(classes=classes, mask=mask)


def keep_base_targets(
    pairs: Sequence[TrainingPair],
    model: UNet,
    device: torch.device,
    confidence: float,
) -> list[TrainingPair]:
    """``pairs`` with :attr:`TrainingPair.keep` set from ``model``'s predictions.

    Fully annotated planes are left as they are (without a prediction). The model is predicted
    through the inference engine with :data:`.validation.TRAINING_TILING`, in eval mode.

    Args:
        pairs: the training planes, normalised for the model.
        model: the base model (not changed; its train/eval mode is restored).
        device: where to predict.
        confidence: see :func:`pseudo_labels`.
    """
    sparse = [i for i, p in enumerate(pairs) if not p.targets.mask.all()]
    if not sparse:
        return list(pairs)
    was_training = model.training
    model.eval()
    engine = InferenceEngine(model, TRAINING_TILING, device)
    out = list(pairs)
    kept = 0
    try:
        for i in sparse:
            probs = drain(engine.predict_plane(pairs[i].image))
            keep = pseudo_labels(probs, pairs[i].targets.mask, confidence)
            kept += int(keep.mask.sum())
            out[i] = replace(pairs[i], keep=keep)
    finally:
        model.train(was_training)
    logger.info("keeping the base model's predictions on %d unannotated pixels", kept)
    return out


def keep_base_loss(logits: torch.Tensor, classes: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy toward the pseudo-labels over the ``keep`` pixels (0 without any).

    Args:
        logits: float (B, K, H, W).
        classes: int64 (B, H, W), the pseudo-labels where ``keep``.
        keep: bool (B, H, W).
    """
    if not bool(keep.any()):
        return logits.sum() * 0.0
    per_pixel = F.cross_entropy(logits.float(), classes, reduction="none")
    return per_pixel[keep].mean()
