"""Labels layers for the Segment widget: create them, write results into them, remember what was
written.

Every Labels layer that Segment writes gets ``metadata["napari_unet"]`` with a fingerprint of the
data it holds after the write (see :func:`~._segment_logic.fingerprint`), the model and the image.
A layer whose data no longer matches its fingerprint was edited since (or was never written by
Segment), and is not overwritten without asking. Layers are found by ``unique_id``: the widget
may hold proxies of them, whose identity changes from one access to the next.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_warning

from napari_unet.core.axes import label_dims

from .logic import (
    METADATA_KEY,
    fingerprint,
    labels_geometry,
    labels_name,
    merge_plane,
)

if TYPE_CHECKING:
    import napari

    from .job import Kept, PlaneLabels
    from .models import ModelChoice


@dataclass(frozen=True)
class Geometry:
    """Where labels sit in the world: the image's scale, translate and units (channels dropped),
    and the metadata that the writer reads (axes, pixel size)."""

    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple[Any, ...] | None
    metadata: dict[str, Any]


@dataclass
class RunPlan:
    """Everything a segmentation run needs, fixed when it starts.

    Attributes:
        image_id, image_name: the image layer.
        data, data_axes: what the network sees (the whole image or one plane) and its axes.
        label_shape: the Labels layer's shape (the whole stack's).
        region: where a single plane's labels go in that layer, ``None`` for the whole layer.
        geometry: scale, translate, units and metadata of a new Labels layer.
        target_id: the layer to replace (``None``: a new layer).
        target_fingerprint: that layer's fingerprint when the run started.
        key: the key of the kept probabilities.
        choice: the model.
        live_id: the new layer being filled plane by plane, once it exists.
        per_frame: number a time-lapse's instance ids afresh in each time point (else once
            across the stack).
    """

    image_id: str
    image_name: str
    data: Any
    data_axes: str
    label_shape: tuple[int, ...]
    region: tuple[int | slice, ...] | None
    geometry: Geometry
    target_id: str | None
    target_fingerprint: str | None
    key: Hashable
    choice: ModelChoice
    live_id: str | None = None
    per_frame: bool = True


def geometry_of(image: Any, axes: str, label_axes: str) -> Geometry:
    """The :class:`Geometry` of labels made from the image layer ``image`` with data ``axes``."""
    scale, translate = labels_geometry(axes, image.scale, image.translate)
    units = getattr(image, "units", None)
    if units is not None:
        units = tuple(units[i] for i in label_dims(axes))
    source = image.metadata if isinstance(image.metadata, Mapping) else {}
    metadata = {"axes": label_axes}
    for key in ("pixel_size", "z_spacing"):
        if key in source:
            metadata[key] = source[key]
    return Geometry(scale, translate, units, metadata)


def find_layer(viewer: napari.viewer.Viewer, unique_id: Any) -> Any:
    """The layer of the viewer with this ``unique_id``, or ``None``."""
    if unique_id is None:
        return None
    return next((layer for layer in viewer.layers if layer.unique_id == unique_id), None)


def layer_names(viewer: napari.viewer.Viewer) -> list[str]:
    """The names of the viewer's layers."""
    return [layer.name for layer in viewer.layers]


def add_labels(
    viewer: napari.viewer.Viewer, data: np.ndarray, name: str, geometry: Geometry
) -> Any:
    """Add a Labels layer with the image's geometry; returns the layer."""
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": geometry.scale,
        "translate": geometry.translate,
        "metadata": dict(geometry.metadata),
    }
    if geometry.units is not None:
        kwargs["units"] = geometry.units
    axes = geometry.metadata.get("axes")
    if isinstance(axes, str) and len(axes) == np.ndim(data):
        kwargs["axis_labels"] = tuple(axes)  # the stack sliders say "T", "Z"
    return viewer.add_labels(data, **kwargs)


def mark_written(layer: Any, model: str, image: str) -> None:
    """Record in the layer's metadata that Segment wrote its current data."""
    metadata = dict(layer.metadata)
    metadata[METADATA_KEY] = {
        "fingerprint": fingerprint(layer.data),
        "model": model,
        "image": image,
    }
    layer.metadata = metadata


def unchanged(layer: Any, start: str | None) -> bool:
    """Whether the layer still holds the data it had when its fingerprint ``start`` was taken."""
    return start is None or fingerprint(layer.data) == start


def write_labels(
    layer: Any, labels: np.ndarray, region: tuple[int | slice, ...] | None, instances: bool
) -> None:
    """Replace the layer's labels: all of them, or one plane (``region``) of a stack.

    A plane's instance ids are offset past the ids of the other planes (see
    :func:`~._segment_logic.merge_plane`). The layer's data is replaced by a new array, so that
    napari redraws it.
    """
    if region is None:
        layer.data = labels
        return
    layer.data = merge_plane(np.array(layer.data, copy=True), region, labels, instances)


