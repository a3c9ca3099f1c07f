"""The training loop as a generator of progress events.

:func:`train` fine-tunes a model (or trains one from scratch) on :class:`~.data.TrainingPair`
planes: random patches biased toward the annotated pixels, elastic-deformation augmentation on the
training device, the U-Net paper's border-weighted cross-entropy restricted to annotated pixels,
AdamW with warm-up and a cosine decay fitted to the budget (steps or time), optionally a moving
average of the weights, validation on held-out blocks through the real inference and
post-processing path (the starting model is scored on the same blocks first), early stopping on
smoothed scores, and the best model saved atomically after every improvement. Closing the
generator (Stop) at any event leaves the best model so far on disk.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ModelConfig, NormalizeConfig, to_dict
from ..errors import UserError
from ..inference.rescale import training_scale
from ..network.device import resolve_device
from ..network.metadata import new_metadata
from ..network.model import UNet, build_model
from ..network.weights import LoadedModel, save_model
from ..progress import Progress
from .augment import AugmentConfig, augment_batch
from .data import PatchSampler, TrainingPair, data_hash, split_validation
from .targets import TargetConfig
from .validation import scored_on, validate

__all__ = ["TrainConfig", "TrainStatus", "scored_on", "train", "validate", "weighted_loss"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (stored in the model file's provenance).

    Attributes:
        epochs: epochs at most (an epoch is ``steps_per_epoch`` optimiser steps).
        max_minutes: wall-clock budget in minutes (``None``: epochs only). Whichever ends first.
        steps_per_epoch: optimiser steps between validations.
        batch_size: patches per step.
        patch_size: side of a training patch, in pixels.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps before the cosine decay.
        val_fraction: share of the annotated pixels held out for validation.
        validation_block: side of the held-out validation blocks, in pixels (smaller blocks
            give more, smaller crops: a steadier score from the same annotation).
        patience: validations without a better (smoothed) validation score before stopping
            early (0: never).
        smooth_validations: early stopping compares the mean of the last this many
            validation scores with the best such mean, so that one lucky validation (a noisy
            blip) does not end the run.
        stop_after: early stopping waits until this share of the budget (steps or time) is
            used.
        ema_decay: validate and save an exponential moving average of the weights with this
            decay per step (0, the default: the raw weights). It is warmed up: the decay is at
            most ``(1 + step) / (10 + step)``. Off by default: in ``benchmarks/finetune.py``
            (1.5 CPU minutes, 3 seeds) a decay of 0.99 lost 0.018 AP, in every seed; the
            smoothed early stopping and the 128 px validation blocks gained 0.025 AP over the
            previous defaults, in every seed.
        seed: seed of the patch sampler, the augmentation and a new network.
        amp: mixed precision (autocast) on CUDA.
        cpu_bf16: bfloat16 autocast when training on a CPU with native bfloat16 instructions
            (AVX-512-BF16 or AMX); other CPUs train in float32. On by default: in
            ``benchmarks/finetune.py`` it took 1.35x the steps per minute with AP as good as
            float32 (+0.015, better in 2 of 3 seeds).
        freeze_batchnorm: keep BatchNorm statistics fixed while training (the layers' weights
            still learn). ``None`` (default): frozen when fine-tuning a model, updated when
            training from scratch. Measured in ``benchmarks/normalization.py``: fine-tuning at
            batch 1 with updated statistics lost a quarter of the AP that frozen ones kept.
        augment: augmentation settings.
        targets: how labels become targets (class balance and the border weight map; ``w0=0``
            turns the border term off). :func:`train` takes pairs already made: build them with
            ``make_pairs(..., target_config=config.targets)``.
    """

    epochs: int = 40
    max_minutes: float | None = None
    steps_per_epoch: int = 25
    batch_size: int = 4
    patch_size: int = 192
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    val_fraction: float = 0.2
    validation_block: int = 128
    patience: int = 10
    smooth_validations: int = 3
    stop_after: float = 0.5
    ema_decay: float = 0.0
    seed: int = 0
    amp: bool = True
    cpu_bf16: bool = True
    freeze_batchnorm: bool | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)

    def __post_init__(self) -> None:
        from ..errors import UserError

        if self.epochs < 1:
            raise UserError(f"The number of epochs must be at least 1, got {self.epochs}.")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UserError(f"The time budget must be positive, got {self.max_minutes} minutes.")
        if not 0.0 <= self.ema_decay < 1.0 or self.smooth_validations < 1:
            raise UserError("ema_decay must be in [0, 1) and smooth_validations at least 1.")
        if self.steps_per_epoch < 1 or self.batch_size < 1 or self.patch_size < 16:
            raise UserError(
                "steps per epoch and batch size must be at least 1, the patch size "
                "at least 16 pixels."
            )


