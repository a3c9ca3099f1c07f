"""Run a core progress generator in a napari thread worker, with a napari progress bar.

Core jobs are generators of :class:`~napari_unet.core.progress.Progress` events that return their
result (see :mod:`napari_unet.core.progress`). :func:`start_job` runs one in a background thread,
so the viewer keeps responding, mirrors its events in napari's activity progress bar, and calls
back on the main thread. Cancelling asks the worker to stop at the generator's next yield.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress as progress_bar

from napari_unet.core.progress import Progress

logger = logging.getLogger(__name__)


class _JobFailed(Exception):
    """Carries a ``RuntimeError`` out of the worker thread.

    superqt's worker takes a ``RuntimeError`` raised by the job for a deleted Qt object and drops
    it without emitting ``errored`` or ``finished``; PyTorch reports most failures as
    ``RuntimeError``. Wrapped, the error reaches ``on_error`` (unwrapped again) and the job ends.
    """

    def __init__(self, original: RuntimeError) -> None:
        super().__init__(str(original))
        self.original = original


class ProgressMirror:
    """A napari progress bar that follows a job's :class:`Progress` events (a new stage or a new
    total restarts it); used by thread and process jobs alike.

    Attributes:
        bar: the napari progress bar, ``None`` once closed.
    """

    def __init__(self, description: str) -> None:
        self.bar: progress_bar | None = progress_bar(total=0, desc=description)
        self._stage = ""
        self._done = 0

    @property
    def open(self) -> bool:
        """True until :meth:`close`."""
        return self.bar is not None

    def update(self, event: Progress) -> None:
        """Show ``event`` (ignored once closed)."""
        bar = self.bar
        if bar is None:
            return
        if event.stage != self._stage or (event.total and bar.total != event.total):
            self._stage, self._done = event.stage, 0
            bar.total = event.total or 0
            bar.n = 0
        if event.total and event.done > self._done:
            bar.update(event.done - self._done)
            self._done = event.done
        if event.message:
            bar.set_description(event.message[:80])

    def close(self) -> None:
        """Close the bar (once)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Job:
    """A running background job.

    Attributes:
        worker: the napari/superqt generator worker (signals ``yielded``, ``returned``,
            ``errored``, ``aborted``, ``finished``).
        cancelled: True once :meth:`cancel` was called.
        progress: the napari progress bar that follows the job.
    """

    def __init__(self, worker: GeneratorWorker, progress: ProgressMirror) -> None:
        self.worker = worker
        self.cancelled = False
        self.progress = progress
        self._outcome = False  # returned, errored or aborted was emitted

    @property
    def running(self) -> bool:
        """True until the worker has finished (returned, failed or been cancelled)."""
        return self.progress.open

    def cancel(self) -> None:
        """Ask the job to stop at its next progress event."""
        self.cancelled = True
        self.worker.quit()

    def _close(self) -> None:
        self.progress.close()

    def _mark_outcome(self, *_: object) -> None:
        self._outcome = True


def start_job(
    job: Generator[Progress, None, Any],
    description: str,
    on_progress: Callable[[Progress], None] | None = None,
    on_result: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_cancelled: Callable[[], None] | None = None,
    on_finished: Callable[[], None] | None = None,
) -> Job:
    """Run ``job`` in a background thread; every callback runs on the main (Qt) thread.

    Args:
        job: a core progress generator (not yet started).
        description: the progress bar's first text.
        on_progress: called with each :class:`Progress` event.
        on_result: called with the generator's return value when it ends normally.
        on_error: called with the exception when the job fails.
        on_cancelled: called when the job stopped because :meth:`Job.cancel` was called.
        on_finished: called last, in every case.

    Returns:
        The started :class:`Job`.
    """

    def run() -> Generator[Progress, None, Any]:
        try:
            return (yield from job)
        except RuntimeError as exc:
            raise _JobFailed(exc) from exc

    # with an error callback, errors go to it instead of being re-raised in the main thread
    worker = create_worker(run, _start_thread=False, _ignore_errors=on_error is not None)
    handle = Job(worker, ProgressMirror(description))
    worker.yielded.connect(handle.progress.update)
    for signal in (worker.returned, worker.errored, worker.aborted):
        signal.connect(handle._mark_outcome)
    if on_progress is not None:
        worker.yielded.connect(on_progress)
    if on_result is not None:
        worker.returned.connect(on_result)
    if on_error is not None:
        worker.errored.connect(lambda exc: on_error(_unwrap(exc)))
    if on_cancelled is not None:
        worker.aborted.connect(on_cancelled)

        # a job cancelled after its last event ends with neither a result nor ``aborted``
        def cancelled_late() -> None:
            if handle.cancelled and not handle._outcome:
                on_cancelled()

        worker.finished.connect(cancelled_late)
    worker.finished.connect(handle._close)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return handle


def _unwrap(exc: BaseException) -> BaseException:
    return exc.original if isinstance(exc, _JobFailed) else exc
