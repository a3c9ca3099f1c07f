"""The fine-tuning job of the Fine-tune widget, free of Qt and napari.

:func:`training_job` turns the annotations read from the viewer (:class:`TrainingInput`) into
training pairs and runs :func:`napari_unet.core.training.train.train`, as one progress generator.
The
widget runs it either in a separate process (:mod:`._process`) or in a thread worker; everything
it receives (:class:`TrainRequest`) can be pickled. Also here: the augmentation presets and the
rules for a new model's name.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_unet.core.errors import UserError
from napari_unet.core.progress import Progress
from napari_unet.core.training.data import AnnotatedImage
from napari_unet.core.training.data3d import AnnotatedVolume, annotated_training_pairs

if TYPE_CHECKING:
    from napari_unet.core.training.augment import AugmentConfig
    from napari_unet.core.training.settings import TrainConfig

logger = logging.getLogger(__name__)

#: Augmentation strengths offered in the widget.
AUGMENT_LEVELS = ("off", "light", "default", "strong")
#: Base model choice that trains a new network.
SCRATCH = "scratch (new network)"
#: Steps of the progress bar (training progress is a fraction of the budget, steps or time).
BAR_STEPS = 1000

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+ -]*")
_SUFFIX = ".safetensors"


#: One annotated image copied out of the viewer (labels copied, so painting goes on safely).
TrainingInput = AnnotatedImage


@dataclass(frozen=True, eq=False)
class TrainRequest:
    """Everything a training run needs (picklable).

    Attributes:
        inputs: the annotated images, and the Z-stacks with 3D labels (volumes, cut in XY, XZ
            and YZ planes for training).
        output: the model file to write.
        base: the model file to fine-tune, or ``None`` to train a new network.
        config: a :class:`~napari_unet.core.training.settings.TrainConfig`.
        name: the new model's name.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
        threads: torch intra-op threads while training (``None``: leave torch's setting).
    """

    inputs: tuple[TrainingInput | AnnotatedVolume, ...]
    output: Path
    base: Path | None
    config: TrainConfig
    name: str
    device: str = "auto"
    threads: int | None = None


def augment_config(level: str, elastic: bool = True) -> AugmentConfig:
    """The :class:`~napari_unet.core.training.augment.AugmentConfig` of a strength level.

    Args:
        level: one of :data:`AUGMENT_LEVELS`: ``"off"`` (strength 0), ``"light"`` (half the
            default magnitudes), ``"default"``, ``"strong"`` (larger deformations, rotations,
            zoom and intensity changes).
        elastic: apply the elastic deformation.
    """
    from napari_unet.core.training.augment import AugmentConfig

    if level not in AUGMENT_LEVELS:
        raise UserError(f"Unknown augmentation strength {level!r} (one of {AUGMENT_LEVELS}).")
    config = AugmentConfig(elastic=elastic)
    if level == "off":
        return replace(config, strength=0.0)
    if level == "light":
        return replace(config, strength=0.5)
    if level == "strong":
        return replace(
            config,
            elastic_std=15.0,
            rotation=30.0,
            scale_min=0.75,
            scale_max=1.33,
            gain=0.3,
            offset=0.15,
            gamma=0.4,
            noise_std=0.05,
        )
    return config


def check_model_name(text: str) -> str:
    """A model name fit for a file name, from what the user typed.

    Raises:
        UserError: an empty name, a path, or characters other than letters, digits, spaces and
            ``. _ + -`` (the first must be a letter or digit).
    """
    name = text.strip()
    if name.lower().endswith(_SUFFIX):
        name = name[: -len(_SUFFIX)].rstrip()
    if not name:
        raise UserError("Give the new model a name.")
    if len(name) > 100 or not _NAME.fullmatch(name) or name.endswith("."):
        raise UserError(
            f"{text!r} cannot be a model name: use letters, digits, spaces and . _ + - (starting "
            "with a letter or digit, at most 100 characters)."
        )
    return name


def free_name(stem: str, taken: Sequence[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... whichever is not in ``taken`` (case-insensitive)."""
    used = {t.lower() for t in taken}
    if stem.lower() not in used:
        return stem
    n = 2
    while f"{stem}-{n}".lower() in used:
        n += 1
    return f"{stem}-{n}"


def scratch_channels(item: TrainingInput | AnnotatedVolume) -> int:
    """Input channels of a new network for ``item``: its channel axis, 3 for RGB, else 1."""
    axes = item.axes.upper()
    if "C" in axes:
        return int(item.image.shape[axes.index("C")])
    return 3 if axes.endswith("S") else 1


def _bar_event(event: Progress, started: float, done: int) -> Progress:
    """``event`` with ``done``/``total`` as a share of the budget (steps or time), in
    :data:`BAR_STEPS`; never below ``done``."""
    status = event.payload
    left = getattr(status, "seconds_left", float("nan"))
    elapsed = time.perf_counter() - started
    if math.isfinite(left) and elapsed + left > 0:
        done = max(done, min(BAR_STEPS, round(BAR_STEPS * elapsed / (elapsed + left))))
    return Progress(event.stage, done, BAR_STEPS, event.message, event.payload)


def training_job(request: TrainRequest) -> Generator[Progress, None, Path | None]:
    """Prepare the pairs and train; the model is written to ``request.output``.

    Yields:
        A ``"prepare"`` event, then the training events of
        :func:`~napari_unet.core.training.train.train` (payload
        :class:`~napari_unet.core.training.settings.TrainStatus`), with ``done``/``total``
        rescaled to the share of the budget used.

    Returns:
        The model file (the best checkpoint), or ``None`` when no model beat the base model on
        the held-out crops (nothing is written then).
    """
    import torch

    from napari_unet.core.config import ModelConfig
    from napari_unet.core.network.registry import load_model
    from napari_unet.core.training.train import train

    threads = torch.get_num_threads()
    if request.threads:
        torch.set_num_threads(request.threads)
    try:
        yield Progress("prepare", 0, 0, "preparing the training data")
        base = load_model(request.base) if request.base is not None else None
        if base is not None and getattr(base.config, "spatial_dims", 2) == 3:
            raise UserError(
                f"'{base.name}' is a native 3D U-Net, which this widget cannot fine-tune yet: "
                "fine-tune it from the command line (napari-unet train --dims 3 --model "
                "MODEL ...), or choose a 2D model here (it learns 3D stacks from their planes)."
            )
        model_config = None
        if base is None:
            model_config = ModelConfig(in_channels=scratch_channels(request.inputs[0]))
        pairs = annotated_training_pairs(request.inputs, base, model_config, request.config.targets)
        started = time.perf_counter()
        gen = train(
            pairs,
            request.output,
            base=base,
            config=request.config,
            device=request.device,
            name=request.name,
            model_config=model_config,
            require_improvement=True,
        )
        done = 0
        try:
            while True:
                event = _bar_event(next(gen), started, done)
                done = event.done
                yield event
        except StopIteration as end:
            result = end.value
        finally:
            gen.close()
        return Path(result.path) if result is not None else None
    finally:
        if request.threads:
            torch.set_num_threads(threads)


def _crop_around(weights: np.ndarray, size: int) -> tuple[slice, slice]:
    """A ``size`` square (smaller if the plane is) centred on the median of the True pixels of
    ``weights`` (H, W) bool, or on the plane's centre."""
    h, w = weights.shape
    ys, xs = np.nonzero(weights)
    cy, cx = (int(np.median(ys)), int(np.median(xs))) if ys.size else (h // 2, w // 2)
    ph, pw = min(size, h), min(size, w)
    y0 = int(np.clip(cy - ph // 2, 0, h - ph))
    x0 = int(np.clip(cx - pw // 2, 0, w - pw))
    return slice(y0, y0 + ph), slice(x0, x0 + pw)


def preview_samples(
    item: TrainingInput | AnnotatedVolume,
    in_channels: int,
    config: AugmentConfig,
    plane: int | None = None,
    patch_size: int = 192,
    n: int = 4,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A few augmented versions of a training-size patch, side by side.

    The patch comes from ``plane`` (its index among the image's 2D planes) when that plane is
    annotated, else from the first annotated plane, centred on the annotated objects.

    Args:
        item: the annotated image.
        in_channels: channels the model expects (RGB is converted as for training).
        config: the :class:`~napari_unet.core.training.augment.AugmentConfig`.
        plane: the plane to preview (``None``: the first annotated one).
        patch_size: side of the patch, in pixels.
        n: number of samples.
        seed: random seed.

    Returns:
        ``(images, labels)``: float32 (C, P, n * (P + gap)) normalised images and labels
        (P, n * (P + gap)) of the input's dtype, the samples in a row with a 0-filled gap.
    """
    from napari_unet.core.network.normalize import as_planes
    from napari_unet.core.training.augment import preview

    planes, _, _ = as_planes(item.image, item.axes, in_channels)
    labels = item.labels.reshape(planes.shape[0], *planes.shape[-2:])
    masks = labels > 0 if item.mask is None else (labels > 0) & item.mask.reshape(labels.shape)
    annotated = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    if plane is None or plane not in annotated:
        plane = int(annotated[0]) if annotated.size else 0
    ys, xs = _crop_around(masks[plane], patch_size)
    image = np.asarray(planes[plane][:, ys, xs], dtype=np.float32)
    samples = preview(image, labels[plane][ys, xs], config, n=n, seed=seed)
    gap = max(4, image.shape[-1] // 16)
    pad = ((0, 0), (0, 0), (0, gap))
    images = np.concatenate([np.pad(s[0], pad) for s in samples], axis=-1)
    label_row = np.concatenate([np.pad(s[1], pad[1:]) for s in samples], axis=-1)
    return images, label_row
