"""Reading images and writing labels and probabilities as TIFF, with axes and pixel size.

Reading (:func:`read_image`) understands single images, multi-page stacks, ImageJ hyperstacks and
OME-TIFF (and, for convenience, 2D PNG/JPEG). Axes are reported with the letters ``"TZCYXS"``:
``S`` only for the samples of an RGB(A) image, which always come last. Length-1 axes other than Y
and X are dropped, so a single 2D plane has axes ``"YX"``. Uncompressed, contiguous files are
memory-mapped (read-only) instead of read into memory.

Writing (:func:`write_labels`, :func:`write_probabilities`) goes through :func:`atomic_path`: the
file is written under a temporary name beside the destination and renamed when complete, so a
failed or cancelled write never leaves a partial file behind.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_unet.core.errors import ImageReadError, UserError
from napari_unet.core.io.imagej_tiff import fits_classic, imagej_layout, imagej_order
from napari_unet.core.labels import labels_dtype

logger = logging.getLogger(__name__)

AXES = "TZCYXS"
"""The axis letters used throughout napari-unet, in the order ImageJ stores them."""

PixelSize = tuple[float, float]

_NATIVE_BYTEORDER = "<" if sys.byteorder == "little" else ">"

# Length units as they appear in ImageJ and OME metadata, in micrometres.
_UNIT_TO_UM: dict[str, float] = {
    "pm": 1e-6,
    "a": 1e-4,
    "å": 1e-4,
    "angstrom": 1e-4,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "in": 25400.0,
    "inch": 25400.0,
}

# TIFF ResolutionUnit values, in micrometres per unit (NONE has no physical meaning).
_RESUNIT_TO_UM: dict[int, float] = {
    int(tifffile.RESUNIT.INCH): 25400.0,
    int(tifffile.RESUNIT.CENTIMETER): 1e4,
    int(tifffile.RESUNIT.MILLIMETER): 1e3,
    int(tifffile.RESUNIT.MICROMETER): 1.0,
}

# Errors that tifffile, numpy and the codecs raise on files that are not valid TIFF.
_READ_ERRORS = (
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

LABELS_SOFTWARE = "napari-unet labels"
"""The TIFF Software tag of files written by :func:`write_labels`: it marks them as label images."""

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


# --------------------------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------------------------


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` can be written: its folder exists and it is not a folder itself.

    Raises:
        UserError: the output folder does not exist, is not writable, or ``path`` is a folder.
    """
    path = Path(path).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"Cannot write '{path}': the output folder '{parent}' does not exist.")
    if path.is_dir():
        raise UserError(f"Cannot write '{path}': it is a folder, not a file name.")
    if not os.access(parent, os.W_OK):
        raise UserError(f"Cannot write '{path}': the output folder '{parent}' is not writable.")
    return path


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else the usual 0o022."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _new_file_mode(path: Path) -> int:
    """Permissions for a file written to ``path``: those of the file it replaces, else what
    ``open()`` would give a new file (some writers create their files private)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    The temporary file is hidden (its name starts with a dot) and keeps the suffixes of ``path``
    (``.ome.tif``, ``.safetensors``), so writers that look at the extension behave the same. When
    the block raises (including ``KeyboardInterrupt`` and cancellation), the temporary file is
    removed and ``path`` is left as it was.

    Raises:
        UserError: the output folder does not exist or ``path`` is a folder.
    """
    from .safe_paths import sweep_beside, temp_tag

    path = check_output_path(path)
    sweep_beside(path)
    tmp = path.with_name(f".{path.name}.{temp_tag()}.tmp{''.join(path.suffixes)}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file '{tmp}'")
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.debug("wrote %s", path)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def file_state(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(inode, modification time in ns) of ``path``, or ``None`` when it does not exist: tells
    whether a file was (re)written since an earlier look."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


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
    except _READ_ERRORS as exc:
        raise ImageReadError(f"Cannot read image '{path}': {_describe(exc)}.") from exc


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


def _describe(exc: BaseException) -> str:
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


def _read_tiff(path: Path, memmap: bool) -> ImageData:
    with tifffile.TiffFile(path) as tif:
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
    if data is None:
        data = tifffile.memmap(path, series=0, mode="r")
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


def _gib(nbytes: float) -> str:
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GiB"
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.1f} MiB"
    return f"{int(nbytes)} bytes"


