"""Training data: annotated planes, a held-out validation split, patch sampling.

A user who corrected five cells in a 4000x4000 image trains on those five cells: patches are drawn
around annotated pixels (:class:`PatchSampler`), and nothing outside the annotated mask counts in
the loss (the targets' weights are 0 there).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ..config import NormalizeConfig
from ..errors import InputMismatchError, UserError
from ..network.normalize import as_planes, normalize_bounds, normalize_plane
from .targets import TargetConfig, Targets, check_labels, instance_targets, semantic_targets

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..network.weights import LoadedModel

logger = logging.getLogger(__name__)

#: Side of the square blocks the validation split is made of, in pixels.
VALIDATION_BLOCK = 192
#: Image context added around a validation block when it is predicted, in pixels.
VALIDATION_CONTEXT = 32
#: Fewest annotated pixels for which a validation split is made.
MIN_PIXELS_FOR_VALIDATION = 2 * VALIDATION_BLOCK**2
#: At most this many annotated positions are kept per plane to draw patch centres from.
MAX_CENTRES = 200_000


@dataclass(frozen=True, eq=False)
class KeepBase:
    """The base model's confident predictions on the unannotated pixels of one plane
    (made by :func:`.keep_base.keep_base_targets`).

    Attributes:
        classes: uint8 (H, W), the base model's most likely class (meaningful where ``mask``).
        mask: bool (H, W), True where the pixel is not annotated and the base model's largest
            class probability is at least the confidence threshold.
    """

    classes: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True, eq=False)
class TrainingPair:
    """One annotated 2D plane.

    Attributes:
        image: float32 (C, H, W), normalised as the model expects.
        labels: (H, W) integer labels as given (instance ids or class ids), 0 = background.
        targets: per-pixel classes, weights and annotated mask, each (H, W).
        name: where it came from, e.g. ``"image 1, plane 3"``.
        keep: the base model's confident predictions on the unannotated pixels, trained toward
            with a small weight (see :mod:`.keep_base`); ``None``: none.
    """

    image: np.ndarray
    labels: np.ndarray
    targets: Targets
    name: str = ""
    keep: KeepBase | None = None

    @property
    def annotated_pixels(self) -> int:
        """Number of annotated pixels."""
        return int(self.targets.mask.sum())


@dataclass(frozen=True, eq=False)
class ValidationCrop:
    """A held-out block, with context, scored through the real inference path.

    Attributes:
        image: float32 (C, h, w) normalised image of the block plus context.
        labels: (h, w) labels; only pixels inside ``mask`` are scored.
        mask: bool (h, w), True on the annotated pixels of the block (False in the context).
    """

    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray


def data_hash(*arrays: np.ndarray) -> str:
    """A short SHA-256 of arrays' bytes, shapes and dtypes (for a model's provenance)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def make_pairs(
    image: np.ndarray,
    labels: np.ndarray,
    axes: str,
    in_channels: int,
    normalize: NormalizeConfig,
    task: str = "instances",
    n_classes: int = 3,
    mask: np.ndarray | None = None,
    target_config: TargetConfig | None = None,
    name: str = "image",
) -> list[TrainingPair]:
    """Training pairs from one image and its labels.

    Args:
        image: the image, one axis per letter of ``axes`` (e.g. ``"YX"``, ``"ZYX"``, ``"YXS"``,
            ``"TZCYX"``), any numeric dtype.
        labels: integer labels with the image's shape without its channel axis.
        axes: the image's axes.
        in_channels: channels the model expects (RGB is converted as for prediction).
        normalize: the model's intensity normalisation (computed over the whole image).
        task: ``"instances"`` or ``"semantic"``.
        n_classes: classes of a semantic model.
        mask: optional annotated pixels, labels' shape. Without it, a 2D image is fully annotated
            and, in a stack, the planes that have labels are.
        target_config: how labels become targets.
        name: used in messages.

    Returns:
        One :class:`TrainingPair` per annotated plane (planes without annotation are skipped).

    Raises:
        UserError: labels that do not fit the image, negative or non-integer labels, or a mask
            with no annotated pixel, or all-zero labels without a mask.
    """
    planes, leading, _ = as_planes(image, axes, in_channels)
    expected = (*leading, *planes.shape[-2:])
    labels = np.asarray(labels)
    if labels.shape != expected:
        raise InputMismatchError(
            f"The labels of {name} have shape {labels.shape} but the image needs {expected} "
            "(the image's shape without channels)."
        )
    labels = check_labels(labels, f"labels of {name}")
    if mask is None and not labels.any():
        raise UserError(
            f"The labels of {name} are all zero: there is nothing to learn from. "
            "Paint some objects (or give a mask of the reviewed regions)."
        )
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != expected:
            raise InputMismatchError(
                f"The mask of {name} has shape {mask.shape} but the labels have {expected}."
            )
        if not mask.any():
            raise UserError(f"The mask of {name} marks no pixel as annotated.")
    n = planes.shape[0]
    label_planes = labels.reshape(n, *labels.shape[-2:])
    mask_planes = None if mask is None else mask.reshape(n, *labels.shape[-2:])
    if mask_planes is None and n > 1:
        annotated = label_planes.reshape(n, -1).any(axis=1)
        mask_planes = np.broadcast_to(annotated[:, None, None], label_planes.shape)
    bounds = normalize_bounds(planes, normalize)
    pairs = []
    for i in range(n):
        plane_mask = None if mask_planes is None else mask_planes[i]
        if plane_mask is not None and not plane_mask.any():
            continue
        plane_labels = np.asarray(label_planes[i])
        if task == "semantic":
            if plane_labels.max() >= n_classes:
                raise UserError(
                    f"The labels of {name} hold class {int(plane_labels.max())} but "
                    f"the model has {n_classes} classes."
                )
            targets = semantic_targets(plane_labels, n_classes, plane_mask, target_config)
        else:
            targets = instance_targets(plane_labels, target_config, plane_mask)
        pairs.append(
            TrainingPair(
                image=normalize_plane(planes[i], bounds),
                labels=plane_labels,
                targets=targets,
                name=f"{name}, plane {i + 1}" if n > 1 else name,
            )
        )
    if not pairs:
        raise UserError(
            f"{name} has no annotated pixel: its labels are all zero. Paint some "
            "objects (or mark reviewed regions) before training."
        )
    return pairs


