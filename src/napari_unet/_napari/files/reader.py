"""The napari reader for TIFF files (images, stacks, hyperstacks, OME-TIFF, RGB, channels, labels)
and zarr / OME-Zarr folders.

Files are read with :func:`napari_unet.core.io.reading.read_image` (uncompressed images are
memory-mapped,
not copied into memory; labels are held in memory so that they can be edited). Pixel size becomes
the layer ``scale``; channels become one layer each.

Large images open lazily, as dask arrays that read only the part napari shows
(:func:`napari_unet.core.io.lazy.open_lazy`): every ``*.zarr`` folder (OME-Zarr: the first image,
as a multiscale layer of all its resolution levels when it has several, placed by the scale of its
metadata; or a plain zarr array), and a TIFF whose pixels would take more than
:data:`LAZY_FRACTION` of the available memory, or more than :data:`LAZY_COMPRESSED_BYTES` when the
file is compressed or tiled (it cannot be memory-mapped, so reading it would copy it all into
memory). The Segment widget predicts such layers block by block.

A file opens as a **Labels** layer when its pixels are integers (no channel or RGB axis) and either

- it was written by napari-unet's label writer (TIFF Software tag
  :data:`napari_unet.core.io.writing.LABELS_SOFTWARE`), whatever its name, or
- its file name has a word ``label(s)``, ``labeled``/``labelled``, ``mask(s)``, ``seg`` or
  ``segmentation`` (e.g. ``nuclei_labels.tif``, ``cells-masks.tif``, ``img_seg.tif``; not
  ``masked.tif``).

Everything else opens as an Image layer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_unet._napari.files.layer_info import LABEL_WORDS, LayerData, display_name, layer_data
from napari_unet._napari.review.edits import attach_review, watch_current_viewer
from napari_unet.core.io.lazy import is_zarr_path, open_lazy
from napari_unet.core.io.reading import ImageData, open_tiff, read_image
from napari_unet.core.io.safe_paths import require_regular_file
from napari_unet.core.io.storage import available_memory
from napari_unet.core.io.writing import LABELS_SOFTWARE

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
#: A TIFF opens lazily when its pixels exceed this fraction of the available memory...
LAZY_FRACTION = 0.25
#: ... or, when it cannot be memory-mapped (compressed, tiled), this many bytes.
LAZY_COMPRESSED_BYTES = 1024**3

PathLike = str | os.PathLike


def get_reader(path: PathLike | Sequence[PathLike]) -> Callable[..., list[LayerData]] | None:
    """Return a function that gives the layers of ``path``, or None when it cannot be read.

    The files are read here (memory-mapped when possible), so a file that is not a TIFF, is
    truncated or corrupt gives None rather than an error later. Never raises.

    Args:
        path: one ``.tif``/``.tiff`` file or ``.zarr`` folder, or a list of them.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path or [])
    if not paths or not all(_has_tiff_suffix(p) or _is_zarr(p) for p in paths):
        return None
    try:
        layers = [layer for p in paths for layer in read_layers(p)]
    except Exception as exc:  # the reader contract: a file we cannot read gives None
        logger.warning("napari-unet cannot read %s: %s", paths, exc)
        return None

    def reader(_path: PathLike | Sequence[PathLike]) -> list[LayerData]:
        watch_current_viewer()  # follow edits of the labels layers (see _edits)
        return layers

    return reader


