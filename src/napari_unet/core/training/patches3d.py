"""Training data of a native 3D network: annotated volumes, 3D patches, held-out 3D blocks.

A 3D network learns from whole volumes (:class:`VolumePair`): the image normalised over the
volume, and 3D targets (:mod:`.targets3d`: classes, border weights and the mask computed in 3D,
with the voxel size's anisotropy). Patches (:class:`VolumeSampler`) are boxes of ``patch_size``
pixels in Y and X and as many planes as make them about cubic in physical space
(:func:`patch_depth`), drawn around annotated voxels. Validation holds out blocks of every plane
and ``block`` x ``block`` pixels (:func:`split_volume_validation`), scored through 3D tiled
inference and the seeded 3D watershed (:func:`validate_volumes`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputMismatchError, UserError
from ..network.normalize import as_planes, normalize_bounds, normalize_plane
from .data import MAX_CENTRES, PatchBatch, model_expectations
from .data3d import AnnotatedVolume, _default_mask
from .targets import TargetConfig, Targets, check_labels, semantic_targets
from .targets3d import instance_targets_3d

if TYPE_CHECKING:
    import torch

    from ..config import ModelConfig
    from ..network.model import UNet
    from ..network.weights import LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class VolumePair:
    """One annotated volume for a 3D network.

    Attributes:
        image: float32 (C, Z, Y, X), normalised as the model expects.
        labels: (Z, Y, X) integer labels (instance ids across planes, or class ids).
        targets: classes, weights and mask, each (Z, Y, X).
        anisotropy: Z step over XY pixel.
        name: where it came from.
    """

    image: np.ndarray
    labels: np.ndarray
    targets: Targets
    anisotropy: float = 1.0
    name: str = ""

    @property
    def annotated_pixels(self) -> int:
        """Number of annotated voxels."""
        return int(self.targets.mask.sum())


def volume_pair(
    item: AnnotatedVolume,
    in_channels: int,
    normalize: object,
    task: str = "instances",
    n_classes: int = 3,
    target_config: TargetConfig | None = None,
) -> VolumePair:
    """The :class:`VolumePair` of an annotated volume (the mask: the given one, else the XY
    planes that hold labels).

    Raises:
        InputMismatchError: labels or mask that do not fit the image.
        UserError: bad labels, all-zero labels without a mask, or no annotated voxel.
    """
    planes, leading, _ = as_planes(item.image, item.axes, in_channels)  # (Z, C, Y, X)
    shape = (leading[-1], *planes.shape[-2:])
    labels = check_labels(np.asarray(item.labels), f"labels of {item.name}")
    if labels.shape != shape or (item.mask is not None and np.shape(item.mask) != shape):
        raise InputMismatchError(
            f"The labels (and mask) of {item.name} must have shape {shape} (Z, Y, X)."
        )
    mask = _default_mask(labels) if item.mask is None else np.asarray(item.mask, bool)
    if not mask.any():
        raise UserError(f"{item.name} has no annotated voxel.")
    bounds = normalize_bounds(planes, normalize)  # type: ignore[arg-type]
    image = np.stack([normalize_plane(p, bounds) for p in planes], axis=1)
    anisotropy = float(item.voxel_size[0]) / float(item.voxel_size[1])
    if task == "semantic":
        targets = semantic_targets(labels, n_classes, mask, target_config)
    else:
        targets = instance_targets_3d(labels, target_config, np.array(mask), anisotropy)
    return VolumePair(image, labels, targets, anisotropy, item.name)


def volume_training_pairs(
    items: Iterable[AnnotatedVolume],
    base: LoadedModel | None,
    model_config: ModelConfig | None = None,
    target_config: TargetConfig | None = None,
) -> list[VolumePair]:
    """Volume pairs for a 3D network, made the way the model to train expects them.

    Raises:
        UserError: see :func:`volume_pair`; also when no annotated voxel belongs to an object.
    """
    in_channels, task, n_classes, normalize = model_expectations(base, model_config)
    pairs = [
        volume_pair(item, in_channels, normalize, task, n_classes, target_config) for item in items
    ]
    if not pairs:
        raise UserError("There is nothing to train on: no annotated volume.")
    if task == "instances" and not any(p.labels[p.targets.mask].any() for p in pairs):
        raise UserError("None of the annotated voxels belongs to an object: paint some objects.")
    return pairs


def patch_depth(patch_size: int, anisotropy: float, z_stride: int) -> int:
    """Planes per 3D patch: about ``patch_size / anisotropy`` (a physical cube), a multiple of
    the network's Z stride, at least one stride."""
    depth = round(patch_size / max(anisotropy, 1e-6) / z_stride) * z_stride
    return int(max(depth, z_stride))


