"""One row per object: scikit-image ``regionprops_table`` measurements plus ``quality``.

The columns, in order:

- plane index columns for a stack measured plane by plane, named after the axis in lower case
  (``t`` for a time-lapse, ``z`` for a Z stack whose labels are 2D per plane);
- ``label``, ``area`` (pixels; voxels in 3D), ``centroid-0``, ``centroid-1`` (``centroid-2`` in 3D),
  ``bbox-0`` .. ``bbox-3`` (``bbox-5`` in 3D; min row, min col, max row, max col, max exclusive),
  ``intensity_mean`` (``intensity_mean-0``, ``-1``, ... for several channels), all in array
  coordinates and with scikit-image's names;
- ``quality``: the chance (0-1) that the object is right (:mod:`.quality`), when the class
  probabilities are given;
- physical units when the pixel size is known: ``area_um2`` (``area_um3`` in 3D with a known Z
  spacing), ``centroid-0_um``, ``centroid-1_um`` (and ``centroid-2_um``).

A Z axis is measured as a volume when its labels are 3D (some id occurs in two planes), else plane
by plane; any other axis before Y, X (T) is always a plane index.
"""

from __future__ import annotations

import csv
import itertools
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..axes import CHANNEL_AXES
from ..errors import InputMismatchError

logger = logging.getLogger(__name__)

Table = dict[str, np.ndarray]


def is_volume(labels: np.ndarray, axes: str) -> bool:
    """Whether ``labels`` (axes ``axes``) hold 3D objects: an id in two neighbouring Z planes."""
    if "Z" not in axes:
        return False
    z = axes.index("Z")
    moved = np.moveaxis(np.asarray(labels), z, 0)
    for a, b in itertools.pairwise(moved):
        both = (a > 0) & (a == b)
        if both.any():
            return True
    return False


def _intensity(image: np.ndarray, image_axes: str, label_axes: str) -> np.ndarray:
    """The image arranged as ``label_axes`` plus a channel axis last: float (..., C)."""
    image = np.asarray(image)
    channel = [a for a in image_axes if a in CHANNEL_AXES]
    order = [image_axes.index(a) for a in label_axes] + [image_axes.index(a) for a in channel]
    if sorted(order) != list(range(image.ndim)):
        raise InputMismatchError(
            f"the image's axes {image_axes} do not fit the labels' axes {label_axes}"
        )
    arranged = np.transpose(image, order)
    if not channel:
        arranged = arranged[..., None]
    return arranged.reshape(*arranged.shape[: len(label_axes)], -1)


