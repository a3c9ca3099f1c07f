"""Reading images with their axes and pixel size.

:func:`read_image` understands single images, multi-page stacks, ImageJ hyperstacks and OME-TIFF
(and, for convenience, 2D PNG/JPEG). Axes are reported with the letters of
:data:`napari_unet.core.axes.AXES` (``"TZCYXS"``): ``S`` only for the samples of an RGB(A) image,
which always come last. Length-1 axes other than Y and X are dropped, so a single 2D plane has
axes ``"YX"``. Uncompressed, contiguous files are memory-mapped (read-only) instead of read into
memory.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_unet.core.axes import AXES
from napari_unet.core.errors import ImageReadError
from napari_unet.core.io.sizes import PixelSize, _physical_sizes
from napari_unet.core.io.storage import _gib, available_memory

logger = logging.getLogger(__name__)


_NATIVE_BYTEORDER = "<" if sys.byteorder == "little" else ">"

# Errors that tifffile, numpy and the codecs raise on files that are not valid TIFF.
READ_ERRORS = (
    tifffile.TiffFileError,
    ValueError,
    OSError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    RuntimeError,
    ZeroDivisionError,
    OverflowError,
    struct.error,
    AssertionError,  # tifffile checks some structures with assert
)

# Largest ratio of decoded to stored bytes that a TIFF codec can reach (deflate: 1032:1,
# PackBits: 128:1), by TIFF compression code; a header that claims more pixels is corrupt.
_MAX_RATIO: dict[int, float] = {
    1: 1.0,
    8: 1100.0,
    32946: 1100.0,
    50013: 1100.0,
    32773: 130.0,
    5: 4200.0,
}  # LZW: 12-bit codes of at most 4096 bytes each

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass
class ImageData:
    """An image read from a file, with what the file says about its axes and pixel size.

    Attributes:
        data: the pixels, any numeric dtype as stored (uint8, uint16, float32, ...), shape given by
            ``axes``; a read-only ``np.memmap`` when the file could be memory-mapped.
        axes: one letter per dimension of ``data`` from ``"TZCYXS"``, always ending ``"YX"`` or
            ``"YXS"`` (``S``: RGB(A) samples).
        pixel_size: (y, x) pixel size in micrometres, or None when the file does not say.
        z_spacing: distance between Z planes in micrometres, or None.
        unit: ``"um"`` when a pixel size or Z spacing is known, else ``"pixel"``.
        path: the file it came from.
    """

    data: np.ndarray
    axes: str
    pixel_size: PixelSize | None = None
    z_spacing: float | None = None
    unit: str = "pixel"
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ``data``."""
        return tuple(self.data.shape)

    @property
    def is_memmap(self) -> bool:
        """True when ``data`` is memory-mapped from the file rather than held in memory."""
        return isinstance(self.data, np.memmap)


def read_image(path: str | os.PathLike[str], memmap: bool = True) -> ImageData:
    """Read an image file with its axes and pixel size.

    TIFF (plain, multi-page, ImageJ hyperstack, OME-TIFF) is read with tifffile, first series
    only (the full-resolution level of a pyramid). PNG and JPEG are read as 2D images.

    Args:
        path: the file.
        memmap: memory-map the pixels when the file is an uncompressed, contiguous TIFF in native
            byte order (``data`` is then a read-only ``np.memmap``); otherwise, or when False,
            the pixels are read into memory.

    Returns:
        :class:`ImageData`; ``data`` keeps the stored dtype, axes use the letters ``"TZCYXS"``.

    Raises:
        ImageReadError: the file is missing, empty, a folder, truncated, corrupt, or not an image.
    """
    path = Path(path).expanduser()
    header = _check_readable(path)
    if header.startswith(_PNG_MAGIC) or header.startswith(_JPEG_MAGIC):
        return _read_plain_image(path)
    try:
        return _read_tiff(path, memmap)
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise ImageReadError(
            f"Cannot read image '{path}': it does not fit in memory (save it uncompressed so it "
            "can be memory-mapped)."
        ) from exc
    except READ_ERRORS as exc:
        raise ImageReadError(f"Cannot read image '{path}': {describe_read_error(exc)}.") from exc


def _check_readable(path: Path) -> bytes:
    """Return the first bytes of ``path`` after checking that it is a non-empty, readable file."""
    if not path.exists():
        raise ImageReadError(f"Cannot read image '{path}': the file does not exist.")
    if path.is_dir():
        raise ImageReadError(f"Cannot read image '{path}': it is a folder, not a file.")
    from .safe_paths import require_regular_file

    require_regular_file(path)  # a FIFO would block the open below forever
    try:
        with open(path, "rb") as fh:
            header = fh.read(8)
    except OSError as exc:
        raise ImageReadError(f"Cannot read image '{path}': {exc.strerror or exc}.") from exc
    if not header:
        raise ImageReadError(f"Cannot read image '{path}': the file is empty.")
    return header