class VolumeSampler:
    """Random (pz, p, p) patches from volume pairs, biased toward annotated voxels.

    A pair is chosen with probability proportional to its annotated voxels; with probability
    ``focus`` the patch is centred (with jitter) on a random annotated voxel, else anywhere.
    Volumes smaller than the patch are mirror-padded (the padding is not annotated).
    """

    def __init__(
        self,
        pairs: Sequence[VolumePair],
        shape: tuple[int, int, int],
        rng: np.random.Generator,
        focus: float = 0.9,
    ) -> None:
        if not pairs:
            raise UserError("There is nothing to train on: no annotated voxels.")
        self.pairs, self.shape, self.rng, self.focus = list(pairs), shape, rng, focus
        self._centres = []
        for pair in self.pairs:
            flat = np.flatnonzero(pair.targets.mask)
            if flat.size > MAX_CENTRES:
                flat = rng.choice(flat, MAX_CENTRES, replace=False)
            self._centres.append(flat)
        counts = np.array([c.size for c in self._centres], dtype=np.float64)
        self._p = counts / counts.sum()

    def _patch(self, pair: VolumePair, centres: np.ndarray) -> tuple[np.ndarray, ...]:
        dims = pair.labels.shape
        if self.rng.random() < self.focus:
            centre = np.unravel_index(int(centres[self.rng.integers(centres.size)]), dims)
        else:
            centre = tuple(int(self.rng.integers(n)) for n in dims)
        region = []
        for n, p, c in zip(dims, self.shape, centre, strict=True):
            jitter = int(self.rng.integers(-(p // 4), p // 4 + 1))
            start = 0 if n <= p else int(np.clip(c - p // 2 + jitter, 0, n - p))
            region.append(slice(start, start + p))
        image = pair.image[(slice(None), *region)]
        t = pair.targets
        maps = tuple(m[tuple(region)] for m in (t.classes, t.weights, t.mask))
        pads = [(0, p - n) for p, n in zip(self.shape, maps[0].shape, strict=True)]
        if any(b for _, b in pads):
            image = np.pad(image, [(0, 0), *pads], mode="symmetric")
            maps = tuple(np.pad(m, pads) for m in maps)
        return (image, *maps)

    def sample(self, batch_size: int) -> PatchBatch:
        """Draw ``batch_size`` patches: images (B, C, pz, p, p), maps (B, pz, p, p)."""
        parts = [
            self._patch(self.pairs[i], self._centres[i])
            for i in self.rng.choice(len(self.pairs), size=batch_size, p=self._p)
        ]
        images, classes, weights, mask = (np.stack(column) for column in zip(*parts, strict=True))
        return PatchBatch(
            images.astype(np.float32), classes.astype(np.int64), weights.astype(np.float32),
            mask.astype(bool), np.zeros(mask.shape, bool),
        )  # fmt: skip


@dataclass(frozen=True, eq=False)
class VolumeCrop:
    """A held-out block of a volume (every plane), with XY context.

    Attributes:
        image: float32 (C, Z, h, w) normalised.
        labels: (Z, h, w); only voxels in ``mask`` are scored.
        mask: bool (Z, h, w), the annotated voxels of the block (False in the context).
        anisotropy: Z step over XY pixel.
    """

    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    anisotropy: float = 1.0


def split_volume_validation(
    pairs: Sequence[VolumePair],
    fraction: float,
    rng: np.random.Generator,
    block: int = 128,
    context: int = 32,
) -> tuple[list[VolumePair], list[VolumeCrop]]:
    """Hold out blocks (every plane, ``block`` x ``block`` pixels) holding about ``fraction`` of
    the annotated voxels; their voxels leave the training mask. Nothing is held out with
    ``fraction`` 0 or fewer annotated voxels than three blocks' worth."""
    total = sum(p.annotated_pixels for p in pairs)
    blocks = []
    for index, pair in enumerate(pairs):
        n_z, h, w = pair.labels.shape
        for y in range(0, h, block):
            for x in range(0, w, block):
                region = (slice(None), slice(y, min(y + block, h)), slice(x, min(x + block, w)))
                count = int(pair.targets.mask[region].sum())
                if count >= 0.25 * n_z * block * block:
                    blocks.append((index, region, count, 3 * n_z * block * block))
    if fraction <= 0 or not blocks or total < min(b[3] for b in blocks):
        return list(pairs), []
    training, crops, held = list(pairs), [], 0
    for k in rng.permutation(len(blocks)):
        index, region, count, _ = blocks[k]
        if held >= fraction * total or held + count > 0.5 * total:
            continue
        pair, held = training[index], held + count
        _, ys, xs = region
        h, w = pair.labels.shape[1:]
        outer = (slice(None), slice(max(ys.start - context, 0), min(ys.stop + context, h)),
                 slice(max(xs.start - context, 0), min(xs.stop + context, w)))  # fmt: skip
        crop_mask = np.zeros(pair.labels.shape, bool)
        crop_mask[region] = pair.targets.mask[region]
        image = pair.image[(slice(None), *outer)].copy()
        labels = pair.labels[outer].copy()
        crops.append(VolumeCrop(image, labels, crop_mask[outer], pair.anisotropy))
        mask, weights = pair.targets.mask.copy(), pair.targets.weights.copy()
        mask[region], weights[region] = False, 0.0
        training[index] = replace(pair, targets=replace(pair.targets, mask=mask, weights=weights))
    logger.info("3D validation: %d blocks, %d of %d annotated voxels held out", len(crops), held,
                total)  # fmt: skip
    return [p for p in training if p.targets.mask.any()], crops


def validate_volumes(
    model: UNet, crops: Sequence[VolumeCrop], task: str, device: torch.device
) -> dict[str, float]:
    """Score a 3D network on held-out blocks through exact-halo 3D tiles and the seeded 3D
    watershed. Returns ``{"ap_50", "pixel_iou", "score"}`` as the 2D validation does."""
    from ..analysis.metrics import evaluate
    from ..config import TilingConfig
    from ..inference.engine import InferenceEngine
    from ..inference.postprocess import labels_from_probabilities
    from ..inference.stack3d import instances_3d
    from ..inference.volume import predict_volume_tiled, volume_halo, volume_tile
    from ..progress import drain
    from .validation import _foreground_iou

    engine = InferenceEngine(model, TilingConfig(tile_size=128), device)
    config = engine.config
    stride = (config.z_stride, config.stride, config.stride)
    tp = fp = fn = 0
    ious = []
    for crop in crops:
        probs = drain(predict_volume_tiled(
            engine.predictor, crop.image, config.out_classes, volume_tile(engine),
            volume_halo(engine.tiling, config), stride,
        ))  # fmt: skip
        if task == "instances":
            labels = instances_3d(probs, anisotropy=crop.anisotropy)
            result = evaluate(labels, crop.labels, crop.mask, thresholds=(0.5,))
            tp, fp, fn = tp + result["tp"], fp + result["fp"], fn + result["fn"]
        else:
            labels = labels_from_probabilities(probs, task)
        ious.append(_foreground_iou(labels, crop.labels, crop.mask))
    pixel_iou = float(np.mean(ious)) if ious else 0.0
    if task != "instances":
        return {"pixel_iou": pixel_iou, "score": pixel_iou}
    ap = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    return {"ap_50": float(ap), "pixel_iou": pixel_iou, "score": 0.5 * (float(ap) + pixel_iou)}
