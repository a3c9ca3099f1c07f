"""Reading blocks of a lazy image, without reading the rest of it.

:class:`ArrayReader` and :class:`PathReader` read one block of one plane from an image whose
axes a :class:`~napari_unet.core.axes.Layout` describes (the latter reopens the file, so that it
can travel to a dask worker on another machine); :func:`compute_pixels` turns a failed read into
an :class:`~napari_unet.core.errors.ImageReadError` that says where.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..axes import Layout
from ..errors import ImageReadError
from ..io.lazy import open_lazy
from ..io.reading import READ_ERRORS, describe_read_error


def _read(data: Any, arrangement: Layout, plane: int, region: tuple[slice, slice]) -> Any:
    """One block (channel?, h, w) of ``data`` (the image, not yet arranged) as numpy."""
    arranged = data.transpose(arrangement.order)
    key = (*arrangement.leading_index(plane), Ellipsis, *region)
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
    except READ_ERRORS as exc:
        raise ImageReadError(
            f"Cannot read the image's pixels {where}: {describe_read_error(exc)}."
        ) from exc


@dataclass
class ArrayReader:
    """Reads blocks from an array at hand (numpy, memmap, zarr or dask; image axes order)."""

    data: Any
    arrangement: Layout

    def read(self, plane: int, region: tuple[slice, slice]) -> np.ndarray:
        """The pixels of ``region`` of ``plane``: (h, w) or (channels, h, w), stored dtype."""
        return _read(self.data, self.arrangement, plane, region)


@dataclass
class PathReader:
    """Reads blocks from an image file, opened lazily where the block runs (a dask worker)."""

    path: str
    arrangement: Layout

    def read(self, plane: int, region: tuple[slice, slice]) -> np.ndarray:
        """The pixels of ``region`` of ``plane``: (h, w) or (channels, h, w), stored dtype."""
        return _read(open_lazy(self.path).data, self.arrangement, plane, region)


# --------------------------------------------------------------------------------------------
# zarr stores