def describe_read_error(exc: BaseException) -> str:
    """One short reason for a failed read, fit for a user."""
    text = str(exc).strip().rstrip(".")
    if isinstance(exc, tifffile.TiffFileError) and text.startswith("not a TIFF file"):
        return "it is not a TIFF file (nor PNG or JPEG)"
    if "failed to read" in text or "mmap length" in text or "truncat" in text.lower():
        return "the file is truncated (it ends before all its pixels)"
    if isinstance(exc, tifffile.TiffFileError | IndexError | KeyError | EOFError):
        return f"the TIFF structure is corrupt ({text or type(exc).__name__})"
    if isinstance(exc, RuntimeError):
        return f"the pixel data cannot be decoded, the file is corrupt ({text})"
    return f"the file is corrupt or not a supported image ({text or type(exc).__name__})"


#: An OME-XML that claims more planes than this (and far more than the file's pages) lies: it is
#: ignored, because tifffile would build a list of every claimed plane (16 bytes each).
_OME_MAX_PLANES = 100_000


def open_tiff(path: str | os.PathLike[str]) -> tifffile.TiffFile:
    """``tifffile.TiffFile(path)``, without its OME-XML when that claims far more planes than
    the file holds (a header claiming 10^12 pixels made tifffile allocate gigabytes).

    Raises:
        tifffile.TiffFileError, OSError, ValueError: as ``tifffile.TiffFile``.
    """
    tif = tifffile.TiffFile(path)
    try:
        claimed = _ome_planes(tif) if tif.is_ome else 0
        if claimed > max(_OME_MAX_PLANES, 100 * len(tif.pages)):
            logger.warning(
                "%s: its OME metadata claims %d planes but the file holds %d; the OME metadata "
                "is ignored",
                path,
                claimed,
                len(tif.pages),
            )
            tif.close()
            tif = tifffile.TiffFile(path, is_ome=False)
    except BaseException:
        tif.close()
        raise
    return tif


def _ome_planes(tif: tifffile.TiffFile) -> int:
    """How many planes of the first page's size the OME-XML of ``tif`` claims (0: unreadable)."""
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.fromstring(tif.ome_metadata or "")
    except (ElementTree.ParseError, ValueError, TypeError):
        return 0  # tifffile falls back to the plain pages by itself
    pixels = 0
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels":
            claimed = 1
            for axis in "XYZCT":
                try:
                    claimed *= max(1, int(element.get(f"Size{axis}", "1")))
                except ValueError:
                    continue
            pixels += claimed
    return pixels // max(1, int(tif.pages.first.size))


def _read_tiff(path: Path, memmap: bool) -> ImageData:
    with open_tiff(path) as tif:
        if not tif.series:
            raise ImageReadError(f"Cannot read image '{path}': the TIFF file holds no image.")
        series = tif.series[0]
        if len(tif.series) > 1:
            logger.info("%s holds %d image series; reading the first", path, len(tif.series))
        tiff_axes = series.axes.upper()
        shape = tuple(series.shape)
        is_rgb = _is_rgb(series)
        pixel_size, z_spacing = _physical_sizes(tif)
        can_map = memmap and series.dataoffset is not None and tif.byteorder == _NATIVE_BYTEORDER
        _check_size(path, series, in_memory=not can_map)
        data = None if can_map else series.asarray()
        offset = series.dataoffset
    if data is None:
        # what tifffile.memmap does, without opening the file (and its OME-XML) a second time
        data = np.memmap(path, dtype=series.dtype, mode="r", offset=offset, shape=shape)
        logger.debug("memory-mapped %s", path)
    data = data.reshape(shape) if data.shape != shape else data
    if data.dtype == bool:  # a 1-bit (bilevel) TIFF: 0 and 1
        data = data.astype(np.uint8)
    data, axes = _normalize_axes(data, tiff_axes, is_rgb)
    unit = "um" if pixel_size is not None or z_spacing is not None else "pixel"
    if "Z" not in axes:
        z_spacing = None
    return ImageData(data, axes, pixel_size, z_spacing, unit, path)


