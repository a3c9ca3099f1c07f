"""One training run: its state, an optimiser step, validation, early stopping and saving.

:class:`TrainingRun` holds the model, the optimiser, the sampler and the counters of a run;
:func:`run_epoch` drives one epoch of it as a generator of progress events. :func:`~.train.train`
puts the runs together.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ModelConfig, NormalizeConfig, to_dict
from ..errors import UserError
from ..network.metadata import new_metadata
from ..network.model import UNet, build_model
from ..network.weights import LoadedModel, save_model
from ..progress import Progress
from .augment import augment_batch
from .data import PatchSampler, TrainingPair, data_hash, split_validation
from .keep_base import keep_base_loss, keep_base_targets
from .settings import TrainConfig, TrainStatus
from .validation import scored_on, validate

logger = logging.getLogger(__name__)


def weighted_loss(
    logits: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy weighted per pixel; pixels of weight 0 (not annotated) give no gradient.

    Args:
        logits: float (B, K, H, W).
        classes: int64 (B, H, W).
        weights: float32 (B, H, W), 0 outside the annotated mask.

    Returns:
        A scalar: the weighted mean over the annotated pixels.
    """
    per_pixel = F.cross_entropy(logits.float(), classes, reduction="none")
    annotated = (weights > 0).sum().clamp(min=1)
    return (per_pixel * weights).sum() / annotated


