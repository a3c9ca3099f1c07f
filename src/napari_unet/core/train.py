"""The training loop as a generator of progress events.

:func:`train` fine-tunes a model (or trains one from scratch) on :class:`~.data.TrainingPair`
planes: random patches biased toward the annotated pixels, elastic-deformation augmentation on the
training device, the U-Net paper's border-weighted cross-entropy restricted to annotated pixels,
AdamW with warm-up and cosine decay, validation on held-out blocks through the real inference and
post-processing path, early stopping, and the best model saved atomically after every improvement.
Closing the generator (Stop) at any event leaves the best model so far on disk.
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

from .augment import AugmentConfig, augment_batch
from .config import ModelConfig, TilingConfig, to_dict
from .data import PatchSampler, TrainingPair, ValidationCrop, data_hash, split_validation
from .device import Predictor, resolve_device
from .errors import UserError
from .metrics import evaluate
from .model import UNet, build_model
from .normalize import NormalizeConfig
from .postprocess import PostprocessConfig, labels_from_probabilities
from .progress import Progress, drain
from .rescale import training_scale
from .targets import TargetConfig
from .tiling import default_halo, predict_tiled
from .weights import LoadedModel, new_metadata, save_model

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
        patience: epochs without a better validation score before stopping early (0: never).
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
    val_fraction: float = 0.15
    patience: int = 10
    seed: int = 0
    amp: bool = True
    cpu_bf16: bool = True
    freeze_batchnorm: bool | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)

    def __post_init__(self) -> None:

        if self.epochs < 1:
            raise UserError(f"The number of epochs must be at least 1, got {self.epochs}.")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UserError(f"The time budget must be positive, got {self.max_minutes} minutes.")
        if self.steps_per_epoch < 1 or self.batch_size < 1 or self.patch_size < 16:
            raise UserError("steps per epoch and batch size must be at least 1, the patch size "
                            "at least 16 pixels.")


@dataclass(frozen=True)
class TrainStatus:
    """Payload of the training progress events.

    Attributes:
        kind: ``"step"`` after an optimiser step, ``"validation"`` after a validation,
            ``"saved"`` after the best model was written.
        step: optimiser steps done.
        epoch: epochs done (a validation closes an epoch).
        loss: smoothed training loss.
        metrics: the latest validation metrics (``"score"``, ``"ap_50"``, ``"pixel_iou"``,
            ``"loss"``), empty before the first validation.
        best: the best validation metrics so far.
        seconds_left: estimated time left.
    """

    kind: str
    step: int
    epoch: int
    loss: float
    metrics: dict[str, float]
    best: dict[str, float]
    seconds_left: float


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
        from .device import cpu_supports_bf16

        if cpu_supports_bf16():
            return True, torch.bfloat16
        logger.info("this CPU has no bfloat16 instructions: training in float32")
    return False, torch.float32


def _learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


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

    Returns:
        ``{"ap_50", "pixel_iou", "score"}``: AP at IoU 0.5 over all crops' objects (instances),
        foreground IoU, and the score used to keep the best model (their mean for instances, the
        pixel IoU for semantic models).
    """
    predictor = Predictor(model, device)
    tiling = TilingConfig(tile_size=256, batch_size=4)
    halo = default_halo(model.config)
    tp = fp = fn = 0
    ious = []
    for crop in crops:
        probs = drain(predict_tiled(predictor, crop.image, model.config.out_classes, tiling,
                                         halo, model.config.stride))
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


def _train_mode(model: UNet, freeze_batchnorm: bool) -> None:
    """Training mode, with BatchNorm layers left in eval mode (fixed statistics) if asked."""
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a).to(device, non_blocking=True)
                 for a in (batch.images, batch.classes, batch.weights, batch.mask))


