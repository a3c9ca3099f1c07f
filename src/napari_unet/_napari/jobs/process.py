"""Run a core progress generator in a separate process, with a napari progress bar.

The same contract as :func:`._workers.start_job`, but the job runs in a child process started
with the ``spawn`` method: it shares neither the viewer's interpreter lock nor its memory, so a
long training run cannot stall the viewer's event loop, and the memory it used (GPU memory
included) is given back when it ends. The child's events arrive over a queue that a ``QTimer``
polls on the main thread; Stop sets an event the child checks at each progress event. See
:mod:`._background` for the child's side.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.spawn
import queue
from collections.abc import Callable, Generator, Iterator
from typing import Any

from qtpy.QtCore import QTimer

from napari_unet.core.progress import Progress

from .background import ErrorReport, child_main
from .workers import ProgressMirror

logger = logging.getLogger(__name__)

#: How often the main thread looks for the child's events, in milliseconds.
POLL_MS = 50
#: Most events handled per poll (the rest wait for the next one), so the viewer stays fluid.
EVENTS_PER_POLL = 50


@contextlib.contextmanager
def _without_main_module() -> Iterator[None]:
    """Start spawned children without re-running the parent's ``__main__``.

    ``spawn`` normally imports the parent's main script in the child, which re-runs a user
    script that opens a viewer without an ``if __name__ == "__main__"`` guard. The child here
    needs only importable modules, so the main module is left out of what it is told to prepare.
    """
    original = multiprocessing.spawn.get_preparation_data

    def preparation_data(name: str) -> dict:
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    multiprocessing.spawn.get_preparation_data = preparation_data
    try:
        yield
    finally:
        multiprocessing.spawn.get_preparation_data = original


class ProcessJob:
    """A job running in a child process (the interface of :class:`._workers.Job`).

    Attributes:
        process: the child process.
        cancelled: True once :meth:`cancel` was called.
    """

    def __init__(
        self,
        target: Callable[..., Generator[Progress, None, Any]],
        args: tuple,
        description: str,
        callbacks: dict[str, Callable | None],
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._events = context.Queue()
        self._stop = context.Event()
        self._inbox = context.Queue()  # the queues must outlive the start of the child
        self._inbox.cancel_join_thread()  # never wait at exit for a child that did not read it
        self.process = context.Process(
            target=child_main,
            args=(self._inbox, self._events, self._stop),
            daemon=True,
            name="napari-unet job",
        )
        self.cancelled = False
        self._callbacks = callbacks
        self.progress = ProgressMirror(description)
        self._timer = QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)
        with _without_main_module():
            self.process.start()
        self._inbox.put((target, args))  # pickled and sent by the queue's own thread
        self._timer.start()

    @property
    def running(self) -> bool:
        """True until the job has ended (returned, failed or been cancelled)."""
        return self.progress.open

    def cancel(self) -> None:
        """Ask the job to stop at its next progress event."""
        self.cancelled = True
        self._stop.set()

    def terminate(self) -> None:
        """End the child now (when the viewer closes); no callback is called."""
        self._timer.stop()
        if self.process.is_alive():
            self.process.terminate()
        self._close()

    def _call(self, name: str, *args: Any) -> None:
        callback = self._callbacks.get(name)
        if callback is not None:
            callback(*args)

    def _poll(self) -> None:
        for _ in range(EVENTS_PER_POLL):
            try:
                kind, value = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "progress":
                self.progress.update(value)
                self._call("on_progress", value)
                continue
            self._end(kind, value)
            return
        else:
            return
        if not self.process.is_alive() and self._events.empty():
            code = self.process.exitcode
            self._end(
                "error",
                ErrorReport(
                    "ProcessError",
                    f"the background process ended unexpectedly (exit code {code}; out of memory?)",
                    False,
                    "",
                ),
            )

    def _end(self, kind: str, value: Any) -> None:
        self._timer.stop()
        self.process.join(timeout=5)
        self._close()
        if kind == "result":
            self._call("on_result", value)
        elif kind == "cancelled":
            self._call("on_cancelled")
        else:
            if value.details:
                logger.error("background job failed:\n%s", value.details)
            self._call("on_error", value.to_exception())
        self._call("on_finished")

    def _close(self) -> None:
        self.progress.close()


def start_process_job(
    target: Callable[..., Generator[Progress, None, Any]],
    args: tuple,
    description: str,
    on_progress: Callable[[Progress], None] | None = None,
    on_result: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_cancelled: Callable[[], None] | None = None,
    on_finished: Callable[[], None] | None = None,
) -> ProcessJob:
    """Run ``target(*args)`` (a progress generator) in a new process; every callback runs on the
    main (Qt) thread.

    Args:
        target: a module-level function (it is pickled by reference) returning a core progress
            generator; it, ``args``, the events and the result must be picklable.
        args: its arguments.
        description: the progress bar's first text.
        on_progress: called with each :class:`Progress` event.
        on_result: called with the generator's return value when it ends normally.
        on_error: called with the exception (a ``UserError`` for user errors) when the job fails
            or the process dies.
        on_cancelled: called when the job stopped because :meth:`ProcessJob.cancel` was called.
        on_finished: called last, in every case.

    Returns:
        The started :class:`ProcessJob`.
    """
    callbacks = {
        "on_progress": on_progress,
        "on_result": on_result,
        "on_error": on_error,
        "on_cancelled": on_cancelled,
        "on_finished": on_finished,
    }
    return ProcessJob(target, args, description, callbacks)
