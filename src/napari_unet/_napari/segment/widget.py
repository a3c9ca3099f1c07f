"""The Segment widget: run a U-Net on an image layer and get a Labels layer.

Choose an image (2D, a stack, RGB or multichannel) and a model (built-in, the user's own, or a
file), press Run. The network runs in the background with napari's progress bar; Run becomes
Cancel meanwhile. A stack's labels appear plane by plane in a new layer as the network finishes
each plane (a single plane's labels appear at once: its watershed needs the whole plane).

Where results go:

- "New layer" (the default): a new Labels layer named ``"<image> labels [<model>]"`` (then
  ``"... (2)"``), with the image's scale, translate and units. For "this plane" on a stack, the
  new layer has the stack's shape and only the current plane is filled, so that it lines up with
  the image; choose it as the output to fill further planes into it.
- An existing Labels layer of the right shape, chosen explicitly: its labels (or only the current
  plane's) are replaced. If the layer holds anything that Segment did not write (the user edited
  it, or Segment never wrote it), the widget asks first (:meth:`SegmentWidget.confirm`); if it is
  edited while the run goes on, the result goes to a new layer instead.

A failed or cancelled run changes no existing layer (a new layer being filled is removed).

The probabilities of the last runs are kept per (image layer, model, plane or stack): changing a
threshold makes the labels again from them without running the network (by itself after a short
pause when the labels were not edited, or with "Apply thresholds", which asks before replacing
edited labels).

A large image (a dask or zarr array, as the reader gives for zarr folders and large TIFFs, or more
than 64 megapixels) is segmented block by block into a new zarr-backed Labels layer instead
(:mod:`.blockwise`); no probabilities are kept for those runs.

A model of two channels (nucleus + cytoplasm, say) takes the image and a "Second channel" layer of
its shape, stacked as channels (:mod:`..files.channels`); a model whose channel count does not
match the input is refused with a message that says both counts.

The widget is in three parts: this module (controls, viewer events, the public interface),
:mod:`.planning` (what a run works on) and :mod:`.running` (starting runs, taking results).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning

from napari_unet.core.errors import UserError

from ..files.export_model import ModelExport
from ..files.layer_info import looks_like_labels
from ..review.edits import watch_viewer
from . import layers
from .engine import load_engine
from .form import LOAD_FROM_FILE, NEW_LAYER, NO_SECOND, SegmentForm
from .hints import LayerHints
from .job import ProbabilityStore
from .logic import written_by_us
from .models import ModelChoice, ModelList, model_summary, model_tiling
from .pixel import pixel_size_of, set_pixel_size
from .planning import SegmentPlanning
from .running import SegmentRuns, report

if TYPE_CHECKING:
    import napari

    from ..jobs.workers import Job

logger = logging.getLogger(__name__)

#: Pause (ms) after the last threshold change before the labels are made again.
RETHRESHOLD_DELAY_MS = 400


class SegmentWidget(SegmentPlanning, SegmentRuns, SegmentForm):
    """Segment an image layer with a U-Net (see the module docstring).

    Attributes:
        viewer: the viewer.
        job: the running background job (a segmentation or a re-thresholding), else ``None``.
        ready: whether PyTorch is loaded and the models listed (the first opening imports
            PyTorch in the background; Run is disabled until then).
    """

    @property
    def block_size(self) -> int | None:
        """Core side in pixels of the blocks of blockwise runs (``None``: the engine's default,
        about 4096 pixels with the context); the "Block (px)" field, 0 meaning automatic."""
        return int(self.block_pixels.value) or None

    @block_size.setter
    def block_size(self, value: int | None) -> None:
        self.block_pixels.value = int(value or 0)

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.job: Job | None = None
        self._plan: layers.RunPlan | None = None
        self._models = ModelList()
        self._kept = ProbabilityStore()
        self._model_before: ModelChoice | None = None
        self._device_type = "cpu"
        self._run_clicked_at = -float("inf")
        super().__init__(
            self._image_choices, self._model_choices, self._output_choices, self._second_choices
        )
        self._timer = _single_shot(RETHRESHOLD_DELAY_MS, self._auto_rethreshold)
        self.ready = False
        self._loader = load_engine(self._on_engine_ready, self._on_engine_failed)
        if not self.ready:
            self._show_loading()
        self._connect()
        self.hints = LayerHints(viewer)
        self.insert(1, self.hints)
        self.exporter = ModelExport(lambda: self.model.value, self).attach(self, self.model_info)
        watch_viewer(viewer)  # follow the user's corrections of the labels (see _edits)
        active = viewer.layers.selection.active
        if isinstance(active, Image) and not looks_like_labels(active):
            self.image.value = active.unique_id
        else:  # e.g. the labels of a sample are the active layer
            first = next((layer for layer in viewer.layers if isinstance(layer, Image)
                          and not looks_like_labels(layer)), None)  # fmt: skip
            if first is not None:
                self.image.value = first.unique_id
        self._on_image_changed()

    # --- public interface --------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a job is running."""
        return self.job is not None

    def refresh_models(self, select: str | None = None) -> None:
        """List the models again (built-in, the user's folder, files loaded) and select
        ``select`` (a model name or file path), else keep the current one, else the starter."""
        current = self.model.value if isinstance(self.model.value, ModelChoice) else None
        self._models.refresh()
        self.model.reset_choices()
        wanted = self._models.find(select)
        if select and wanted is None:
            show_warning(f"No model named {select!r} was found.")
        current = self._models.find(str(current.path)) if current else None
        self._set_model(wanted or current or self._models.default())

    def load_model_file(self, path: str | Path) -> ModelChoice | None:
        """Load a model file, add it to the list and select it. A file that cannot be read
        gives a notification, leaves the selection as it was and returns ``None``."""
        try:
            choice = self._models.load_file(path)
        except UserError as exc:
            show_error(str(exc))
            self._set_model(self._model_before)
            return None
        self.refresh_models(select=str(choice.path))
        return choice

    def choose_model_file(self) -> str | None:
        """Ask for a model file with a file dialog (tests replace this method)."""
        from qtpy.QtWidgets import QFileDialog

        from napari_unet.core.network.registry import user_models_dir

        path, _ = QFileDialog.getOpenFileName(
            self.native, "Load a napari-unet model", str(user_models_dir()),
            "Models (*.safetensors *.zip rdf.yaml *.rdf.yaml);;All files (*)",
        )  # fmt: skip
        return path or None

    def select_image(self, layer: Any, second: Any = None) -> None:
        """Select an image layer of this viewer, and the layer of its second channel (``None``:
        the image alone).

        Raises:
            UserError: ``layer`` or ``second`` is not an Image layer of this viewer.
        """
        self.image.reset_choices()
        self.second.reset_choices()
        for chosen in [layer] if second is None else [layer, second]:
            if (not isinstance(chosen, Image)
                    or layers.find_layer(self.viewer, chosen.unique_id) is None):  # fmt: skip
                name = getattr(chosen, "name", chosen)
                raise UserError(f"'{name}' is not an image layer of this viewer.")
        self.image.value = layer.unique_id
        self.second.value = second.unique_id if second is not None else NO_SECOND

    def run(self) -> Job | None:
        """Segment the selected image (the current plane or the whole stack) in the background.

        Returns the started job, or ``None`` when nothing was started (a notification or the
        status line says why).
        """
        if self.busy:
            show_info("A job is already running; cancel it first.")
            return None
        if not self.ready:
            show_info("PyTorch is still loading; press Run again in a moment.")
            return None
        if self._blockwise():
            return self._start_blockwise()
        try:
            plan = self._make_plan()
        except UserError as exc:
            show_warning(str(exc))
            return None
        if plan is None:
            self.status.value = "Nothing was changed."
            return None
        return self._start_segmentation(plan)

    def cancel(self) -> None:
        """Stop the running job at its next step (nothing is written)."""
        if self.job is not None:
            self.job.cancel()
            self.status.value = "Cancelling..."

    def apply_thresholds(self, ask: bool = True) -> Job | None:
        """Make the labels again from the kept probabilities with the current thresholds.

        Args:
            ask: ask before replacing labels that were edited (else leave them, with a note).

        Returns the started job, or ``None`` when nothing was started.
        """
        self._timer.stop()
        if self.busy:
            return None
        try:
            key, _ = self._current_key()
        except UserError as exc:
            show_warning(str(exc))
            return None
        kept = self._kept.get(key)
        if kept is None:
            if ask:
                show_info("Nothing to re-threshold: run the model on this image (and plane) first.")
            return None
        target = layers.find_layer(self.viewer, kept.labels_layer)
        if target is not None and not written_by_us(target.metadata, target.data):
            if not ask:
                self.status.value = f"'{target.name}' was edited: press Apply thresholds."
                return None
            if not self.confirm(f"'{target.name}' was edited. Replace it with new labels?"):
                return None
        return self._start_rethreshold(key, kept, target)

    def confirm(self, message: str) -> bool:
        """Ask the user a yes/no question (tests replace this method)."""
        from qtpy.QtWidgets import QMessageBox

        buttons = QMessageBox.StandardButton
        answer = QMessageBox.question(
            self.native, "napari-unet", message, buttons.Yes | buttons.No, buttons.No
        )
        return answer == buttons.Yes

    # --- choices -----------------------------------------------------------------------------

    def _image_choices(self, _: Any = None) -> list[tuple[str, str]]:
        return [(layer.name, layer.unique_id) for layer in self.viewer.layers
                if isinstance(layer, Image)]  # fmt: skip

    def _second_choices(self, _: Any = None) -> list[tuple[str, str]]:
        images = [layer for layer in self.viewer.layers
                  if isinstance(layer, Image) and not layer.rgb]  # fmt: skip
        return [("none", NO_SECOND)] + [(layer.name, layer.unique_id) for layer in images]

    def _model_choices(self, _: Any = None) -> list[tuple[str, Any]]:
        listed = [(c.label, c) for c in self._models.choices]
        return [*listed, ("Load from file...", LOAD_FROM_FILE)]

    def _output_choices(self, _: Any = None) -> list[tuple[str, str]]:
        choices = [("New layer", NEW_LAYER)]
        image = self._image_layer() if hasattr(self, "image") else None
        layout = self._layout_of(image)
        if layout is None:
            return choices
        shape = layout.label_shape
        for layer in self.viewer.layers:
            if tuple(np.shape(layer.data)) != shape:
                continue
            if isinstance(layer, Labels):
                choices.append((f"Replace '{layer.name}'", layer.unique_id))
            elif looks_like_labels(layer):  # a label TIFF that napari's reader opened
                choices.append((f"Replace '{layer.name}' (made a Labels layer)", layer.unique_id))
        return choices

    def _set_model(self, choice: ModelChoice | None) -> None:
        if choice is not None and choice not in self._models.choices:
            choice = None
        with self.model.changed.blocked():
            self.model.value = choice
        self._show_model(choice)

    # --- viewer and control events -----------------------------------------------------------

    def _connect(self) -> None:
        events = self.viewer.layers.events
        events.inserted.connect(self._on_layer_inserted)
        events.removed.connect(self._on_layer_removed)
        events.reordered.connect(self._refresh_choices)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_choices)
        self.image.changed.connect(self._on_image_changed)
        self.pixel_size.changed.connect(self._on_pixel_size_changed)
        self.model.changed.connect(self._on_model_changed)
        self.run_button.changed.connect(self._on_run_clicked)
        self.apply_button.changed.connect(lambda: self.apply_thresholds(ask=True))
        for widget in self.threshold_widgets():
            widget.changed.connect(self._on_threshold_changed)

    def _on_layer_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_choices)
        self._refresh_choices()
        if self.image.value is None and isinstance(event.value, Image):
            self.image.value = event.value.unique_id

    def _on_layer_removed(self, event: Any) -> None:
        self._kept.drop_image(event.value.unique_id)
        self._refresh_choices()

    def _refresh_choices(self, *_: Any) -> None:
        self.image.reset_choices()
        self.second.reset_choices()
        self.output.reset_choices()

    def _on_image_changed(self, *_: Any) -> None:
        self.output.reset_choices()
        self._show_pixel_size()
        layout = self._layout_of(self._image_layer())
        self.scope.enabled = bool(layout and layout.leading_axes)
        self._update_apply()

    def _show_pixel_size(self) -> None:
        image = self._image_layer()
        axes = self._axes_of(image)
        size = pixel_size_of(image, axes) if axes else None
        with self.pixel_size.changed.blocked():
            self.pixel_size.value = min(size or 0.0, self.pixel_size.max)
        self.pixel_size.enabled = axes is not None

    def _on_pixel_size_changed(self, value: float) -> None:
        """A pixel size typed for the selected image: its scale and metadata take it."""
        image = self._image_layer()
        if image is not None and value > 0:
            set_pixel_size(image, value)

    def _update_apply(self) -> None:
        """Enable "Apply thresholds" for instance models on images segmented in memory."""
        from .blockwise import NO_RETHRESHOLD

        blockwise = self._blockwise()
        choice = self.model.value
        semantic = isinstance(choice, ModelChoice) and choice.task == "semantic"
        self.apply_button.enabled = not (blockwise or semantic)
        self.apply_button.tooltip = NO_RETHRESHOLD if blockwise else None

    def _on_model_changed(self, value: Any) -> None:
        if value == LOAD_FROM_FILE:
            path = self.choose_model_file()
            if path:
                self.load_model_file(path)
            else:
                self._set_model(self._model_before)
            return
        self._show_model(value if isinstance(value, ModelChoice) else None)

    def _show_model(self, choice: ModelChoice | None) -> None:
        """Show the model's summary and take its tiling defaults."""
        self._model_before = choice
        self.model_info.value = model_summary(choice)
        if choice is None or choice.error:
            return
        tiling = model_tiling(choice, self._device_type)
        self.tile_size.value = min(max(tiling.tile_size, self.tile_size.min), self.tile_size.max)
        self.batch_size.value = min(max(tiling.batch_size, 1), self.batch_size.max)
        for widget in self.threshold_widgets():
            widget.enabled = choice.task != "semantic"
        self._update_apply()

    def _on_run_clicked(self, *_: Any) -> None:
        if not self.busy:
            self.run()
            self._run_clicked_at = time.monotonic()
        elif time.monotonic() - self._run_clicked_at > _double_click_seconds():
            self.cancel()
        # else: the second click of a double click on Run, not a Cancel

    def _on_threshold_changed(self, *_: Any) -> None:
        self._timer.start()  # restarts the pause

    def _auto_rethreshold(self) -> None:
        if not self.busy:
            self.apply_thresholds(ask=False)

    def _show_loading(self) -> None:
        self.run_button.enabled = self.model.enabled = False
        self.run_button.tooltip = "PyTorch is loading (a few seconds, the first time)"
        self.device_info.value = "Loading PyTorch..."

    def _on_engine_ready(self, device: tuple[str, str]) -> None:
        """PyTorch is imported: show the device, list the models, enable Run."""
        if self._destroyed():
            return
        self._device_type, self.device_info.value = device
        self.refresh_models()
        self.ready = True
        self.run_button.enabled = self.model.enabled = True
        self.run_button.tooltip = None

    def _on_engine_failed(self, exc: BaseException) -> None:
        if not self._destroyed():
            self.device_info.value = "PyTorch could not be loaded."
            report(exc, "Loading PyTorch")

    def _destroyed(self) -> bool:
        """Whether the widget was closed (its Qt objects deleted)."""
        try:
            self.native.objectName()
        except RuntimeError:
            return True
        return False


def _double_click_seconds() -> float:
    """The desktop's double-click interval in seconds (at least 0.4 s)."""
    from qtpy.QtWidgets import QApplication

    return max(QApplication.doubleClickInterval(), 400) / 1000


def _single_shot(delay_ms: int, callback: Any) -> Any:
    """A restartable single-shot Qt timer that calls ``callback``."""
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.setSingleShot(True)
    timer.setInterval(delay_ms)
    timer.timeout.connect(callback)
    return timer
