"""Class probabilities (and labels) for a whole image of any shape, in one call.

An image with axes from ``"TZCYXS"`` is arranged as 2D planes (:func:`~.normalize.as_planes`),
normalised with percentiles taken over the whole image, and each plane runs through overlap-tile
inference (:func:`~.tiling.predict_tiled`) into one preallocated output, by an
:class:`~.engine.InferenceEngine` built for the call. Both functions here are generators of
:class:`~.progress.Progress` events (one per tile batch, counted over all planes, and one per
plane finished) that return their result; closing the generator stops the work between batches.
A caller that predicts several images with one model builds one engine and calls
:meth:`~.engine.InferenceEngine.predict_image` for each.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import DTypeLike

from ..config import TilingConfig
from ..network.model import UNet
from ..progress import Progress
from . import rescale
from .engine import InferenceEngine
from .events import PlaneDone, TileBatchDone

if TYPE_CHECKING:
    from ..network.weights import LoadedModel
    from .postprocess import PostprocessConfig


def predict_probabilities(
    image: np.ndarray,
    axes: str,
    model: LoadedModel | UNet,
    tiling: TilingConfig | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    out: np.ndarray | None = None,
    scale: tuple[float, float] | None = None,
    dtype: DTypeLike = np.float32,
) -> Generator[Progress[TileBatchDone | PlaneDone], None, np.ndarray]:
    """Class probabilities for every pixel of ``image``.

    Args:
        image: the raw image (uint8, uint16, float32 with NaN, ...; may be a memmap), one axis per
            letter of ``axes``.
        axes: letters from ``"TZCYXS"`` ending in Y, X (and S for RGB); see
            :func:`~.normalize.as_planes`.
        model: a :class:`~.weights.LoadedModel` (its normalisation and tile defaults are used) or
            a bare :class:`~.model.UNet` (default percentile normalisation).
        tiling: tile size, halo, batch size; ``None`` takes the model file's tile defaults, else
            the defaults for the device (:func:`~.engine.choose_tiling`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a :class:`torch.device`.
        precision: ``"auto"`` (bf16 or fp16 on CUDA, bf16 on CPUs with native bfloat16
            instructions, fp32 on other CPUs and MPS), ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see
            :func:`~.device.resolve_precision`).
        out: optional array (K, N, Y, X) of ``dtype`` to write into, N the number of planes (the
            product of the non-channel axes before Y, X; 1 for a 2D image); a caller can read
            plane ``n`` from it as soon as the event with payload ``PlaneDone(n, N)`` is yielded.
        scale: (y, x) factors that resize each plane to the model's pixel size before the
            network (see :mod:`~.rescale`); the probabilities are resized back, so the output
            keeps the image's shape. ``None`` runs the network on the image as it is.
        dtype: float32, or float16 for half the memory (6 instead of 12 bytes per pixel for 3
            classes; the network's output rounded tile by tile, relative error below 2**-11).

    Yields:
        :class:`Progress` per tile batch, ``done``/``total`` over all planes, message like
        ``"plane 3/20, tile batch 2/9"``, payload :class:`~.events.TileBatchDone`; and after the
        last batch of each plane, payload :class:`~.events.PlaneDone`.

    Returns:
        ``dtype`` array (K, *leading, Y, X): K classes first, then the image's non-channel axes
        (e.g. (K, Z, Y, X) for a ZCYX stack). Values sum to 1 over K.

    Raises:
        InputMismatchError: the image's channels do not fit the model, or it has no pixels.
        UserError: an unknown or unavailable device.
    """
    engine = InferenceEngine(model, tiling, device, precision)
    return (yield from engine.predict_image(image, axes, out, scale, dtype))


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

    engine = InferenceEngine(model, tiling, device, precision)
    probs = yield from engine.predict_image(image, axes, scale=scale)
    postprocess = rescale.scaled_postprocess(postprocess, scale)
    labels = yield from labels_generator(probs, engine.task, postprocess)
    return probs, labels
