"""Writing labels, probabilities and images as TIFF, with axes and pixel size.

Every writer goes through :func:`~.storage.atomic_path`: the file is written under a temporary
name beside the destination and renamed when complete, so a failed or cancelled write never
leaves a partial file behind. Labels follow :mod:`napari_unet.core.labels` (uint16 when the ids
fit, else uint32).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_unet.core.axes import AXES
from napari_unet.core.errors import UserError
from napari_unet.core.io.imagej_tiff import fits_classic, imagej_layout, imagej_order
from napari_unet.core.io.sizes import PixelSize, _check_pixel_size
from napari_unet.core.io.storage import _gib, atomic_path
from napari_unet.core.labels import as_label_array

logger = logging.getLogger(__name__)


LABELS_SOFTWARE = "napari-unet labels"
"""The TIFF Software tag of files written by :func:`write_labels`: it marks them as label images."""


def _check_axes(axes: str, ndim: int, allowed: str, what: str) -> str:
    axes = axes.upper()
    if len(axes) != ndim:
        raise UserError(f"{what} axes '{axes}' do not match an array with {ndim} dimensions.")
    if len(set(axes)) != len(axes) or any(a not in allowed for a in axes):
        raise UserError(f"{what} axes '{axes}' must be distinct letters from '{allowed}'.")
    if not axes.endswith("YX"):
        raise UserError(f"{what} axes '{axes}' must end with 'YX'.")
    return axes


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
    data = as_label_array(labels, dtype)
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
        kwargs = ome_kwargs(axes, pixel_size, z_spacing, data.nbytes)
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
        kwargs = ome_kwargs(axes, pixel_size, z_spacing, data.nbytes)
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
        kwargs = ome_kwargs(axes, pixel_size, z_spacing, data.nbytes)
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


def ome_kwargs(
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