def available_memory() -> int | None:
    """Bytes of memory available now (Linux: MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


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
        raise ImageReadError(f"Cannot read image '{path}': {_describe(exc)}.") from exc
    if data.ndim == 3 and data.shape[-1] in (1, 2):  # gray (+ alpha): keep the gray plane
        data = data[..., 0]
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


# --------------------------------------------------------------------------------------------
# Pixel size
# --------------------------------------------------------------------------------------------


def _unit_scale(unit: Any) -> float | None:
    """Micrometres per ``unit`` (a length unit name as ImageJ or OME writes it), or None."""
    if not isinstance(unit, str):
        return None
    name = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").lower()
    return _UNIT_TO_UM.get(name)


def positive_number(value: Any) -> float | None:
    """``value`` as a finite float above 0 (a pixel size, a spacing), else ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


#: Pixel sizes and spacings (µm) outside this range are taken as unknown: a corrupt or hostile
#: header, which could not even be written back as TIFF resolution tags.
PLAUSIBLE_UM = (1e-5, 1e7)


def plausible_sizes(
    pixel_size: PixelSize | None, z_spacing: float | None, source: Any = "image"
) -> tuple[PixelSize | None, float | None]:
    """``pixel_size`` and ``z_spacing`` with values outside :data:`PLAUSIBLE_UM` dropped (with a
    warning)."""
    low, high = PLAUSIBLE_UM

    def fine(value: float) -> bool:
        return low <= value <= high

    if pixel_size is not None and not all(fine(v) for v in pixel_size):
        logger.warning("%s: ignoring the implausible pixel size %s µm", source, pixel_size)
        pixel_size = None
    if z_spacing is not None and not fine(z_spacing):
        logger.warning("%s: ignoring the implausible Z spacing %s µm", source, z_spacing)
        z_spacing = None
    return pixel_size, z_spacing


def _physical_sizes(tif: tifffile.TiffFile) -> tuple[PixelSize | None, float | None]:
    """(y, x) pixel size and Z spacing in micrometres from OME, ImageJ or resolution tags, each
    within :data:`PLAUSIBLE_UM`."""
    return plausible_sizes(*_stated_sizes(tif), tif.filename)


def _stated_sizes(tif: tifffile.TiffFile) -> tuple[PixelSize | None, float | None]:
    if tif.is_ome:
        sizes = _ome_sizes(tif)
        if sizes[0] is not None or sizes[1] is not None:
            return sizes
    if tif.is_imagej:
        return _imagej_sizes(tif)
    return _resolution_sizes(tif.pages.first, None), None


