"""TIFF layouts that ImageJ 1.x opens with the right hyperstack dimensions and calibration.

ImageJ's own opener (also Fiji's File > Open for a TIFF) ignores OME-XML: it reads the dimensions
of a hyperstack (channels, slices, frames), the Z spacing and the unit from an ``ImageJ=``
ImageDescription, and the pixel size from the resolution tags. tifffile writes such files only
for uint8, uint16 and float32; ImageJ itself also reads 32-bit unsigned integers (as 32-bit
images, ids exact up to 2**24), so :func:`imagej_layout` writes the description by hand for
uint32 labels. tifffile, bioio and Bio-Formats read the same header, so the files keep their
axes and dtype everywhere.

ImageJ 1.x opens neither BigTIFF nor tiled TIFF: files meant for it are classic TIFF with strips,
which limits them to 4 GB (:data:`CLASSIC_LIMIT`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Largest uncompressed size written as classic TIFF (zlib never grows data by more than
#: 0.1 %, so the file stays under the 4 GiB of classic TIFF offsets).
CLASSIC_LIMIT = int(3.9 * 2**30)

_ORDER = "TZCYXS"


def imagej_order(axes: str) -> list[int]:
    """The transposition taking ``axes`` to ImageJ's T, Z, C, Y, X order."""
    return sorted(range(len(axes)), key=lambda i: _ORDER.index(axes[i]))


def imagej_description(
    axes: str,
    shape: tuple[int, ...],
    z_spacing: float | None,
    calibrated: bool,
    display: tuple[float, float] | None = None,
) -> str:
    """An ``ImageJ=`` ImageDescription for pages of an image with ``axes`` (in ImageJ order,
    letters of "TZCYX") and ``shape``."""
    sizes = dict(zip(axes, shape, strict=True))
    planes = math.prod(n for a, n in sizes.items() if a not in "YX")
    lines = ["ImageJ=1.11a", f"images={planes}"]
    for letter, key in (("C", "channels"), ("Z", "slices"), ("T", "frames")):
        if sizes.get(letter, 1) > 1:
            lines.append(f"{key}={sizes[letter]}")
    if sum(sizes.get(a, 1) > 1 for a in "CZT") > 1 or sizes.get("C", 1) > 1:
        lines.append("hyperstack=true")
    if sizes.get("C", 1) > 1:
        lines.append("mode=grayscale")
    if calibrated:
        lines.append("unit=micron")
    if z_spacing is not None and sizes.get("Z", 1) > 1:
        lines.append(f"spacing={z_spacing!r}")
    if display is not None:
        lines += [f"min={display[0]!r}", f"max={display[1]!r}"]
    return "\n".join(lines) + "\n"


def imagej_layout(
    data: np.ndarray,
    axes: str,
    pixel_size: tuple[float, float] | None,
    z_spacing: float | None,
    display: tuple[float, float] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``data`` as ImageJ pages (planes, Y, X) and the tifffile arguments of a classic TIFF with
    a hand-written ImageJ description (any dtype ImageJ reads, uint32 included).

    Args:
        data: the image, one axis per letter of ``axes`` (letters of "TZCYX", ending "YX").
        pixel_size: (y, x) in µm, written as resolution tags in pixels per µm.
        z_spacing: µm between Z planes.
        display: the display range (min, max).
    """
    order = imagej_order(axes)
    data = np.ascontiguousarray(data.transpose(order))
    axes = "".join(axes[i] for i in order)
    calibrated = pixel_size is not None or z_spacing is not None
    description = imagej_description(axes, data.shape, z_spacing, calibrated, display)
    kwargs: dict[str, Any] = {"description": description, "metadata": None, "bigtiff": False}
    if pixel_size is not None:
        kwargs["resolution"] = (1.0 / pixel_size[1], 1.0 / pixel_size[0])
    pages = data.reshape((-1, *data.shape[-2:])) if data.ndim > 2 else data
    return pages, kwargs


def fits_classic(nbytes: int) -> bool:
    """Whether an image of ``nbytes`` (uncompressed) can be written as classic TIFF."""
    return nbytes <= CLASSIC_LIMIT
