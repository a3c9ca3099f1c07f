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

Events count units (``done`` of ``total``) for a progress bar, and may carry a typed
``payload`` for consumers that act on what was just finished: a viewer that shows a stack's
labels plane by plane, or redraws the blocks of a blockwise run as they are written, a command
line that prints each epoch's validation scores. The payload types are declared where the events
are made:

- inference (:mod:`napari_unet.core.inference.events`): ``TileBatchDone`` (tiles written),
  ``PlaneDone`` (a plane's probabilities complete), ``BlockDone`` (a block labelled, or its
  final labels written);
- training (:mod:`napari_unet.core.training.train`): ``TrainStatus`` after each step,
  validation and save;
- the Segment widget's job: ``PlaneLabels`` (a plane's labels, ready to show).

A consumer tests the payload's type (``isinstance(event.payload, PlaneDone)``) and ignores the
types it does not know; ``Progress[P]`` names the payload type a generator yields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = TypeVar("P")


@dataclass(frozen=True)
class Progress(Generic[P]):
    """One step of a long job.

    Attributes:
        stage: what is running, e.g. ``"predict"``, ``"postprocess"``, ``"train"``.
        done: units finished so far (tiles, planes, steps).
        total: units in all (0 when unknown).
        message: a short human-readable line.
        payload: the typed event of this step (see the module docstring), e.g. the plane or
            block just finished, so that a viewer can show it; ``None`` when there is none.
    """

    stage: str
    done: int
    total: int
    message: str = ""
    payload: P | None = None

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