def _ome_sizes(tif: tifffile.TiffFile) -> tuple[PixelSize | None, float | None]:
    try:
        ome = tifffile.xml2dict(tif.ome_metadata or "")
    except (ValueError, TypeError, SyntaxError) as exc:
        logger.warning("ignoring unreadable OME metadata: %s", exc)
        return None, None
    image = ome.get("OME", {}).get("Image")
    if isinstance(image, list):
        image = image[0] if image else None
    pixels = image.get("Pixels", {}) if isinstance(image, dict) else {}

    def size(axis: str) -> float | None:
        value = positive_number(pixels.get(f"PhysicalSize{axis}"))
        scale = _unit_scale(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        return value * scale if value is not None and scale is not None else None

    y, x = size("Y"), size("X")
    if y is None and x is not None:
        y = x
    if x is None and y is not None:
        x = y
    return ((y, x) if y is not None and x is not None else None), size("Z")


def _imagej_sizes(tif: tifffile.TiffFile) -> tuple[PixelSize | None, float | None]:
    meta = tif.imagej_metadata or {}
    scale = _unit_scale(meta.get("unit"))
    pixel_size = _resolution_sizes(tif.pages.first, scale)
    z_scale = _unit_scale(meta.get("zunit", meta.get("unit")))
    spacing = positive_number(meta.get("spacing"))
    z_spacing = spacing * z_scale if spacing is not None and z_scale is not None else None
    return pixel_size, z_spacing


def _resolution_sizes(page: Any, unit_um: float | None) -> PixelSize | None:
    """Pixel size from the X/YResolution tags (pixels per unit).

    ``unit_um`` is the micrometres per unit given by ImageJ metadata; None means: use the TIFF
    ResolutionUnit tag (inch, cm, ...), and give up when it is NONE.
    """
    tags = getattr(page, "tags", None)
    if tags is None or "XResolution" not in tags:
        return None
    if unit_um is None:
        unit_um = _RESUNIT_TO_UM.get(int(page.resolutionunit))
        if unit_um is None:
            return None
    xres, yres = (positive_number(r) for r in page.resolution)
    if xres is None:
        return None
    yres = yres if yres is not None else xres
    return (unit_um / yres, unit_um / xres)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _as_label_array(labels: np.ndarray, dtype: str | None = None) -> np.ndarray:
    """``labels`` (any integer, bool or integer-valued float array) as uint16 or uint32.

    ``dtype`` None picks uint16 when the largest id fits, else uint32; ``"uint16"`` refuses ids
    that do not fit; ``"uint32"`` always gives uint32.
    """
    if dtype is not None and np.dtype(dtype) not in (np.uint16, np.uint32):
        raise UserError(f"Labels are written as uint16 or uint32, not {dtype}.")
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.astype(dtype or np.uint16)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise UserError("Labels must be whole numbers; got non-integer or NaN values.")
    elif labels.dtype.kind not in "iu":
        raise UserError(f"Labels must be an integer array, not {labels.dtype}.")
    if labels.size == 0:
        return labels.astype(dtype or np.uint16)
    low, high = labels.min(), labels.max()
    if low < 0:
        raise UserError(f"Labels must not be negative; the smallest label is {low}.")
    needed = labels_dtype(int(high))
    if dtype is not None and np.dtype(dtype).itemsize < needed.itemsize:
        raise UserError(
            f"Label ids go up to {int(high)}, which does not fit in {np.dtype(dtype)} "
            f"(at most {np.iinfo(np.dtype(dtype)).max}); use uint32."
        )
    return labels.astype(dtype or needed, copy=False)


def _check_axes(axes: str, ndim: int, allowed: str, what: str) -> str:
    axes = axes.upper()
    if len(axes) != ndim:
        raise UserError(f"{what} axes '{axes}' do not match an array with {ndim} dimensions.")
    if len(set(axes)) != len(axes) or any(a not in allowed for a in axes):
        raise UserError(f"{what} axes '{axes}' must be distinct letters from '{allowed}'.")
    if not axes.endswith("YX"):
        raise UserError(f"{what} axes '{axes}' must end with 'YX'.")
    return axes


def _check_pixel_size(pixel_size: Any, z_spacing: Any) -> tuple[PixelSize | None, float | None]:
    size = None
    if pixel_size is not None:
        values = tuple(pixel_size) if np.ndim(pixel_size) else (pixel_size, pixel_size)
        parsed = [positive_number(v) for v in values]
        if len(parsed) != 2 or None in parsed:
            raise UserError(f"Pixel size {pixel_size!r} must be two positive numbers (y, x) in µm.")
        size = (parsed[0], parsed[1])
    spacing = None
    if z_spacing is not None:
        spacing = positive_number(z_spacing)
        if spacing is None:
            raise UserError(f"Z spacing {z_spacing!r} must be a positive number in µm.")
    return size, spacing


def write_labels(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    axes: str = "YX",
    pixel_size: PixelSize | None = None,
    z_spacing: float | None = None,
    dtype: str | None = None,
) -> Path:
    """Write a label image as a zlib-compressed TIFF that Fiji/ImageJ opens with its pixel size.

    Labels whose largest id fits in uint16 are written as an ImageJ hyperstack (axes reordered to
    ImageJ's TZCYX order; pixel size as resolution tags with unit "um", Z spacing as ImageJ's
    ``spacing``; display range 0..max id). Larger ids are written as uint32 with the same ImageJ
    header written by hand (:mod:`~.imagej_tiff`): ImageJ opens them as a 32-bit hyperstack
    with the right channels, slices and frames and Z spacing, and tifffile, bioio and
    Bio-Formats read uint32. Only beyond 4 GB, which classic TIFF cannot hold, uint32 labels are
    an OME BigTIFF (a warning says that ImageJ 1.x cannot open it). All read back with
    :func:`read_image` with their axes and pixel size. The TIFF Software tag is
    :data:`LABELS_SOFTWARE`, which marks the file as a label image.

    Args:
        path: destination file (``.tif``); its folder must exist. An existing file is replaced.
        labels: integer label image (0 background), shape given by ``axes``, e.g. (Y, X) or
            (Z, Y, X); bool and integer-valued float arrays are accepted.
        axes: letters from ``"TZCYX"`` ending ``"YX"``, one per dimension of ``labels``.
        pixel_size: (y, x) pixel size in micrometres, or None.
        z_spacing: distance between Z planes in micrometres, or None.
        dtype: None (uint16 when the ids fit, else uint32), ``"uint16"`` (refuse larger ids) or
            ``"uint32"`` (always uint32).

    Returns:
        The path written.

    Raises:
        UserError: negative, non-integer or too large labels (for ``dtype``), axes that do not
            fit, a bad pixel size, or an output folder that does not exist.
    """
    if np.ndim(labels) < 2:
        raise UserError(
            f"Labels must be an image of at least 2 dimensions (Y, X); got shape "
            f"{np.shape(labels)}."
        )
    data = _as_label_array(labels, dtype)
    axes = _check_axes(axes, data.ndim, "TZCYX", "Label")
    pixel_size, z_spacing = _check_pixel_size(pixel_size, z_spacing)
    max_id = int(data.max()) if data.size else 0
    if data.dtype == np.uint16:
        order = sorted(range(len(axes)), key=lambda i: AXES.index(axes[i]))
        data = data.transpose(order)
        axes = "".join(axes[i] for i in order)
        kwargs = _imagej_kwargs(axes, pixel_size, z_spacing, max_id)
    elif fits_classic(data.nbytes):  # uint32 with an ImageJ header ImageJ reads as 32-bit
        axes = "".join(axes[i] for i in imagej_order(axes))
        data, kwargs = imagej_layout(
            data,
            _check_axes(axes, data.ndim, "TZCYX", "Label"),
            pixel_size,
            z_spacing,
            (0.0, float(max(max_id, 1))),
        )
    else:
        logger.warning(
            "%s: %s of uint32 labels are written as OME BigTIFF, which ImageJ 1.x "
            "cannot open (Fiji opens it with Bio-Formats)",
            path,
            _gib(data.nbytes),
        )
        kwargs = _ome_kwargs(axes, pixel_size, z_spacing, data.nbytes)
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            data,
            compression="zlib",
            photometric="minisblack",
            software=LABELS_SOFTWARE,
            **kwargs,
        )
    logger.info("wrote labels %s %s %s to %s", data.shape, axes, data.dtype, path)
    return Path(path)


