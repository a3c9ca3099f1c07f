"""From viewer layers to training inputs, without Qt.

Reads (image layer, labels layer) pairs into :class:`.job.TrainingInput` values: the image, a copy
of the labels taken at that moment (the user may keep painting while training runs), the image's
axes, and the mask of annotated pixels chosen by one of :data:`ANNOTATED_RULES`. Checks what can
be checked at once (shapes, empty labels, empty regions) with messages for the user. Layers are
used through their public attributes (``data``, ``metadata``, ``rgb``, ``multiscale``, ``ndim``,
``scale``, coordinate transforms), so napari layers made without a viewer work.

A Z-stack (an image whose axes have Z and no T, such as a 3D layer without metadata) with 3D
labels is read as one volume (:class:`~napari_unet.core.training.data3d.AnnotatedVolume`), with
its voxel size from the image layer's scale or metadata (a missing Z step: isotropic voxels are
assumed, and a notification says so): training cuts it in XY, XZ and YZ planes as the CLI does.
The rules then read in 3D: a reviewed object counts in every plane it spans, with a 3D margin;
a "plane" with labels is a Z slice; a shape drawn on a Z slice (a Shapes layer with the labels'
dimensions) covers that slice only, one of a 2D Shapes layer covers every slice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_unet.core.errors import InputMismatchError, UserError
from napari_unet.core.training.data3d import AnnotatedVolume, is_volume

from ..files.layer_info import layer_layout, physical_sizes
from .job import TrainingInput

logger = logging.getLogger(__name__)

REVIEWED = "objects you reviewed"
WHOLE = "whole layer"
PLANES = "planes that have labels"
SHAPES = "regions in a Shapes layer"
#: What counts as annotated, as offered in the widget (the first is the default).
ANNOTATED_RULES = (REVIEWED, WHOLE, SHAPES, PLANES)
#: Below this many annotated objects, the annotated line advises reviewing more. On a real nuclei
#: image (``benchmarks/real_nuclei.py``) the review queue's first 10 items (10 nuclei, 3% of the
#: image) made the model worse on the rest of the image, 0.84 to 0.79 AP50; 20 items made it
#: better (0.87-0.93). Not shown for volumes, where it was not measured.
FEW_OBJECTS = 20

_FILLED = ("rectangle", "ellipse", "polygon")


def layer_array(layer: Any) -> Any:
    """The full-resolution data of a layer (level 0 of a multiscale layer), not copied."""
    data = layer.data
    return data[0] if getattr(layer, "multiscale", False) else data


def matching_labels(image_layer: Any, candidates: Sequence[Any]) -> Any | None:
    """The last of ``candidates`` (labels layers) with the shape labels of ``image_layer``
    need, or ``None``."""
    try:
        expected = layer_layout(image_layer).label_shape
    except UserError:
        return None
    fitting = [c for c in candidates if tuple(layer_array(c).shape) == expected]
    return fitting[-1] if fitting else None


def shown_plane_number(image_layer: Any, world_point: Sequence[float]) -> int | None:
    """Number of the 2D plane of ``image_layer`` shown at ``world_point`` (the viewer's
    ``dims.point``), in the order planes are trained on; ``None`` when out of the data."""
    layout = layer_layout(image_layer)
    if not layout.leading_axes:
        return 0
    index = layout.leading_at(image_layer.world_to_data(world_point))
    return None if index is None else layout.plane_number(index)


def layer_anisotropy(
    image_layer: Any, voxel_size: Sequence[float] | None = None
) -> tuple[float, bool] | None:
    """``(Z step over XY pixel, whether the Z step is known)`` of an image layer trained as a
    volume (:func:`~napari_unet.core.training.data3d.is_volume`), or ``None`` for one trained as
    2D planes. ``voxel_size`` (z, y, x), when given, wins over the layer's scale and metadata;
    without a known Z step (or XY pixel) the voxels are taken as isotropic."""
    layout = layer_layout(image_layer)
    if not is_volume(layout.axes):
        return None
    if voxel_size is not None:
        return float(voxel_size[0]) / float(voxel_size[1]), True
    pixel_size, z_spacing = physical_sizes(layout.axes, image_layer.scale, image_layer.metadata)
    if pixel_size is None or z_spacing is None:
        return 1.0, False
    return float(z_spacing) / float(pixel_size[0]), True


def _volume_voxel_size(image_layer: Any, voxel_size: Sequence[float] | None) -> tuple:
    """The (z, y, x) voxel size of a volume's image layer; notifies when isotropy is assumed."""
    from napari.utils.notifications import show_info

    from napari_unet.core.io.voxels import resolve_voxel_size

    layout = layer_layout(image_layer)
    pixel_size, z_spacing = physical_sizes(layout.axes, image_layer.scale, image_layer.metadata)
    voxel = resolve_voxel_size(pixel_size, z_spacing, voxel_size, f"'{image_layer.name}'")
    if voxel.note:
        where = "set the image layer's scale (Z, Y, X)"
        show_info(voxel.note.replace("give --voxel-size Z,Y,X", where).replace(
            "Give --voxel-size Z,Y,X", where[0].upper() + where[1:]))  # fmt: skip
    return voxel.size


