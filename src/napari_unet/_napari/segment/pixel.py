"""The Segment widget's pixel-size field: the calibration of an image that has none.

An image whose file gave no pixel size opens with scale 1 and no ``"pixel_size"`` in its
metadata. A value typed in the field is written where the reader writes a file's calibration
(see :func:`._layer_info.layer_data`): ``layer.metadata["pixel_size"]`` as ``(y, x)`` in µm,
the Y and X entries of ``layer.scale`` and ``"um"`` as their units. The labels that Segment makes
afterwards take the same geometry.
"""

from __future__ import annotations

from typing import Any

from ..files.layer_info import physical_sizes


def pixel_size_of(layer: Any, axes: str) -> float | None:
    """The layer's pixel size in µm (the X size when Y and X differ), ``None`` when unknown.

    Args:
        layer: an Image layer.
        axes: the axes of its data (``"S"`` for RGB samples has no scale entry).
    """
    size, _ = physical_sizes(axes, tuple(layer.scale), layer.metadata)
    return None if size is None else float(size[1])


def set_pixel_size(layer: Any, value: float) -> None:
    """Give ``layer`` a square pixel size of ``value`` µm (metadata, scale and units of Y, X)."""
    metadata = dict(layer.metadata) if layer.metadata else {}
    metadata["pixel_size"] = (float(value), float(value))
    layer.metadata = metadata
    scale = list(layer.scale)
    scale[-2:] = [float(value), float(value)]
    layer.scale = scale
    units = [str(unit) for unit in layer.units]
    units[-2:] = ["um", "um"]
    layer.units = units