def _start_model(base: LoadedModel | None, model_config: ModelConfig | None, seed: int) -> UNet:
    if base is not None:
        return copy.deepcopy(base.model)
    return build_model(model_config or ModelConfig(), seed=seed)


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
    pixel_size: Sequence[float] | None = None,
) -> Generator[Progress, None, LoadedModel]:
    """Train on ``pairs`` and keep the best model in ``output``.

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
        pixel_size: pixel size of the training images in µm (``(y, x)``), recorded in the model
            file; ``None`` keeps the base model's. The median object diameter of the training
            labels (in pixels) is recorded too.

    Yields:
        :class:`~.progress.Progress` events with a :class:`TrainStatus` payload.

    Returns:
        The best model (as saved in ``output``).
    """
    config = config or TrainConfig()
    if base is not None and base.metadata.get("trainable") is False:
        raise UserError(f"{base.name} is a bioimage.io package of another architecture: it can "
                        "only predict; fine-tuning needs a napari-unet model")  # fmt: skip
    output = Path(output).expanduser()
    if output.suffix != ".safetensors":  # as save_model names it, so the result can be read back
        output = output.with_name(output.name + ".safetensors")
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator(device=dev).manual_seed(config.seed)
    if base is not None:
        task, normalize = base.task, base.normalize
    model = _start_model(base, model_config, config.seed).to(dev)
    training, crops = split_validation(pairs, config.val_fraction, rng)
    sampler = PatchSampler(training, config.patch_size, rng)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    use_amp, amp_dtype = _autocast(config, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    hashes = [data_hash(p.image, p.labels, p.targets.mask) for p in pairs]
    scale_info = training_scale(pairs, task, base, pixel_size)
    total_steps = config.epochs * config.steps_per_epoch
    budget = config.max_minutes * 60.0 if config.max_minutes else None
    started = clock()

    def progress() -> float:
        elapsed = clock() - started
        by_time = elapsed / budget if budget else 0.0
        return max(step / total_steps, by_time)

    def seconds_left() -> float:
        elapsed = clock() - started
        fraction = progress()
        return max(0.0, elapsed / fraction - elapsed) if fraction > 0 else float("nan")

    def save(metrics: dict[str, float]) -> None:
        metadata = new_metadata(
            model.config, task=task, name=name or output.stem,
            class_names=base.class_names if base is not None else None,
            normalize=normalize or NormalizeConfig(),
            tiling=base.metadata.get("tiling") if base is not None else None,
            parent=base.name if base is not None else None,
            data_hashes=hashes,
            settings={**to_dict(config), "steps": step, "epochs_done": epoch,
                      "training_pixels": sum(p.annotated_pixels for p in training),
                      "validation_crops": len(crops)},
            metrics={**metrics, "baseline": baseline},
            **scale_info,
        )
        save_model(output, model, metadata)

    step = epoch = 0
    smoothed = float("nan")
    best: dict[str, float] = {}
    baseline: dict[str, float] = {}
    if crops:
        model.eval()
        baseline = validate(model, crops, task, dev)
        logger.info("validation before training: %s", baseline)
        best = dict(baseline)
        yield Progress("train", 0, total_steps, f"before training: score {best['score']:.3f}",
                       TrainStatus("validation", 0, 0, smoothed, dict(baseline), dict(best),
                                   seconds_left()))
    save(best)
    stale = 0
    freeze = config.freeze_batchnorm if config.freeze_batchnorm is not None else base is not None
    _train_mode(model, freeze)
    while epoch < config.epochs and not (budget and clock() - started >= budget):
        for _ in range(config.steps_per_epoch):
            images, classes, weights, mask = _to_device(sampler.sample(config.batch_size), dev)
            aug = augment_batch(images, classes, weights, mask, config=config.augment,
                                generator=generator)
            loss_weights = aug.weights * aug.mask.float()
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, step, progress())
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(aug.images)
            loss = weighted_loss(logits, aug.classes, loss_weights)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise UserError(
                    f"Training diverged at step {step}: the loss became {value}. Lower the "
                    f"learning rate; {output} holds the last model that was not diverged."
                )
            smoothed = value if math.isnan(smoothed) else 0.9 * smoothed + 0.1 * value
            yield Progress("train", step, total_steps,
                           f"epoch {epoch + 1}, step {step}: loss {smoothed:.4f}",
                           TrainStatus("step", step, epoch, smoothed, {}, dict(best),
                                       seconds_left()))
            if budget and clock() - started >= budget:
                break
        epoch += 1
        if crops:
            model.eval()
            metrics = validate(model, crops, task, dev)
            _train_mode(model, freeze)
        else:
            metrics = {"score": -smoothed, "loss": smoothed}
        improved = not best or metrics["score"] > best["score"]
        message = (f"epoch {epoch}: loss {smoothed:.4f}, validation score "
                   f"{metrics['score']:.3f}" + (" (best)" if improved else ""))
        logger.info(message)
        yield Progress("train", step, total_steps, message,
                       TrainStatus("validation", step, epoch, smoothed, metrics, dict(best),
                                   seconds_left()))
        if improved:
            best, stale = dict(metrics), 0
            model.eval()
            save(best)
            _train_mode(model, freeze)
            yield Progress("train", step, total_steps, f"saved {output.name}",
                           TrainStatus("saved", step, epoch, smoothed, metrics, dict(best),
                                       seconds_left()))
        else:
            stale += 1
            if config.patience and stale >= config.patience:
                logger.info("no improvement for %d epochs: stopping early", stale)
                break
    from .weights import load_model

    return load_model(output)
