"""The inference engine: one network on one device, built once per run, predicting planes or blocks.

An :class:`InferenceEngine` holds what every prediction of a run shares: the network and what
the model file says about it (:class:`ModelSource`), the device and precision, the inference
:class:`~napari_unet.core.network.device.Predictor` (a copy of the network with BatchNorm folded
into the convolutions, built once), and the tiling and halo, resolved once by
:func:`choose_tiling`: the tiling given, else the model file's, else the device's defaults.

It predicts

- a whole image of any axes (:meth:`InferenceEngine.predict_image`): arranged as 2D planes,
  normalised with percentiles over the whole image, each plane tiled into one output;
- one block of a blockwise run (:meth:`InferenceEngine.predict_block`): scaled with bounds taken
  from the whole image, tiled into the block's output;
- one plane that is already normalised (:meth:`InferenceEngine.predict_plane`), as training's
  validation crops are.

Each is a generator of :class:`~napari_unet.core.progress.Progress` events whose payloads are
the typed events of :mod:`.events` (:class:`~.events.TileBatchDone` per tile batch,
:class:`~.events.PlaneDone` per plane) and returns the output; closing it stops the work between
tile batches.

An engine can be pickled (to a dask worker): the predictor is not sent but built again where the
engine is unpickled, on the device named there.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import DTypeLike

from ..config import ModelConfig, NormalizeConfig, TilingConfig
from ..errors import InputMismatchError
from ..network.device import Predictor, resolve_device
from ..network.model import UNet
from ..network.normalize import as_planes, normalize_bounds, normalize_plane
from ..progress import Progress
from . import rescale
from .events import PlaneDone, TileBatchDone
from .tiling import default_tiling, predict_tiled, resolve_halo

if TYPE_CHECKING:
    from ..network.weights import LoadedModel

logger = logging.getLogger(__name__)

#: The dtypes probabilities may be held in: float32, or float16 for half the memory.
PROBABILITY_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


@dataclass(frozen=True)
class ModelSource:
    """What inference needs from a model, whether a loaded model file or a bare network.

    Attributes:
        net: the network.
        config: its architecture.
        normalize: how raw intensities are scaled (percentiles by default).
        tiling: the model file's default tiling, ``None`` when it has none.
        task: ``"instances"`` or ``"semantic"``.
        class_names: the classes' names from the model file, ``None`` for a bare network.
    """

    net: UNet
    config: ModelConfig
    normalize: NormalizeConfig
    tiling: TilingConfig | None
    task: str
    class_names: list[str] | None = None


def model_source(model: LoadedModel | UNet) -> ModelSource:
    """The :class:`ModelSource` of a loaded model file or of a bare U-Net (for which the task is
    ``"instances"`` when it has 3 classes, and the normalisation the default percentiles)."""
    if isinstance(model, UNet):
        config = model.config
        task = "instances" if config.out_classes == 3 else "semantic"
        return ModelSource(model, config, NormalizeConfig(), None, task)
    return ModelSource(
        model.model, model.config, model.normalize, model.tiling, model.task, model.class_names
    )


def choose_tiling(
    given: TilingConfig | None,
    model_tiling: TilingConfig | None,
    config: ModelConfig,
    device_type: str,
) -> TilingConfig:
    """The tiling of a run: ``given``, else the model file's (``model_tiling``), else the
    defaults for the device type (:func:`~.tiling.default_tiling`)."""
    return given or model_tiling or default_tiling(config, device_type)


def _planes_message(plane: int, n_planes: int, message: str) -> str:
    return message if n_planes == 1 else f"plane {plane + 1}/{n_planes}, {message}"


class InferenceEngine:
    """A model ready to predict on one device, for one run.

    Args:
        model: a :class:`~napari_unet.core.network.weights.LoadedModel` (its normalisation and
            tile defaults are used) or a bare :class:`~napari_unet.core.network.model.UNet`
            (default percentile normalisation). It is not changed.
        tiling: tile size, halo, batch size; ``None`` takes the model file's tile defaults, else
            the defaults for the device (:func:`choose_tiling`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a :class:`torch.device`.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``; ``"auto"`` is bf16 or fp16
            on CUDA, bf16 on CPUs with native bfloat16 instructions and fp32 on other CPUs and
            MPS (see :func:`~napari_unet.core.network.device.resolve_precision`).

    Attributes:
        source: the model (:class:`ModelSource`).
        device: the resolved device.
        precision: the precision used (``"fp32"``, ``"bf16"`` or ``"fp16"``).
        tiling: the tiling used.
        halo: the context margin in pixels (:func:`~.tiling.resolve_halo`).
        predictor: the network on the device (:class:`~napari_unet.core.network.device.Predictor`).

    Raises:
        UserError: an unknown or unavailable device, or a precision it cannot run.
    """

    def __init__(
        self,
        model: LoadedModel | UNet,
        tiling: TilingConfig | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
    ) -> None:
        self.source = model_source(model)
        self._requested = (str(device), precision)
        self.device = resolve_device(device)
        self.tiling = choose_tiling(tiling, self.source.tiling, self.config, self.device.type)
        self.halo = resolve_halo(self.tiling, self.config)
        self.predictor = Predictor(self.source.net, self.device, precision)
        self.precision = self.predictor.precision

    # --- what the model is ---------------------------------------------------------------

    @property
    def config(self) -> ModelConfig:
        """The network's architecture."""
        return self.source.config

    @property
    def task(self) -> str:
        """``"instances"`` or ``"semantic"``."""
        return self.source.task

    @property
    def normalize(self) -> NormalizeConfig:
        """How raw intensities are scaled."""
        return self.source.normalize

    @property
    def out_classes(self) -> int:
        """K, the classes predicted per pixel."""
        return self.config.out_classes

    @property
    def in_channels(self) -> int:
        """C, the channels the network takes."""
        return self.config.in_channels

    # --- prediction ----------------------------------------------------------------------

    def predict_plane(
        self,
        plane: np.ndarray,
        out: np.ndarray | None = None,
        scale: tuple[float, float] | None = None,
        index: int = 0,
    ) -> Generator[Progress[TileBatchDone], None, np.ndarray]:
        """Class probabilities of one normalised plane.

        Args:
            plane: float32 (C, H, W), already normalised.
            out: float32 or float16 (K, H, W) to write into (may be a view of a larger array, or a
                memmap slice); a new float32 array when ``None``. The network's float32 output
                is rounded to ``out``'s dtype tile by tile.
            scale: (y, x) factors that resize the plane to the model's pixel size before the
                network (see :mod:`~.rescale`); the probabilities are resized back.
            index: the plane's number, given to the events' :class:`~.events.TileBatchDone`.

        Yields:
            One event per tile batch (stage ``"predict"``, counted over the plane), payload
            :class:`~.events.TileBatchDone`.

        Returns:
            float32 (K, H, W), or ``out`` when given. Values sum to 1 over K.
        """
        if out is None:
            out = np.empty((self.out_classes, *plane.shape[-2:]), dtype=np.float32)
        args = (self.predictor, plane, self.out_classes, self.tiling, self.halo, self.config.stride)
        if rescale.is_identity(scale):
            gen = predict_tiled(*args, out=out)
        else:
            gen = rescale.predict_plane_rescaled(predict_tiled, scale, *args, out)
        try:
            for event in gen:
                payload = event.payload
                if index and isinstance(payload, TileBatchDone):
                    event = replace(event, payload=replace(payload, plane=index))
                yield event
        finally:
            gen.close()
        return out

    def predict_block(
        self,
        raw: np.ndarray,
        axes: str,
        bounds: np.ndarray | None,
        out: np.ndarray | None = None,
    ) -> Generator[Progress[TileBatchDone], None, np.ndarray]:
        """Class probabilities of one block of a larger image.

        Args:
            raw: the block's pixels as read (any numeric dtype), one axis per letter of ``axes``
                (e.g. ``"YX"``, ``"CYX"``, ``"YXS"``).
            axes: its axes: Y, X and at most one channel axis.
            bounds: (C, 2) intensity bounds taken from the whole image (so every block is scaled
                alike), or ``None`` for a model without normalisation.
            out: float32 (K, h, w) to write into; a new array when ``None``.

        Yields:
            The tile batch events of the block (payload :class:`~.events.TileBatchDone`, regions
            of the block).

        Returns:
            float32 (K, h, w).
        """
        planes, _, _ = as_planes(raw, axes, self.in_channels)
        plane = normalize_plane(planes[0], bounds)
        del raw, planes
        return (yield from self.predict_plane(plane, out))

    def predict_image(
        self,
        image: np.ndarray,
        axes: str,
        out: np.ndarray | None = None,
        scale: tuple[float, float] | None = None,
        dtype: DTypeLike = np.float32,
    ) -> Generator[Progress[TileBatchDone | PlaneDone], None, np.ndarray]:
        """Class probabilities for every pixel of a whole image.

        Args:
            image: the raw image (uint8, uint16, float32 with NaN, ...; may be a memmap), one
                axis per letter of ``axes``.
            axes: letters from ``"TZCYXS"`` ending in Y, X (and S for RGB); see
                :func:`~napari_unet.core.network.normalize.as_planes`.
            out: optional array (K, N, Y, X) of ``dtype`` to write into, N the number of planes
                (the product of the non-channel axes before Y, X; 1 for a 2D image); plane ``n``
                of it is complete when the event with ``PlaneDone(n, N)`` is yielded.
            scale: (y, x) factors that resize each plane to the model's pixel size before the
                network (see :mod:`~.rescale`); ``None`` runs the network on the image as it is.
            dtype: the probabilities' dtype, float32 (4 bytes per class and pixel) or float16
                (2 bytes; the network's float32 output rounded tile by tile, relative error
                below 2**-11, so the float32 array is never held whole).

        Yields:
            Stage ``"predict"``, ``done``/``total`` counted in tile batches over all planes: per
            tile batch (message like ``"plane 3/20, tile batch 2/9"``, payload
            :class:`~.events.TileBatchDone`), and after the last batch of each plane (payload
            :class:`~.events.PlaneDone`).

        Returns:
            ``dtype`` array (K, *leading, Y, X): K classes first, then the image's non-channel
            axes (e.g. (K, Z, Y, X) for a ZCYX stack). Values sum to 1 over K.

        Raises:
            InputMismatchError: the image's channels do not fit the model, or it has no pixels;
                ``out`` of the wrong shape or dtype, or a ``dtype`` other than float32 and
                float16 (ValueError).
        """
        config = self.config
        if config.spatial_dims == 3:
            raise InputMismatchError(
                "This is a 3D model: it predicts Z-stacks as volumes (predict_stack, or "
                "napari-unet predict on a stack), not 2D planes."
            )
        planes, leading, _ = as_planes(image, axes, config.in_channels)
        n_planes, _, height, width = planes.shape
        if n_planes == 0 or height == 0 or width == 0:
            raise InputMismatchError(f"The image has no pixels (shape {tuple(image.shape)}).")
        self._warn_if_not_tileable(height, width)
        logger.info(
            "predicting %d plane(s) of %dx%d on %s: tile %d, halo %d, batch %d",
            n_planes, height, width, self.device, self.tiling.tile_size, self.halo,
            self.tiling.batch_size,
        )  # fmt: skip
        bounds = normalize_bounds(planes, self.normalize)
        expected = (config.out_classes, n_planes, height, width)
        dtype = np.dtype(dtype)
        if dtype not in PROBABILITY_DTYPES:
            raise ValueError(f"probabilities are float32 or float16, not {dtype}")
        if out is None:
            out = np.empty(expected, dtype=dtype)
        elif out.shape != expected or out.dtype != dtype:
            raise ValueError(
                f"out must be {dtype} of shape {expected}, got {out.dtype} {out.shape}"
            )
        for n in range(n_planes):
            plane = normalize_plane(planes[n], bounds)
            per_plane = 1
            gen = self.predict_plane(plane, out[:, n], scale, index=n)
            try:
                for event in gen:
                    per_plane = event.total
                    yield Progress(
                        "predict",
                        n * per_plane + event.done,
                        n_planes * per_plane,
                        _planes_message(n, n_planes, event.message),
                        event.payload,
                    )
            finally:
                gen.close()
            yield Progress(
                "predict",
                (n + 1) * per_plane,
                n_planes * per_plane,
                _planes_message(n, n_planes, "predicted"),
                PlaneDone(n, n_planes),
            )
        return out.reshape(config.out_classes, *leading, height, width)

    def _warn_if_not_tileable(self, height: int, width: int) -> None:
        if self.config.norm in ("group", "instance") and max(height, width) > self.tiling.tile_size:
            logger.warning(
                "the model uses %s normalisation, whose statistics depend on the tile: tiled "
                "results differ from one whole-image pass",
                self.config.norm,
            )

    # --- pickling (a dask worker builds its own predictor) -------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["predictor"], state["device"], state["precision"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        device, precision = self._requested
        self.device = resolve_device(device)
        self.predictor = Predictor(self.source.net, self.device, precision)
        self.precision = self.predictor.precision

    def __repr__(self) -> str:
        return (
            f"InferenceEngine(device={self.device}, precision={self.precision!r}, "
            f"tile={self.tiling.tile_size}, halo={self.halo}, batch={self.tiling.batch_size})"
        )
