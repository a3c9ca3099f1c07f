"""The typed payloads of inference progress events.

Every :class:`~napari_unet.core.progress.Progress` event that inference yields carries one of
these as its ``payload`` (or none, for plain counting events such as a block's tile batches):

- :class:`TileBatchDone` after each batch of tiles: their cores now hold probabilities;
- :class:`PlaneDone` once a plane's probabilities are complete (whole-image prediction);
- :class:`BlockDone` once a block of a blockwise run is labelled (``final=False``) and again
  once its final, stitched labels are written (``final=True``).

Consumers test the payload's type (``isinstance(event.payload, PlaneDone)``) and read its fields.
"""

from __future__ import annotations

from dataclasses import dataclass

Region = tuple[slice, slice]


@dataclass(frozen=True)
class TileBatchDone:
    """A batch of tiles was predicted.

    Attributes:
        regions: (rows, cols) slices of the plane (or block window) predicted, whose
            probabilities are now written.
        plane: number of the plane, 0..N-1 in the order of the image's leading axes (0 for a
            single plane or a block).
    """

    regions: tuple[Region, ...]
    plane: int = 0


@dataclass(frozen=True)
class PlaneDone:
    """Every probability of one plane is written.

    Attributes:
        index: the plane's number, 0..N-1 in the order of the image's leading axes (row-major).
        n_planes: N, the number of planes of the image.
    """

    index: int
    n_planes: int


@dataclass(frozen=True)
class BlockDone:
    """A block of a blockwise run is done.

    Attributes:
        block: the block's number in the grid (over all planes).
        index: leading index of its plane (``()`` for a single 2D image).
        rows, cols: its core, the region of the plane it writes.
        final: ``False`` once its probabilities and provisional (block-local) labels are written
            (stage ``"predict"``), ``True`` once its final labels are (stage ``"stitch"``).
    """

    block: int
    index: tuple[int, ...]
    rows: slice
    cols: slice
    final: bool


#: Any payload of an inference event.
InferenceEvent = TileBatchDone | PlaneDone | BlockDone
