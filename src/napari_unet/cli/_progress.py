"""Progress on stderr: a bar for prediction, one line per epoch for training."""

from __future__ import annotations

import time
from typing import IO, Any

from napari_unet.cli._common import PROG, format_metrics, is_terminal


def format_seconds(seconds: float) -> str:
    """``"m:ss"``, or ``"h:mm:ss"`` from one hour on."""
    seconds = max(0, round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _StatusLine:
    """A line on a terminal that is rewritten in place and ended by :meth:`close`."""

    def __init__(self, stream: IO[str], enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = is_terminal(stream)
        self._width = 0

    def _rewrite(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        self.stream.flush()

    def close(self) -> None:
        """End the line left on a terminal, if any."""
        if self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


class ProgressReporter(_StatusLine):
    """Shows :class:`~napari_unet.core.progress.Progress` events on a stream.

    On a terminal: one line, rewritten in place, with a bar, the fraction done and the time left.
    Otherwise (a log file, a pipe): one line at every tenth of each stage and at its end.
    """

    def __init__(self, stream: IO[str], label: str, enabled: bool = True) -> None:
        super().__init__(stream, enabled)
        self.label = label
        self._stage = ""
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_tenth = -1

    def __call__(self, event: Any) -> None:
        if not self.enabled:
            return
        if event.stage != self._stage:
            self._stage = event.stage
            self._start = time.monotonic()
            self._last_tenth = -1
        fraction = event.done / event.total if event.total else 0.0
        if self.tty:
            self._draw(event, fraction)
            return
        tenth = int(fraction * 10)
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            line = (
                f"{PROG}: {self.label}: {event.stage} {event.done}/{event.total} ({fraction:.0%})"
            )
            self.stream.write(f"{line} {event.message}".rstrip() + "\n")
            self.stream.flush()

    def _draw(self, event: Any, fraction: float) -> None:
        now = time.monotonic()
        if now - self._last_draw < 0.1 and event.done < event.total:
            return
        self._last_draw = now
        elapsed = now - self._start
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else 0.0
        bar = "#" * int(fraction * 20)
        self._rewrite(
            f"{self.label}: {event.stage} [{bar:<20}] {fraction:4.0%} "
            f"{format_seconds(elapsed)} elapsed, {format_seconds(eta)} left"
        )


class TrainReporter(_StatusLine):
    """Shows training progress events: one line per epoch (on a terminal, also a step line)."""

    def __init__(self, stream: IO[str], epochs: int | None, enabled: bool = True) -> None:
        super().__init__(stream, enabled)
        self.epochs = epochs
        self.last: Any = None  # the latest training status

    def _left(self, seconds: float) -> str:
        if seconds != seconds or seconds == float("inf"):
            return ""
        return f", {format_seconds(seconds)} left"

    def _epoch(self, epoch: int) -> str:
        return f"epoch {epoch}/{self.epochs}" if self.epochs else f"epoch {epoch}"

    def _write(self, line: str) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(f"{PROG}: {line}\n")
        self.stream.flush()

    def __call__(self, event: Any) -> None:
        status = event.payload
        if status is not None:
            self.last = status
        if not self.enabled or status is None:
            return
        if status.kind == "step":
            if self.tty:
                self._rewrite(
                    f"{self._epoch(status.epoch + 1)}, step {status.step}: loss "
                    f"{status.loss:.4f}{self._left(status.seconds_left)}"
                )
            return
        if status.kind != "validation":
            return
        scores = format_metrics(status.metrics)
        if status.epoch == 0:
            self._write(f"before training: validation {scores}")
            return
        line = f"{self._epoch(status.epoch)}: loss {status.loss:.4f}"
        if scores:
            best = not status.best or status.metrics["score"] > status.best.get("score", -1e300)
            line += f", validation {scores}" + (" (best)" if best else "")
        self._write(line + self._left(status.seconds_left))