def number_frames(
    layer: Any, axes: Any, region: tuple[int | slice, ...] | None, per_frame: bool
) -> None:
    """Renumber a time-lapse's instance ids 1..N in each time point
    (:func:`~napari_unet.core.labels.ids_per_time_point`): all of the layer's time points, or,
    when ``region`` (a plane's place) is given, only the one it lies in. Nothing happens without
    ``per_frame``, without a T axis in ``axes`` (the layer's axes), or for a lazy layer."""
    if not per_frame or not isinstance(axes, str) or "T" not in axes:
        return
    data = layer.data
    if not isinstance(data, np.ndarray) or data.ndim != len(axes):
        return
    from napari_unet.core.labels import ids_per_time_point

    t = axes.index("T")
    if region is None:
        layer.data = ids_per_time_point(data, axes)
        return
    where = (slice(None),) * t + (slice(int(region[t]), int(region[t]) + 1),)
    frame = ids_per_time_point(data[where], axes)
    out = data.astype(np.promote_types(data.dtype, frame.dtype), copy=True)
    out[where] = frame
    layer.data = out


def placed(labels: np.ndarray, shape: tuple[int, ...], region: Any) -> np.ndarray:
    """``labels`` as the data of a new layer of ``shape``: itself, or in its plane of a stack of
    zeros when ``region`` is given."""
    if region is None:
        return labels
    data = np.zeros(shape, dtype=labels.dtype)
    data[region] = labels
    return data


def show_plane(viewer: napari.viewer.Viewer, plan: RunPlan, payload: PlaneLabels) -> None:
    """Show one finished plane of a whole-stack run in its new layer (created on the first
    plane, not editable until the run ends)."""
    leading = plan.label_shape[:-2]
    region = tuple(int(i) for i in np.unravel_index(payload.index, leading))
    region += (slice(None), slice(None))
    layer = find_layer(viewer, plan.live_id)
    if layer is None:
        name = labels_name(plan.image_name, plan.choice.name, layer_names(viewer))
        data = np.zeros(plan.label_shape, dtype=payload.labels.dtype)
        layer = add_labels(viewer, data, name, plan.geometry)
        layer.editable = False
        plan.live_id = layer.unique_id
    data = layer.data
    dtype = np.promote_types(data.dtype, payload.labels.dtype)
    if dtype != data.dtype:
        data = data.astype(dtype)
        data[region] = payload.labels
        layer.data = data
    else:
        data[region] = payload.labels
        layer.refresh()


def remove_live(viewer: napari.viewer.Viewer, plan: RunPlan | None) -> None:
    """Remove the layer a failed or cancelled run was filling (if any)."""
    layer = find_layer(viewer, plan.live_id) if plan is not None else None
    if layer is not None:
        viewer.layers.remove(layer)
        plan.live_id = None


def write_result(viewer: napari.viewer.Viewer, plan: RunPlan, labels: np.ndarray) -> Any:
    """Put a run's labels where the plan says; returns the layer written.

    The layer to replace gets them unless it was edited during the run: then (and when it is
    gone) they go to a new layer.
    """
    layer = find_layer(viewer, plan.live_id or plan.target_id)
    if layer is not None and not unchanged(layer, plan.target_fingerprint):
        show_warning(f"'{layer.name}' was edited during the run: the result goes to a new layer.")
        layer = None
    if layer is None:
        name = labels_name(plan.image_name, plan.choice.name, layer_names(viewer))
        data = placed(labels, plan.label_shape, plan.region)
        layer = add_labels(viewer, data, name, plan.geometry)
    else:
        write_labels(layer, labels, plan.region, plan.choice.task == "instances")
        layer.editable = True
    if plan.choice.task == "instances":
        number_frames(layer, plan.geometry.metadata.get("axes"), plan.region, plan.per_frame)
    mark_written(layer, plan.choice.name, plan.image_name)
    return layer


def write_rethresholded(
    viewer: napari.viewer.Viewer,
    kept: Kept,
    image: Any,
    geometry: Geometry | None,
    start: str | None,
    labels: np.ndarray,
    per_frame: bool = True,
) -> Any:
    """Put re-thresholded labels into the layer the run wrote (``kept.labels_layer``), or a new
    one when that layer is gone or was edited meanwhile; returns the layer, or ``None`` when
    the image is gone too.

    Args:
        kept: what was kept from the run (its ``labels_layer`` follows a new layer).
        image: the image layer (``None`` when removed).
        geometry: the geometry of a new layer (``None`` when the image is gone).
        start: the fingerprint of the labels layer when re-thresholding started.
        labels: the new labels, (*leading, Y, X) or one plane (Y, X) when ``kept.region``.
        per_frame: number a time-lapse's ids afresh in each time point (:func:`number_frames`).
    """
    layer = find_layer(viewer, kept.labels_layer)
    if layer is not None and not unchanged(layer, start):
        show_warning(f"'{layer.name}' was edited meanwhile: the labels go to a new layer.")
        layer = None
    image_name = image.name if image is not None else ""
    if layer is None:
        if image is None or geometry is None:
            return None
        name = labels_name(image_name, kept.model_name, layer_names(viewer))
        layer = add_labels(viewer, placed(labels, kept.shape, kept.region), name, geometry)
        kept.labels_layer = layer.unique_id
    else:
        write_labels(layer, labels, kept.region, kept.task == "instances")
    if kept.task == "instances":
        axes = geometry.metadata.get("axes") if geometry is not None else None
        number_frames(layer, axes or layer.metadata.get("axes"), kept.region, per_frame)
    mark_written(layer, kept.model_name, image_name)
    return layer
