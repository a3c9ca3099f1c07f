"""The objects table of Labels layers, for Export's "Also write the objects table" option.

One CSV file per Labels layer, ``<stem>_objects.csv`` beside its TIFF, with the columns of
:mod:`napari_unet.core.analysis.object_table`: intensities from the image layer chosen in Export
(or none),
physical units from the layer's scale or metadata, and ``quality`` when the Review widget ranked
the layer (kept in ``layer.metadata["napari_unet_quality"]``; objects painted since then have an
empty cell).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.axes import Layout
from napari_unet.core.errors import UserError
from napari_unet.core.progress import Progress

from ..review.widget import QUALITY_KEY
from .layer_info import layer_axes, physical_sizes

SUFFIX = "_objects.csv"


@dataclass(frozen=True)
class TableFile:
    """One table to write: the labels (a copy), what to measure them with, and where."""

    path: Path
    labels: np.ndarray
    axes: str
    image: Any
    image_axes: str | None
    pixel_size: tuple[float, float] | None
    z_spacing: float | None
    quality: Mapping[int, float] | None


def _quality_of(layer: Any) -> dict[int, float] | None:
    record = (layer.metadata or {}).get(QUALITY_KEY)
    if not isinstance(record, Mapping):
        return None
    return {int(i): float(q) for i, q in zip(record["ids"], record["quality"], strict=True)}


def plan_tables(
    layers: list[Any], folder: Path, stems: list[str], image: Any, overwrite: bool
) -> list[TableFile]:
    """The tables of ``layers`` (Labels), named ``folder/<stem>_objects.csv``.

    Raises:
        UserError: a table exists and ``overwrite`` is False.
    """
    tables = []
    for layer, stem in zip(layers, stems, strict=True):
        data = np.array(layer.data[0] if layer.multiscale else layer.data)
        axes = layer_axes(data.ndim, layer.metadata, allowed="TZYX")
        pixel_size, z_spacing = physical_sizes(axes, layer.scale, layer.metadata)
        intensity, intensity_axes = None, None
        if image is not None:
            pixels = image.data[0] if image.multiscale else image.data
            intensity_axes = layer_axes(np.ndim(pixels), image.metadata, rgb=bool(image.rgb))
            layout = Layout(intensity_axes, np.shape(pixels))
            fits = layout.label_axes == axes and layout.label_shape == data.shape
            if fits:
                intensity = pixels
            else:
                intensity_axes = None
        path = folder / f"{stem}{SUFFIX}"
        if path.exists() and not overwrite:
            raise UserError(
                f"'{path.name}' already exists in '{folder}'. Nothing was written; "
                "tick 'Overwrite existing files' to replace it."
            )
        tables.append(TableFile(path, data, axes, intensity, intensity_axes, pixel_size,
                                z_spacing, _quality_of(layer)))  # fmt: skip
    return tables


def then_tables(
    job: Generator[Progress, None, list[Path]], tables: list[TableFile]
) -> Generator[Progress, None, list[Path]]:
    """Run ``job`` (Export's file writing), then write ``tables``; returns every path written."""
    from napari_unet.core.analysis.object_table import objects_table, write_csv

    written = yield from job
    for done, table in enumerate(tables):
        yield Progress("export", done, len(tables), f"Writing {table.path.name}")
        image = None if table.image is None else np.asarray(table.image)
        measured = objects_table(
            table.labels,
            table.axes,
            image,
            table.image_axes,
            None,
            table.pixel_size,
            table.z_spacing,
            table.quality,
        )
        written.append(write_csv(table.path, measured))
    return written