def write_probabilities(
    path: str | os.PathLike[str],
    probs: np.ndarray,
    axes: str,
    pixel_size: PixelSize | None = None,
    z_spacing: float | None = None,
) -> Path:
    """Write class probabilities as a zlib-compressed float32 TIFF that ImageJ opens as a
    hyperstack with one channel per class (ImageJ's T, Z, C order; beyond 4 GB an OME BigTIFF,
    class axis first).

    Args:
        path: destination file; its folder must exist. An existing file is replaced.
        probs: float probabilities (C, *leading, Y, X), e.g. (C, Y, X) or (C, Z, Y, X); stored as
            float32.
        axes: axes of ``probs`` with the class axis "C" first (e.g. ``"CZYX"``), or the axes of
            the other dimensions only (e.g. ``"ZYX"``), in which case "C" is prepended.
        pixel_size: (y, x) pixel size in micrometres, or None.
        z_spacing: distance between Z planes in micrometres, or None.

    Returns:
        The path written. :func:`read_image` reads it back with its pixel size and the axes in
        ImageJ's order (``"CZYX"`` comes back as ``"ZCYX"``; ``"CYX"`` as ``"CYX"``).

    Raises:
        UserError: axes that do not fit, a bad pixel size, or an output folder that does not exist.
    """
    data = np.asarray(probs)
    axes = axes.upper()
    if "C" not in axes and len(axes) == data.ndim - 1:
        axes = "C" + axes
    axes = _check_axes(axes, data.ndim, "CTZYX", "Probability")
    pixel_size, z_spacing = _check_pixel_size(pixel_size, z_spacing)
    data = data.astype(np.float32, copy=False)
    if fits_classic(data.nbytes):  # an ImageJ hyperstack: the classes are its channels
        order = imagej_order(axes)
        data = data.transpose(order)
        axes = "".join(axes[i] for i in order)
        kwargs = _imagej_kwargs(axes, pixel_size, z_spacing, None)
        kwargs["metadata"].update(min=0.0, max=1.0, mode="grayscale")
    else:
        kwargs = _ome_kwargs(axes, pixel_size, z_spacing, data.nbytes)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, compression="zlib", photometric="minisblack", **kwargs)
    logger.info("wrote probabilities %s %s to %s", data.shape, axes, path)
    return Path(path)


