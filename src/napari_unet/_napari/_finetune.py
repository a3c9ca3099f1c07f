"""The Fine-tune widget: train a model on corrected labels, with a live plot and Stop.

The user lists (image, labels) pairs, says what counts as annotated, picks the base model, the
budget and the augmentation, names the new model and presses Train. The labels are copied at that
moment (painting may go on); training runs in a separate process by default (see
:mod:`._process`; ``backend = "thread"`` runs it in a napari thread worker instead), the loss and
validation score appear in the plot, and Stop keeps the best checkpoint. The model is saved in the
user's model folder and selected in the Segment widget; "Apply to image" runs it there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error, show_info, show_warning

from napari_unet.core.errors import UserError
from napari_unet.core.io import file_state

from ._finetune_form import FinetuneForm
from ._layout import fit_in_dock
from ._training_data import collect_inputs
from ._training_job import SCRATCH, TrainRequest, augment_config

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
        super().__init__(viewer)
        self.base_model.changed.connect(self._suggest_name)
        self.preview_button.changed.connect(self.preview_augmentation)
        self.train_button.changed.connect(self.train)
        self.stop_button.changed.connect(self.stop)
        self.apply_button.changed.connect(self.apply_to_image)
        self.refresh_models()
        self.add_pair()
        self.native.destroyed.connect(self._on_destroyed)
        fit_in_dock(self)

    # ----------------------------------------------------------------------------- models

    def refresh_models(self, select: str | None = None) -> None:
        """Re-list the models (built-in and the user's) as base models, plus training from
        scratch; select the model named ``select`` if there is one, else keep the current
        choice, else the starter model."""
        from napari_unet.core.weights import list_models

        current = self.base_model.value
        self._models = [(f"{e.name} (built-in)" if e.builtin else e.name, str(e.path))
                        for e in list_models() if e.error is None]
        self._models.append((SCRATCH, SCRATCH))
        self.base_model.reset_choices()
        values = [value for _, value in self._models]
        wanted = [path for path in values if Path(path).stem == select]
        wanted += [current] + [path for _, path in self._models if Path(path).stem == "starter"]
        chosen = next((v for v in wanted if v in values), values[0])
        self.base_model.value = chosen
        self._suggest_name()

    def _suggest_name(self, *_: Any) -> None:
        """Offer a free name derived from the base model when none is typed yet (or the last
        one was used)."""
        from napari_unet.core.weights import list_models

        from ._training_job import free_name

        typed = self.model_name.value.strip()
        if typed and typed not in (self._suggested, self.trained_model):
            return
        base = self.base_model.value
        stem = "my-model" if base in (None, SCRATCH) else f"{Path(base).stem}-tuned"
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
        from napari_unet.core.weights import list_models, user_models_dir

        from ._training_job import check_model_name

        name = check_model_name(self.model_name.value)
        if any(e.builtin and e.name.lower() == name.lower() for e in list_models()):
            raise UserError(f"{name!r} is the name of a built-in model: choose another name.")
        folder = user_models_dir(create=True)
        output = folder / f"{name}.safetensors"
        if output.exists() and not self.confirm(
                f"A model named {name!r} exists in {folder}. Replace it with the new one?"):
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
        return TrainRequest(tuple(inputs), output, base, config, name,
                            device=str(self.device.value), threads=self.threads)

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
        except UserError as exc:
            show_error(str(exc))
        except Exception as exc:  # an unexpected failure is reported, never raised into Qt
            logger.exception("cannot start training")
            show_error(f"Cannot start training: {exc}")

    def _start(self, request: TrainRequest) -> None:
        from ._training_job import training_job

        self.plot.clear()
        self.last_status = None
        self._run_name, self._run_output = request.name, request.output
        self._before = file_state(request.output)
        callbacks = {"on_progress": self._on_progress, "on_result": self._on_result,
                     "on_error": self._on_error, "on_cancelled": self._on_cancelled,
                     "on_finished": self._on_finished}
        description = f"Fine-tuning {request.name}"
        if self.backend == "process":
            from ._process import start_process_job

            self.status.value = "starting the training process..."
            self._job = start_process_job(training_job, (request,), description, **callbacks)
        else:
            from ._workers import start_job

            self.status.value = "starting..."
            self._job = start_job(training_job(request), description, **callbacks)
        self.train_button.enabled = False
        self.stop_button.enabled = True

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
        elif status.kind == "validation" and ("ap_50" in status.metrics
                                              or "pixel_iou" in status.metrics):
            self.plot.add_score(status.step, status.metrics["score"])
        self.status.value = _status_text(status)

    def _saved(self) -> bool:
        """Whether this run wrote its model file."""
        state = file_state(self._run_output) if self._run_output is not None else None
        return state is not None and state != self._before

    def _on_result(self, path: Any) -> None:
        if self._closed:
            return
        self._tell(f"Finished: model {self._run_name!r} saved{self._best_text()}.", show_info)
        self._publish(self._run_name)

    def _on_cancelled(self) -> None:
        if self._closed:
            return
        if self._saved():
            self._tell(f"Stopped: the best model so far is saved as {self._run_name!r}"
                       f"{self._best_text()}.", show_info)
            self._publish(self._run_name)
        else:
            self._tell("Stopped before a model was saved.", show_info)

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
            self._publish(self._run_name)

    def _tell(self, message: str, notify: Any) -> None:
        """The run's outcome, in the status line (which would otherwise keep the last step's
        text) and as a notification."""
        self.status.value = message
        notify(message)

    def _best_text(self) -> str:
        best = getattr(self.last_status, "best", None) or {}
        return f" (validation score {best['score']:.3f})" if "score" in best else ""

    def _on_finished(self) -> None:
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

    def _publish(self, name: str) -> None:
        """Make the new model known: base model list, Segment widget, Apply button."""
        self.trained_model = name
        self.apply_button.enabled = True
        self.refresh_models()
        segment = self._segment_widget()
        if segment is not None:
            segment.refresh_models(select=name)

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
        from ._training_data import plane_index
        from ._training_job import preview_samples

        try:
            pair = next((p for p in self.pairs if None not in p), None)
            if pair is None:
                raise UserError("Choose an image and its labels first.")
            inputs, _ = collect_inputs([pair], self.rule.value, self.shapes_layer.value)
            plane = plane_index(pair[0], self._viewer.dims.point)
            images, labels = preview_samples(
                inputs[0], self._in_channels(inputs[0]),
                augment_config(self.augmentation.value, bool(self.elastic.value)),
                plane=plane, patch_size=int(self.patch_size.value))
        except UserError as exc:
            show_error(str(exc))
            return []
        except Exception as exc:  # an unexpected failure is reported, never raised into Qt
            logger.exception("cannot preview the augmentation")
            show_error(f"Cannot preview the augmentation: {exc}")
            return []
        return self._show_preview(pair[0], images, labels)

    def _in_channels(self, item: Any) -> int:
        from napari_unet.core.weights import read_metadata

        from ._training_job import scratch_channels

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
        common = {"scale": scale, "translate": translate,
                  "metadata": {"augmentation_preview": True}}
        name = f"augmentation preview ({self.augmentation.value})"
        if images.shape[0] == 1:
            added = [self._viewer.add_image(images[0], name=name, **common)]
        else:
            added = list(self._viewer.add_image(images, channel_axis=0, name=name, **common))
        added.append(self._viewer.add_labels(labels, name=f"{name} labels", opacity=0.4,
                                             **common))
        return added


def _status_text(status: Any) -> str:
    """One line on a training run: epoch, step, loss, validation, time left."""
    import math

    parts = [f"epoch {status.epoch}", f"step {status.step}"]
    if math.isfinite(status.loss):
        parts.append(f"loss {status.loss:.4f}")
    score = status.metrics.get("score") if "ap_50" in status.metrics or \
        "pixel_iou" in status.metrics else None
    if score is not None:
        parts.append(f"validation {score:.3f}")
    left = status.seconds_left
    if math.isfinite(left):
        parts.append(f"about {left / 60:.0f} min left" if left >= 90 else f"{left:.0f} s left")
    return " · ".join(parts)
