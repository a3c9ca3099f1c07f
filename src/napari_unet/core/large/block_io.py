"""Writing blockwise results: zarr stores and tiled BigTIFF (reading blocks: :mod:`.block_read`).

- :func:`create_label_zarr` makes an OME-Zarr (NGFF 0.4, zarr v2) label image: a group holding
  one full-resolution array ``"0"`` with axes, pixel size (``scale``) and ``image-label``
  metadata, which napari and other OME-Zarr readers open as labels.
- :func:`create_probability_zarr` makes an OME-Zarr image of float32 probabilities (classes
  as the channel axis, first), with the same axes and pixel size.
- Both mark their root with :data:`~.safe_paths.OWNER_KEY`: only such a store is ever replaced.
- :func:`atomic_dir` writes a store under a temporary name beside its destination and renames it
  when complete, like :func:`~.io.atomic_path` does for files.
- :func:`write_imagej_tiff` writes labels plane by plane as a classic TIFF that ImageJ 1.x opens
  (when :func:`imagej_pages_fit`: under 4 GB, planes of at most :data:`PAGE_LIMIT` bytes);
  :func:`write_tiled_tiff` writes a tiled, zlib-compressed BigTIFF from an iterator of tiles,
  never holding more than a tile, for larger labels (ImageJ 1.x cannot open those; Fiji's
  Bio-Formats can).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..io.imagej_tiff import fits_classic, imagej_description
from ..io.safe_paths import OWNER_KEY, check_replaceable, sweep_beside, temp_tag
from ..io.sizes import PixelSize
from ..io.writing import LABELS_SOFTWARE, ome_kwargs

logger = logging.getLogger(__name__)

#: Largest plane (bytes) of labels written as an ImageJ TIFF by :func:`write_imagej_tiff`.
PAGE_LIMIT = 512 * 2**20

_NGFF_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}


# --------------------------------------------------------------------------------------------
# zarr stores


def check_store_path(path: str | os.PathLike[str]) -> Path:
    """Check that a zarr store can be written at ``path``, replacing only a store that
    napari-unet wrote (see :func:`~.safe_paths.is_own_store`).

    Raises:
        UserError: the folder above does not exist or is not writable, or ``path`` is a file, a
            folder or a zarr store that napari-unet did not write.
    """
    path = Path(path).expanduser()
    check_replaceable(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"Cannot write '{path}': the output folder '{parent}' does not exist.")
    if not os.access(parent, os.W_OK):
        raise UserError(f"Cannot write '{path}': the output folder '{parent}' is not writable.")
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` when the block succeeds.

    On any error (and on cancellation) the temporary folder is removed and ``path`` is left as
    it was. An existing store that napari-unet wrote is replaced; anything else is refused.
    Stale temporary stores of earlier, killed runs are removed first.
    """
    path = check_store_path(path)
    sweep_beside(path)
    tmp = path.with_name(f".{path.name}.{temp_tag()}.tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary store '{tmp}'")
        old = None
        if path.exists():
            check_replaceable(path)  # still ours (it may have changed while we worked)
            old = path.with_name(f".{path.name}.{temp_tag()}.old")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.debug("wrote %s", path)


def store_exists(array: Any) -> bool:
    """False when the folder of a zarr array on disk has been removed (a cancelled run cleaned
    up while a worker still held a block); then nothing may be written, or it would come back."""
    root = getattr(getattr(array, "store", None), "root", None)
    return root is None or Path(root).exists()


def _compressor() -> Any:
    import numcodecs

    return numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)


def _ngff_axes(axes: str) -> list[dict[str, str]]:
    result = []
    for letter in axes:
        axis = {"name": letter.lower()}
        if letter in _NGFF_TYPES:
            axis["type"] = _NGFF_TYPES[letter]
        if letter in "ZYX":
            axis["unit"] = "micrometer"
        result.append(axis)
    return result


def _scale(axes: str, pixel_size: PixelSize | None, z_spacing: float | None) -> list[float]:
    sizes = {"Y": pixel_size[0], "X": pixel_size[1]} if pixel_size is not None else {}
    if z_spacing is not None:
        sizes["Z"] = z_spacing
    return [float(sizes.get(a, 1.0)) for a in axes]


def _multiscales(
    axes: str, pixel_size: PixelSize | None, z_spacing: float | None, name: str
) -> list[dict[str, Any]]:
    return [
        {
            "version": "0.4",
            "name": name,
            "axes": _ngff_axes(axes),
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": _scale(axes, pixel_size, z_spacing)}
                    ],
                }
            ],
        }
    ]


def _ome_group(
    path: str | os.PathLike[str],
    shape: tuple[int, ...],
    dtype: Any,
    chunks: tuple[int, ...],
    fill: Any,
) -> tuple[Any, Any]:
    import zarr

    group = zarr.open_group(str(path), mode="w-", zarr_format=2)
    array = group.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        dtype=np.dtype(dtype),
        fill_value=fill,
        compressors=_compressor(),
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    return group, array