def write_image(
    path: str | os.PathLike[str],
    image: np.ndarray,
    axes: str,
    pixel_size: PixelSize | None = None,
    z_spacing: float | None = None,
) -> Path:
    """Write an image as a zlib-compressed TIFF with its axes and pixel size.

    Images that ImageJ can hold (uint8, uint16 or float32; RGB only as uint8 with 3 samples) are
    written as an ImageJ hyperstack (axes reordered to TZCYX(S), pixel size as resolution tags in
    µm, Z spacing as ``spacing``); other dtypes as OME-TIFF with physical sizes in µm. Both read
    back with :func:`read_image` with their axes, dtype and pixel size.

    Args:
        path: destination file (``.tif``); its folder must exist. An existing file is replaced.
        image: the pixels, shape given by ``axes``, e.g. (Y, X), (Z, Y, X), (C, Y, X) or (Y, X, S)
            for RGB(A); the dtype is kept (bool is stored as uint8).
        axes: letters from ``"TZCYXS"`` ending ``"YX"`` or ``"YXS"``, one per dimension.
        pixel_size: (y, x) pixel size in micrometres, or None.
        z_spacing: distance between Z planes in micrometres, or None.

    Returns:
        The path written.

    Raises:
        UserError: axes that do not fit, a dtype TIFF cannot hold, a bad pixel size, or an output
            folder that does not exist.
    """
    data = np.asarray(image)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.dtype.kind not in "iuf":
        raise UserError(f"Cannot write an image of dtype {data.dtype} as TIFF.")
    rgb = axes.upper().endswith("S")
    axes = _check_axes(axes[:-1] if rgb else axes, data.ndim - rgb, "TZCYX", "Image") + "S" * rgb
    pixel_size, z_spacing = _check_pixel_size(pixel_size, z_spacing)
    imagej = data.dtype in (np.uint8, np.uint16, np.float32) and (
        not rgb or (data.dtype == np.uint8 and data.shape[-1] == 3)
    )
    if imagej:
        order = sorted(range(len(axes)), key=lambda i: AXES.index(axes[i]))
        data = data.transpose(order)
        axes = "".join(axes[i] for i in order)
        kwargs = _imagej_kwargs(axes, pixel_size, z_spacing, None)
    else:
        kwargs = _ome_kwargs(axes, pixel_size, z_spacing, data.nbytes)
    photometric = "rgb" if rgb else "minisblack"
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, compression="zlib", photometric=photometric, **kwargs)
    logger.info("wrote image %s %s %s to %s", data.shape, axes, data.dtype, path)
    return Path(path)


def _imagej_kwargs(
    axes: str, pixel_size: PixelSize | None, z_spacing: float | None, max_id: int | None
) -> dict[str, Any]:
    """tifffile arguments for an ImageJ hyperstack; ``max_id`` (labels) sets the display range."""
    metadata: dict[str, Any] = {"axes": axes}
    if max_id is not None:
        metadata.update(min=0.0, max=float(max(max_id, 1)))
    kwargs: dict[str, Any] = {"imagej": True, "metadata": metadata}
    if pixel_size is not None:
        kwargs["resolution"] = (1.0 / pixel_size[1], 1.0 / pixel_size[0])
    if pixel_size is not None or z_spacing is not None:
        metadata["unit"] = "um"
    if z_spacing is not None and "Z" in axes:
        metadata["spacing"] = z_spacing
    return kwargs


def _ome_kwargs(
    axes: str, pixel_size: PixelSize | None, z_spacing: float | None, nbytes: int
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"axes": axes}
    # BigTIFF when the compressed data might pass the 4 GiB limit of classic TIFF.
    kwargs: dict[str, Any] = {"ome": True, "metadata": metadata, "bigtiff": nbytes > 2**31}
    if pixel_size is not None:
        metadata.update(
            PhysicalSizeY=pixel_size[0],
            PhysicalSizeYUnit="µm",
            PhysicalSizeX=pixel_size[1],
            PhysicalSizeXUnit="µm",
        )
        # Resolution tags too, for readers that ignore OME metadata: pixels per centimetre.
        kwargs["resolution"] = (1e4 / pixel_size[1], 1e4 / pixel_size[0])
        kwargs["resolutionunit"] = tifffile.RESUNIT.CENTIMETER
    if z_spacing is not None and "Z" in axes:
        metadata.update(PhysicalSizeZ=z_spacing, PhysicalSizeZUnit="µm")
    return kwargs
