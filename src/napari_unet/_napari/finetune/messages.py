"""What the Fine-tune widget tells the user when a run ends, free of Qt.

Every message says whether a model was saved, how it compares with its base on the same
held-out crops (or that there was too little annotation to hold any out), and why training
stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_unet.core.training.settings import TrainConfig, TrainStatus


def _score_name(metrics: dict[str, Any]) -> tuple[str, str] | None:
    for key, text in (("ap_50", "AP50"), ("pixel_iou", "IoU")):
        if isinstance(metrics.get(key), int | float):
            return key, text
    return None


def comparison(status: TrainStatus | None) -> str:
    """``"AP50 0.78 → 0.86 on your 4 held-out crops"``, or what stands in for it."""
    crops = int(getattr(status, "validation_crops", 0) or 0)
    if status is None or crops == 0:
        return (
            "there was too little annotation to hold some out for a check, so its accuracy "
            "is not measured (annotate more objects or a larger region to get a before/after "
            "score)"
        )
    before, after = dict(status.baseline or {}), dict(status.best or {})
    named = _score_name(before)
    if named is None:
        return "no score yet"
    key, text = named
    scores = [f"{text} {before[key]:.2f} → {after.get(key, before[key]):.2f}"]
    if key == "ap_50" and isinstance(before.get("pixel_iou"), int | float):
        # the model is kept on the mean of the two: show both, so a lower AP50 is explained
        scores.append(f"pixel IoU {before['pixel_iou']:.2f} → "
                      f"{after.get('pixel_iou', before['pixel_iou']):.2f}")  # fmt: skip
    return f"{', '.join(scores)} on your {crops} held-out crop{'s' if crops != 1 else ''}"


def stop_reason(status: TrainStatus | None, config: TrainConfig) -> str:
    """Why training ended, in words."""
    reason = getattr(status, "reason", "")
    if reason == "budget":
        return "the time budget was used"
    if reason == "patience":
        return f"no improvement for {config.patience} validations"
    if reason == "epochs":
        return f"all {config.epochs} epochs done"
    return "it ended"


def improved(status: TrainStatus | None) -> bool:
    """Whether the run's model beat its base on the held-out crops (False without crops)."""
    if status is None or not getattr(status, "validation_crops", 0):
        return False
    before, after = status.baseline or {}, status.best or {}
    return "score" in before and after.get("score", before["score"]) > before["score"]


def finished_message(
    status: TrainStatus | None, name: str, saved: bool, config: TrainConfig
) -> str:
    """The message of a run that ended by itself."""
    why = stop_reason(status, config)
    if not saved:
        return (
            f"Finished ({why}): the new model did not beat its base ({comparison(status)}). "
            "No model was saved; the base model stays selected."
        )
    if not getattr(status, "validation_crops", 0):
        return (
            f"Finished ({why}): model {name!r} saved, but {comparison(status)}. It is not "
            "selected in Segment: choose it there to try it."
        )
    return f"Finished ({why}): model {name!r} saved; {comparison(status)}."


def stopped_message(status: TrainStatus | None, name: str, saved: bool, keep: str = "best") -> str:
    """The message of a run ended with Stop (``keep``: ``TrainConfig.keep``)."""
    if not saved:
        return "Stopped before the model beat its base: no model was saved."
    if not getattr(status, "validation_crops", 0):
        return f"Stopped: the latest model is saved as {name!r}; {comparison(status)}."
    kept = "the best model so far" if keep == "best" else "the latest model that beat its base"
    return f"Stopped: {kept} is saved as {name!r}; {comparison(status)}."


def tuned_stem(stem: str) -> str:
    """The name stem of a model tuned from ``stem``: ``starter`` -> ``starter-tuned``; a tuned
    model's next round keeps the stem (``starter-tuned-2`` -> ``starter-tuned``, numbered anew)."""
    import re

    match = re.fullmatch(r"(.*-tuned)(-\d+)?", stem)
    return match.group(1) if match else f"{stem}-tuned"


def status_text(status: TrainStatus) -> str:
    """One line on a training run: epoch, step, loss, validation, time left."""
    import math

    parts = [f"epoch {status.epoch}", f"step {status.step}"]
    if math.isfinite(status.loss):
        parts.append(f"loss {status.loss:.4f}")
    score = (
        status.metrics.get("score")
        if "ap_50" in status.metrics or "pixel_iou" in status.metrics
        else None
    )
    if score is not None:
        parts.append(f"validation {score:.3f}")
    left = status.seconds_left
    if math.isfinite(left):
        parts.append(f"about {left / 60:.0f} min left" if left >= 90 else f"{left:.0f} s left")
    return " · ".join(parts)
