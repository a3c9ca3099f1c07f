"""start_job: a core progress generator in a napari thread worker, with its progress bar."""

from __future__ import annotations

import threading
import time

import pytest
from napari.utils import progress

from napari_unet._napari.jobs.workers import start_job
from napari_unet.core.progress import Progress

TIMEOUT = 10_000


class Calls:
    """Records every callback of a job."""

    def __init__(self):
        self.events, self.results, self.errors = [], [], []
        self.cancelled = self.finished = 0
        self.order = []

    def kwargs(self):
        return {
            "on_progress": self.events.append,
            "on_result": lambda value: (self.results.append(value), self.order.append("result")),
            "on_error": lambda exc: (self.errors.append(exc), self.order.append("error")),
            "on_cancelled": self.cancel,
            "on_finished": self.finish,
        }

    def cancel(self):
        self.cancelled += 1
        self.order.append("cancelled")

    def finish(self):
        self.finished += 1
        self.order.append("finished")


def counting(n, result=42, pause=0.0):
    for i in range(1, n + 1):
        time.sleep(pause)
        yield Progress("count", i, n, f"step {i}")
    return result


def start(job, calls):
    handle = start_job(job, "testing", **calls.kwargs())
    bar = handle.progress.bar
    assert bar in progress._all_instances and handle.running
    return handle, bar


def test_result_progress_and_the_bar_closes(qtbot):
    calls = Calls()
    handle, bar = start(counting(3), calls)
    qtbot.waitUntil(lambda: calls.finished, timeout=TIMEOUT)
    assert [e.done for e in calls.events] == [1, 2, 3]
    assert calls.results == [42] and calls.order == ["result", "finished"]
    assert not handle.running and bar not in progress._all_instances
    assert bar.n == 3 and bar.total == 3


@pytest.mark.parametrize("error", [ValueError("bad input"), RuntimeError("torch failed")])
def test_errors_reach_the_error_callback(qtbot, error):
    def failing():
        yield Progress("work", 1, 2)
        raise error

    calls = Calls()
    handle, bar = start(failing(), calls)
    qtbot.waitUntil(lambda: calls.finished, timeout=TIMEOUT)
    assert calls.errors == [error]  # the very exception, RuntimeError included
    assert calls.results == [] and calls.order == ["error", "finished"]
    assert not handle.running and bar not in progress._all_instances


def test_cancel_stops_at_the_next_event(qtbot):
    calls = Calls()
    handle, bar = start(counting(10_000, pause=0.01), calls)
    qtbot.waitUntil(lambda: len(calls.events) >= 2, timeout=TIMEOUT)
    handle.cancel()
    qtbot.waitUntil(lambda: calls.finished, timeout=TIMEOUT)
    assert handle.cancelled and calls.order == ["cancelled", "finished"]
    assert calls.results == [] and len(calls.events) < 10_000
    assert not handle.running and bar not in progress._all_instances


def test_cancel_after_the_last_event_still_reports_cancelled(qtbot):
    in_last_step = threading.Event()

    def slow_end():
        yield Progress("work", 1, 1)
        in_last_step.set()
        time.sleep(0.5)
        return "too late"

    calls = Calls()
    handle, bar = start(slow_end(), calls)
    qtbot.waitUntil(in_last_step.is_set, timeout=TIMEOUT)
    handle.cancel()
    qtbot.waitUntil(lambda: calls.finished, timeout=TIMEOUT)
    assert calls.order == ["cancelled", "finished"] and calls.results == []
    assert bar not in progress._all_instances
