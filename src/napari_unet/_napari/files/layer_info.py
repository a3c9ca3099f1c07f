"""Axes and pixel size of napari layers, and layer data tuples from images read by core.io.

Layers opened by the reader carry ``layer.metadata`` with ``"axes"`` (axes of the layer's data,
letters from ``"TZCYXS"``), ``"pixel_size"`` ((y, x) µm or None), ``"z_spacing"`` (µm or None)
and ``"source_path"``. Layers without that metadata get axes inferred from their shape.

Layers that napari's own reader opened carry no such metadata: :func:`labels_candidates`,
:func:`as_labels_layer`, :func:`channel_candidate` and :func:`split_channels` help the widgets
offer label TIFFs (opened as Image layers) as labels, and a short first axis as channels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.axes import Layout
from napari_unet.core.errors import InputMismatchError
from napari_unet.core.io.reading import ImageData
from napari_unet.core.io.sizes import positive_number

LayerData = tuple[Any, dict[str, Any], str]

#: A layer or file name that says it holds labels (``labels``, ``mask``, ``seg``...).
LABEL_WORDS = re.compile(
    r"(?:^|[^a-z])(labels?|label(?:l)?ed|masks?|seg|segmentation)(?:[^a-z]|$)", re.IGNORECASE
)

_LEADING = {0: "", 1: "Z", 2: "TZ", 3: "TZC"}


def infer_axes(ndim: int, rgb: bool = False) -> str:
    """Axes for an array with ``ndim`` dimensions and no metadata.

    2D -> ``"YX"``, 3D -> ``"ZYX"``, 4D -> ``"TZYX"``, 5D -> ``"TZCYX"``; with ``rgb`` the last
    dimension is the colour samples (``"...YXS"``).

    Raises:
        InputMismatchError: fewer than 2 (3 for RGB) or more than 5 (6 for RGB) dimensions.
    """
    spatial = ndim - 1 if rgb else ndim
    if spatial - 2 not in _LEADING:
        raise InputMismatchError(f"Cannot tell the axes of an array with {ndim} dimensions.")
    return _LEADING[spatial - 2] + "YX" + ("S" if rgb else "")


def layer_axes(
    ndim: int, metadata: Mapping[str, Any] | None, rgb: bool = False, allowed: str = "TZCYXS"
) -> str:
    """The axes of a layer's data: ``metadata["axes"]`` when it fits ``ndim``, else inferred.

    Args:
        ndim: dimensions of the layer's data (including RGB samples).
        metadata: the layer's ``metadata`` (may be None or lack ``"axes"``).
        rgb: the layer is RGB (its last dimension holds colour samples).
        allowed: letters the caller accepts; metadata axes using others are ignored.

    Raises:
        InputMismatchError: no axes in the metadata fit and :func:`infer_axes` cannot tell.
    """
    axes = (metadata or {}).get("axes")
    if isinstance(axes, str):
        axes = axes.upper()
        valid = (
            len(axes) == ndim
            and len(set(axes)) == ndim
            and all(a in allowed for a in axes)
            and axes.endswith("YXS" if rgb else "YX")
        )
        if valid:
            return axes
    return infer_axes(ndim, rgb)


def layer_layout(layer: Any) -> Layout:
    """The :class:`~napari_unet.core.axes.Layout` of an image layer's full-resolution data
    (level 0 of a multiscale layer), its axes from :func:`layer_axes`.

    Raises:
        InputMismatchError: a layer whose axes cannot be told (the message names the layer).
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(int(n) for n in np.shape(data))
    metadata = getattr(layer, "metadata", None)
    try:
        return Layout(layer_axes(len(shape), metadata, bool(getattr(layer, "rgb", False))), shape)
    except InputMismatchError as exc:
        raise InputMismatchError(f"{layer.name!r}: {exc}") from exc


def _metadata_pixel_size(metadata: Mapping[str, Any]) -> tuple[float, float] | None:
    size = metadata.get("pixel_size")
    if not isinstance(size, Sequence) or len(size) != 2:
        return None
    y, x = positive_number(size[0]), positive_number(size[1])
    return (y, x) if y is not None and x is not None else None