def _autocast(config: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """Whether to autocast the forward pass, and to which dtype."""
    if device.type == "cuda" and config.amp:
        return True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and config.cpu_bf16:
        from ..network.device import cpu_supports_bf16

        if cpu_supports_bf16():
            return True, torch.bfloat16
        logger.info("this CPU has no bfloat16 instructions: training in float32")
    return False, torch.float32


def _learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train_mode(model: UNet, freeze_batchnorm: bool) -> None:
    """Training mode, with BatchNorm layers left in eval mode (fixed statistics) if asked."""
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(images, classes, weights, region) on ``device``; region is uint8 (B, P, P): 1 on the
    annotated pixels, 2 on the base model's pseudo-labels (:mod:`.keep_base`), 0 elsewhere."""
    region = batch.mask.astype(np.uint8) + 2 * batch.keep.astype(np.uint8)
    return tuple(
        torch.from_numpy(a).to(device, non_blocking=True)
        for a in (batch.images, batch.classes, batch.weights, region)
    )


@torch.no_grad()
def _blend(average: UNet, model: UNet, weight: float) -> None:
    """Move ``average``'s parameters toward ``model``'s by ``weight`` (``lerp``) and take its
    buffers (BatchNorm statistics) as they are."""
    for mean, param in zip(average.parameters(), model.parameters(), strict=True):
        mean.lerp_(param.detach(), weight)
    for mean, buffer in zip(average.buffers(), model.buffers(), strict=True):
        mean.copy_(buffer)


def _start_model(base: LoadedModel | None, model_config: ModelConfig | None, seed: int) -> UNet:
    if base is not None:
        return copy.deepcopy(base.model)
    return build_model(model_config or ModelConfig(), seed=seed)


class TrainingRun:
    """The state of one training run (model, optimiser, counters, best scores) and its parts:
    one optimiser step, the moving average, validation, early stopping, saving."""

    def __init__(
        self,
        pairs: Sequence[TrainingPair],
        output: Path,
        base: LoadedModel | None,
        config: TrainConfig,
        dev: torch.device,
        model_config: ModelConfig | None,
        clock: Callable[[], float],
    ) -> None:
        self.config, self.dev, self.base, self.output, self.clock = config, dev, base, output, clock
        self.started = clock()  # the base model's pseudo-labels count in the budget
        rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator(device=dev).manual_seed(config.seed)
        self.model = _start_model(base, model_config, config.seed).to(dev)
        self.ema = copy.deepcopy(self.model) if config.ema_decay > 0 else None
        self.average: UNet | None = None  # the tail average (TrainConfig.average_tail)
        self.averaged = 0
        self.training, self.crops, self.sampler = self._data(pairs, rng)
        # the keep-base term only where some plane has pseudo-labels (a sparse fine-tune)
        self.keeps_base = any(getattr(p, "keep", None) is not None for p in self.training)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.use_amp, self.amp_dtype = _autocast(config, dev)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.use_amp and self.amp_dtype == torch.float16
        )
        self.hashes = [data_hash(p.image, p.labels, p.targets.mask) for p in pairs]
        self.total_steps = config.epochs * config.steps_per_epoch
        self.budget = config.max_minutes * 60.0 if config.max_minutes else None
        self.freeze = (
            config.freeze_batchnorm if config.freeze_batchnorm is not None else base is not None
        )
        self.step = self.epoch = 0
        self.smoothed = float("nan")
        self.best: dict[str, float] = {}
        self.baseline: dict[str, float] = {}
        self.scores: list[float] = []
        self.best_smoothed = -math.inf
        self.stale = 0
        self.saved = False
        self.require_improvement = False

    def _data(self, pairs: Sequence[Any], rng: np.random.Generator) -> tuple[list, list, Any]:
        """(training pairs, validation crops, patch sampler) of the run."""
        config = self.config
        if self.base is not None and config.keep_base_weight > 0:
            pairs = keep_base_targets(pairs, self.model, self.dev, config.keep_base_confidence)
        training, crops = split_validation(
            pairs, config.val_fraction, rng, block=config.validation_block
        )
        return training, crops, PatchSampler(training, config.patch_size, rng)

    def _augment(self, *batch: torch.Tensor) -> Any:
        """The augmented batch (images, classes, weights, mask) of one step."""
        return augment_batch(*batch, config=self.config.augment, generator=self.generator)

    def _score(self, model: UNet, task: str) -> dict[str, float]:
        """Validation metrics of ``model`` (in eval mode) on the held-out crops."""
        return validate(model, self.crops, task, self.dev)

    # -- time ------------------------------------------------------------------------------

    def progress(self) -> float:
        """Share of the budget used (the larger of steps and time)."""
        by_time = (self.clock() - self.started) / self.budget if self.budget else 0.0
        return max(self.step / self.total_steps, by_time)

    def out_of_time(self) -> bool:
        return bool(self.budget) and self.clock() - self.started >= self.budget

    def seconds_left(self) -> float:
        elapsed = self.clock() - self.started
        fraction = self.progress()
        return max(0.0, elapsed / fraction - elapsed) if fraction > 0 else float("nan")

    def event(
        self, message: str, kind: str, metrics: dict[str, float], reason: str = ""
    ) -> Progress:
        """The progress event of this run now, with its :class:`TrainStatus` payload."""
        return Progress(
            "train", self.step, self.total_steps, message, self.status(kind, metrics, reason)
        )

    def status(self, kind: str, metrics: dict[str, float], reason: str = "") -> TrainStatus:
        return TrainStatus(
            kind,
            self.step,
            self.epoch,
            self.smoothed,
            dict(metrics),
            dict(self.best),
            self.seconds_left(),
            dict(self.baseline),
            len(self.crops),
            self.saved,
            reason,
        )

    # -- steps -----------------------------------------------------------------------------

    @property
    def scored(self) -> UNet:
        """The weights that are validated and saved: the tail average once it has started, else
        the moving average when there is one, else the raw weights."""
        if self.average is not None:
            return self.average
        return self.ema if self.ema is not None else self.model

    def train_step(self) -> float:
        """One optimiser step; returns its loss."""
        config, dev = self.config, self.dev
        images, classes, weights, region = _to_device(self.sampler.sample(config.batch_size), dev)
        aug = self._augment(images, classes, weights, region)
        loss_weights = aug.weights * (aug.mask == 1).float()
        for group in self.optimizer.param_groups:
            group["lr"] = _learning_rate(config, self.step, self.progress())
        with torch.autocast(dev.type, dtype=self.amp_dtype, enabled=self.use_amp):
            logits = self.model(aug.images)
        loss = weighted_loss(logits, aug.classes, loss_weights)
        if self.keeps_base:
            keep = keep_base_loss(logits, aug.classes, aug.mask == 2)
            loss = loss + config.keep_base_weight * keep
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._update_ema()
        self._update_average()
        self.step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise UserError(
                f"Training diverged at step {self.step}: the loss became {value}. Lower the "
                f"learning rate; {self.output} holds the last model that was not diverged."
            )
        self.smoothed = value if math.isnan(self.smoothed) else 0.9 * self.smoothed + 0.1 * value
        return value

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        _blend(self.ema, self.model, 1.0 - decay)

    @torch.no_grad()
    def _update_average(self) -> None:
        """Add the current weights to the uniform average of the budget's tail."""
        tail = self.config.average_tail
        if tail <= 0 or self.progress() < 1.0 - tail:
            return
        if self.average is None:
            self.average = copy.deepcopy(self.model)
            self.average.eval()
        self.averaged += 1
        _blend(self.average, self.model, 1.0 / self.averaged)

    # -- validation and saving -------------------------------------------------------------

    def validate(self, task: str) -> dict[str, float]:
        scored = self.scored
        scored.eval()
        metrics = self._score(scored, task)
        train_mode(self.model, self.freeze)
        return metrics

    def stalled(self, score: float) -> bool:
        """Record a validation score; whether early stopping should end the run."""
        self.scores.append(score)
        window = self.scores[-self.config.smooth_validations :]
        smoothed = float(np.mean(window))
        if smoothed > self.best_smoothed:
            self.best_smoothed, self.stale = smoothed, 0
        else:
            self.stale += 1
        return (
            bool(self.config.patience)
            and self.stale >= self.config.patience
            and self.progress() >= self.config.stop_after
        )

    def save(self, metrics: dict[str, float], meta: dict[str, Any]) -> None:
        base = self.base
        provenance = dict(base.metadata.get("provenance") or {}) if base is not None else {}
        earlier = (provenance.get("metrics") or {}).get("rounds") or []
        this_round = {
            "base": base.name if base is not None else None,
            "before": dict(self.baseline),
            "after": dict(metrics),
            "scored_on": scored_on(self.crops),
            "steps": self.step,
        }
        metadata = new_metadata(
            self.model.config,
            task=meta["task"],
            name=meta["name"],
            class_names=base.class_names if base is not None else None,
            normalize=meta["normalize"] or NormalizeConfig(),
            tiling=base.metadata.get("tiling") if base is not None else None,
            parent=base.name if base is not None else None,
            data_hashes=self.hashes,
            settings={
                **to_dict(self.config),
                "steps": self.step,
                "epochs_done": self.epoch,
                "training_pixels": sum(p.annotated_pixels for p in self.training),
                "validation_crops": len(self.crops),
            },
            metrics={
                **metrics,
                "baseline": dict(self.baseline),
                "scored_on": scored_on(self.crops),
                "rounds": [*(r for r in earlier if isinstance(r, dict)), this_round],
            },
            **meta["scale_info"],
        )
        scored = self.scored
        scored.eval()
        save_model(self.output, scored, metadata)
        train_mode(self.model, self.freeze)
        self.saved = True