@dataclass(frozen=True)
class TrainStatus:
    """Payload of the training progress events.

    Attributes:
        kind: ``"step"`` after an optimiser step, ``"validation"`` after a validation,
            ``"saved"`` after the best model was written, ``"end"`` once, when training ends by
            itself (not when the generator is closed: Stop).
        step: optimiser steps done.
        epoch: epochs done (a validation closes an epoch).
        loss: smoothed training loss.
        metrics: the latest validation metrics (``"score"``, ``"ap_50"``, ``"pixel_iou"``,
            ``"loss"``), empty before the first validation.
        best: the best validation metrics so far.
        seconds_left: estimated time left.
        baseline: the starting model's validation metrics (empty without validation crops).
        validation_crops: number of held-out crops (0: too little annotation to hold any out).
        saved: whether a model file was written.
        reason: why training ended (``"end"`` events): ``"budget"`` (time), ``"epochs"``,
            ``"patience"`` (no improvement for ``TrainConfig.patience`` validations).
    """

    kind: str
    step: int
    epoch: int
    loss: float
    metrics: dict[str, float]
    best: dict[str, float]
    seconds_left: float
    baseline: dict[str, float] = field(default_factory=dict)
    validation_crops: int = 0
    saved: bool = False
    reason: str = ""


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


def _train_mode(model: UNet, freeze_batchnorm: bool) -> None:
    """Training mode, with BatchNorm layers left in eval mode (fixed statistics) if asked."""
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.from_numpy(a).to(device, non_blocking=True)
        for a in (batch.images, batch.classes, batch.weights, batch.mask)
    )


def _start_model(base: LoadedModel | None, model_config: ModelConfig | None, seed: int) -> UNet:
    if base is not None:
        return copy.deepcopy(base.model)
    return build_model(model_config or ModelConfig(), seed=seed)


class _Run:
    """The state of one training run (model, optimiser, counters, best scores) and its parts."""

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
        rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator(device=dev).manual_seed(config.seed)
        self.model = _start_model(base, model_config, config.seed).to(dev)
        self.ema = copy.deepcopy(self.model) if config.ema_decay > 0 else None
        self.training, self.crops = split_validation(
            pairs, config.val_fraction, rng, block=config.validation_block
        )
        self.sampler = PatchSampler(self.training, config.patch_size, rng)
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
        self.started = clock()

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
        """The weights that are validated and saved (the moving average when there is one)."""
        return self.ema if self.ema is not None else self.model

    def train_step(self) -> float:
        """One optimiser step; returns its loss."""
        config, dev = self.config, self.dev
        images, classes, weights, mask = _to_device(self.sampler.sample(config.batch_size), dev)
        aug = augment_batch(
            images, classes, weights, mask, config=config.augment, generator=self.generator
        )
        loss_weights = aug.weights * aug.mask.float()
        for group in self.optimizer.param_groups:
            group["lr"] = _learning_rate(config, self.step, self.progress())
        with torch.autocast(dev.type, dtype=self.amp_dtype, enabled=self.use_amp):
            logits = self.model(aug.images)
        loss = weighted_loss(logits, aug.classes, loss_weights)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._update_ema()
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
        for average, param in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            average.lerp_(param.detach(), 1.0 - decay)
        for average, buffer in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            average.copy_(buffer)

    # -- validation and saving -------------------------------------------------------------

    def validate(self, task: str) -> dict[str, float]:
        scored = self.scored
        scored.eval()
        metrics = validate(scored, self.crops, task, self.dev)
        _train_mode(self.model, self.freeze)
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
        _train_mode(self.model, self.freeze)
        self.saved = True