def ome_label_axes(
    shape: tuple[int, ...], metadata: dict[str, Any], scale: tuple[float, ...] | None = None
) -> tuple[str, PixelSize | None, float | None]:
    """Axes (letters of "TZYX"), pixel size and Z spacing for an OME-Zarr label image of
    ``shape`` from a layer's ``metadata`` (``axes``, ``pixel_size``, ``z_spacing``), else from its
    ``scale`` (one value per axis; 1 means unknown); axes that do not fit are replaced by T, Z
    before Y, X."""
    from ..io.sizes import positive_number

    axes = str(metadata.get("axes") or "").upper()
    fits = (
        len(axes) == len(shape)
        and axes.endswith("YX")
        and len(set(axes)) == len(axes)
        and all(a in "TZYX" for a in axes)
        and list(axes) == sorted(axes, key="TZYX".index)
    )
    if not fits:
        axes = "TZ"[max(0, 4 - len(shape)) :][: len(shape) - 2] + "YX"
    size = metadata.get("pixel_size")
    pixel_size = None
    if isinstance(size, list | tuple) and len(size) == 2:
        values = [positive_number(v) for v in size]
        pixel_size = (values[0], values[1]) if None not in values else None
    z_spacing = positive_number(metadata.get("z_spacing")) if "Z" in axes else None
    if scale is not None and len(scale) == len(shape):
        values = [positive_number(v) for v in scale]
        if pixel_size is None and None not in values[-2:] and values[-2:] != [1.0, 1.0]:
            pixel_size = (values[-2], values[-1])
        if z_spacing is None and "Z" in axes and values[axes.index("Z")] not in (None, 1.0):
            z_spacing = values[axes.index("Z")]
    return axes, pixel_size, z_spacing  # type: ignore[return-value]


def create_label_zarr(
    path: str | os.PathLike[str],
    shape: tuple[int, ...],
    dtype: Any,
    chunks: tuple[int, ...],
    axes: str,
    pixel_size: PixelSize | None = None,
    z_spacing: float | None = None,
    name: str = "labels",
) -> Any:
    """Create an empty OME-Zarr (NGFF 0.4) label image at ``path`` and return its array.

    Args:
        path: the store's folder (created; must not exist).
        shape: (*leading, Y, X); ``axes`` names each dimension (letters of "TZCYX").
        dtype: an unsigned integer dtype.
        chunks: the array's chunks.
        pixel_size: (y, x) µm, written as the dataset's ``scale``; ``z_spacing`` likewise.

    Returns:
        The :class:`zarr.Array` ``"0"`` (filled with 0 where never written). The group's
        attributes hold ``multiscales``, ``image-label`` and the :data:`~.safe_paths.OWNER_KEY`
        mark that lets napari-unet replace the store later.
    """
    group, array = _ome_group(path, shape, dtype, chunks, 0)
    group.attrs.update(
        {
            "multiscales": _multiscales(axes, pixel_size, z_spacing, name),
            "image-label": {"version": "0.4"},
            OWNER_KEY: {"kind": "labels"},
        }
    )
    return array


#: Lower-resolution levels are added to a label store until a plane's shorter side is at most
#: this many pixels.
PYRAMID_SIDE = 2048


def add_pyramid(path: str | os.PathLike[str], min_side: int | None = None) -> int:
    """Add lower-resolution levels ``"1"``, ``"2"``, ... to the OME-Zarr label image at ``path``
    (each half the one above along Y and X, taking every other pixel, so ids stay ids) until the
    shorter side of a plane is at most ``min_side`` (default :data:`PYRAMID_SIDE`); returns how
    many levels were added.

    Each level is computed from the one above, chunk by chunk: memory stays that of a few
    chunks, whatever the image size.
    """
    import dask.array as da
    import zarr

    min_side = PYRAMID_SIDE if min_side is None else min_side
    group = zarr.open_group(str(path), mode="r+")
    meta = group.attrs["multiscales"]
    datasets = meta[0]["datasets"]
    axes = [a["name"] for a in meta[0]["axes"]]
    base_scale = datasets[0]["coordinateTransformations"][0]["scale"]
    base = group["0"]
    current = da.from_zarr(base)
    level = 0
    while min(current.shape[-2:]) > min_side:
        level += 1
        current = current[..., ::2, ::2]
        chunks = tuple(min(c, n) for c, n in zip(base.chunks, current.shape, strict=True))
        array = group.create_array(
            str(level), shape=current.shape, chunks=chunks, dtype=base.dtype, fill_value=0,
            compressors=_compressor(), chunk_key_encoding={"name": "v2", "separator": "/"},
        )  # fmt: skip
        da.store(current.rechunk(chunks), array, lock=False, scheduler="threads")
        current = da.from_zarr(array)
        scale = [
            s * 2**level if a in ("y", "x") else s for s, a in zip(base_scale, axes, strict=True)
        ]
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": scale}]})  # fmt: skip
    if level:
        group.attrs["multiscales"] = meta
    return level


