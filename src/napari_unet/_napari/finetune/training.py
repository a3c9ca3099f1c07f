"""Fine-tune runs: start training (in a separate process or a thread worker), follow it, stop
it, and tell the user how it ended.

:class:`FinetuneTraining` is a part of :class:`~.widget.FinetuneWidget`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info, show_warning

from napari_unet.core.errors import UserError
from napari_unet.core.io.storage import file_state

from . import messages
from .job import TrainRequest
from .training_data import NotAnnotated, collect_inputs

logger = logging.getLogger(__name__)


class FinetuneTraining:
    """Running a training (a part of :class:`~.widget.FinetuneWidget`)."""

    _viewer: Any
    _job: Any
    _closed: bool
    _before: tuple[int, int] | None
    _run_name: str
    _run_output: Path | None
    _task_id: Any
    _config: Any
    threads: int | None
    last_status: Any
    backend: str

    def _inputs(self) -> list:
        inputs, skipped = collect_inputs(
            self.pairs, self.rule.value, self.shapes_layer.value, self.second_channels
        )
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
        self._tell(
            messages.stopped_message(self.last_status, self._run_name, saved, self._config.keep),
            show_info,
        )
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


def _window_method(viewer: Any, name: str) -> Any:
    """A method of napari's window that has no public form yet (task status), or ``None``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return getattr(viewer.window, name, None)
