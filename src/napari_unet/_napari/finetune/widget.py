"""The Fine-tune widget: train a model on corrected labels, with a live plot and Stop.

The user lists (image, labels) pairs, says what counts as annotated, picks the base model, the
budget and the augmentation, names the new model and presses Train. By default only what the user
reviewed counts (see :mod:`._edits`), and the widget says how much that is. The labels are copied
at that moment (painting may go on); training runs in a separate process by default (see
:mod:`._process`; ``backend = "thread"`` runs it in a napari thread worker instead), the loss and
validation score appear in the plot, and Stop keeps the best checkpoint. A model is saved only
when it beats its base on the held-out crops (or when there is too little annotation to hold any
out); one that beat it is selected in the Segment widget and as the base of the next round, and
"Apply to image" runs it there. Closing the panel during training asks first; closing the viewer
stops the run (napari's task status).

Each pair may name a second channel of its image (nucleus + cytoplasm, say): the two layers are
stacked as the channels of one input, and a new network takes as many input channels.

The widget is in three parts: this module (controls, layers, models, the output's name),
:mod:`.training` (running a training) and :mod:`.results` (the new model, the preview).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_info

from napari_unet.core.config import DEFAULT_MODEL
from napari_unet.core.errors import UserError

from ..files.export_model import ModelExport
from ..layout import fit_in_dock
from ..review.edits import watch_viewer
from . import messages
from .form import FinetuneForm
from .job import SCRATCH
from .results import FinetuneResults
from .training import FinetuneTraining
from .training_data import describe_annotation

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)


def _training_threads() -> int:
    """Torch threads for training: all cores but one (left to the viewer), at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class FinetuneWidget(FinetuneTraining, FinetuneResults, FinetuneForm):
    """Fine-tune a model on the viewer's corrected labels.

    Attributes:
        backend: ``"process"`` (train in a separate process, the default: see
            ``benchmarks/gui_latency.py``) or ``"thread"`` (a napari thread worker).
        threads: torch threads used by training (``None``: torch's default).
        trained_model: name of the last model trained (or stopped) here, or ``None``.
        last_status: the latest training status (a ``TrainStatus``), or ``None``.
    """

    backend = "process"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._job: Any = None
        self._closed = False
        self._before: tuple[int, int] | None = None
        self._run_name = ""
        self._run_output: Path | None = None
        self._suggested = ""
        self.threads: int | None = _training_threads()
        self.trained_model: str | None = None
        self.last_status: Any = None
        self._task_id: Any = None
        self._config: Any = None
        super().__init__(viewer)
        watch_viewer(viewer)
        self.base_model.changed.connect(self._suggest_name)
        self.preview_button.changed.connect(self.preview_augmentation)
        self.train_button.changed.connect(self.train)
        self.stop_button.changed.connect(self.stop)
        self.apply_button.changed.connect(self.apply_to_image)
        self.refresh_models()
        self.add_pair()
        self.native.destroyed.connect(self._on_destroyed)
        viewer.layers.events.inserted.connect(self._layer_added)
        viewer.layers.events.removed.connect(self.update_annotated)
        for layer in viewer.layers:
            self._follow(layer)
        self.rule.changed.connect(self.update_annotated)
        self.shapes_layer.changed.connect(self.update_annotated)
        self.pair_rows.changed.connect(self.update_annotated)
        from .guard import CloseGuard

        self._guard = CloseGuard(self)
        self.update_annotated()
        self.exporter = ModelExport(parent=self, enabled=False).attach(self)
        fit_in_dock(self)

    # ------------------------------------------------------------------------ layers

    def _follow(self, layer: Any) -> None:
        from napari.layers import Labels

        if isinstance(layer, Labels):
            layer.events.paint.connect(self.update_annotated)

    def _layer_added(self, event: Any) -> None:
        """A layer opened after the widget: fill the pairs that lack an image or labels."""
        from napari.layers import Image

        if self._closed:
            return
        self._follow(event.value)
        self.reset_choices()
        for row in self.pair_rows:
            if row.image.value is None and isinstance(event.value, Image):
                row.image.value = event.value
            if row.labels_layer.value is None:
                row.pick_labels()
        self.update_annotated()

    def update_annotated(self, *_: Any) -> None:
        """Say how much of the listed labels counts as annotated under the chosen rule."""
        if self._closed:
            return
        try:
            text = describe_annotation(self.pairs, self.rule.value, self.shapes_layer.value)
        except (UserError, ValueError, RuntimeError) as exc:
            text = str(exc)
        self.annotated_info.value = text

    # ----------------------------------------------------------------------------- models

    def refresh_models(self, select: str | None = None) -> None:
        """Re-list the models (built-in and the user's) as base models, plus training from
        scratch; select the model named ``select`` if there is one, else keep the current
        choice, else the starter model."""
        from napari_unet.core.network.registry import list_models

        current = self.base_model.value
        self._models = [
            (f"{e.name} (built-in)" if e.builtin else e.name, str(e.path))
            for e in list_models()
            if e.error is None
        ]
        self._models.append((SCRATCH, SCRATCH))
        self.base_model.reset_choices()
        values = [value for _, value in self._models]
        wanted = [path for path in values if Path(path).stem == select]
        wanted += [current] + [path for _, path in self._models if Path(path).stem == DEFAULT_MODEL]
        chosen = next((v for v in wanted if v in values), values[0])
        self.base_model.value = chosen
        self._suggest_name()

    def _suggest_name(self, *_: Any) -> None:
        """Offer a free name derived from the base model when none is typed yet (or the last
        one was used)."""
        from napari_unet.core.network.registry import list_models

        from .job import free_name

        typed = self.model_name.value.strip()
        if typed and typed not in (self._suggested, self.trained_model):
            return
        base = self.base_model.value
        stem = "my-model" if base in (None, SCRATCH) else messages.tuned_stem(Path(base).stem)
        self._suggested = free_name(stem, [e.name for e in list_models()])
        self.model_name.value = self._suggested

    def _base_path(self) -> Path | None:
        value = self.base_model.value
        if value is None:
            raise UserError("Choose a base model (or train from scratch).")
        return None if value == SCRATCH else Path(value)

    def confirm(self, message: str) -> bool:
        """Ask the user a yes/no question (a dialog; tests override it)."""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self.native, "napari-unet", message)
        return answer == QMessageBox.StandardButton.Yes

    def _output(self) -> tuple[str, Path] | None:
        """The new model's name and file; ``None`` when the user declines to replace one."""
        from napari_unet.core.network.registry import list_models, user_models_dir

        from .job import check_model_name

        name = check_model_name(self.model_name.value)
        if any(e.builtin and e.name.lower() == name.lower() for e in list_models()):
            raise UserError(f"{name!r} is the name of a built-in model: choose another name.")
        folder = user_models_dir(create=True)
        output = folder / f"{name}.safetensors"
        if output.exists() and not self.confirm(
            f"A model named {name!r} exists in {folder}. Replace it with the new one?"
        ):
            show_info("Training not started: choose another name for the new model.")
            return None
        return name, output