def create_probability_zarr(
    path: str | os.PathLike[str],
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    axes: str,
    pixel_size: PixelSize | None = None,
    z_spacing: float | None = None,
    class_names: list[str] | None = None,
) -> Any:
    """Create an empty float32 OME-Zarr (NGFF 0.4) image of class probabilities at ``path``.

    Args:
        shape: (K, *leading, Y, X), or (T, K, ...) for a time-lapse; ``axes`` names each
            dimension, ``"C"`` being the classes.
        pixel_size, z_spacing: µm, written as the dataset's ``scale``.
        class_names: written as the channel labels (``omero``), when given.

    Returns:
        The :class:`zarr.Array` ``"0"``; it also carries xarray's ``_ARRAY_DIMENSIONS``.
    """
    group, array = _ome_group(path, shape, np.float32, chunks, 0.0)
    attrs: dict[str, Any] = {
        "multiscales": _multiscales(axes, pixel_size, z_spacing, "probabilities"),
        OWNER_KEY: {"kind": "probabilities"},
    }
    if class_names is not None and "C" in axes and len(class_names) == shape[axes.index("C")]:
        attrs["omero"] = {
            "channels": [
                {
                    "label": str(n),
                    "active": True,
                    "color": "FFFFFF",
                    "window": {"start": 0.0, "end": 1.0, "min": 0.0, "max": 1.0},
                }
                for n in class_names
            ]
        }
    group.attrs.update(attrs)
    array.attrs["_ARRAY_DIMENSIONS"] = [a.lower() for a in axes]
    return array


def create_work_zarr(
    path: str | os.PathLike[str], shape: tuple[int, ...], chunks: tuple[int, ...]
) -> Any:
    """Create the scratch array of block-local ids: uint32 (planes, Y, X)."""
    import zarr

    return zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=np.uint32, fill_value=0)


# --------------------------------------------------------------------------------------------
# tiled TIFF


def write_tiled_tiff(
    path: Path,
    tiles: Iterator[np.ndarray],
    shape: tuple[int, ...],
    dtype: Any,
    tile: int,
    axes: str,
    pixel_size: PixelSize | None = None,
    z_spacing: float | None = None,
) -> None:
    """Write a tiled, zlib-compressed BigTIFF (OME metadata: axes, pixel size) from ``tiles``.

    Args:
        path: the file (written as is; wrap the call in :func:`~.io.atomic_path`).
        tiles: (tile, tile) arrays of ``dtype``, plane after plane, row-major within a plane;
            tiles at the right and bottom edges may be smaller (they are padded with 0).
        shape: (*leading, Y, X) of the image; ``axes`` names each dimension.
        tile: tile side, a multiple of 16.
    """
    import tifffile

    kwargs = ome_kwargs(axes, pixel_size, z_spacing, 0)
    kwargs["bigtiff"] = True
    tifffile.imwrite(
        path,
        tiles,
        shape=shape,
        dtype=np.dtype(dtype),
        tile=(tile, tile),
        compression="zlib",
        photometric="minisblack",
        software=LABELS_SOFTWARE,
        **kwargs,
    )


def imagej_pages_fit(shape: tuple[int, ...], dtype: Any, axes: str) -> bool:
    """Whether labels of ``shape`` can be written as a classic TIFF that ImageJ 1.x opens: under
    4 GB, a plane at most :data:`PAGE_LIMIT` bytes (one plane is held to compress it), and the
    leading axes already in ImageJ's T, Z order."""
    itemsize = np.dtype(dtype).itemsize
    plane = shape[-1] * shape[-2] * itemsize
    ordered = list(axes) == sorted(axes, key="TZCYX".index)
    return ordered and plane <= PAGE_LIMIT and fits_classic(math.prod(shape) * itemsize)


def write_imagej_tiff(
    path: Path,
    planes: Iterator[np.ndarray],
    shape: tuple[int, ...],
    dtype: Any,
    axes: str,
    pixel_size: PixelSize | None = None,
    z_spacing: float | None = None,
) -> None:
    """Write labels plane by plane as a zlib-compressed classic TIFF with an ImageJ header
    (frames, slices, Z spacing, pixel size) and the label Software tag, which ImageJ 1.x, Fiji,
    tifffile, bioio and napari-unet's reader open alike.

    Args:
        planes: (Y, X) arrays of ``dtype``, in the order of ``shape`` (*leading, Y, X).
        axes: letters of ``shape``, in ImageJ's order (see :func:`imagej_pages_fit`).
    """
    import tifffile

    calibrated = pixel_size is not None or z_spacing is not None
    description = imagej_description(axes, shape, z_spacing, calibrated)
    kwargs: dict[str, Any] = {}
    if pixel_size is not None:
        kwargs["resolution"] = (1.0 / pixel_size[1], 1.0 / pixel_size[0])
    n_planes = math.prod(shape[:-2])
    tifffile.imwrite(
        path,
        planes,
        shape=(n_planes, *shape[-2:]),
        dtype=np.dtype(dtype),
        compression="zlib",
        photometric="minisblack",
        description=description,
        metadata=None,
        bigtiff=False,
        software=LABELS_SOFTWARE,
        **kwargs,
    )
