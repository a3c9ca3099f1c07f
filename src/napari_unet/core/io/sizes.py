"""Pixel size and Z spacing: units, plausibility, and what a TIFF's OME, ImageJ or resolution
metadata says (in micrometres)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import tifffile

from napari_unet.core.errors import UserError

logger = logging.getLogger(__name__)

PixelSize = tuple[float, float]


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
