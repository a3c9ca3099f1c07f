"""``napari-unet train``: fine-tune a model (or train a new one) on annotated images."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from napari_unet.cli._common import (
    PROG,
    Terminated,
    chosen_device,
    format_metrics,
    given,
    logger,
)
from napari_unet.cli._paths import check_not_an_input, model_output
from napari_unet.cli._progress import TrainReporter
from napari_unet.cli._rescale import training_pixel_size
from napari_unet.cli._stacks import read_stack_training_data
from napari_unet.cli._train_options import SCRATCH, train_config, training_inputs

#: Defaults of a new native 3D network (``--dims 3``): depth, and patch side in Y and X.
DEPTH_3D = 3
PATCH_SIZE_3D = 64


def _scratch_channels(image: Any) -> int:
    """Input channels of a new network for ``image`` (an ``ImageData``)."""
    if "C" in image.axes:
        return int(image.data.shape[image.axes.index("C")])
    if image.axes.endswith("S"):
        return 3
    return 1


def _base_model(args: argparse.Namespace, first_image: Path) -> tuple[Any, Any]:
    """``(base LoadedModel or None, ModelConfig of a new network or None)``; a new network
    takes its input channels from ``first_image``."""
    from napari_unet.core.config import ModelConfig
    from napari_unet.core.errors import UserError
    from napari_unet.core.io.lazy import open_lazy
    from napari_unet.core.network.registry import get_model

    architecture = given({"depth": args.depth, "base_channels": args.base_channels})
    dims = getattr(args, "dims", None)
    if (args.model or "").strip().lower() != SCRATCH:
        if architecture:
            raise UserError(
                "--depth and --base-channels set the architecture of a new network; they need "
                f"--model {SCRATCH} (a fine-tuned model keeps its architecture)"
            )
        base = get_model(args.model)
        if dims is not None and dims != base.config.spatial_dims:
            raise UserError(
                f"--dims {dims}: {base.name} is a {base.config.spatial_dims}D model and a "
                f"fine-tuned model keeps its architecture; use --model {SCRATCH} for a new one"
            )
        return base, None
    if dims == 3:
        architecture = {"depth": DEPTH_3D, **architecture, "spatial_dims": 3}
    if architecture.get("depth", 0) > 8:
        raise UserError(f"--depth must be at most 8, got {architecture['depth']}")
    from napari_unet.core.network.limits import check_architecture

    channels = _scratch_channels(open_lazy(first_image))  # the header only: read once later
    try:
        check_architecture({"in_channels": channels, **architecture})
    except ValueError as exc:
        raise UserError(f"--depth/--base-channels: {exc}") from None
    return None, ModelConfig(in_channels=channels, **architecture)


def _settings_3d(
    args: argparse.Namespace, pairs: list, model_config: Any, config: Any
) -> tuple[Any, Any]:
    """A new 3D network pools only Y and X while Z is coarser (from the volumes' median
    anisotropy), and 3D patches are :data:`PATCH_SIZE_3D` px unless ``--patch-size`` says."""
    from dataclasses import replace

    import numpy as np

    from napari_unet.core.config import xy_only_levels_for

    if args.patch_size is None:
        config = replace(config, patch_size=PATCH_SIZE_3D)
    if model_config is not None:
        anisotropy = float(np.median([p.anisotropy for p in pairs]))
        levels = xy_only_levels_for(anisotropy, model_config.depth)
        model_config = replace(model_config, xy_only_levels=levels)
        logger.info("new 3D network: anisotropy %.2f, %d level(s) pool only Y and X",
                    anisotropy, levels)  # fmt: skip
    return model_config, config


def _check_resources(config: Any, base: Any, model_config: Any, device: Any) -> None:
    """Refuse patches and batches that cannot fit, before any file is written (the memory
    estimate only on the CPU, whose memory holds the activations)."""
    from napari_unet.core.io.storage import available_memory
    from napari_unet.core.network.limits import check_training

    architecture = base.config if base is not None else model_config
    available = available_memory() if device.type == "cpu" else None
    check_training(config.patch_size, config.batch_size, architecture.base_channels, available)


def _summary(result: Any, base: Any, seconds: float, last: Any) -> str:
    """The closing report: the model file, what was trained, validation before and after."""
    provenance = result.metadata.get("provenance") or {}
    settings = provenance.get("settings") or {}
    metrics = dict(provenance.get("metrics") or {})
    baseline = metrics.pop("baseline", None) or {}
    origin = f"fine-tuned from {base.name}" if base is not None else "trained from scratch"
    epochs = last.epoch if last is not None else settings.get("epochs_done")
    steps = last.step if last is not None else settings.get("steps")
    kept = settings.get("epochs_done")
    kept_text = "the starting model (no epoch improved on it)" if kept == 0 else f"epoch {kept}"
    lines = [
        f"model: {Path(result.path).resolve()}",
        f"name: {result.name} ({origin})",
        f"training: {epochs} epochs, {steps} steps of {settings.get('batch_size')} patches on "
        f"{settings.get('training_pixels')} annotated pixels in {seconds:.1f} s; kept {kept_text}",
    ]
    if baseline:
        lines.append(f"validation before: {format_metrics(baseline)}")
        lines.append(f"validation after:  {format_metrics(metrics)}")
    else:
        loss = metrics.get("loss")
        loss_text = f"; training loss {loss:.4f}" if isinstance(loss, int | float) else ""
        lines.append(
            "validation: none (too little annotation to hold out blocks, or "
            f"--validation-fraction 0){loss_text}"
        )
    return "\n".join(lines) + "\n"


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``napari-unet train``; returns the exit code (130 when interrupted)."""
    from napari_unet.core.errors import UserError
    from napari_unet.core.io.storage import file_state
    from napari_unet.core.network.device import describe_device
    from napari_unet.core.progress import drain
    from napari_unet.core.training.train import train

    inputs = training_inputs(args.data_items)
    output = model_output(args.output)
    config = train_config(args)
    check_not_an_input((p for i in inputs for p in (i.image, i.labels, i.mask)), [output])
    device = chosen_device(args.device)
    base, model_config = _base_model(args, inputs[0].image)
    _check_resources(config, base, model_config, device)
    if base is not None and base.path is not None and base.path.resolve() == output.resolve():
        raise UserError(
            f"-o {output} is the model being fine-tuned; write the new model to another file"
        )
    dims = (base.config if base is not None else model_config).spatial_dims
    pairs, planar_sizes, voxel_size = read_stack_training_data(
        args, inputs, base, model_config, config.targets, volumes_3d=dims == 3
    )
    if dims == 3:
        model_config, config = _settings_3d(args, pairs, model_config, config)
        pixel_size = voxel_size
    elif planar_sizes:
        pixel_size = training_pixel_size(planar_sizes)
    else:
        pixel_size = tuple(voxel_size[1:]) if voxel_size is not None else None
    logger.info(
        "training on %s: %d annotated plane(s), %d pixels",
        describe_device(device),
        len(pairs),
        sum(p.annotated_pixels for p in pairs),
    )
    before = file_state(output)
    time_only = args.max_minutes is not None and args.epochs is None
    reporter = TrainReporter(sys.stderr, None if time_only else config.epochs, not args.quiet)
    start = time.monotonic()
    gen = train(
        pairs,
        output,
        base=base,
        config=config,
        device=device,
        name=args.name,
        model_config=model_config,
        pixel_size=pixel_size,
    )
    try:
        result = drain(gen, reporter)
    except KeyboardInterrupt as exc:
        gen.close()
        reporter.close()
        saved = file_state(output)
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        if saved is not None and saved != before:
            sys.stderr.write(f"\n{PROG}: {how}; the best model so far is in {output}\n")
        else:
            sys.stderr.write(f"\n{PROG}: {how} before a model was saved\n")
        return 143 if isinstance(exc, Terminated) else 130
    reporter.close()
    if voxel_size is not None and dims == 2:
        from napari_unet.core.training.data3d import record_voxel_size

        result = record_voxel_size(result, voxel_size)
    sys.stdout.write(_summary(result, base, time.monotonic() - start, reporter.last))
    return 0