@dataclass(frozen=True, eq=False)
class AnnotatedImage:
    """One image with its (corrected) labels, as :func:`training_pairs` takes it.

    Attributes:
        image: the image, one axis per letter of ``axes``, any numeric dtype.
        labels: integer labels, the image's shape without its channel axis.
        axes: the image's axes, e.g. ``"YX"``, ``"ZYX"``, ``"YXS"``.
        mask: bool, labels' shape: the annotated pixels; ``None`` for the default rule (see
            :func:`make_pairs`).
        name: used in messages.
    """

    image: np.ndarray
    labels: np.ndarray
    axes: str
    mask: np.ndarray | None = None
    name: str = "image"


def model_expectations(
    base: LoadedModel | None, model_config: ModelConfig | None
) -> tuple[int, str, int, NormalizeConfig]:
    """What the model to train expects of its pairs: (input channels, task, classes,
    normalisation), from the model to fine-tune or else the architecture of a new network.

    Raises:
        ValueError: neither is given.
    """
    if base is not None:
        return base.config.in_channels, base.task, base.config.out_classes, base.normalize
    if model_config is not None:
        return model_config.in_channels, "instances", model_config.out_classes, NormalizeConfig()
    raise ValueError("give the base model or the configuration of a new one")


def training_pairs(
    annotated: Iterable[AnnotatedImage],
    base: LoadedModel | None,
    model_config: ModelConfig | None = None,
    target_config: TargetConfig | None = None,
) -> list[TrainingPair]:
    """Training pairs of every annotated image, made the way the model to train expects them.

    Args:
        annotated: the images and their labels (may be a generator: each item is made into pairs
            before the next is taken).
        base: the model to fine-tune (its input channels, task, classes and normalisation), or
            ``None`` for a new instance-segmentation network of ``model_config``.
        model_config: the architecture of a new network (when ``base`` is ``None``).
        target_config: how labels become targets (``TrainConfig.targets``).

    Raises:
        UserError: see :func:`make_pairs`; also when, for instances, no annotated pixel belongs
            to an object.
    """
    in_channels, task, n_classes, normalize = model_expectations(base, model_config)
    pairs: list[TrainingPair] = []
    for item in annotated:
        pairs += make_pairs(
            item.image,
            item.labels,
            item.axes,
            in_channels,
            normalize,
            task=task,
            n_classes=n_classes,
            mask=item.mask,
            target_config=target_config,
            name=item.name,
        )
    if task == "instances" and not any(p.labels[p.targets.mask].any() for p in pairs):
        raise UserError(
            "None of the annotated pixels belongs to an object (the labels are 0 "
            "wherever the annotated regions are): paint some objects."
        )
    return pairs