def physical_sizes(
    axes: str, scale: Sequence[float] | None, metadata: Mapping[str, Any] | None
) -> tuple[tuple[float, float] | None, float | None]:
    """(y, x) pixel size and Z spacing in µm of a layer.

    The layer's ``scale`` wins when it is not 1 (the user may have set it; Y and X together, Z on
    its own); otherwise the metadata's ``"pixel_size"`` / ``"z_spacing"`` are used; a scale of 1
    with no metadata means the size is unknown (None).

    Args:
        axes: the axes of the layer's data (``"S"`` has no scale entry).
        scale: the layer's scale, one entry per axis except ``"S"``.
        metadata: the layer's metadata, or None.
    """
    metadata = metadata or {}
    spatial = axes.replace("S", "")  # the layer's dimensions
    values = {}
    if scale is not None and len(scale) == len(spatial):
        values = {a: positive_number(v) for a, v in zip(spatial, scale, strict=True)}
    y, x = values.get("Y"), values.get("X")
    if y is not None and x is not None and (y, x) != (1.0, 1.0):
        pixel_size = (y, x)
    else:
        pixel_size = _metadata_pixel_size(metadata)
    z_spacing = None
    if "Z" in spatial:
        z = values.get("Z")
        z_spacing = z if z is not None and z != 1.0 else positive_number(metadata.get("z_spacing"))
    return pixel_size, z_spacing


def layer_data(image: ImageData, name: str, layer_type: str = "image") -> LayerData:
    """A napari layer data tuple for an image read with
    :func:`napari_unet.core.io.reading.read_image`.

    The data is passed on as read (a memory map stays one). RGB images (axes ending ``"S"``) get
    ``rgb=True``; a channel axis ``"C"`` of an image is split with ``channel_axis`` into one layer
    per channel (napari takes views, not copies). ``scale`` is the pixel size for Y and X, the Z
    spacing for Z (1 when unknown) and 1 for T; ``units`` is ``"um"`` where the file gave a size,
    else ``"pixel"``; ``axis_labels`` are the axes' letters (``"T"``, ``"Z"``, ``"Y"``, ``"X"``),
    which napari shows on the stack sliders. ``metadata`` holds ``"axes"`` (of each layer's
    data after the split), ``"pixel_size"``, ``"z_spacing"`` and ``"source_path"``.

    Args:
        image: what ``read_image`` returned.
        name: the layer name (channels get `` [ch0]``, `` [ch1]``, ... appended).
        layer_type: ``"image"`` or ``"labels"``.
    """
    axes = image.axes
    channel_axis = axes.index("C") if layer_type == "image" and "C" in axes else None
    layer_axes_ = axes.replace("C", "") if channel_axis is not None else axes
    pixel = image.pixel_size or (1.0, 1.0)
    sizes = {"Y": pixel[0], "X": pixel[1], "Z": image.z_spacing or 1.0}
    scale = [float(sizes.get(a, 1.0)) for a in layer_axes_ if a != "S"]
    known = {"Y": image.pixel_size, "X": image.pixel_size, "Z": image.z_spacing}
    units = ["um" if known.get(a) else "pixel" for a in layer_axes_ if a != "S"]
    metadata = {
        "axes": layer_axes_,
        "pixel_size": tuple(image.pixel_size) if image.pixel_size else None,
        "z_spacing": image.z_spacing,
        "source_path": str(image.path) if image.path is not None else None,
    }
    # the stack sliders are labelled with the file's axes ("T", "Z") instead of "-3"
    axis_labels = tuple(a for a in layer_axes_ if a != "S")
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": scale,
        "units": units,
        "metadata": metadata,
        "axis_labels": axis_labels,
    }
    if "S" in axes:
        kwargs["rgb"] = True
    if channel_axis is not None:
        n = image.data.shape[channel_axis]
        kwargs.update(
            channel_axis=channel_axis,
            name=[f"{name} [ch{i}]" for i in range(n)],
            scale=[list(scale) for _ in range(n)],
            units=[list(units) for _ in range(n)],
            axis_labels=[axis_labels for _ in range(n)],
            metadata=[dict(metadata) for _ in range(n)],
        )
    return image.data, kwargs, layer_type