def objects_table(
    labels: np.ndarray,
    axes: str,
    image: np.ndarray | None = None,
    image_axes: str | None = None,
    probs: np.ndarray | None = None,
    pixel_size: tuple[float, float] | None = None,
    z_spacing: float | None = None,
    quality: Mapping[int, float] | None = None,
) -> Table:
    """Measure every object of ``labels``.

    Args:
        labels: integer instance labels, one axis per letter of ``axes`` (e.g. ``"YX"``,
            ``"ZYX"``, ``"TYX"``), 0 background.
        axes: letters from ``"TZQYX"`` ending in ``"YX"``.
        image: optional raw image for ``intensity_mean``: ``labels``' axes plus channel axes
            (C or S) anywhere, as given by ``image_axes``.
        image_axes: the image's axes (default ``axes``).
        probs: optional float32 class probabilities (3, *labels.shape) of an instance model, for
            ``quality``.
        pixel_size: (y, x) pixel size in micrometres, or None.
        z_spacing: Z step in micrometres, or None.
        quality: instead of ``probs``, the quality of each id measured earlier (e.g. by the
            Review widget); ids missing from it get NaN (an empty cell in the CSV file).

    Returns:
        Column name -> array (one value per object), in the order of the module docstring; rows
        ordered by plane, then label.

    Raises:
        InputMismatchError: the shapes or axes do not fit.
    """
    from .quality import object_quality

    labels = np.asarray(labels)
    axes = axes.upper()
    if len(axes) != labels.ndim or not axes.endswith("YX"):
        raise InputMismatchError(f"labels of shape {labels.shape} do not fit axes {axes!r}")
    if probs is not None and tuple(probs.shape[1:]) != labels.shape:
        raise InputMismatchError(
            f"probabilities of shape {probs.shape} do not fit labels of shape {labels.shape}"
        )
    volume = is_volume(labels, axes)
    spatial = "ZYX" if volume else "YX"
    if volume:  # Z next to Y, X
        order = [i for i, a in enumerate(axes) if a not in spatial]
        order += [axes.index(a) for a in spatial]
        labels = np.transpose(labels, order)
        probs = None if probs is None else np.transpose(probs, [0] + [i + 1 for i in order])
        if image is not None:
            image_axes = image_axes or axes
            image = _intensity(image, image_axes, "".join(axes[i] for i in order))
        axes = "".join(axes[i] for i in order)
    elif image is not None:
        image = _intensity(image, image_axes or axes, axes)
    plane_axes = axes[: len(axes) - len(spatial)]
    parts: list[Table] = []
    for index in np.ndindex(*labels.shape[: len(plane_axes)]):
        part = _measure(labels[index], None if image is None else image[index])
        if probs is not None:
            plane_probs = np.asarray(probs[(slice(None), *index)])
            result = object_quality(plane_probs, labels[index], spatial_ndim=len(spatial))
            lookup = dict(zip(result.ids.tolist(), result.quality.tolist(), strict=True))
            part["quality"] = np.array([lookup[int(i)] for i in part["label"]], dtype=np.float64)
        elif quality is not None:
            known = {int(k): float(v) for k, v in quality.items()}
            values = [known.get(int(i), np.nan) for i in part["label"]]
            part["quality"] = np.array(values, dtype=np.float64)
        n = len(part["label"])
        plane = {
            a.lower(): np.full(n, i, dtype=np.int64) for a, i in zip(plane_axes, index, strict=True)
        }
        parts.append({**plane, **part})
    table = _concatenate(parts)
    _add_physical(table, spatial, pixel_size, z_spacing)
    return table


def _measure(labels: np.ndarray, intensity: np.ndarray | None) -> Table:
    from skimage.measure import regionprops_table

    properties = ["label", "area", "centroid", "bbox"]
    if intensity is not None:
        properties.append("intensity_mean")
    if intensity is not None and intensity.shape[-1] == 1:
        intensity = intensity[..., 0]
    table = regionprops_table(
        labels.astype(np.int64, copy=False), intensity_image=intensity, properties=properties
    )
    return {name: np.asarray(values) for name, values in table.items()}


def _concatenate(parts: list[Table]) -> Table:
    if not parts:
        return {}
    names = list(parts[0])
    return {name: np.concatenate([p[name] for p in parts]) for name in names}


def _add_physical(
    table: Table, spatial: str, pixel_size: tuple[float, float] | None, z_spacing: float | None
) -> None:
    if pixel_size is None or "area" not in table:
        return
    size = {"Y": float(pixel_size[0]), "X": float(pixel_size[1]), "Z": z_spacing}
    if len(spatial) == 2:
        table["area_um2"] = table["area"] * size["Y"] * size["X"]
    elif z_spacing is not None:
        table["area_um3"] = table["area"] * size["Y"] * size["X"] * float(z_spacing)
    for i, axis in enumerate(spatial):
        if size[axis] is not None:
            table[f"centroid-{i}_um"] = table[f"centroid-{i}"] * float(size[axis])


def _cell(value: object) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    number = float(value)  # type: ignore[arg-type]
    if np.isnan(number):
        return ""
    if number.is_integer() and abs(number) < 2**53:
        return str(int(number))
    return f"{number:.6g}"


def write_csv(path: str | os.PathLike[str], table: Mapping[str, np.ndarray]) -> Path:
    """Write ``table`` as a comma-separated file with a header line (atomically).

    Returns:
        The path written.
    """
    from ..io.storage import atomic_path

    path = Path(path)
    names = list(table)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        n = len(table[names[0]]) if names else 0
        for row in range(n):
            writer.writerow([_cell(table[name][row]) for name in names])
    logger.info("wrote %d objects to %s", n, path)
    return path