def read_layers(path: PathLike) -> list[LayerData]:
    """The napari layer data tuples of one TIFF file or zarr folder (several when its channels
    are split). Zarr folders and large TIFFs (:func:`opens_lazily`) give dask arrays.

    Raises:
        ImageReadError: the file cannot be read.
    """
    require_regular_file(Path(path))  # a FIFO named x.tif would block any open() forever
    if _is_zarr(path):
        image = open_lazy(path)
        integer = np.dtype(image.data.dtype).kind in "iu"  # napari's Labels hold integers only
        labels = (_zarr_labels(path) and integer) or is_labels(image)
        layer = layer_data(image, _zarr_name(path), "labels" if labels else "image")
        return [multiscale_layer(layer, image.levels)]
    if opens_lazily(path):
        image = open_lazy(path)
        return [layer_data(image, display_name(path), "labels" if is_labels(image) else "image")]
    image = read_image(path)
    layer_type = "labels" if is_labels(image) else "image"
    if layer_type == "labels" and not image.data.flags.writeable:
        # labels are edited with the brush: a read-only memory map would refuse the paint
        image.data = np.array(image.data)
    layer = layer_data(image, display_name(path), layer_type)
    if layer_type == "labels":
        attach_review(layer, path)
    return [layer]


def multiscale_layer(layer: LayerData, levels: Sequence[Any]) -> LayerData:
    """``layer`` as a multiscale layer when its image has several resolution levels.

    Args:
        layer: a layer data tuple whose data is the full-resolution level.
        levels: every level, full resolution first, each with the same axes (dask arrays of
            shrinking Y and X); napari draws the level that fits the zoom, and the ``scale``
            (of level 0, from the OME-Zarr metadata) places them all. One level: ``layer``
            as it is.
    """
    if len(levels) < 2:
        return layer
    _, kwargs, layer_type = layer
    return list(levels), {**kwargs, "multiscale": True}, layer_type


def opens_lazily(path: PathLike, available: int | None = None) -> bool:
    """Whether the TIFF at ``path`` is large enough to open lazily (see the module docstring).

    Args:
        path: a TIFF file.
        available: bytes of available memory (default: what the system reports).
    """
    try:
        with open_tiff(path) as tif:
            series = tif.series[0]
            nbytes = int(np.prod(series.shape, dtype=np.int64)) * np.dtype(series.dtype).itemsize
            mappable = series.dataoffset is not None
    except (OSError, ValueError, IndexError, tifffile.TiffFileError):
        return False  # read_image gives the error
    if available is None:
        available = _available_memory()
    return nbytes > LAZY_FRACTION * available or (not mappable and nbytes > LAZY_COMPRESSED_BYTES)


def _available_memory() -> int:
    """Bytes of memory available now (:func:`core.io.available_memory`), 8 GiB when unknown."""
    return available_memory() or 8 * 1024**3


def _zarr_labels(path: PathLike) -> bool:
    """Whether a zarr folder is an OME-Zarr label image (``image-label`` metadata)."""
    import zarr

    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except (OSError, ValueError, KeyError, TypeError):
        return False  # a plain array, not a group
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    return "image-label" in ome


def _zarr_name(path: PathLike) -> str:
    """A layer name from a zarr folder: its name without ``.zarr`` (and ``.ome``)."""
    name = Path(path).name
    for suffix in (".zarr", ".ome"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or Path(path).name


def _is_zarr(path: PathLike) -> bool:
    return isinstance(path, str | os.PathLike) and is_zarr_path(path)


def is_labels(image: ImageData) -> bool:
    """Whether ``image`` should open as a Labels layer (see the module docstring for the rule)."""
    if image.data.dtype.kind not in "iu" or "C" in image.axes or "S" in image.axes:
        return False
    if image.path is None:
        return False
    return _labels_name(image.path.name) or written_as_labels(image.path)


def written_as_labels(path: PathLike) -> bool:
    """True when the TIFF at ``path`` was written by
    :func:`napari_unet.core.io.writing.write_labels`."""
    try:
        with tifffile.TiffFile(path) as tif:
            return str(tif.pages.first.software or "").startswith(LABELS_SOFTWARE)
    except (OSError, ValueError, IndexError, tifffile.TiffFileError):
        return False


def _labels_name(name: str) -> bool:
    return LABEL_WORDS.search(display_name(name)) is not None


def _has_tiff_suffix(path: PathLike) -> bool:
    return isinstance(path, str | os.PathLike) and Path(path).suffix.lower() in TIFF_SUFFIXES
