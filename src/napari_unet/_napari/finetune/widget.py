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
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error, show_info, show_warning

from napari_unet.core.config import DEFAULT_MODEL
from napari_unet.core.errors import UserError
from napari_unet.core.io.images import file_state

from ..layout import fit_in_dock
from ..review.edits import watch_viewer
from . import messages
from .form import FinetuneForm
from .job import SCRATCH, TrainRequest, augment_config
from .training_data import NotAnnotated, collect_inputs, describe_annotation

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


class FinetuneWidget(FinetuneForm):
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

    # --------------------------------------------------------------------------- training

    def _inputs(self) -> list:
        inputs, skipped = collect_inputs(self.pairs, self.rule.value, self.shapes_layer.value)
        if skipped:
            show_warning("No region covers " + ", ".join(skipped) + ": not used for training.")
        return inputs

    def _request(self) -> TrainRequest | None:
        config = self.train_config()
        base = self._base_path()
        named = self._output()
        if named is None:
            return None
        name, output = named
        inputs = self._inputs()  # the labels are copied now
        return TrainRequest(
            tuple(inputs),
            output,
            base,
            config,
            name,
            device=str(self.device.value),
            threads=self.threads,
        )

    @property
    def running(self) -> bool:
        """True while a training run is going on."""
        return self._job is not None and self._job.running

    def train(self) -> None:
        """Start training with the current settings (errors are shown as notifications)."""
        if self.running:
            show_warning("A training run is going on: stop it first.")
            return
        try:
            request = self._request()
            if request is not None:
                self._start(request)
        except NotAnnotated as exc:  # nothing to learn from: say so, change nothing
            self._tell(str(exc), show_warning)
        except UserError as exc:
            show_error(str(exc))
        except Exception as exc:  # an unexpected failure is reported, never raised into Qt
            logger.exception("cannot start training")
            show_error(f"Cannot start training: {exc}")

    def _start(self, request: TrainRequest) -> None:
        from .job import training_job

        self.plot.clear()
        self.last_status = None
        self._config = request.config
        self._run_name, self._run_output = request.name, request.output
        self._before = file_state(request.output)
        callbacks = {
            "on_progress": self._on_progress,
            "on_result": self._on_result,
            "on_error": self._on_error,
            "on_cancelled": self._on_cancelled,
            "on_finished": self._on_finished,
        }
        description = f"Fine-tuning {request.name}"
        if self.backend == "process":
            from ..jobs.process import start_process_job

            self.status.value = "starting the training process..."
            self._job = start_process_job(training_job, (request,), description, **callbacks)
        else:
            from ..jobs.workers import start_job

            self.status.value = "starting..."
            self._job = start_job(training_job(request), description, **callbacks)
        self.train_button.enabled = False
        self.stop_button.enabled = True
        self._register_task(description)

    def _register_task(self, description: str) -> None:
        """Tell napari a task runs, so that closing the viewer asks first and then stops it."""
        from napari.utils.task_status import Status

        register = _window_method(self._viewer, "_register_task_status")
        if register is not None:
            self._task_id = register(
                "napari-unet", Status.BUSY, description, cancel_callback=self._abandon
            )

    def _task_done(self) -> None:
        from napari.utils.task_status import Status

        update = _window_method(self._viewer, "_update_task_status")
        if self._task_id is not None and update is not None:
            update(self._task_id, Status.COMPLETED)
        self._task_id = None

    def _abandon(self) -> bool:
        """Stop the run because the viewer closes (napari's cancel callback)."""
        self._on_destroyed()
        return True

    def closed_while_training(self) -> None:
        """The panel was closed during training: stop the run, or keep it (and the panel)."""
        if not self.running:
            return
        if self.confirm(
            "Training is running. Stop it? (The best model so far is kept.)\n"
            "No: keep training, and keep the Fine-tune panel open."
        ):
            self.stop()
        else:
            self._viewer.window.add_dock_widget(self, name="Fine-tune (napari-unet)", area="right")

    def stop(self) -> None:
        """Stop training at the next step; the best model so far is kept."""
        if self.running:
            self.status.value = "stopping..."
            self._job.cancel()

    def _on_progress(self, event: Any) -> None:
        if self._closed:
            return
        status = event.payload
        if status is None or not hasattr(status, "kind"):
            self.status.value = event.message
            return
        self.last_status = status
        if status.kind == "step":
            self.plot.add_loss(status.step, status.loss)
        elif status.kind == "validation" and (
            "ap_50" in status.metrics or "pixel_iou" in status.metrics
        ):
            self.plot.add_score(status.step, status.metrics["score"])
        self.status.value = messages.status_text(status)

    def _saved(self) -> bool:
        """Whether this run wrote its model file."""
        state = file_state(self._run_output) if self._run_output is not None else None
        return state is not None and state != self._before

    def _on_result(self, path: Any) -> None:
        if self._closed:
            return
        saved = path is not None and self._saved()
        self._tell(
            messages.finished_message(self.last_status, self._run_name, saved, self._config),
            show_info,
        )
        if saved:
            self._publish(self._run_name, messages.improved(self.last_status))

    def _on_cancelled(self) -> None:
        if self._closed:
            return
        saved = self._saved()
        self._tell(messages.stopped_message(self.last_status, self._run_name, saved), show_info)
        if saved:
            self._publish(self._run_name, messages.improved(self.last_status))

    def _on_error(self, exc: BaseException) -> None:
        if self._closed:
            return
        message = str(exc) if isinstance(exc, UserError) else f"Training failed: {exc}"
        if not isinstance(exc, UserError):
            logger.error("training failed", exc_info=exc)
        if self._saved():
            message += f" The best model so far is saved as {self._run_name!r}."
        self._tell(message, show_error)
        if self._saved():
            self._publish(self._run_name, messages.improved(self.last_status))

    def _tell(self, message: str, notify: Any) -> None:
        """The run's outcome, in the status line (which would otherwise keep the last step's
        text) and as a notification."""
        self.status.value = message
        notify(message)

    def _on_finished(self) -> None:
        self._task_done()
        if self._closed:
            return
        self.train_button.enabled = True
        self.stop_button.enabled = False
        if self.status.value.startswith(("starting", "stopping")):
            self.status.value = ""

    def _on_destroyed(self, *_: Any) -> None:
        self._closed = True
        job = self._job
        if job is not None and job.running:
            (job.terminate if hasattr(job, "terminate") else job.cancel)()

    # ------------------------------------------------------------------- after training

    def _segment_widget(self) -> Any:
        """The Segment widget (opened if needed), or ``None`` with a warning."""
        try:
            _, widget = self._viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
        except Exception as exc:  # any failure to open it must not break the viewer
            logger.warning("cannot open the Segment widget: %s", exc)
            show_warning(f"The Segment widget cannot be opened ({exc}).")
            return None
        return widget

    def _publish(self, name: str, better: bool) -> None:
        """Make the new model known: base model list, Apply button and, when it beat its base,
        the Segment widget and the base of the next round."""
        self.trained_model = name
        self.apply_button.enabled = True
        self.refresh_models(select=name if better else None)
        segment = self._segment_widget()
        if segment is not None:
            segment.refresh_models(select=name if better else None)

    def apply_to_image(self) -> None:
        """Segment the chosen image with the model trained last (through the Segment widget)."""
        if self.trained_model is None:
            show_warning("Train a model first.")
            return
        layer = self.apply_target.value
        if layer is None:
            layer = next((image for image, _ in self.pairs if image is not None), None)
        if layer is None:
            show_error("Choose the image to segment.")
            return
        segment = self._segment_widget()
        if segment is None:
            return
        try:
            segment.refresh_models(select=self.trained_model)
            segment.select_image(layer)
            segment.run()
        except UserError as exc:
            show_error(str(exc))
        except Exception as exc:  # an unexpected failure is reported, never raised into Qt
            logger.exception("cannot apply the model")
            show_error(f"Cannot apply the model: {exc}")

    # ---------------------------------------------------------------------- augmentation

    def preview_augmentation(self) -> list:
        """Add augmented samples of a patch of the first pair as layers (returns them)."""
        from .job import preview_samples
        from .training_data import plane_index

        try:
            pair = next((p for p in self.pairs if None not in p), None)
            if pair is None:
                raise UserError("Choose an image and its labels first.")
            inputs, _ = collect_inputs([pair], self.rule.value, self.shapes_layer.value)
            plane = plane_index(pair[0], self._viewer.dims.point)
            images, labels = preview_samples(
                inputs[0],
                self._in_channels(inputs[0]),
                augment_config(self.augmentation.value, bool(self.elastic.value)),
                plane=plane,
                patch_size=int(self.patch_size.value),
            )
        except UserError as exc:
            show_error(str(exc))
            return []
        except Exception as exc:  # an unexpected failure is reported, never raised into Qt
            logger.exception("cannot preview the augmentation")
            show_error(f"Cannot preview the augmentation: {exc}")
            return []
        return self._show_preview(pair[0], images, labels)

    def _in_channels(self, item: Any) -> int:
        from napari_unet.core.network.weights import read_metadata

        from .job import scratch_channels

        base = self._base_path()
        if base is None:
            return scratch_channels(item)
        return int(read_metadata(base).get("in_channels", 1))

    def _show_preview(self, image_layer: Any, images: Any, labels: Any) -> list:
        for layer in [la for la in self._viewer.layers if la.metadata.get("augmentation_preview")]:
            self._viewer.layers.remove(layer)
        scale = tuple(image_layer.scale[-2:])
        extent = image_layer.extent.world
        translate = (float(extent[0][-2]), float(extent[1][-1]) + 10 * scale[-1])
        common = {
            "scale": scale,
            "translate": translate,
            "metadata": {"augmentation_preview": True},
        }
        units = getattr(image_layer, "units", None)
        if units is not None:  # in the image's units (e.g. µm), as it is shown
            common["units"] = tuple(units[-2:])
        name = f"augmentation preview ({self.augmentation.value})"
        if images.shape[0] == 1:
            added = [self._viewer.add_image(images[0], name=name, **common)]
        else:
            added = list(self._viewer.add_image(images, channel_axis=0, name=name, **common))
        added.append(self._viewer.add_labels(labels, name=f"{name} labels", opacity=0.4, **common))
        return added


def _window_method(viewer: Any, name: str) -> Any:
    """A method of napari's window that has no public form yet (task status), or ``None``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return getattr(viewer.window, name, None)