def _vertices_in(labels_layer: Any, shapes_layer: Any, vertices: np.ndarray) -> np.ndarray:
    """Shape vertices (N, shapes ndim) in the labels layer's data coordinates (N, labels ndim)."""
    return np.array(
        [
            labels_layer.world_to_data(shapes_layer.data_to_world(v))
            for v in np.asarray(vertices, dtype=float)
        ]
    )


def _rasterise(kind: str, yx: np.ndarray, plane_shape: tuple[int, int]) -> np.ndarray:
    from napari.layers import Shapes

    return Shapes([yx], shape_type=[kind]).to_masks(plane_shape)[0].astype(bool)


def shapes_mask(shapes_layer: Any, labels_layer: Any) -> np.ndarray:
    """The pixels of ``labels_layer`` inside the rectangles, ellipses and polygons of
    ``shapes_layer`` (lines and paths are ignored).

    Coordinates go through world space, so layers with different scales or translations line
    up as displayed. In a stack, a shape covers the plane it was drawn on; shapes of a layer with
    fewer dimensions than the labels (e.g. drawn in 2D over a stack) cover every plane.

    Returns:
        bool array, the labels' shape.

    Raises:
        UserError: a shape that is not drawn in one YX plane.
    """
    shape = tuple(layer_array(labels_layer).shape)
    mask = np.zeros(shape, dtype=bool)
    broadcast = max(len(shape) - shapes_layer.ndim, 0)
    for k, (vertices, kind) in enumerate(
        zip(shapes_layer.data, shapes_layer.shape_type, strict=True)
    ):
        if kind not in _FILLED:
            continue
        coords = _vertices_in(labels_layer, shapes_layer, vertices)
        planes = np.round(coords[:, broadcast:-2]).astype(int)
        if planes.size and np.ptp(planes, axis=0).any():
            raise UserError(
                f"Shape {k + 1} of {shapes_layer.name!r} is not drawn in one YX "
                "plane; draw annotated regions in the YX view."
            )
        plane = tuple(int(p) for p in planes[0]) if planes.size else ()
        if any(not 0 <= p < n for p, n in zip(plane, shape[broadcast:-2], strict=True)):
            continue  # drawn on a plane the labels do not have
        region = _rasterise(kind, coords[:, -2:], shape[-2:])
        mask[(slice(None),) * broadcast + plane] |= region
    return mask


class NotAnnotated(UserError):
    """A pair with nothing to learn from under the chosen rule (the message says why)."""


def _unreviewed(labels_layer: Any, review: Any) -> NotAnnotated:
    name = labels_layer.name
    if review.untracked:
        return NotAnnotated(
            f"{name!r} was changed in a way that cannot be followed (not with napari's painting "
            "tools), so what you corrected is not known: choose 'whole layer' if every object "
            "is right, or mark the reviewed regions with a Shapes layer."
        )
    if review.accepted:
        return NotAnnotated(
            f"You accepted {review.accepted} object{'s' if review.accepted != 1 else ''} of "
            f"{name!r} but corrected none: the model already segments them this way, so training "
            "on them alone cannot improve it. Correct a few objects first."
        )
    return NotAnnotated(
        f"No object of {name!r} was corrected or accepted: there is nothing to learn from. "
        "Correct some objects with the brush, eraser or fill (or delete wrong ones) first; "
        "choose 'whole layer' if every object of the layer is right."
    )


