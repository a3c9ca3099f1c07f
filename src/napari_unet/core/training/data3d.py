"""Training pairs from annotated Z-stacks: planes in all three orientations.

A 2D network that labels a stack by ortho fusion (:mod:`.stack3d`) sees XY, XZ and YZ planes, the
last two with Z resampled to the XY pixel. To fine-tune it from 3D labels, the annotated volume is
cut the same way: its XY planes as they are, and, with Z resampled to isotropic voxels (the image
linearly, labels and mask by nearest neighbour), its XZ and YZ planes. Each set becomes ordinary
2D training pairs through :func:`~.data.make_pairs`, so the training loop is the one for images.

What counts as annotated follows the 2D rule: a 3D mask (the reviewed nuclei, or some reviewed
planes) when given, else the XY planes that hold any label, in every orientation (an XZ plane is
annotated in the rows of those XY planes only).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ..config import NormalizeConfig
from ..errors import InputMismatchError, UserError
from ..inference.stack3d import resample_axis
from ..io.voxels import PIXEL_SIZE_KEY
from .data import AnnotatedImage, TrainingPair, make_pairs, model_expectations

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..network.weights import LoadedModel
    from .targets import TargetConfig

logger = logging.getLogger(__name__)

#: At most this many planes per orientation and volume are made into pairs (evenly spaced).
MAX_PLANES_PER_VIEW = 48


@dataclass(frozen=True, eq=False)
class AnnotatedVolume:
    """One Z-stack with its 3D labels.

    Attributes:
        image: (Z, Y, X) or (Z, C, Y, X) image, any numeric dtype.
        labels: (Z, Y, X) integer labels, one id per object across planes (0 = background).
        voxel_size: (z, y, x), any unit.
        mask: bool (Z, Y, X) annotated voxels, or ``None`` (the XY planes with labels).
        channel_axis: True when ``image`` is (Z, C, Y, X).
        name: used in messages.
    """

    image: np.ndarray
    labels: np.ndarray
    voxel_size: tuple[float, float, float]
    mask: np.ndarray | None = None
    channel_axis: bool = False
    name: str = "volume"

    @property
    def axes(self) -> str:
        """The image's axes: ``"ZCYX"`` with a channel axis, else ``"ZYX"``."""
        return "ZCYX" if self.channel_axis else "ZYX"


def is_volume(axes: str) -> bool:
    """Whether an image with ``axes`` is trained as one volume (a Z axis, no T axis, no RGB
    samples) rather than as a series of 2D planes."""
    axes = axes.upper()
    return "Z" in axes and "T" not in axes and "S" not in axes


def _nearest_z(a: np.ndarray, n_out: int) -> np.ndarray:
    """Nearest-neighbour resampling of axis 0 to ``n_out`` samples, first and last aligned."""
    n_in = a.shape[0]
    if n_in == n_out:
        return a
    index = np.rint(np.linspace(0.0, n_in - 1.0, n_out)).astype(int)
    return a[index]


def _default_mask(labels: np.ndarray) -> np.ndarray:
    annotated = labels.reshape(labels.shape[0], -1).any(axis=1)
    if not annotated.any():
        raise UserError("The 3D labels are all zero: there is nothing to learn from.")
    return np.broadcast_to(annotated[:, None, None], labels.shape)


def _chosen(mask: np.ndarray, limit: int) -> np.ndarray:
    """Indices (along axis 0) of at most ``limit`` annotated planes, evenly spaced."""
    annotated = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if len(annotated) <= limit:
        return annotated
    return annotated[np.rint(np.linspace(0, len(annotated) - 1, limit)).astype(int)]


