"""Several single-channel Image layers as the channels of one model input.

Cellpose takes a nucleus channel and a cytoplasm channel (``chan``/``chan2``); here they are two
Image layers of the same shape, for instance a nucleus stain and a membrane stain opened as two
files or split from one. :func:`stack_channels` joins them into one array with a ``C`` axis
before Y and X, as a multichannel file reads (``"CYX"``, ``"TCYX"``, ``"ZCYX"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_unet.core.errors import InputMismatchError

from .layer_info import layer_axes

#: The value of a "Second channel" choice that adds no channel.
NO_CHANNEL = None


def _data(layer: Any) -> Any:
    """A layer's full-resolution data (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def single_channel_axes(layer: Any) -> str:
    """The axes of a layer that is one channel (no ``C`` or RGB ``S`` axis).

    Raises:
        InputMismatchError: the layer has a channel axis, is RGB, or its axes cannot be told.
    """
    try:
        axes = layer_axes(np.ndim(_data(layer)), layer.metadata, bool(layer.rgb))
    except ValueError as exc:
        raise InputMismatchError(f"'{layer.name}': {exc}") from exc
    if "C" in axes or "S" in axes:
        raise InputMismatchError(
            f"'{layer.name}' has channels already (axes {axes}): as one channel of several, "
            "choose single-channel layers (split the channels with right-click > Split Stack)."
        )
    return axes


def stack_channels(layers: Sequence[Any]) -> tuple[np.ndarray, str]:
    """The data of single-channel Image layers stacked as channels, and its axes.

    Args:
        layers: two or more Image layers of one shape, each without a channel axis, in channel
            order (e.g. nucleus then cytoplasm).

    Returns:
        ``(data, axes)``: an array of shape (*leading, C, Y, X) with the dtype that holds every
        layer's values (the layers' data copied), and the first layer's axes with ``C`` before
        ``YX`` (e.g. ``"CYX"`` or ``"TCYX"``).

    Raises:
        InputMismatchError: fewer than two layers, a layer chosen twice, a layer with channels,
            layers of different shapes or axes.
    """
    if len(layers) < 2:
        raise InputMismatchError("Stacking channels needs at least two layers.")
    if len({id(layer) for layer in layers}) < len(layers):
        raise InputMismatchError(
            f"'{layers[0].name}' is chosen twice: choose another layer as its second channel."
        )
    axes = [single_channel_axes(layer) for layer in layers]
    shapes = [tuple(int(n) for n in np.shape(_data(layer))) for layer in layers]
    for layer, shape, ax in zip(layers[1:], shapes[1:], axes[1:], strict=True):
        if shape != shapes[0] or ax != axes[0]:
            raise InputMismatchError(
                f"'{layer.name}' (shape {shape}, axes {ax}) does not match '{layers[0].name}' "
                f"(shape {shapes[0]}, axes {axes[0]}): channels need images of one shape."
            )
    arrays = [np.asarray(_data(layer)) for layer in layers]
    dtype = np.result_type(*arrays)
    data = np.stack([a.astype(dtype, copy=False) for a in arrays], axis=arrays[0].ndim - 2)
    return data, axes[0][:-2] + "CYX"


def channels_name(layers: Sequence[Any]) -> str:
    """How an input made of several layers is named in messages: ``"nuclei + membranes"``."""
    return " + ".join(layer.name for layer in layers)