def _rule_mask(
    labels_layer: Any,
    labels: np.ndarray,
    rule: str,
    shapes_layer: Any | None,
    anisotropy: float | None = None,
) -> np.ndarray | None:
    """The annotated mask of a pair under ``rule`` (``None``: the core's default rule);
    ``anisotropy`` (Z step over XY pixel) for the 3D labels of a volume, else ``None``.

    Raises:
        NotAnnotated: nothing to learn from (nothing reviewed, only accepted objects, unedited
            model output, or shapes that cover nothing).
    """
    from ..review.edits import review_mask
    from ..segment.logic import written_by_us

    if rule == SHAPES:
        mask = shapes_mask(shapes_layer, labels_layer)
        if not mask.any():
            raise NotAnnotated(f"No region covers {labels_layer.name!r}.")
        return mask
    if rule == REVIEWED:
        review = review_mask(labels_layer, labels, anisotropy=anisotropy)
        extra = shapes_mask(shapes_layer, labels_layer) if shapes_layer is not None else None
        if not review.corrected and (extra is None or not extra.any()):
            raise _unreviewed(labels_layer, review)
        return review.mask if extra is None else review.mask | extra
    if not labels.any():
        raise UserError(
            f"The labels {labels_layer.name!r} are all zero: there is nothing to "
            "learn from. Paint some objects, or mark the reviewed regions with a "
            "Shapes layer."
        )
    if written_by_us(labels_layer.metadata, labels):
        raise NotAnnotated(
            f"{labels_layer.name!r} is a model's unedited output: training on it teaches the "
            "model its own mistakes and cannot improve it. Correct some objects first."
        )
    if rule == WHOLE and labels.ndim > 2:
        return np.ones(labels.shape, dtype=bool)
    return None


def _pair_input(
    image_layer: Any,
    labels_layer: Any,
    rule: str,
    shapes_layer: Any | None,
    second: Any | None = None,
    voxel_size: Sequence[float] | None = None,
) -> TrainingInput | AnnotatedVolume:
    """One pair read and checked; with ``second``, the image and its second channel stacked
    as channels (:func:`..files.channels.stack_channels`). A Z-stack is read as a volume with
    the voxel size ``voxel_size`` (z, y, x), or else the image layer's.

    Raises:
        NotAnnotated: see :func:`_rule_mask`.
    """
    layout = layer_layout(image_layer)
    axes, expected = layout.axes, layout.label_shape
    found = tuple(layer_array(labels_layer).shape)
    if found != expected:
        raise InputMismatchError(
            f"The labels {labels_layer.name!r} have shape {found} but the image "
            f"{image_layer.name!r} needs {expected} (its shape without channels)."
        )
    labels = np.array(layer_array(labels_layer), copy=True)
    name = f"{image_layer.name!r} with {labels_layer.name!r}"
    volume = layer_anisotropy(image_layer, voxel_size)
    anisotropy = volume[0] if volume is not None else None
    mask = _rule_mask(labels_layer, labels, rule, shapes_layer, anisotropy)
    if second is None:
        image = np.asarray(layer_array(image_layer))
    else:
        from ..files.channels import channels_name, stack_channels

        image, axes = stack_channels([image_layer, second])
        name = f"{channels_name([image_layer, second])!r} with {labels_layer.name!r}"
    if volume is None:
        return TrainingInput(image=image, labels=labels, axes=axes, mask=mask, name=name)
    order = [axes.index(a) for a in "ZCYX" if a in axes]  # the volume's (Z, C?, Y, X)
    return AnnotatedVolume(
        np.transpose(image, order), labels, _volume_voxel_size(image_layer, voxel_size), mask,
        channel_axis="C" in axes, name=name,
    )  # fmt: skip


def describe_annotation(
    pairs: Sequence[tuple[Any, Any]],
    rule: str,
    shapes_layer: Any | None = None,
    voxel_size: Sequence[float] | None = None,
) -> str:
    """One line for the user: how much of the listed labels counts as annotated (objects in 3D
    and the share of the volume for Z-stacks)."""
    from napari_unet.core.training.annotated import reviewed_objects

    if rule == SHAPES and shapes_layer is None:
        return "annotated: choose the Shapes layer of the reviewed regions"
    objects = pixels = total = 0
    kinds, isotropy_assumed = set(), False
    for image_layer, labels_layer in pairs:
        if image_layer is None or labels_layer is None:
            continue
        labels = np.asarray(layer_array(labels_layer))
        if labels.size > 50_000_000:
            return "annotated: counted when training starts (large layer)"
        try:
            volume = layer_anisotropy(image_layer, voxel_size)
        except UserError:
            volume = None
        kinds.add(volume is not None)
        isotropy_assumed |= volume is not None and not volume[1]
        try:
            mask = _rule_mask(
                labels_layer, labels, rule, shapes_layer, volume[0] if volume else None
            )
        except UserError:
            mask = np.zeros(labels.shape, bool)
        if mask is None:
            mask = np.ones(labels.shape, bool)
            if labels.ndim > 2 and rule == PLANES:
                planes = labels.reshape(-1, *labels.shape[-2:])
                mask = np.broadcast_to(
                    planes.reshape(len(planes), -1).any(1)[:, None, None], planes.shape
                ).reshape(labels.shape)
        objects += reviewed_objects(labels, mask)
        pixels += int(np.count_nonzero(mask))
        total += labels.size
    if not pixels:
        return "annotated: nothing yet (correct some objects, or choose another rule)"
    where = "the volume" if kinds == {True} else "the image" if kinds == {False} else "the data"
    text = (
        f"annotated: {objects} object{'s' if objects != 1 else ''}"
        f"{' (3D)' if True in kinds else ''}, {100 * pixels / total:.1f}% of {where}"
    )
    if 0 < objects < FEW_OBJECTS and kinds == {False}:  # measured in 2D only
        text += f"; under {FEW_OBJECTS} objects fine-tuning may not help yet: review a few dozen"
    if isotropy_assumed:
        text += "; Z step unknown: isotropic voxels assumed (set the image layer's scale)"
    return text