def run_epoch(run: TrainingRun, task: str, meta: dict[str, Any]) -> Generator[Progress, None, bool]:
    """One epoch of steps, its validation and saving; returns whether to stop early."""
    config = run.config
    for _ in range(config.steps_per_epoch):
        run.train_step()
        yield run.event(
            f"epoch {run.epoch + 1}, step {run.step}: loss {run.smoothed:.4f}", "step", {}
        )
        if run.out_of_time():
            break
    run.epoch += 1
    if not run.crops:  # nothing held out: keep the latest weights, nothing to compare
        metrics = {"loss": run.smoothed}
        yield run.event(
            f"epoch {run.epoch}: loss {run.smoothed:.4f} (no validation)", "validation", metrics
        )
        run.save(metrics, meta)
        yield run.event(f"saved {run.output.name}", "saved", metrics)
        return False
    metrics = run.validate(task)
    if config.keep == "latest":
        kept = metrics["score"] > run.baseline["score"] or not run.require_improvement
        note = " (kept)" if kept else " (not better than before training)"
    else:
        kept = metrics["score"] > run.best["score"]
        note = " (best)" if kept else ""
    message = (
        f"epoch {run.epoch}: loss {run.smoothed:.4f}, validation score "
        f"{metrics['score']:.3f}" + note
    )
    logger.info(message)
    yield run.event(message, "validation", metrics)
    if kept:
        run.best = dict(metrics)
        run.save(run.best, meta)
        yield run.event(f"saved {run.output.name}", "saved", metrics)
    return run.stalled(metrics["score"])
