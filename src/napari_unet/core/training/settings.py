"""What a training run is told (:class:`TrainConfig`) and what it reports (:class:`TrainStatus`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from .augment import AugmentConfig
from .targets import TargetConfig


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
            early (0, the default: never; the learning rate decays over the whole budget).
            Measured in ``benchmarks/real_nuclei.py`` (as for ``keep``): with a patience of 10
            the three runs stopped after half the budget or kept their base, right-half AP50
            0.852, 0.918, 0.841, against 0.900, 0.949, 0.983 with the whole budget: two 128 px
            held-out blocks hold about 15 nuclei, and their score stalls by chance.
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
        average_tail: average the weights uniformly over the last this share of the budget
            (stochastic weight averaging; 0, the default: off). Once the average starts it is
            what is validated and saved in place of the raw weights; BatchNorm statistics are
            the latest ones. Off by default: in ``benchmarks/real_nuclei.py`` (the left half
            corrected, 3 CPU minutes, 6 seeds) the latest weights averaged over the last
            quarter gave right-half AP50 median 0.925, worst 0.839, against 0.941 and 0.900
            with the best checkpoint (the default) and 0.917 and 0.855 with the latest weights.
        keep: which weights the model file holds when there are held-out crops: ``"best"``
            (the default: the checkpoint with the best validation score) or ``"latest"`` (the
            latest weights that beat the starting model on the held-out crops, or simply the
            latest when an improvement is not required: at the end of the budget, those of
            the fully decayed learning rate). Measured in ``benchmarks/real_nuclei.py`` (a real
            nuclei image, the left half corrected, 3 CPU minutes, the whole budget, 3 seeds):
            right-half AP50 0.900, 0.949, 0.983 with the best checkpoint against 0.885, 0.933,
            0.949 with the latest weights; with 6 seeds, median 0.941 and worst 0.900 against
            0.917 and 0.855.
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
        keep_base_weight: when fine-tuning, weight of the self-distillation term: outside the
            annotated pixels, the cross-entropy toward the base model's own confident
            predictions (see :mod:`.keep_base`), averaged over those pixels, against the loss
            of the annotation (averaged over the annotated pixels). 0 turns it off; it has no
            effect on fully annotated planes or when training from scratch. Default 3: in
            ``benchmarks/loop.py`` (10 corrected objects a round, 3 rounds, 3 seeds; see
            ``docs/benchmarks.md``) the AP50 after round 3 was 0.689 (review queue) and 0.713
            (random order) with it, against 0.679 and 0.689 with 0.
        keep_base_confidence: the base model's largest class probability from which a pixel
            outside the annotation gets a pseudo-label.
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
    patience: int = 0
    smooth_validations: int = 3
    stop_after: float = 0.5
    ema_decay: float = 0.0
    average_tail: float = 0.0
    keep: str = "best"
    seed: int = 0
    amp: bool = True
    cpu_bf16: bool = True
    freeze_batchnorm: bool | None = None
    keep_base_weight: float = 3.0
    keep_base_confidence: float = 0.9
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UserError(f"The number of epochs must be at least 1, got {self.epochs}.")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UserError(f"The time budget must be positive, got {self.max_minutes} minutes.")
        if not (self.keep_base_weight >= 0 and 0.0 < self.keep_base_confidence <= 1.0):
            raise UserError(
                "keep_base_weight must be at least 0 and keep_base_confidence in (0, 1]."
            )
        if self.keep not in ("best", "latest"):
            raise UserError(f"keep must be 'best' or 'latest', got {self.keep!r}.")
        if not 0.0 <= self.average_tail < 1.0:
            raise UserError(f"average_tail must be in [0, 1), got {self.average_tail}.")
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