def _blocks(shape: tuple[int, int], size: int) -> list[tuple[slice, slice]]:
    return [
        (slice(y, min(y + size, shape[0])), slice(x, min(x + size, shape[1])))
        for y in range(0, shape[0], size)
        for x in range(0, shape[1], size)
    ]


def split_validation(
    pairs: Sequence[TrainingPair],
    fraction: float,
    rng: np.random.Generator,
    block: int = VALIDATION_BLOCK,
    context: int = VALIDATION_CONTEXT,
) -> tuple[list[TrainingPair], list[ValidationCrop]]:
    """Hold out square blocks of the annotated area for validation.

    Blocks are drawn at random among those with annotated pixels until they hold about
    ``fraction`` of all annotated pixels; their pixels leave the training mask (weights 0), so
    validation never sees a trained pixel. With too little annotation (fewer than two blocks'
    worth of pixels, :data:`MIN_PIXELS_FOR_VALIDATION` for the default block) or ``fraction`` 0,
    nothing is held out. Two blocks' worth is about 40 corrected nuclei of 10 px radius with
    their margins at the default 128 px block: a correction a user makes in a few minutes.

    Returns:
        ``(training pairs, validation crops)``.
    """
    total = sum(p.annotated_pixels for p in pairs)
    if fraction <= 0 or total < 2 * block * block:
        return list(pairs), []
    candidates = []
    for index, pair in enumerate(pairs):
        for region in _blocks(pair.labels.shape, block):
            count = int(pair.targets.mask[region].sum())
            if count >= 0.25 * block * block:
                candidates.append((index, region, count))
    order = rng.permutation(len(candidates))
    chosen: list[tuple[int, tuple[slice, slice]]] = []
    held = 0
    for k in order:
        if held >= fraction * total or held + candidates[k][2] > 0.5 * total:
            continue
        index, region, count = candidates[k]
        chosen.append((index, region))
        held += count
    if not chosen:
        return list(pairs), []
    training = list(pairs)
    crops = []
    for index, region in chosen:
        pair = training[index]
        h, w = pair.labels.shape
        ys, xs = region
        outer = (
            slice(max(ys.start - context, 0), min(ys.stop + context, h)),
            slice(max(xs.start - context, 0), min(xs.stop + context, w)),
        )
        crop_mask = np.zeros(pair.labels.shape, bool)
        crop_mask[region] = pair.targets.mask[region]
        crops.append(
            ValidationCrop(
                image=pair.image[(slice(None), *outer)].copy(),
                labels=pair.labels[outer].copy(),
                mask=crop_mask[outer],
            )
        )
        mask = pair.targets.mask.copy()
        weights = pair.targets.weights.copy()
        mask[region] = False
        weights[region] = 0.0
        keep = pair.keep
        if keep is not None:  # no pseudo-label inside a held-out block either
            keep_mask = keep.mask.copy()
            keep_mask[region] = False
            keep = replace(keep, mask=keep_mask)
        training[index] = replace(
            pair, targets=replace(pair.targets, mask=mask, weights=weights), keep=keep
        )
    training = [p for p in training if p.targets.mask.any()]
    logger.info(
        "validation: %d blocks, %d of %d annotated pixels held out", len(crops), held, total
    )
    return training, crops


