"""Opening images too large for memory: TIFF through tifffile's zarr view, zarr and OME-Zarr.

:func:`open_lazy` returns a :class:`LazyImage`: the same fields as :class:`~.io.ImageData`, but
``data`` is a :class:`dask.array.Array` whose chunks are read from the file only when computed.
Nothing the size of the image is read or allocated when opening; slicing ``data`` and computing
the slice reads only the chunks it touches.

- TIFF (plain, BigTIFF, tiled, ImageJ, OME-TIFF, pyramids): the first series, full-resolution
  level, through ``TiffPageSeries.aszarr``; axes and pixel size as :func:`~.io.read_image`
  reports them.
- OME-Zarr (NGFF 0.1 to 0.5; also the ``bioformats2raw`` layout, whose first image is taken): the
  first multiscale image, its first (full-resolution) dataset; axes from the ``axes`` metadata,
  pixel size and Z spacing from the dataset's ``scale`` transformation (times the multiscale's
  own, when present) and the axes' units.
- A plain zarr array: axes from its dimension names when it has them (zarr v3
  ``dimension_names``, or xarray's ``_ARRAY_DIMENSIONS``), else the last letters of OME-Zarr's
  ``"TCZYX"`` (``"ZYX"`` for 3D), or ``"YXS"`` for a 3D array whose last axis has 3 or 4
  samples.

Axes use the letters ``"TZCYXS"`` as everywhere in napari-unet; length-1 axes other than Y and X
are dropped and Y, X (and S) come last.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..axes import CHANNEL_AXES
from ..errors import ImageReadError
from .reading import (
    _JPEG_MAGIC,
    _PNG_MAGIC,
    ImageData,
    _check_readable,
    _check_size,
    _is_rgb,
    _normalize_axes,
    check_pixel_dtype,
    describe_read_error,
    open_tiff,
    read_image,
)
from .sizes import PixelSize, _physical_sizes, _unit_scale, plausible_sizes, positive_number

logger = logging.getLogger(__name__)

#: Side, in pixels along Y and X, of the dask chunks of a lazy image (at least the file's own).
CHUNK_SIDE = 2048

_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
_NGFF_LETTERS = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
_NGFF_TYPES = {"time": "T", "channel": "C"}


@dataclass
class LazyImage(ImageData):
    """An image opened lazily: :class:`~.io.ImageData` whose ``data`` is a dask array.

    Attributes:
        data: :class:`dask.array.Array`, the full-resolution image, shape given by ``axes``, the
            stored dtype; computing a slice reads only that part of the file.
        levels: every resolution level (``levels[0]`` is ``data``), each with ``data``'s axes;
            one level for files without a pyramid.
        dataset: which array of the file: the zarr path of the full-resolution dataset, or
            ``"series 0"`` for a TIFF.
    """

    levels: list[Any] = field(default_factory=list)
    dataset: str = ""

    @property
    def nbytes(self) -> int:
        """Bytes of the full-resolution image once in memory."""
        return int(math.prod(self.data.shape) * np.dtype(self.data.dtype).itemsize)

    @property
    def is_memmap(self) -> bool:
        """Always False: the pixels stay in the file."""
        return False


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zarr store on disk: a folder with zarr metadata (``zarr.json``,
    ``.zgroup`` or ``.zarray``) or a folder whose name ends in ``.zarr``."""
    path = Path(path).expanduser()
    try:
        if not path.is_dir():
            return False
        return path.suffix.lower() == ".zarr" or any((path / m).exists() for m in _ZARR_MARKERS)
    except OSError:  # an unreadable folder above: not something we can open
        return False


def open_lazy(path: str | os.PathLike[str]) -> LazyImage:
    """Open a TIFF, zarr or OME-Zarr image without reading its pixels.

    Args:
        path: a TIFF file, or a zarr / OME-Zarr folder (a PNG or JPEG is read and wrapped).

    Returns:
        A :class:`LazyImage` (``data`` a dask array of the full-resolution level).

    Raises:
        ImageReadError: the path is missing, not an image, or its metadata cannot be read.
    """
    path = Path(path).expanduser()
    _require_zarr()
    if path.is_dir():
        if not is_zarr_path(path):
            raise ImageReadError(
                f"Cannot read image '{path}': it is a folder, not a TIFF file or a zarr store."
            )
        return _open_zarr(path)
    header = _check_readable(path)
    if header.startswith(_PNG_MAGIC) or header.startswith(_JPEG_MAGIC):
        image = read_image(path)  # a PNG or JPEG is small: read it, wrap it
        lazy = lazy_from_array(image.data, image.axes)
        lazy.path = path
        return lazy
    return _open_tiff(path)


