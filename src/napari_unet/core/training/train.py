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

import logging
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, NormalizeConfig
from ..errors import UserError
from ..inference.rescale import training_scale
from ..network.device import resolve_device
from ..network.weights import SUFFIX, LoadedModel, load_model_file
from ..progress import Progress
from .data import TrainingPair
from .loop import TrainingRun, run_epoch, train_mode
from .settings import TrainConfig

logger = logging.getLogger(__name__)


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
        pairs: annotated planes (see :func:`~.data.make_pairs`), normalised for the model; for
            a 3D network (``model_config`` or ``base`` with ``spatial_dims`` 3), annotated
            volumes (:class:`~.patches3d.VolumePair`, :func:`~.patches3d.volume_training_pairs`),
            trained on 3D patches (:class:`~.loop3d.VolumeRun`).
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
        pixel_size: pixel size of the training images in µm (``(y, x)``; the voxel size
            ``(z, y, x)`` for a 3D network), recorded in the model file; ``None`` keeps the
            base model's. The median object diameter of the training labels (in pixels, of
            their XY planes) is recorded too.

    Yields:
        :class:`~.progress.Progress` events with a :class:`TrainStatus` payload; the last one,
        when training ends by itself, has kind ``"end"`` and the reason.

    Returns:
        The best model (as saved in ``output``), or ``None`` when ``require_improvement`` and
        nothing beat the starting model.
    """
    config = config or TrainConfig()
    _check_trainable(base)
    output = _model_path(output)
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    if base is not None:
        task, normalize = base.task, base.normalize
    benchmark = torch.backends.cudnn.benchmark  # validation's Predictor may set it
    try:
        run = _run_class(pairs, base, model_config)(
            pairs, output, base, config, dev, model_config, clock
        )
        meta = {
            "task": task,
            "name": name or output.stem,
            "normalize": normalize,
            "scale_info": training_scale(pairs, task, base, pixel_size),
        }
        yield from _begin(run, task, meta, require_improvement)
        reason = yield from _epochs(run, task, meta)
        yield run.event(f"training ended ({reason})", "end", run.best, reason)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return load_model_file(output) if run.saved else None


def _run_class(
    pairs: Sequence[Any], base: LoadedModel | None, model_config: ModelConfig | None
) -> type[TrainingRun]:
    """:class:`~.loop.TrainingRun` for a 2D network, :class:`~.loop3d.VolumeRun` for a 3D one
    (whose pairs must be volumes)."""
    from .loop3d import VolumeRun, check_volume_pairs

    config = base.config if base is not None else (model_config or ModelConfig())
    check_volume_pairs(pairs, config.spatial_dims)
    return VolumeRun if config.spatial_dims == 3 else TrainingRun


def _check_trainable(base: LoadedModel | None) -> None:
    if base is not None and base.metadata.get("trainable") is False:
        raise UserError(f"{base.name} is a bioimage.io package of another architecture: it can "
                        "only predict; fine-tuning needs a napari-unet model")  # fmt: skip


def _model_path(output: str | Path) -> Path:
    """``output`` with the model file suffix, as :func:`~.weights.save_model` names it (so that
    the result can be read back)."""
    path = Path(output).expanduser()
    return path if path.suffix == SUFFIX else path.with_name(path.name + SUFFIX)


def _begin(
    run: TrainingRun, task: str, meta: dict[str, Any], require_improvement: bool
) -> Generator[Progress, None, None]:
    """Score the starting model on the validation crops and save it, unless only an improvement
    may be saved; then put the network in training mode."""
    run.require_improvement = require_improvement
    if run.crops:
        run.baseline = run.validate(task)
        run.best = dict(run.baseline)
        logger.info("validation before training: %s", run.baseline)
        yield run.event(
            f"before training: score {run.best['score']:.3f}", "validation", run.baseline
        )
    if not require_improvement or not run.crops:
        run.save(run.best, meta)
    train_mode(run.model, run.freeze)


def _epochs(run: TrainingRun, task: str, meta: dict[str, Any]) -> Generator[Progress, None, str]:
    """Epochs until the epoch count, the time budget or early stopping ends the run; returns
    which (``"epochs"``, ``"budget"`` or ``"patience"``)."""
    while run.epoch < run.config.epochs:
        if run.out_of_time():
            return "budget"
        if (yield from run_epoch(run, task, meta)):
            logger.info("no improvement for %d validations: stopping early", run.stale)
            return "patience"
    return "budget" if run.out_of_time() else "epochs"
