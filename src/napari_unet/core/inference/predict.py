"""Class probabilities (and labels) for a whole image of any shape: the engine's entry point.

An image with axes from ``"TZCYXS"`` is arranged as 2D planes (:func:`~.normalize.as_planes`),
normalised with percentiles taken over the whole image, and each plane runs through overlap-tile
inference (:func:`~.tiling.predict_tiled`) into one preallocated output. Both functions here are
generators of :class:`~.progress.Progress` events (one per tile batch, counted over all planes)
that return their result; closing the generator stops the work between batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..config import ModelConfig, NormalizeConfig, TilingConfig
from ..errors import InputMismatchError
from ..network.device import Predictor as DevicePredictor
from ..network.device import resolve_device
from ..network.model import UNet
from ..network.normalize import as_planes, normalize_bounds, normalize_plane
from ..progress import Progress
from . import rescale
from .tiling import default_tiling, predict_tiled, resolve_halo

if TYPE_CHECKING:
    from ..network.weights import LoadedModel
    from .postprocess import PostprocessConfig

logger = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Source:
    """What inference needs from a model, whether a loaded model file or a bare network."""

    net: UNet
    config: ModelConfig
    normalize: NormalizeConfig
    tiling: TilingConfig | None
    task: str


def _source(model: LoadedModel | UNet) -> _Source:
    if isinstance(model, UNet):
        config = model.config
        task = "instances" if config.out_classes == 3 else "semantic"
        return _Source(model, config, NormalizeConfig(), None, task)
    return _Source(model.model, model.config, model.normalize, model.tiling, model.task)


def _make_predictor(
    net: UNet, device: str | torch.device, precision: str = "auto"
) -> tuple[Predictor, torch.device]:
    """The callable that runs ``net`` on ``device``: (B, C, h, w) float32 CPU tensor ->
    softmax probabilities (B, K, h, w) float32 CPU tensor."""
    dev = resolve_device(device)
    return DevicePredictor(net, dev, precision), dev


def _planes_message(plane: int, n_planes: int, event: Progress) -> str:
    if n_planes == 1:
        return event.message
    return f"plane {plane + 1}/{n_planes}, {event.message}"


def predict_probabilities(
    image: np.ndarray,
    axes: str,
    model: LoadedModel | UNet,
    tiling: TilingConfig | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    out: np.ndarray | None = None,
    scale: tuple[float, float] | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """Class probabilities for every pixel of ``image``.

    Args:
        image: the raw image (uint8, uint16, float32 with NaN, ...; may be a memmap), one axis per
            letter of ``axes``.
        axes: letters from ``"TZCYXS"`` ending in Y, X (and S for RGB); see
            :func:`~.normalize.as_planes`.
        model: a :class:`~.weights.LoadedModel` (its normalisation and tile defaults are used) or
            a bare :class:`~.model.UNet` (default percentile normalisation).
        tiling: tile size, halo, batch size; ``None`` takes the model file's tile defaults, else
            the defaults for the device (:func:`~.tiling.default_tiling`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a :class:`torch.device`.
        precision: ``"auto"`` (reduced precision on CUDA, float32 elsewhere), ``"fp32"``,
            ``"bf16"`` or ``"fp16"`` (see :func:`~.device.resolve_precision`).
        out: optional float32 array (K, N, Y, X) to write into, N the number of planes (the
            product of the non-channel axes before Y, X; 1 for a 2D image); a caller can read
            each plane from it as soon as its last tile batch has been reported.
        scale: (y, x) factors that resize each plane to the model's pixel size before the
            network (see :mod:`~.rescale`); the probabilities are resized back, so the output
            keeps the image's shape. ``None`` runs the network on the image as it is.

    Yields:
        :class:`Progress` per tile batch, ``done``/``total`` over all planes, message like
        ``"plane 3/20, tile batch 2/9"``; payload ``(plane index, TileBatch)``.

    Returns:
        float32 array (K, *leading, Y, X): K classes first, then the image's non-channel axes
        (e.g. (K, Z, Y, X) for a ZCYX stack). Values sum to 1 over K.

    Raises:
        InputMismatchError: the image's channels do not fit the model, or it has no pixels.
        UserError: an unknown or unavailable device.
    """
    source = _source(model)
    config = source.config
    planes, leading, _ = as_planes(image, axes, config.in_channels)
    n_planes, _, height, width = planes.shape
    if n_planes == 0 or height == 0 or width == 0:
        raise InputMismatchError(f"The image has no pixels (shape {tuple(image.shape)}).")
    predictor, dev = _make_predictor(source.net, device, precision)
    tiling = tiling or source.tiling or default_tiling(config, dev.type)
    halo = resolve_halo(tiling, config)
    _warn_if_not_tileable(config, tiling, height, width)
    logger.info(
        "predicting %d plane(s) of %dx%d on %s: tile %d, halo %d, batch %d",
        n_planes, height, width, dev, tiling.tile_size, halo, tiling.batch_size,
    )  # fmt: skip
    bounds = normalize_bounds(planes, source.normalize)
    expected = (config.out_classes, n_planes, height, width)
    if out is None:
        out = np.empty(expected, dtype=np.float32)
    elif out.shape != expected or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {expected}, got {out.dtype} {out.shape}")
    for n in range(n_planes):
        plane = normalize_plane(planes[n], bounds)
        if rescale.is_identity(scale):
            gen = predict_tiled(
                predictor, plane, config.out_classes, tiling, halo, config.stride, out=out[:, n]
            )
        else:
            gen = rescale.predict_plane_rescaled(
                predict_tiled, scale, predictor, plane, config.out_classes, tiling, halo,
                config.stride, out[:, n],
            )  # fmt: skip
        try:
            for event in gen:
                per_plane = event.total
                yield Progress(
                    "predict",
                    n * per_plane + event.done,
                    n_planes * per_plane,
                    _planes_message(n, n_planes, event),
                    payload=(n, event.payload),
                )
        finally:
            gen.close()
    return out.reshape(config.out_classes, *leading, height, width)


def _warn_if_not_tileable(
    config: ModelConfig, tiling: TilingConfig, height: int, width: int
) -> None:
    if config.norm in ("group", "instance") and max(height, width) > tiling.tile_size:
        logger.warning(
            "the model uses %s normalisation, whose statistics depend on the tile: tiled results "
            "differ from one whole-image pass",
            config.norm,
        )


def predict_labels(
    image: np.ndarray,
    axes: str,
    model: LoadedModel | UNet,
    tiling: TilingConfig | None = None,
    device: str | torch.device = "auto",
    postprocess: PostprocessConfig | None = None,
    precision: str = "auto",
    scale: tuple[float, float] | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Probabilities and labels for ``image`` (see :func:`predict_probabilities`).

    Args:
        postprocess: thresholds and minimum size for instance labels; defaults when ``None``.
        scale: as for :func:`predict_probabilities`.

    Yields:
        The prediction's events (stage ``"predict"``), then one per plane post-processed (stage
        ``"postprocess"``).

    Returns:
        ``(probabilities, labels)``: float32 (K, *leading, Y, X) and labels (*leading, Y, X)
        (uint16 or uint32 instance ids, or class ids for a semantic model).
    """
    from .postprocess import postprocess as labels_generator

    task = _source(model).task
    probs = yield from predict_probabilities(
        image, axes, model, tiling, device, precision, scale=scale
    )
    postprocess = rescale.scaled_postprocess(postprocess, scale)
    labels = yield from labels_generator(probs, task, postprocess)
    return probs, labels