def _require_zarr() -> None:
    try:
        import zarr
    except ImportError as exc:
        raise ImageReadError(
            "Opening images lazily needs the 'zarr' package (zarr 3, Python 3.11 or newer)."
        ) from exc
    if int(zarr.__version__.split(".")[0]) < 3:
        raise ImageReadError(f"Opening images lazily needs zarr 3 (installed: {zarr.__version__}).")


def lazy_from_array(
    data: Any,
    axes: str,
    pixel_size: PixelSize | None = None,
    z_spacing: float | None = None,
) -> LazyImage:
    """Wrap an array already at hand (numpy, memmap, zarr or dask) as a :class:`LazyImage`.

    Args:
        data: the image, one axis per letter of ``axes``.
        axes: letters from ``"TZCYXS"`` ending ``"YX"`` or ``"YXS"``.
        pixel_size: (y, x) in micrometres, or None.
        z_spacing: Z spacing in micrometres, or None.
    """
    import dask.array as da

    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=_chunks(data.shape, axes.upper(), None))
    unit = "um" if pixel_size is not None or z_spacing is not None else "pixel"
    return LazyImage(data, axes.upper(), pixel_size, z_spacing, unit, None, [data], "")


# --------------------------------------------------------------------------------------------
# TIFF


def _open_tiff(path: Path) -> LazyImage:
    import tifffile

    try:
        with open_tiff(path) as tif:
            if not tif.series:
                raise ImageReadError(f"Cannot read image '{path}': the TIFF file holds no image.")
            series = tif.series[0]
            _check_size(path, series, in_memory=False)  # a header claiming more than the file
            tiff_axes = series.axes.upper()
            is_rgb = _is_rgb(series)
            pixel_size, z_spacing = _physical_sizes(tif)
            # The stores reopen the file themselves when read (tifffile's file cache).
            stores = [series.aszarr(level=i) for i in range(len(series.levels))]
        levels = []
        for store in stores:
            array = _zarr_open(store, zarr_format=2)
            data = _as_dask(array, tiff_axes)
            levels.append(_normalize_axes(data, tiff_axes, is_rgb))
    except ImageReadError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, KeyError, IndexError, TypeError) as exc:
        raise ImageReadError(f"Cannot read image '{path}': {describe_read_error(exc)}.") from exc
    data, axes = levels[0]
    if "Z" not in axes:
        z_spacing = None
    unit = "um" if pixel_size is not None or z_spacing is not None else "pixel"
    logger.debug("opened %s lazily: %s %s %s", path, data.shape, axes, data.dtype)
    return LazyImage(
        data, axes, pixel_size, z_spacing, unit, path, [d for d, _ in levels], "series 0"
    )


# --------------------------------------------------------------------------------------------
# zarr and OME-Zarr


def _zarr_open(store: Any, **kwargs: Any) -> Any:
    import zarr

    return zarr.open(store, mode="r", **kwargs)


def regular_store(path: Path) -> Any:
    """A read-only zarr store of the folder ``path`` that reads regular files only.

    zarr's own ``LocalStore`` reads whatever a key names: a FIFO named ``zarr.json`` or a chunk
    would block forever, a link to ``/dev/zero`` would fill the memory. This store refuses them
    with an ``OSError`` (which reads of pixels report as a corrupt file).
    """
    return _regular_store_class()(path, read_only=True)


