"""The child side of a job run in a separate process (see :mod:`._process`); free of Qt.

The child receives ``(target, args)`` over an inbox queue (so a large request never blocks the
viewer while the child starts), runs the progress generator ``target(*args)``, and sends each
event over the events queue as ``("progress", Progress)``, then one closing message:
``("result", value)``, ``("cancelled", None)`` or ``("error", ErrorReport)``. The stop event is
checked after every progress event; the generator is then closed (as Stop does in a thread).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import traceback
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorReport:
    """A picklable description of an exception raised in the child.

    Attributes:
        kind: the exception's class name.
        message: ``str(exception)``.
        user_error: the exception is a :class:`~napari_unet.core.errors.UserError` (its message
            is meant for the user).
        details: the formatted traceback.
    """

    kind: str
    message: str
    user_error: bool
    details: str

    def to_exception(self) -> Exception:
        """An exception to hand to error callbacks: a ``UserError`` with the same message, or a
        ``RuntimeError`` naming the original class."""
        from napari_unet.core.errors import UserError

        if self.user_error:
            return UserError(self.message)
        return RuntimeError(f"{self.kind}: {self.message}")


def _report(exc: BaseException) -> ErrorReport:
    from napari_unet.core.errors import UserError

    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ErrorReport(type(exc).__name__, str(exc), isinstance(exc, UserError), details)


def child_main(inbox: Any, events: Any, stop: Any) -> None:
    """Entry point of the child process.

    Args:
        inbox: a multiprocessing queue holding one ``(target, args)`` tuple.
        events: a multiprocessing queue for the messages described in the module docstring.
        stop: a multiprocessing event; set by the parent to stop the job at its next event.
    """
    if multiprocessing.parent_process() is not None:
        # Ctrl+C in a terminal reaches the whole process group: the parent decides, not the child
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        target, args = inbox.get()
        gen = target(*args)
        try:
            while True:
                events.put(("progress", next(gen)))
                if stop.is_set():
                    gen.close()
                    events.put(("cancelled", None))
                    return
        except StopIteration as end:
            events.put(("result", end.value))
    except Exception as exc:  # reported to the parent, which shows it to the user
        events.put(("error", _report(exc)))