def _views(item: AnnotatedVolume) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, image, labels, mask) per orientation; the plane axis first, channels second."""
    image = item.image if item.channel_axis else item.image[:, None]
    labels = np.asarray(item.labels)
    mask = _default_mask(labels) if item.mask is None else np.asarray(item.mask, bool)
    n_z = labels.shape[0]
    anisotropy = float(item.voxel_size[0]) / float(item.voxel_size[1])
    n_iso = max(1, round((n_z - 1) * anisotropy) + 1)
    iso_image = resample_axis(image, 0, n_iso)
    iso_labels, iso_mask = _nearest_z(labels, n_iso), _nearest_z(mask, n_iso)
    xz = (2, 1, 0, 3)  # (Zi, C, Y, X) -> (Y, C, Zi, X)
    yz = (3, 1, 0, 2)  # -> (X, C, Zi, Y)
    return [
        ("XY", image, labels, mask),
        ("XZ", iso_image.transpose(xz), iso_labels.transpose(1, 0, 2),
         iso_mask.transpose(1, 0, 2)),
        ("YZ", iso_image.transpose(yz), iso_labels.transpose(2, 0, 1),
         iso_mask.transpose(2, 0, 1)),
    ]  # fmt: skip


def volume_pairs(
    item: AnnotatedVolume,
    in_channels: int,
    normalize: NormalizeConfig,
    task: str = "instances",
    n_classes: int = 3,
    target_config: TargetConfig | None = None,
    max_planes: int = MAX_PLANES_PER_VIEW,
) -> list[TrainingPair]:
    """2D training pairs cut from an annotated volume in the XY, XZ and YZ orientations.

    Args:
        item: the volume, its 3D labels, voxel size and optional mask.
        in_channels, normalize, task, n_classes, target_config: as for
            :func:`~.data.make_pairs`.
        max_planes: at most this many annotated planes per orientation (evenly spaced).

    Returns:
        Pairs named like ``"stack.tif, XZ, plane 12"`` (the plane's index in its
        orientation): float32 (C, h, w) images, (h, w) labels and targets, with only the
        annotated pixels in the loss.

    Raises:
        InputMismatchError: labels or mask that do not fit the image.
        UserError: no annotated voxel, or all-zero labels without a mask.
    """
    shape = item.image.shape[:1] + item.image.shape[-2:]
    if np.shape(item.labels) != shape or (item.mask is not None and np.shape(item.mask) != shape):
        raise InputMismatchError(
            f"The labels (and mask) of {item.name} must have shape {shape} (Z, Y, X)."
        )
    pairs: list[TrainingPair] = []
    for view, image, labels, mask in _views(item):
        chosen = _chosen(mask, max_planes)
        if not len(chosen):
            continue
        made = make_pairs(
            np.ascontiguousarray(image[chosen]), labels[chosen], "ZCYX", in_channels, normalize,
            task=task, n_classes=n_classes, mask=np.ascontiguousarray(mask[chosen]),
            target_config=target_config, name=f"{item.name}, {view}",
        )  # fmt: skip
        pairs += [  # named by the plane's index in the volume, not among the chosen ones
            replace(pair, name=f"{item.name}, {view}, plane {int(k) + 1}")
            for pair, k in zip(made, chosen, strict=True)
        ]
    if not pairs:
        raise UserError(f"{item.name} has no annotated voxel.")
    logger.info("%s: %d training planes (XY, XZ, YZ)", item.name, len(pairs))
    return pairs


def annotated_training_pairs(
    items: Iterable[AnnotatedImage | AnnotatedVolume],
    base: LoadedModel | None,
    model_config: ModelConfig | None = None,
    target_config: TargetConfig | None = None,
) -> list[TrainingPair]:
    """Training pairs of 2D images (their planes, :func:`~.data.make_pairs`) and volumes (cut in
    three orientations, :func:`volume_pairs`) together, made the way the model to train expects
    them; ``items`` may be a generator (each item is made into pairs before the next is taken).

    Raises:
        UserError: see :func:`~.data.make_pairs` and :func:`volume_pairs`; also when, for
            instances, no annotated pixel belongs to an object.
    """
    in_channels, task, n_classes, normalize = model_expectations(base, model_config)
    pairs: list[TrainingPair] = []
    for item in items:
        if isinstance(item, AnnotatedVolume):
            pairs += volume_pairs(item, in_channels, normalize, task, n_classes, target_config)
            continue
        pairs += make_pairs(
            item.image, item.labels, item.axes, in_channels, normalize, task=task,
            n_classes=n_classes, mask=item.mask, target_config=target_config, name=item.name,
        )  # fmt: skip
    if task == "instances" and not any(p.labels[p.targets.mask].any() for p in pairs):
        raise UserError(
            "None of the annotated pixels belongs to an object (the labels are 0 wherever the "
            "annotated regions are): paint some objects."
        )
    return pairs


def record_voxel_size(model: LoadedModel, voxel_size: Sequence[float]) -> LoadedModel:
    """Write the training data's voxel size into a saved model file (``"pixel_size_um"``:
    [z, y, x] in µm) and return the model as read back."""
    from ..network.registry import load_model
    from ..network.weights import save_model

    if model.path is None:
        raise ValueError("the model has no file to record the voxel size in")
    metadata = dict(model.metadata)
    metadata[PIXEL_SIZE_KEY] = [float(v) for v in voxel_size]
    save_model(model.path, model.model, metadata)
    return load_model(model.path)
