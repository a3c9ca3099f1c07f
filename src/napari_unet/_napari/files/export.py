"""The Export widget: Labels layers (and optionally their image) to Fiji-compatible TIFF files.

Labels are written by :func:`napari_unet.core.io.writing.write_labels` (uint16 ImageJ hyperstack, or
uint32 OME-TIFF, zlib-compressed, pixel size kept), the image by
:func:`napari_unet.core.io.writing.write_image`. Stacks can be written one file per plane
(``name_t003.tif``, ``name_z012.tif``). Existing files are never replaced unless "Overwrite
existing files" is ticked. :meth:`ExportWidget.plan` lists what would be written and
:meth:`ExportWidget.export` writes it; the Export button does the same in the background.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit, PushButton
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info

from napari_unet._napari.files.layer_info import (
    labels_candidates,
    layer_axes,
    looks_like_labels,
    physical_sizes,
)
from napari_unet._napari.files.writer import with_tiff_suffix
from napari_unet._napari.jobs.workers import Job, start_job
from napari_unet._napari.layout import Message, fit_in_dock
from napari_unet._napari.segment.hints import LayerHints
from napari_unet.core.axes import Layout
from napari_unet.core.errors import InputMismatchError, UserError
from napari_unet.core.io import writing
from napari_unet.core.labels import check_label_values, chosen_dtype
from napari_unet.core.progress import Progress, drain

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

DTYPES = ("auto", "uint16", "uint32")


@dataclass(frozen=True)
class ExportFile:
    """One file to write: ``data`` (shape given by ``axes``) to ``path``.

    ``dtype`` is ``"uint16"`` or ``"uint32"`` for labels and None for an image.
    """

    path: Path
    data: Any
    axes: str
    pixel_size: tuple[float, float] | None
    z_spacing: float | None
    labels: bool
    dtype: str | None = None


def safe_name(name: str) -> str:
    """``name`` made safe as a file name: characters other than letters, digits and ``.-``
    become ``_`` (spaces and brackets too), runs of ``_`` become one, and none is left at the
    ends: ``"img2d labels [starter]"`` -> ``"img2d_labels_starter"``."""
    cleaned = re.sub(r"[^\w.\-]+", "_", name)
    cleaned = re.sub(r"_+", "_", cleaned).strip("_ .")
    return cleaned or "labels"


def clean_stem(name: str) -> str:
    """A short file stem for a layer: its name without what Segment appends (the model in
    brackets, a `` (2)`` counter), made safe: ``"img2d labels [starter] (2)"`` ->
    ``"img2d_labels"``."""
    short = re.sub(r"\s*(\[[^\]]*\]|\(\d+\))", "", name).strip()
    return safe_name(short or name)


def source_paths(layers: Any) -> set[Path]:
    """The files that ``layers`` were read from (``layer.source.path``, or the reader's
    ``metadata["source_path"]``), resolved."""
    found: set[Path] = set()
    for layer in layers:
        metadata = layer.metadata if isinstance(layer.metadata, dict) else {}
        for path in (getattr(layer.source, "path", None), metadata.get("source_path")):
            if path:
                found.add(_resolved(Path(path)))
    return found


def _resolved(path: Path) -> Path:
    try:
        return path.expanduser().resolve()
    except OSError:
        return path


def planes(shape: tuple[int, ...], axes: str) -> Iterator[tuple[tuple[int, ...], str]]:
    """Every index into the leading ``shape`` with its file-name suffix, e.g. ``"_t001_z003"``.

    Indices are zero-padded to at least 3 digits (more when an axis has over 1000 planes).
    """
    widths = [max(3, len(str(n - 1))) for n in shape]
    for index in itertools.product(*(range(n) for n in shape)):
        parts = (f"{a.lower()}{i:0{w}d}" for a, i, w in zip(axes, index, widths, strict=True))
        yield index, "_" + "_".join(parts)


def label_dtype(name: str, data: Any, dtype: str | None) -> str:
    """The dtype to write a Labels layer's ``data`` with: ``dtype``, or for None (auto) uint16
    when the largest id fits, else uint32.

    Raises:
        UserError: the data are not integer labels, are negative, or ``dtype`` is uint16 and an
            id is larger than 65535.
    """
    array = np.asarray(data)
    if array.dtype.kind not in "iub":
        raise UserError(f"Labels layer '{name}' holds {array.dtype} values, not integer labels.")
    try:
        return chosen_dtype(check_label_values(array), dtype).name
    except UserError as exc:
        raise UserError(f"Labels layer '{name}': {exc}") from exc


def plan_labels(
    layer: Labels, folder: Path, stem: str, per_plane: bool, dtype: str | None
) -> list[ExportFile]:
    """The files for one Labels layer: ``folder/stem.tif``, or one per plane of a stack."""
    data = layer.data[0] if layer.multiscale else layer.data
    try:
        axes = layer_axes(data.ndim, layer.metadata, allowed="TZCYX")
    except InputMismatchError as exc:
        raise UserError(f"Labels layer '{layer.name}': {exc}") from exc
    pixel_size, z_spacing = physical_sizes(axes, layer.scale, layer.metadata)
    dtype = label_dtype(layer.name, data, dtype)
    if not per_plane or len(axes) == 2:
        path = folder / f"{stem}.tif"
        return [ExportFile(path, data, axes, pixel_size, z_spacing, True, dtype)]
    return [  # every axis of labels but Y, X indexes planes (a "C" of labels too)
        ExportFile(folder / f"{stem}{suffix}.tif", data[index], "YX", pixel_size, None, True, dtype)
        for index, suffix in planes(data.shape[:-2], axes[:-2])
    ]


def plan_image(
    layer: Image, folder: Path, stem: str, planes_of: tuple[tuple[int, ...], str] | None
) -> list[ExportFile]:
    """The files for an image layer: ``folder/stem.tif``, or one per plane when ``planes_of``
    (the leading shape and axes of the labels written per plane) matches the image's leading
    non-channel axes; otherwise the whole image."""
    data = layer.data[0] if layer.multiscale else layer.data
    try:
        axes = layer_axes(data.ndim, layer.metadata, rgb=bool(layer.rgb))
    except InputMismatchError as exc:
        raise UserError(f"Image layer '{layer.name}': {exc}") from exc
    pixel_size, z_spacing = physical_sizes(axes, layer.scale, layer.metadata)
    layout = Layout(axes, data.shape)
    shape = layout.leading_shape
    if planes_of is None or shape != planes_of[0] or not shape:
        return [ExportFile(folder / f"{stem}.tif", data, axes, pixel_size, z_spacing, False)]
    rest = layout.without(layout.leading_axes).axes
    files = []
    for index, suffix in planes(shape, planes_of[1]):
        path = folder / f"{stem}{suffix}.tif"
        files.append(ExportFile(path, data[layout.key(index)], rest, pixel_size, None, False))
    return files


def write_files(files: list[ExportFile]) -> Generator[Progress, None, list[Path]]:
    """Write ``files`` one by one (each atomically); yields progress, returns the paths written.

    Raises:
        UserError: a file cannot be written; the message says how many were written before.
    """
    written: list[Path] = []
    for done, item in enumerate(files):
        yield Progress("export", done, len(files), f"Writing {item.path.name}")
        try:
            if item.labels:
                labels = np.asarray(item.data)
                writing.write_labels(
                    item.path, labels, item.axes, item.pixel_size, item.z_spacing, item.dtype
                )
            else:
                writing.write_image(
                    item.path, item.data, item.axes, item.pixel_size, item.z_spacing
                )
        except (UserError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UserError(
                f"Export stopped at '{item.path.name}': {reason} "
                f"({len(written)} of {len(files)} files were written)."
            ) from exc
        written.append(item.path)
    yield Progress("export", len(files), len(files), "Export finished")
    return written


def _describe_existing(paths: list[Path]) -> str:
    names = ", ".join(p.name for p in paths[:5])
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    return (
        f"{len(paths)} file(s) already exist in '{paths[0].parent}': {names}{more}. Nothing was "
        "written; tick 'Overwrite existing files' to replace them, or change the name or folder."
    )


class ExportWidget(Container):
    """Export one or all Labels layers (and optionally their image) as TIFF files."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._default_folder = Path.home()
        self.job: Job | None = None
        self.labels_layer = ComboBox(label="Labels", choices=self._labels_choices)
        self.all_layers = CheckBox(text="Export all Labels layers", value=False)
        self.folder = FileEdit(label="Folder", mode="d", value=self._default_folder)
        self.file_name = LineEdit(label="File name", value="")
        self.dtype = ComboBox(label="Data type", choices=list(DTYPES), value="auto")
        self.per_plane = CheckBox(text="One file per plane (stacks)", value=False)
        self.with_image = CheckBox(text="Also export the image", value=False)
        self.image_layer = ComboBox(label="Image", choices=self._image_choices, enabled=False)
        self.overwrite = CheckBox(text="Overwrite existing files", value=False)
        self.objects = CheckBox(text="Also write the objects table (CSV)", value=False)
        self.export_button = PushButton(text="Export")
        self.status = Message(value="")
        super().__init__(
            widgets=[
                self.labels_layer,
                self.all_layers,
                self.folder,
                self.file_name,
                self.dtype,
                self.per_plane,
                self.with_image,
                self.image_layer,
                self.overwrite,
                self.objects,
                self.export_button,
                self.status,
            ]
        )
        self.labels_layer.changed.connect(self._on_labels_changed)
        self.all_layers.changed.connect(self._on_all_layers_changed)
        self.with_image.changed.connect(self._on_with_image_changed)
        self.export_button.changed.connect(self.start_export)
        viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._on_active_layer()
        self._on_labels_changed(self.labels_layer.value)
        fit_in_dock(self, pinned=(self.export_button, self.status))
        self.hints = LayerHints(viewer, channels=False)
        self.insert(1, self.hints)

    # ---- choices and defaults ------------------------------------------------------------

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        """The Labels layers, then the Image layers that hold labels (a label TIFF opened by
        napari's own reader), marked "(image)"."""
        return [
            (layer.name if isinstance(layer, Labels) else f"{layer.name} (image)", layer)
            for layer in labels_candidates(self._viewer)
        ]

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _on_active_layer(self, _event: Any = None) -> None:
        """Follow the layer list: the selected Labels layer is the one to export."""
        active = self._viewer.layers.selection.active
        if isinstance(active, Labels) and active in self._viewer.layers:
            self.labels_layer.reset_choices()
            self.labels_layer.value = active

    def _on_labels_changed(self, layer: Labels | None) -> None:
        if layer is None:
            return
        self.file_name.value = f"{clean_stem(layer.name)}.tif"
        image = self._matching_image(layer)
        if image is not None:
            self.image_layer.value = image
        if Path(self.folder.value) == self._default_folder:
            folder = self._source_folder([layer] + ([image] if image is not None else []))
            if folder is not None:
                self.folder.value = self._default_folder = folder

    def _source_folder(self, first: list[Any]) -> Path | None:
        """The folder of the file that the labels, else their image, else any layer was read
        from (where the user keeps the data), or ``None``."""
        others = [layer for layer in self._viewer.layers if layer not in first]
        for layer in [*first, *others]:
            for path in sorted(source_paths([layer])):
                if path.parent.is_dir():
                    return path.parent
        return None

    def _matching_image(self, labels: Labels) -> Image | None:
        """The first image layer whose Y, X size (and stack size) matches ``labels``."""
        shape = tuple(np.shape(labels.data[0] if labels.multiscale else labels.data))
        for _, image in self._image_choices():
            if image is labels or looks_like_labels(image):
                continue
            data = image.data[0] if image.multiscale else image.data
            image_shape = tuple(np.shape(data))[: image.ndim]
            if image_shape == shape:
                return image
        return None

    def _on_all_layers_changed(self, value: bool) -> None:
        self.labels_layer.enabled = not value
        self.file_name.enabled = not value

    def _on_with_image_changed(self, value: bool) -> None:
        self.image_layer.enabled = value

    # ---- the work ------------------------------------------------------------------------

    def plan(self) -> list[ExportFile]:
        """The files the current settings would write (nothing is written).

        Raises:
            UserError: nothing to export, no such folder, bad label values, uint16 too small,
                or two outputs with the same name.
        """
        layers = [layer for _, layer in self._labels_choices() if isinstance(layer, Labels)]
        if not self.all_layers.value:
            layers = [self.labels_layer.value] if self.labels_layer.value is not None else []
        if not layers:
            raise UserError("There is no Labels layer to export.")
        folder = Path(self.folder.value).expanduser()
        if not folder.is_dir():
            raise UserError(f"The output folder '{folder}' does not exist; choose a folder.")
        dtype = None if self.dtype.value == "auto" else str(self.dtype.value)
        files: list[ExportFile] = []
        for layer in layers:
            files += plan_labels(layer, folder, self._stem(layer), self.per_plane.value, dtype)
        if self.with_image.value:
            files += self._plan_image(folder, layers[0], {f.path for f in files})
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise UserError("Two exported files would have the same name; rename the layers.")
        return files

    def _stem(self, layer: Labels) -> str:
        if self.all_layers.value or not self.file_name.value.strip():
            return self._stems().get(layer.name, safe_name(layer.name))
        return with_tiff_suffix(safe_name(self.file_name.value.strip())).stem

    def _stems(self) -> dict[str, str]:
        """Stems of all Labels layers: the short :func:`clean_stem`, or the whole name made
        safe where two layers would share the short one."""
        names = [layer.name for layer in labels_candidates(self._viewer)]
        short = {name: clean_stem(name) for name in names}
        counts: dict[str, int] = {}
        for stem in short.values():
            counts[stem] = counts.get(stem, 0) + 1
        return {n: stem if counts[stem] == 1 else safe_name(n) for n, stem in short.items()}

    def _plan_image(self, folder: Path, labels: Labels, taken: set[Path]) -> list[ExportFile]:
        image = self.image_layer.value
        if image is None:
            raise UserError("Choose the image layer to export with the labels.")
        planes_of = None
        if self.per_plane.value:
            data = labels.data[0] if labels.multiscale else labels.data
            axes = layer_axes(data.ndim, labels.metadata, allowed="TZCYX")
            planes_of = (tuple(data.shape[:-2]), axes[:-2])
        stem = safe_name(image.name)
        files = plan_image(image, folder, stem, planes_of)
        sources = source_paths(self._viewer.layers)
        if any(f.path in taken or _resolved(f.path) in sources for f in files):
            # the labels' name, or the image's own file: write beside it under another name
            files = plan_image(image, folder, f"{stem}_image", planes_of)
        return files

    def _check_overwrite(self, files: list[ExportFile]) -> None:
        """Refuse files that a layer was read from (always) and existing files (unless
        "Overwrite existing files" is ticked)."""
        sources = source_paths(self._viewer.layers)
        for item in files:
            if _resolved(item.path) in sources:
                raise UserError(
                    f"'{item.path.name}' in '{item.path.parent}' is a file that an open layer "
                    "was read from; it is never written over. Nothing was written: change the "
                    "name or the folder."
                )
        existing = [f.path for f in files if f.path.exists()]
        if existing and not self.overwrite.value:
            raise UserError(_describe_existing(existing))

    def export(self) -> list[Path]:
        """Write the files now (in this thread); returns the paths written ([] on failure).

        Success and failure are shown as napari notifications and in the status line.
        """
        try:
            files = self.plan()
            self._check_overwrite(files)
            written = drain(self._with_tables(write_files(files)))
        except UserError as exc:
            self._failed(exc)
            return []
        self._succeeded(written)
        return written

    def start_export(self) -> Job | None:
        """Like :meth:`export` but writes in the background (the Export button); returns the
        job, or None when the settings were refused."""
        if self.job is not None and self.job.running:
            return self.job
        try:
            files = self.plan()
            self._check_overwrite(files)
            # the labels as they are now: painting during the export must not reach the files
            files = [replace(f, data=np.array(f.data)) if f.labels else f for f in files]
            job = self._with_tables(write_files(files))
        except UserError as exc:
            self._failed(exc)
            return None
        self.export_button.enabled = False
        self.status.value = f"Exporting {len(files)} file(s)..."
        self.job = start_job(
            job,
            "Exporting labels",
            on_result=self._succeeded,
            on_error=self._failed,
            on_finished=self._finished,
        )
        return self.job

    def _with_tables(self, job: Generator[Progress, None, list[Path]]) -> Any:
        """``job``, followed by the objects tables when "Also write the objects table" is on."""
        if not self.objects.value:
            return job
        from napari_unet._napari.files.objects import plan_tables, then_tables

        layers = [layer for _, layer in self._labels_choices()]
        if not self.all_layers.value:
            layers = [self.labels_layer.value]
        image = self.image_layer.value  # for intensities, when it fits the labels
        folder = Path(self.folder.value).expanduser()
        stems = [self._stem(layer) for layer in layers]
        return then_tables(job, plan_tables(layers, folder, stems, image, self.overwrite.value))

    def _succeeded(self, written: list[Path]) -> None:
        folder = written[0].parent if written else Path(self.folder.value)
        message = f"Exported {len(written)} file(s) to '{folder}'."
        self.status.value = message
        show_info(message)

    def _failed(self, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, UserError) else f"Export failed: {exc}"
        logger.warning("export failed: %s", exc)
        self.status.value = message
        show_error(message)

    def _finished(self) -> None:
        self.export_button.enabled = True