def _epoch(run: _Run, task: str, meta: dict[str, Any]) -> Generator[Progress, None, bool]:
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
    improved = metrics["score"] > run.best["score"]
    message = (
        f"epoch {run.epoch}: loss {run.smoothed:.4f}, validation score "
        f"{metrics['score']:.3f}" + (" (best)" if improved else "")
    )
    logger.info(message)
    yield run.event(message, "validation", metrics)
    if improved:
        run.best = dict(metrics)
        run.save(run.best, meta)
        yield run.event(f"saved {run.output.name}", "saved", metrics)
    return run.stalled(metrics["score"])


def train(
    pairs: Sequence[TrainingPair],
    output: str | Path,
    base: LoadedModel | None = None,
    config: TrainConfig | None = None,
    device: str | torch.device = "auto",
    name: str | None = None,
    model_config: ModelConfig | None = None,
    task: str = "instances",
    normalize: NormalizeConfig | None = None,
    clock: Callable[[], float] = time.perf_counter,
    require_improvement: bool = False,
    pixel_size: Sequence[float] | None = None,
) -> Generator[Progress, None, LoadedModel | None]:
    """Train on ``pairs`` and keep the best model in ``output``.

    Process-wide torch settings are left as they were (the caller chooses the threads).

    Args:
        pairs: annotated planes (see :func:`~.data.make_pairs`), normalised for the model.
        output: the ``.safetensors`` file to write (atomically; overwritten on each improvement).
        base: the model to fine-tune; ``None`` trains a new network from ``model_config``.
        config: training settings.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a torch device.
        name: the new model's name (default: the output file's stem).
        model_config: architecture of a new network (when ``base`` is ``None``).
        task: ``"instances"`` or ``"semantic"`` (taken from ``base`` when given).
        normalize: intensity normalisation stored in the file (taken from ``base`` when given).
        clock: seconds for ``config.max_minutes`` and the time left (default wall-clock time;
            ``time.process_time`` counts this process's CPU time, which other programs on a busy
            machine do not eat into).
        require_improvement: write ``output`` only when the model beats the starting model on
            the validation crops (default: the starting model is saved first, so that a file
            always results). Without validation crops the latest weights are saved either way.
        pixel_size: pixel size of the training images in µm (``(y, x)``), recorded in the model
            file; ``None`` keeps the base model's. The median object diameter of the training
            labels (in pixels) is recorded too.

    Yields:
        :class:`~.progress.Progress` events with a :class:`TrainStatus` payload; the last one,
        when training ends by itself, has kind ``"end"`` and the reason.

    Returns:
        The best model (as saved in ``output``), or ``None`` when ``require_improvement`` and
        nothing beat the starting model.
    """
    config = config or TrainConfig()
    if base is not None and base.metadata.get("trainable") is False:
        raise UserError(f"{base.name} is a bioimage.io package of another architecture: it can "
                        "only predict; fine-tuning needs a napari-unet model")  # fmt: skip
    output = Path(output).expanduser()
    if output.suffix != ".safetensors":  # as save_model names it, so the result can be read back
        output = output.with_name(output.name + ".safetensors")
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    if base is not None:
        task, normalize = base.task, base.normalize
    benchmark = torch.backends.cudnn.benchmark  # validation's Predictor may set it
    try:
        run = _Run(pairs, output, base, config, dev, model_config, clock)
        meta = {
            "task": task,
            "name": name or output.stem,
            "normalize": normalize,
            "scale_info": training_scale(pairs, task, base, pixel_size),
        }
        if run.crops:
            run.baseline = run.validate(task)
            run.best = dict(run.baseline)
            logger.info("validation before training: %s", run.baseline)
            yield run.event(
                f"before training: score {run.best['score']:.3f}", "validation", run.baseline
            )
        if not require_improvement or not run.crops:
            run.save(run.best, meta)
        _train_mode(run.model, run.freeze)
        reason = "epochs"
        while run.epoch < config.epochs:
            if run.out_of_time():
                reason = "budget"
                break
            if (yield from _epoch(run, task, meta)):
                logger.info("no improvement for %d validations: stopping early", run.stale)
                reason = "patience"
                break
        else:
            reason = "budget" if run.out_of_time() else "epochs"
        yield run.event(f"training ended ({reason})", "end", run.best, reason)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    from ..network.registry import load_model

    return load_model(output) if run.saved else None
