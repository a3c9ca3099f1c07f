"""Reading blocks of a lazy image, without reading the rest of it.

:func:`arrange` orders a lazy image's axes as (*leading, [channel], Y, X) without reading it;
:class:`ArrayReader` and :class:`PathReader` read one block of one plane from it (the latter
reopens the file, so that it can travel to a dask worker on another machine);
:func:`compute_pixels` turns a failed read into an :class:`~.errors.ImageReadError` that says
where.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ImageReadError, UserError
from ..io.images import _READ_ERRORS, _describe
from ..io.lazy import open_lazy

_CHANNEL_AXES = "CS"


@dataclass(frozen=True)
class Arrangement:
    """How a lazy image's axes map to planes.

    Attributes:
        order: the transposition taking the image to (*leading, [channel], Y, X).
        leading: the sizes of the leading (non-channel, non-YX) axes.
        leading_axes: their letters.
        block_axes: the axes of one block read from a plane: channel letter (if any) + ``"YX"``.
    """

    order: tuple[int, ...]
    leading: tuple[int, ...]
    leading_axes: str
    block_axes: str

    @property
    def n_planes(self) -> int:
        """Number of 2D planes."""
        return int(math.prod(self.leading))

    @property
    def label_axes(self) -> str:
        """Axes of the labels: the leading axes then ``"YX"``."""
        return self.leading_axes + "YX"

    def index(self, plane: int) -> tuple[int, ...]:
        """The leading index of plane number ``plane``."""
        return tuple(int(i) for i in np.unravel_index(plane, self.leading)) if self.leading else ()


def arrange(shape: tuple[int, ...], axes: str) -> Arrangement:
    """The :class:`Arrangement` of an image of ``shape`` with ``axes`` (letters of "TZCYXS")."""
    axes = axes.upper()
    if len(axes) != len(shape) or "Y" not in axes or "X" not in axes:
        raise UserError(f"Axes {axes!r} do not fit an image of shape {tuple(shape)}.")
    channel = next((a for a in axes if a in _CHANNEL_AXES), None)
    leading_axes = "".join(a for a in axes if a not in "YX" and a != channel)
    order = [axes.index(a) for a in leading_axes]
    if channel is not None:
        order.append(axes.index(channel))
    order += [axes.index("Y"), axes.index("X")]
    leading = tuple(int(shape[axes.index(a)]) for a in leading_axes)
    return Arrangement(tuple(order), leading, leading_axes, (channel or "") + "YX")


def _read(data: Any, arrangement: Arrangement, plane: int, region: tuple[slice, slice]) -> Any:
    """One block (channel?, h, w) of ``data`` (the image, not yet arranged) as numpy."""
    arranged = data.transpose(arrangement.order)
    key = (*arrangement.index(plane), Ellipsis, *region)
    rows, cols = region
    where = f"at rows {rows.start}-{rows.stop}, columns {cols.start}-{cols.stop}"
    return compute_pixels(arranged[key], where)


def compute_pixels(block: Any, where: str, scheduler: str = "synchronous") -> np.ndarray:
    """``block`` (dask, zarr or numpy) read into numpy; a truncated file or a corrupt chunk is
    an :class:`~.errors.ImageReadError` that says ``where`` (e.g. "at rows 0-512, ...")."""
    try:
        if hasattr(block, "compute"):
            return np.asarray(block.compute(scheduler=scheduler))
        return np.asarray(block)
    except MemoryError:
        raise
    except _READ_ERRORS as exc:
        raise ImageReadError(f"Cannot read the image's pixels {where}: {_describe(exc)}.") from exc


@dataclass
class ArrayReader:
    """Reads blocks from an array at hand (numpy, memmap, zarr or dask; image axes order)."""

    data: Any
    arrangement: Arrangement

    def read(self, plane: int, region: tuple[slice, slice]) -> np.ndarray:
        """The pixels of ``region`` of ``plane``: (h, w) or (channels, h, w), stored dtype."""
        return _read(self.data, self.arrangement, plane, region)


@dataclass
class PathReader:
    """Reads blocks from an image file, opened lazily where the block runs (a dask worker)."""

    path: str
    arrangement: Arrangement

    def read(self, plane: int, region: tuple[slice, slice]) -> np.ndarray:
        """The pixels of ``region`` of ``plane``: (h, w) or (channels, h, w), stored dtype."""
        return _read(open_lazy(self.path).data, self.arrangement, plane, region)