def require_regular_key(path: Path) -> None:
    """Raise ``OSError`` when ``path`` (a key of a zarr store) exists but is not a regular file."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing (a chunk of fill values) or unreadable: zarr says which
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise OSError(f"the store's file '{path}' is not a regular file (a FIFO or a device)")


_REGULAR_STORE: list[Any] = []


def _regular_store_class() -> Any:
    if _REGULAR_STORE:
        return _REGULAR_STORE[0]
    from zarr.storage import LocalStore

    class RegularLocalStore(LocalStore):
        """``LocalStore`` that checks each file is a regular one before reading it."""

        def get_sync(self, key: str, *args: Any, **kwargs: Any) -> Any:
            require_regular_key(self.root / key)
            return super().get_sync(key, *args, **kwargs)

        async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
            require_regular_key(self.root / key)
            return await super().get(key, *args, **kwargs)

        async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
            key_ranges = list(key_ranges)
            for key, _ in key_ranges:
                require_regular_key(self.root / key)
            return await super().get_partial_values(prototype, key_ranges)

    _REGULAR_STORE.append(RegularLocalStore)
    return RegularLocalStore


def _open_zarr(path: Path) -> LazyImage:
    try:
        node = _zarr_open(regular_store(path))
        return _from_zarr_node(path, node, "")
    except ImageReadError as exc:
        if str(path) in str(exc):
            raise
        raise ImageReadError(f"Cannot read zarr image '{path}': {exc}.") from exc
    except FileNotFoundError as exc:  # zarr: "No group found in store ..."
        raise ImageReadError(
            f"Cannot read zarr image '{path}': the folder holds no zarr metadata (zarr.json, "
            ".zarray or .zgroup)."
        ) from exc
    except json.JSONDecodeError as exc:
        raise ImageReadError(
            f"Cannot read zarr image '{path}': its metadata is not valid JSON ({exc})."
        ) from exc
    except RecursionError as exc:
        raise ImageReadError(
            f"Cannot read zarr image '{path}': its metadata is nested too deeply."
        ) from exc
    except (ValueError, OSError, KeyError, TypeError, IndexError, AttributeError) as exc:
        text = str(exc).strip().rstrip(".") or type(exc).__name__
        raise ImageReadError(f"Cannot read zarr image '{path}': {text}.") from exc


def _from_zarr_node(path: Path, node: Any, prefix: str) -> LazyImage:
    import zarr

    if isinstance(node, zarr.Array):
        return _plain_array(path, node, prefix)
    attrs = dict(node.attrs)
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    multiscales = ome.get("multiscales")
    if multiscales:
        if not isinstance(multiscales, list) or not isinstance(multiscales[0], dict):
            raise ImageReadError(
                f"Cannot read zarr image '{path}': its OME-Zarr 'multiscales' metadata is not a "
                "list of objects (the store is corrupt or not OME-Zarr)."
            )
        return _multiscale(path, node, multiscales[0], prefix)
    if "bioformats2raw.layout" in ome and "0" in node:
        return _from_zarr_node(path, node["0"], f"{prefix}0/")
    arrays = [name for name, _ in node.arrays()]
    if len(arrays) == 1:
        return _plain_array(path, node[arrays[0]], prefix + arrays[0])
    raise ImageReadError(
        f"Cannot read zarr image '{path}': the group holds no OME-Zarr 'multiscales' metadata "
        f"and {'no array' if not arrays else 'several arrays'}."
    )


def _multiscale(path: Path, group: Any, meta: dict[str, Any], prefix: str) -> LazyImage:
    datasets = meta.get("datasets") or []
    if not isinstance(datasets, list):
        datasets = []
    datasets = [d for d in datasets if isinstance(d, dict) and isinstance(d.get("path"), str)]
    if not datasets:
        raise ImageReadError(
            f"Cannot read zarr image '{path}': 'multiscales' lists no dataset with a path."
        )
    arrays = [_dataset(path, group, d["path"]) for d in datasets]
    ndim = arrays[0].ndim
    if any(a.ndim != ndim for a in arrays):
        raise ImageReadError(
            f"Cannot read zarr image '{path}': its resolution levels have different numbers of "
            f"dimensions ({', '.join(str(a.ndim) for a in arrays)})."
        )
    names, units = _ngff_axes(meta.get("axes"), ndim)
    letters = _letters(names, meta.get("axes"))
    scale = _scale(datasets[0].get("coordinateTransformations"), ndim)
    top = _scale(meta.get("coordinateTransformations"), ndim)
    scale = [a * b for a, b in zip(scale, top, strict=True)]
    sizes = {letter: _physical(scale[i], units[i]) for i, letter in enumerate(letters)}
    levels = [_normalize_axes(_as_dask(a, letters), letters, False) for a in arrays]
    data, axes = levels[0]
    pixel_size = _pixel_size(sizes.get("Y"), sizes.get("X"))
    z_spacing = sizes.get("Z") if "Z" in axes else None
    pixel_size, z_spacing = plausible_sizes(pixel_size, z_spacing, path)
    unit = "um" if pixel_size is not None or z_spacing is not None else "pixel"
    dataset = prefix + datasets[0]["path"]
    logger.debug("opened %s/%s lazily: %s %s %s", path, dataset, data.shape, axes, data.dtype)
    return LazyImage(data, axes, pixel_size, z_spacing, unit, path, [d for d, _ in levels], dataset)


def _dataset(path: Path, group: Any, name: str) -> Any:
    """The array ``name`` of ``group``, which a multiscale lists as one of its datasets."""
    import zarr

    try:
        node = group[name]
    except KeyError:
        node = None
    if not isinstance(node, zarr.Array):
        raise ImageReadError(
            f"Cannot read zarr image '{path}': its 'multiscales' metadata lists a dataset "
            f"'{name}' that is not an array of the store."
        )
    return node


def _plain_array(path: Path, array: Any, dataset: str) -> LazyImage:
    names = _dimension_names(array)
    if names is not None and len(names) == array.ndim:
        letters = _letters([str(n).lower() for n in names], None)
    else:
        letters = _guess_axes(tuple(array.shape))
        logger.info("%s has no axis names; assuming axes %s", path, letters)
    data, axes = _normalize_axes(_as_dask(array, letters), letters, letters.endswith("S"))
    return LazyImage(data, axes, None, None, "pixel", path, [data], dataset)


def _dimension_names(array: Any) -> Sequence[Any] | None:
    names = getattr(getattr(array, "metadata", None), "dimension_names", None)
    if names and all(n is not None for n in names):
        return list(names)
    names = array.attrs.get("_ARRAY_DIMENSIONS")
    return list(names) if isinstance(names, list) else None


def _guess_axes(shape: tuple[int, ...]) -> str:
    if len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 16:
        return "YXS"
    if not 2 <= len(shape) <= 5:
        raise ImageReadError(f"a zarr array of {len(shape)} dimensions is not an image")
    return "TCZYX"[5 - len(shape) :]  # the OME-Zarr order


def _ngff_axes(axes: Any, ndim: int) -> tuple[list[str], list[Any]]:
    """Axis names (lower case) and units from NGFF ``axes`` (dicts from 0.4, names in 0.3,
    absent before: then "tczyx")."""
    if not axes:
        return list("tczyx"[5 - ndim :]), [None] * ndim
    names, units = [], []
    for axis in axes:
        if isinstance(axis, dict):
            names.append(str(axis.get("name", "")).lower())
            units.append(axis.get("unit"))
        else:
            names.append(str(axis).lower())
            units.append(None)
    if len(names) != ndim:
        raise ImageReadError(f"the OME-Zarr axes {names} do not fit an array of {ndim} dimensions")
    return names, units


def _letters(names: list[str], axes: Any) -> str:
    """NGFF axis names -> letters of ``"TZCYX"`` (unknown axes: by their type, else ``Q``)."""
    types = [a.get("type") for a in axes] if axes and isinstance(axes[0], dict) else []
    letters = []
    for i, name in enumerate(names):
        letter = _NGFF_LETTERS.get(name) or _NGFF_TYPES.get(types[i] if types else "", "Q")
        letters.append(letter if letter not in letters else "Q")
    if "Y" not in letters or "X" not in letters:
        raise ImageReadError(f"the zarr axes {names} have no y and x")
    return "".join(letters)


def _scale(transforms: Any, ndim: int) -> list[float]:
    scale = [1.0] * ndim
    for transform in transforms or []:
        if isinstance(transform, dict) and transform.get("type") == "scale":
            values = transform.get("scale")
            if isinstance(values, list) and len(values) == ndim:
                scale = [
                    s * (positive_number(v) or 1.0) for s, v in zip(scale, values, strict=True)
                ]
    return scale


def _physical(scale: float, unit: Any) -> float | None:
    """Micrometres for ``scale`` in ``unit``; a unit-less scale counts as µm unless it is 1."""
    if unit is None:
        return scale if scale != 1.0 else None
    factor = _unit_scale(unit)
    return scale * factor if factor is not None else None


def _pixel_size(y: float | None, x: float | None) -> PixelSize | None:
    if y is None and x is None:
        return None
    return (y if y is not None else x, x if x is not None else y)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# dask


def _chunks(shape: Sequence[int], letters: str, native: Sequence[int] | None) -> tuple[int, ...]:
    """Dask chunks: whole channel/sample axes, one plane of the other leading axes, and at
    least :data:`CHUNK_SIDE` (or the stored chunk, when larger) along Y and X."""
    chunks = []
    for i, (n, letter) in enumerate(zip(shape, letters, strict=True)):
        stored = native[i] if native is not None else 1
        if letter in "YX":
            side = max(stored, min(n, CHUNK_SIDE))
            side = stored * -(-side // stored) if stored > 1 else side
            chunks.append(max(1, min(n, side)))
        elif letter in CHANNEL_AXES:
            chunks.append(max(1, n))
        else:
            chunks.append(1)
    return tuple(chunks)


def _as_dask(array: Any, letters: str) -> Any:
    import dask.array as da

    check_pixel_dtype(str(getattr(array, "store_path", "") or "zarr array"), array.dtype)
    chunks = _chunks(array.shape, letters, getattr(array, "chunks", None))
    data = da.from_zarr(array, chunks=chunks)
    return data.astype(np.uint8) if data.dtype == bool else data  # masks, 1-bit TIFFs: 0 and 1