def check_pixel_dtype(path: Path | str, dtype: Any) -> None:
    """Refuse pixels that are not real numbers (complex, strings, records).

    Raises:
        ImageReadError: the dtype cannot be segmented.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        what = "complex-valued" if dtype.kind == "c" else f"of type {dtype}"
        raise ImageReadError(
            f"Cannot read image '{path}': its pixels are {what}; napari-unet reads real-valued "
            "images (integers or floats)."
        )


def _check_size(path: Path, series: tifffile.TiffPageSeries, in_memory: bool) -> None:
    """Refuse, before allocating anything, pixels that the file cannot hold or memory cannot fit.

    A corrupt header can claim gigabytes of pixels; reading them would exhaust the memory.
    """
    check_pixel_dtype(path, series.dtype)
    bits = int(getattr(series.keyframe, "bitspersample", 8) or 8)
    if np.dtype(series.dtype) == bool and bits == 1:  # bilevel: 8 pixels a byte on disk
        nbytes = math.ceil(math.prod(series.shape) / 8)
    else:
        nbytes = math.prod(series.shape) * np.dtype(series.dtype).itemsize
    file_size = path.stat().st_size
    ratio = _MAX_RATIO.get(int(series.keyframe.compression))
    if ratio is not None and nbytes > file_size * ratio + 4096:
        if ratio == 1.0:
            raise ImageReadError(
                f"Cannot read image '{path}': the file is truncated "
                f"({_gib(file_size)} for {_gib(nbytes)} of pixels)."
            )
        raise ImageReadError(
            f"Cannot read image '{path}': the file is corrupt (its header claims "
            f"{_gib(nbytes)} of pixels, more than its {_gib(file_size)} can hold)."
        )
    available = available_memory()
    if in_memory and available is not None and nbytes > available:
        raise ImageReadError(
            f"Cannot read image '{path}': its pixels need {_gib(nbytes)} of memory but only "
            f"{_gib(available)} is available (an uncompressed TIFF is memory-mapped instead)."
        )


def _read_plain_image(path: Path) -> ImageData:
    """Read a 2D PNG or JPEG: (Y, X) grayscale or (Y, X, S) RGB(A)."""
    import warnings

    import imageio.v3 as iio  # installed with scikit-image; only needed here
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            data = np.asarray(iio.imread(path))
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"Cannot read image '{path}': it claims more pixels than a PNG or JPEG reasonably "
            f"holds (a decompression bomb?): {exc}"
        ) from exc
    except (OSError, ValueError, RuntimeError, SyntaxError, MemoryError) as exc:
        raise ImageReadError(f"Cannot read image '{path}': {describe_read_error(exc)}.") from exc
    if data.ndim == 3 and data.shape[-1] in (1, 2):  # gray (+ alpha): keep the gray plane
        data = data[..., 0]
    if data.dtype == bool:  # a 1-bit PNG: 0 and 1, as for 1-bit TIFFs
        data = data.astype(np.uint8)
    if data.ndim not in (2, 3):
        raise ImageReadError(f"Cannot read image '{path}': unsupported shape {data.shape}.")
    return ImageData(data, "YX" if data.ndim == 2 else "YXS", None, None, "pixel", path)


def _is_rgb(series: tifffile.TiffPageSeries) -> bool:
    """Whether the samples of ``series`` are colour components (RGB, RGBA, decoded YCbCr)."""
    page = series.keyframe
    rgb = (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
    return page.photometric in rgb and page.samplesperpixel in (3, 4)


def _normalize_axes(data: np.ndarray, tiff_axes: str, is_rgb: bool) -> tuple[np.ndarray, str]:
    """Map tifffile's axes to ``"TZCYXS"``, squeeze length-1 axes, put Y, X (and S) last.

    Only views are taken (transpose, squeeze), so a memory map stays one, except when more
    unknown axes than free letters must be merged into one (a rare, copying reshape).
    """
    axes = list(tiff_axes)
    if "S" in axes and not is_rgb:
        axes[axes.index("S")] = "C" if "C" not in axes else "?"
    if "E" in axes and "C" not in axes:  # lambda (wavelength) is a channel axis
        axes[axes.index("E")] = "C"
    keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] != 1]
    data = data.reshape([data.shape[i] for i in keep])
    axes = [axes[i] for i in keep]
    extra = [i for i, a in enumerate(axes) if a not in AXES]
    free = [a for a in ("Z", "T", "C") if a not in axes]
    if len(extra) == 1 and free:
        axes[extra[0]] = free[0]
    elif extra:
        if len(extra) > len(free):
            if not free:  # T, Z and C are all taken: fold the extra axes into T
                extra, free = sorted([*extra, axes.index("T")]), ["T"]
            data, axes = _merge_axes(data, axes, extra)
            extra = [0]
        names = [a for a in ("T", "Z", "C") if a in free]
        for i, name in zip(extra, names, strict=False):
            axes[i] = name
    order = [i for i, a in enumerate(axes) if a not in "YXS"]
    order += [axes.index(a) for a in "YXS" if a in axes]
    if order != list(range(len(axes))):
        data = data.transpose(order)
        axes = [axes[i] for i in order]
    return data, "".join(axes)


def _merge_axes(data: np.ndarray, axes: list[str], extra: list[int]) -> tuple[np.ndarray, list]:
    """Move the ``extra`` axes to the front and merge them into one axis named ``"?"``."""
    rest = [i for i in range(len(axes)) if i not in extra]
    data = data.transpose(extra + rest)
    merged = math.prod(data.shape[: len(extra)])
    logger.warning("merging %d unnamed axes into one", len(extra))
    return data.reshape((merged, *data.shape[len(extra) :])), ["?"] + [axes[i] for i in rest]
