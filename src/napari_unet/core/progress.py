"""Progress events yielded by long-running generators (inference, training).

A long job in :mod:`napari_unet.core` is a generator that yields :class:`Progress` events and
returns its result::

    gen = predict_image(...)
    try:
        while True:
            event = next(gen)
    except StopIteration as stop:
        result = stop.value

:func:`drain` does exactly that. Stopping early is done by closing the generator (or, in napari,
by quitting the worker) at a yield.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of a long job.

    Attributes:
        stage: what is running, e.g. ``"predict"``, ``"postprocess"``, ``"train"``.
        done: units finished so far (tiles, planes, steps).
        total: units in all (0 when unknown).
        message: a short human-readable line.
        payload: extra data for consumers that need it (e.g. the plane or block just finished, so
            a viewer can redraw it); ``None`` when there is none.
    """

    stage: str
    done: int
    total: int
    message: str = ""
    payload: object | None = None

    @property
    def fraction(self) -> float:
        """Fraction done in [0, 1] (0 when the total is unknown)."""
        return self.done / self.total if self.total else 0.0


class Cancelled(Exception):
    """Raised inside a job when its consumer asked it to stop."""


def drain(
    gen: Generator[Progress, None, T], callback: Callable[[Progress], None] | None = None
) -> T:
    """Run a progress generator to the end and return its result.

    Args:
        gen: a generator of :class:`Progress` events that returns a value.
        callback: called with every event (e.g. to log or print a progress bar).

    Returns:
        The generator's return value.
    """
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)