def display_name(path: str | Path) -> str:
    """A layer name from a file name: the name without ``.tif``/``.tiff`` (and ``.ome``)."""
    name = Path(path).name
    for suffix in (".tiff", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.lower().endswith(".ome"):
        name = name[:-4]
    return name or Path(path).name


# --- layers opened by napari's own reader ---------------------------------------------------------

#: Largest first axis that may be channels rather than planes (:func:`channel_candidate`).
MAX_CHANNELS = 4
_SAMPLE_PIXELS = 1 << 18


def looks_like_labels(layer: Any) -> bool:
    """Whether an Image layer probably holds labels: integer values, no colour samples, and a
    label-like name (``labels``, ``mask``, ``seg``...) or mostly background (a quarter or more
    of a sample of its pixels is 0). napari's own reader opens label TIFFs as Image layers."""
    from napari.layers import Image

    if not isinstance(layer, Image) or layer.rgb or layer.multiscale:
        return False
    data = layer.data
    if getattr(data, "dtype", None) is None or data.dtype.kind not in "iu" or data.ndim < 2:
        return False
    if LABEL_WORDS.search(layer.name):
        return True
    step = max(1, int((data.size / _SAMPLE_PIXELS) ** (1 / data.ndim)))
    sample = np.asarray(data[tuple(slice(None, None, step) for _ in range(data.ndim))])
    return sample.size > 0 and float(np.mean(sample == 0)) >= 0.25 and sample.min() >= 0


def labels_candidates(viewer: Any) -> list[Any]:
    """The layers a labels picker offers: the Labels layers, then the Image layers that
    :func:`looks_like_labels` (convert one with :func:`as_labels_layer` before editing it)."""
    from napari.layers import Labels

    labels = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    return labels + [layer for layer in viewer.layers if looks_like_labels(layer)]


def _source_of(layer: Any) -> dict[str, Any]:
    metadata = dict(layer.metadata) if isinstance(layer.metadata, Mapping) else {}
    path = getattr(layer.source, "path", None)
    if path and not metadata.get("source_path"):
        metadata["source_path"] = str(path)  # so that Export still never writes over it
    return metadata


def as_labels_layer(viewer: Any, layer: Any) -> Any:
    """Replace the integer Image layer ``layer`` of ``viewer`` by a Labels layer with the same
    data (copied when read-only, so that it can be painted), name, geometry and metadata, at the
    same place in the layer list; returns the new layer. A Labels layer is returned as it is.

    Raises:
        ValueError: the layer does not hold integer values.
    """
    from napari.layers import Labels

    if isinstance(layer, Labels):
        return layer
    data = layer.data
    if data.dtype.kind not in "iu" or layer.rgb:
        raise ValueError(f"'{layer.name}' holds {data.dtype} values, not integer labels.")
    array = np.asarray(data)
    if not array.flags.writeable:
        array = np.array(array)
    labels = Labels(
        array, name=layer.name, scale=layer.scale, translate=layer.translate,
        units=layer.units, axis_labels=layer.axis_labels, metadata=_source_of(layer),
    )  # fmt: skip
    index = viewer.layers.index(layer)
    viewer.layers.remove(layer)
    viewer.layers.insert(index, labels)
    return labels


def channel_candidate(layer: Any) -> int | None:
    """The number of channels of an Image layer whose first axis is short (2 to
    :data:`MAX_CHANNELS`) and not known to be anything else (no ``"axes"`` in its metadata, as
    napari's own reader leaves it), else ``None``: such an axis is more often channels than Z."""
    from napari.layers import Image

    if not isinstance(layer, Image) or layer.rgb or layer.multiscale or layer.ndim < 3:
        return None
    if isinstance(layer.metadata, Mapping) and layer.metadata.get("axes"):
        return None
    n = int(layer.data.shape[0])
    return n if 2 <= n <= MAX_CHANNELS and not looks_like_labels(layer) else None


def split_channels(viewer: Any, layer: Any) -> list[Any]:
    """Replace the Image layer ``layer`` by one layer per entry of its first axis, named
    ``"<name> [ch0]"``, ``"<name> [ch1]"``... (as the napari-unet reader names channels), with
    the same geometry for the remaining axes; returns the new layers."""
    from napari.layers import Image

    metadata = _source_of(layer)
    rest = infer_axes(layer.ndim - 1)
    metadata["axes"] = rest
    index = viewer.layers.index(layer)
    viewer.layers.remove(layer)
    added = []
    for i in range(int(layer.data.shape[0])):
        channel = Image(
            layer.data[i], name=f"{layer.name} [ch{i}]", scale=layer.scale[1:],
            translate=layer.translate[1:], units=layer.units[1:], axis_labels=tuple(rest),
            metadata=dict(metadata), blending="additive", colormap=_CHANNEL_COLOURS[i],
        )  # fmt: skip
        viewer.layers.insert(index + i, channel)
        added.append(channel)
    return added


_CHANNEL_COLOURS = ("green", "magenta", "cyan", "yellow")