def collect_inputs(
    pairs: Sequence[tuple[Any, Any]],
    rule: str,
    shapes_layer: Any | None = None,
    seconds: Sequence[Any] | None = None,
    voxel_size: Sequence[float] | None = None,
) -> tuple[list[TrainingInput | AnnotatedVolume], list[str]]:
    """Read (image layer, labels layer) pairs as training inputs.

    Args:
        pairs: the pairs; a repeated pair (with the same second channel) is read once.
        rule: one of :data:`ANNOTATED_RULES`: the objects the user reviewed, with a margin, plus
            the regions of ``shapes_layer`` when given (:data:`REVIEWED`, see :mod:`._edits`);
            every pixel of the labels is annotated (:data:`WHOLE`), the planes with at least
            one label are (:data:`PLANES`, the core's rule: a 2D image is annotated
            everywhere), or the pixels inside the shapes of ``shapes_layer`` are
            (:data:`SHAPES`).
        shapes_layer: a napari Shapes layer (for :data:`SHAPES`).
        seconds: for each pair, the Image layer of the image's second channel, or ``None``
            (all ``None`` when not given): the two are stacked as the channels of one input.
        voxel_size: (z, y, x) of the Z-stacks, instead of their layers' scale or metadata.

    Returns:
        ``(inputs, skipped)``: the inputs (labels copied; a Z-stack with 3D labels as an
        :class:`~napari_unet.core.training.data3d.AnnotatedVolume`), and the names of pairs
        with nothing to learn from under the rule (not used).

    Raises:
        UserError: no pair, labels that do not fit their image, all-zero labels, no Shapes layer
            or shapes that cover no labels, or no object in any annotated region.
        NotAnnotated: no pair has anything to learn from (nothing corrected, only accepted
            objects, a model's unedited output).
    """
    if rule not in ANNOTATED_RULES:
        raise UserError(f"Unknown annotation rule {rule!r}.")
    unique = []
    seconds = list(seconds) if seconds is not None else [None] * len(pairs)
    if len(seconds) != len(pairs):
        raise ValueError(f"{len(seconds)} second channels for {len(pairs)} pairs")
    for (image_layer, labels_layer), second in zip(pairs, seconds, strict=True):
        if image_layer is None or labels_layer is None:
            raise UserError("Choose an image layer and a labels layer for every pair.")
        if not any(image_layer is a and labels_layer is b and second is c for a, b, c in unique):
            unique.append((image_layer, labels_layer, second))
    if not unique:
        raise UserError("Add at least one pair of an image layer and its labels layer.")
    if rule == SHAPES and shapes_layer is None:
        raise UserError("Choose the Shapes layer whose regions are annotated (or another rule).")
    inputs, skipped, reasons = [], [], []
    for image_layer, labels_layer, second in unique:
        try:
            inputs.append(
                _pair_input(image_layer, labels_layer, rule, shapes_layer, second, voxel_size)
            )
        except NotAnnotated as exc:
            skipped.append(f"{image_layer.name!r} with {labels_layer.name!r}")
            reasons.append(str(exc))
    if not inputs and rule == SHAPES:
        raise UserError(
            f"No rectangle, ellipse or polygon of {shapes_layer.name!r} covers the "
            "labels: draw the reviewed regions over them."
        )
    if not inputs:
        raise NotAnnotated(" ".join(dict.fromkeys(reasons)) + " No model was trained.")
    if not any(item.labels[item.mask].any() if item.mask is not None else True for item in inputs):
        raise UserError(
            "None of the annotated regions holds an object (the labels are 0 "
            "there): paint some objects."
        )
    return inputs, skipped