@dataclass(frozen=True, eq=False)
class PatchBatch:
    """A batch of training patches (numpy).

    Attributes:
        images: float32 (B, C, P, P).
        classes: int64 (B, P, P).
        weights: float32 (B, P, P), 0 where not annotated.
        mask: bool (B, P, P).
        keep: bool (B, P, P), the base model's pseudo-labels (in ``classes``) that count in the
            loss of :mod:`.keep_base`; never where ``mask``.
    """

    images: np.ndarray
    classes: np.ndarray
    weights: np.ndarray
    mask: np.ndarray
    keep: np.ndarray


class PatchSampler:
    """Random square patches from training pairs, biased toward annotated pixels.

    A pair is chosen with probability proportional to its annotated pixels; with probability
    ``focus`` the patch is centred (with jitter) on a random annotated pixel, else anywhere.
    Images smaller than the patch are mirror-padded (the padding is not annotated).
    """

    def __init__(
        self,
        pairs: Sequence[TrainingPair],
        patch_size: int,
        rng: np.random.Generator,
        focus: float = 0.9,
    ) -> None:
        if not pairs:
            raise UserError("There is nothing to train on: no annotated pixels.")
        self.pairs = list(pairs)
        self.patch_size = int(patch_size)
        self.rng = rng
        self.focus = focus
        self._centres = []
        for pair in self.pairs:
            flat = np.flatnonzero(pair.targets.mask)
            if flat.size > MAX_CENTRES:
                flat = rng.choice(flat, MAX_CENTRES, replace=False)
            self._centres.append(flat)
        counts = np.array([c.size for c in self._centres], dtype=np.float64)
        self._p = counts / counts.sum()

    def _origin(self, length: int, centre: int) -> int:
        p = self.patch_size
        if length <= p:
            return 0
        jitter = int(self.rng.integers(-p // 4, p // 4 + 1))
        return int(np.clip(centre - p // 2 + jitter, 0, length - p))

    def _patch(self, pair: TrainingPair, centres: np.ndarray) -> tuple[np.ndarray, ...]:
        h, w = pair.labels.shape
        if self.rng.random() < self.focus:
            cy, cx = divmod(int(centres[self.rng.integers(centres.size)]), w)
        else:
            cy, cx = int(self.rng.integers(h)), int(self.rng.integers(w))
        y0, x0 = self._origin(h, cy), self._origin(w, cx)
        ys = slice(y0, y0 + self.patch_size)
        xs = slice(x0, x0 + self.patch_size)
        image = pair.image[:, ys, xs]
        classes, mask = pair.targets.classes[ys, xs], pair.targets.mask[ys, xs]
        keep = np.zeros(mask.shape, bool)
        if pair.keep is not None:
            keep = pair.keep.mask[ys, xs] & ~mask
            classes = np.where(keep, pair.keep.classes[ys, xs], classes)
        maps = (classes, pair.targets.weights[ys, xs], mask, keep)
        pad_y, pad_x = self.patch_size - image.shape[1], self.patch_size - image.shape[2]
        if pad_y or pad_x:
            image = np.pad(image, ((0, 0), (0, pad_y), (0, pad_x)), mode="symmetric")
            maps = tuple(np.pad(m, ((0, pad_y), (0, pad_x))) for m in maps)
        return (image, *maps)

    def sample(self, batch_size: int) -> PatchBatch:
        """Draw ``batch_size`` patches."""
        parts = []
        for index in self.rng.choice(len(self.pairs), size=batch_size, p=self._p):
            parts.append(self._patch(self.pairs[index], self._centres[index]))
        images, classes, weights, mask, keep = (
            np.stack(column) for column in zip(*parts, strict=True)
        )
        return PatchBatch(
            images=images.astype(np.float32),
            classes=classes.astype(np.int64),
            weights=weights.astype(np.float32),
            mask=mask.astype(bool),
            keep=keep.astype(bool),
        )
