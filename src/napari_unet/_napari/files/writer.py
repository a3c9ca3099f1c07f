"""The napari writer for Labels layers (File > Save Layers): a Fiji-compatible TIFF.

Labels are written with :func:`napari_unet.core.io.writing.write_labels`: uint16 ImageJ hyperstack
when
the ids fit, else uint32 OME-TIFF; zlib-compressed; pixel size and Z spacing from the layer; the
file is written under a temporary name and renamed when complete, so a failure leaves nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet._napari.files.layer_info import layer_axes, physical_sizes
from napari_unet._napari.files.reader import TIFF_SUFFIXES
from napari_unet._napari.review.edits import save_review
from napari_unet.core.errors import UserError
from napari_unet.core.io import writing

logger = logging.getLogger(__name__)


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer to ``path`` as TIFF (``.tif`` is added when missing).

    Args:
        path: destination file.
        data: the layer's data, integer (*leading, Y, X), e.g. (Y, X) or (Z, Y, X); for a
            multiscale layer, the list of levels (the first, full resolution, is written).
        meta: the layer's attributes as napari gives them: ``"scale"`` (one entry per axis) and
            ``"metadata"`` (``"axes"``, ``"pixel_size"``, ``"z_spacing"`` when known).

    Returns:
        ``[path written]``.

    Raises:
        UserError: the labels cannot be written (bad values, missing folder, disk error), with a
            one-line message.
    """
    target = with_tiff_suffix(path)
    if isinstance(data, list | tuple):
        data = data[0]
    labels = np.asarray(data)
    metadata = meta.get("metadata") or {}
    if labels.ndim < 2:
        raise UserError(
            f"Cannot save labels of shape {labels.shape} as TIFF: a label image has at least "
            "2 dimensions (Y, X)."
        )
    axes = layer_axes(labels.ndim, metadata, allowed="TZCYX") if labels.ndim <= 5 else None
    if axes is None:
        raise UserError(f"Cannot save labels with {labels.ndim} dimensions as TIFF (at most 5).")
    pixel_size, z_spacing = physical_sizes(axes, meta.get("scale"), metadata)
    try:
        written = writing.write_labels(target, labels, axes, pixel_size, z_spacing)
    except OSError as exc:
        raise UserError(f"Cannot save labels to '{target}': {exc.strerror or exc}.") from exc
    try:  # which objects were reviewed, for Fine-tune (see _edits)
        save_review(written, metadata, labels)
    except OSError as exc:
        logger.warning("cannot save the review state of %s: %s", written, exc)
    return [str(written)]


def with_tiff_suffix(path: str | Path) -> Path:
    """``path`` with ``.tif`` appended unless it already ends with ``.tif`` or ``.tiff``."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return path
    return path.with_name(path.name + ".tif")
