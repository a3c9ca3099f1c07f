"""Blockwise segmentation of large or lazy image layers into a zarr-backed Labels layer.

An image layer whose data is a dask or zarr array (as the reader gives for zarr folders and large
TIFFs), or whose labels would have more than
:data:`~napari_unet.core.large.blockwise.BLOCKWISE_PIXELS` pixels, is segmented with
:func:`~napari_unet.core.large.blockwise.predict_blockwise`: the image is read block by block and
the
probabilities are never held whole. The labels go into a uint32 zarr array in a new temporary
folder (``napari-unet-*`` in the system's temporary folder), which backs a new Labels layer made
when the run starts and redrawn as blocks are written. A cancelled or failed run removes that layer
and its folder; a finished run leaves both (the store's path is in the layer's
``metadata["labels_store"]``). No probabilities are kept: new thresholds need a new run.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error, show_info

from napari_unet.core.progress import Progress

from . import layers
from .logic import METADATA_KEY, error_message, labels_name

if TYPE_CHECKING:
    import napari

    from napari_unet.core.config import TilingConfig
    from napari_unet.core.inference.postprocess import PostprocessConfig
    from napari_unet.core.large.blockwise import BlockwiseResult
    from napari_unet.core.network.weights import LoadedModel

    from .models import ModelChoice

logger = logging.getLogger(__name__)

#: Side of the labels store's chunks along Y and X (what a redraw reads at a time).
CHUNK = 512
#: Least time (s) between two redraws of the layer while blocks are written.
REFRESH_INTERVAL = 0.25
#: Tooltip of "Apply thresholds" when the image is segmented blockwise.
NO_RETHRESHOLD = (
    "Blockwise runs (large or lazily read images) keep no probabilities: change the thresholds "
    "and press Run again."
)


def needs_blockwise(data: Any, labels_shape: Sequence[int]) -> bool:
    """Whether an image layer's data is segmented blockwise: a dask or zarr array, or labels of
    more than :data:`~napari_unet.core.large.blockwise.BLOCKWISE_PIXELS` pixels (all planes)."""
    import dask.array as da
    import zarr

    from napari_unet.core.large.blockwise import BLOCKWISE_PIXELS

    if isinstance(data, da.Array | zarr.Array):
        return True
    return math.prod(int(n) for n in labels_shape) > BLOCKWISE_PIXELS


@dataclass(frozen=True)
class BlockwiseRequest:
    """What to segment blockwise and how.

    Attributes:
        image: the image (dask, zarr or numpy), one axis per letter of ``axes``.
        axes: its axes, e.g. ``"YX"``, ``"TYX"``.
        output: the zarr array (or :class:`PlaneOutput`) of shape (*leading, Y, X) to fill.
        model_path, model, tiling, postprocess, precision, device: as for
            :class:`~._segment_job.SegmentRequest`.
        block_size: core side of a block in pixels (``None``: the engine's default).
    """

    image: Any
    axes: str
    output: Any
    model_path: Path
    model: LoadedModel | None
    tiling: TilingConfig | None
    postprocess: PostprocessConfig
    precision: str = "auto"
    device: str = "auto"
    block_size: int | None = None


@dataclass(frozen=True)
class BlockwiseDone:
    """What :func:`blockwise_job` returns: the engine's result, the model and the wall time."""

    result: BlockwiseResult
    model: LoadedModel
    seconds: float


def blockwise_job(request: BlockwiseRequest) -> Generator[Progress, None, BlockwiseDone]:
    """Predict ``request.image`` block by block into ``request.output``.

    Yields:
        The events of :func:`~napari_unet.core.large.blockwise.predict_blockwise` (payload
        :class:`~napari_unet.core.inference.events.BlockDone` after each block).
    """
    from napari_unet.core.large.blockwise import predict_blockwise
    from napari_unet.core.network.registry import load_model

    start = time.perf_counter()
    model = request.model or load_model(request.model_path)
    result = yield from predict_blockwise(
        request.image, model, request.output, axes=request.axes, block_size=request.block_size,
        tiling=request.tiling, device=request.device, precision=request.precision,
        postprocess=request.postprocess,
    )  # fmt: skip
    return BlockwiseDone(result, model, time.perf_counter() - start)


class PlaneOutput:
    """One plane (``index``) of a labels array, as an array of the plane's shape that
    :func:`~napari_unet.core.large.blockwise.predict_blockwise` writes into."""

    def __init__(self, array: Any, index: tuple[int, ...]) -> None:
        self.array = array
        self.index = index
        self.shape = tuple(array.shape[len(index) :])
        self.dtype = array.dtype

    def __setitem__(self, key: tuple[Any, ...], value: Any) -> None:
        self.array[(*self.index, *key)] = value


def create_store(
    shape: tuple[int, ...],
    metadata: dict[str, Any] | None = None,
    scale: tuple[float, ...] | None = None,
) -> tuple[Path, Any]:
    """A new uint32 OME-Zarr label image of ``shape`` (zeros) in a new temporary folder, with
    the axes and pixel size of ``metadata`` (a :class:`~._segment_layers.Geometry`'s).

    Returns:
        ``(folder, array)``; the store is ``folder / "labels.zarr"`` (its array ``"0"``).
    """
    from napari_unet.core.large.block_io import create_label_zarr, ome_label_axes

    folder = Path(tempfile.mkdtemp(prefix="napari-unet-"))
    chunks = (1,) * (len(shape) - 2) + tuple(max(1, min(n, CHUNK)) for n in shape[-2:])
    axes, pixel_size, z_spacing = ome_label_axes(shape, metadata or {}, scale)
    array = create_label_zarr(
        folder / "labels.zarr", shape, "uint32", chunks, axes, pixel_size, z_spacing
    )
    return folder, array


class BlockwiseRun:
    """A blockwise run in the viewer: its zarr store and the Labels layer it backs.

    Args:
        viewer: the viewer.
        image_name: the image layer's name.
        choice: the model.
        geometry: scale, translate, units and metadata of the layer.
        shape: the labels' shape (*leading, Y, X) (the whole stack's).
        region: where a single plane's labels go (from
            :func:`~._segment_logic.plane_region`), ``None`` for the whole image.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        image_name: str,
        choice: ModelChoice,
        geometry: layers.Geometry,
        shape: tuple[int, ...],
        region: tuple[int | slice, ...] | None = None,
    ) -> None:
        self.viewer = viewer
        self.image_name = image_name
        self.choice = choice
        self.folder, self.labels = create_store(shape, geometry.metadata, geometry.scale)
        index = tuple(i for i in region if isinstance(i, int)) if region else ()
        self.output = PlaneOutput(self.labels, index) if index else self.labels
        name = labels_name(image_name, choice.name, layers.layer_names(viewer))
        layer = layers.add_labels(viewer, self.labels, name, geometry)
        layer.editable = False
        layer.metadata = {**layer.metadata, "labels_store": str(self.folder / "labels.zarr")}
        self.layer_id = layer.unique_id
        self._last_refresh = 0.0

    def layer(self) -> Any:
        """The Labels layer, or ``None`` when it was removed."""
        return layers.find_layer(self.viewer, self.layer_id)

    def on_progress(self, event: Progress) -> None:
        """Redraw the layer when blocks of final labels were written (at most every
        :data:`REFRESH_INTERVAL` seconds, and after the last one)."""
        from napari_unet.core.inference.events import BlockDone

        if not (isinstance(event.payload, BlockDone) and event.payload.final):
            return
        now = time.monotonic()
        last = event.total and event.done >= event.total
        layer = self.layer()
        if layer is not None and (last or now - self._last_refresh >= REFRESH_INTERVAL):
            self._last_refresh = now
            layer.refresh()

    def finish(self, done: BlockwiseDone) -> str:
        """Make the layer editable and record what wrote it; returns a status text."""
        layer = self.layer()
        result = done.result
        if result.n_objects is not None:
            what = f"{result.n_objects} object{'s' if result.n_objects != 1 else ''}"
        else:
            what = "Classes"
        if layer is None:
            return f"{what} in {self.folder / 'labels.zarr'} (the layer was removed)."
        record = {"model": done.model.name, "image": self.image_name, "blockwise": True}
        layer.metadata = {**layer.metadata, METADATA_KEY: record}
        layer.editable = True
        layer.refresh()
        return (
            f"{what} in '{layer.name}' ({result.n_blocks} blocks, {done.seconds:.1f} s; "
            f"stored in {self.folder / 'labels.zarr'})."
        )

    def cancelled(self) -> str:
        """A cancelled run: remove the layer and its store; returns a status text."""
        self.discard()
        show_info("Segmentation cancelled; no labels were changed.")
        return "Cancelled."

    def failed(self, exc: BaseException) -> str:
        """A failed run: remove the layer and its store, tell the user; returns a status text."""
        from napari_unet.core.errors import UserError

        self.discard()
        if not isinstance(exc, UserError):
            logger.error("Blockwise segmentation failed", exc_info=exc)
        show_error(error_message(exc, "Segmentation"))
        return "Failed; no labels were changed."

    def discard(self) -> None:
        """Remove the layer and its store (a cancelled or failed run)."""
        layer = self.layer()
        if layer is not None:
            self.viewer.layers.remove(layer)
        shutil.rmtree(self.folder, ignore_errors=True)
