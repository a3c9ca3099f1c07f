"""Intensity normalisation and the axes of the image the network sees.

The network sees float32 planes ``(C, Y, X)`` whose intensities were scaled by percentiles taken
over the *whole* image (every plane of a stack, per channel), never per tile: a tile's scaling
would depend on its content and leave seams.

:func:`as_planes` turns any image with axes from ``"TZCYXS"`` into a stack of such planes,
:func:`percentile_bounds` / :func:`apply_bounds` normalise it plane by plane without a float copy
of the whole stack, and :func:`percentile_normalize` does both steps at once for an array in memory.
"""

from __future__ import annotations

import logging

import numpy as np

from ..axes import Layout
from ..config import NormalizeConfig
from ..errors import InputMismatchError

logger = logging.getLogger(__name__)

#: Values per channel above which percentiles are estimated on an evenly strided subsample.
PERCENTILE_SAMPLE_LIMIT = 16_000_000

#: Luminance weights (ITU-R BT.709, as scikit-image's ``rgb2gray``) for RGB -> grayscale.
RGB_TO_GRAY = (0.2125, 0.7154, 0.0721)


def _sample(values: np.ndarray) -> np.ndarray:
    """All values of ``values`` as 1D, or an evenly strided subsample of at most
    PERCENTILE_SAMPLE_LIMIT values (strided per axis, so a memmap is never read in full)."""
    steps = [1] * values.ndim

    def sampled_size() -> int:
        return int(np.prod([-(-n // s) for n, s in zip(values.shape, steps, strict=True)]))

    while values.ndim and sampled_size() > PERCENTILE_SAMPLE_LIMIT:
        longest = max(range(values.ndim), key=lambda i: -(-values.shape[i] // steps[i]))
        steps[longest] *= 2
    strided = values[tuple(slice(None, None, s) for s in steps)]
    return np.asarray(strided).reshape(-1)


def percentile_bounds(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, channel_axis: int | None = 0
) -> np.ndarray:
    """Per-channel intensities at the ``low`` and ``high`` percentiles, ignoring NaN and inf.

    Args:
        image: any numeric array (may be a memmap), e.g. (C, H, W) or (N, C, H, W).
        low, high: percentiles in [0, 100].
        channel_axis: axis holding channels; ``None`` treats the whole array as one channel.

    Returns:
        float64 array (C, 2) of (low, high) per channel; a channel without any finite value gets
        (0, 0).
    """
    if channel_axis is None:
        channels = [image]
    else:
        moved = np.moveaxis(image, channel_axis, 0)
        channels = [moved[c] for c in range(moved.shape[0])]
    bounds = np.zeros((len(channels), 2), dtype=np.float64)
    for c, values in enumerate(channels):
        flat = _sample(values)
        if np.issubdtype(flat.dtype, np.floating):
            flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            continue
        bounds[c] = np.percentile(flat, (low, high))
    return bounds


def apply_bounds(image: np.ndarray, bounds: np.ndarray, channel_axis: int | None = 0) -> np.ndarray:
    """Scale ``image`` so that each channel's (low, high) bounds map to (0, 1).

    Args:
        image: numeric array, channels on ``channel_axis`` (or one channel when ``None``).
        bounds: float array (C, 2) from :func:`percentile_bounds`.
        channel_axis: axis holding channels, or ``None``.

    Returns:
        float32 array of ``image``'s shape. NaN and inf become 0; a constant channel (high == low)
        becomes all zeros. Values are not clipped.
    """
    out = np.array(image, dtype=np.float32, copy=True)
    view = out[np.newaxis] if channel_axis is None else np.moveaxis(out, channel_axis, 0)
    for c in range(view.shape[0]):
        lo, hi = float(bounds[c, 0]), float(bounds[c, 1])
        span = hi - lo
        if not np.isfinite(span) or span <= 0:
            view[c] = 0.0
            continue
        view[c] -= np.float32(lo)
        view[c] *= np.float32(1.0 / span)
    np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def percentile_normalize(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, channel_axis: int | None = 0
) -> np.ndarray:
    """Percentile normalisation per channel over the whole image.

    Args:
        image: numeric array, e.g. (C, H, W) uint8/uint16/float32; NaN allowed.
        low, high: percentiles mapped to 0 and 1.
        channel_axis: axis holding channels; ``None`` = one channel for the whole array.

    Returns:
        float32 array of ``image``'s shape; NaN -> 0 after scaling; a constant channel -> zeros.
    """
    bounds = percentile_bounds(image, low, high, channel_axis)
    return apply_bounds(image, bounds, channel_axis)


def normalize_bounds(planes: np.ndarray, config: NormalizeConfig) -> np.ndarray | None:
    """Bounds for ``planes`` (N, C, Y, X) under ``config``: (C, 2) float64, or ``None`` for
    ``method="none"``."""
    if config.method == "none":
        return None
    return percentile_bounds(planes, config.low, config.high, channel_axis=1)


def normalize_plane(plane: np.ndarray, bounds: np.ndarray | None) -> np.ndarray:
    """One plane (C, Y, X) scaled with ``bounds`` (C, 2), or cast to float32 (non-finite -> 0)
    when ``bounds`` is ``None``. Returns float32 (C, Y, X)."""
    if bounds is None:
        out = np.array(plane, dtype=np.float32, copy=True)
        return np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return apply_bounds(plane, bounds, channel_axis=0)


def _to_gray(planes: np.ndarray) -> np.ndarray:
    """RGB(A) planes (N, 3 or 4, Y, X) -> float32 luminance (N, 1, Y, X); alpha is ignored."""
    gray = np.zeros((planes.shape[0], 1, *planes.shape[2:]), dtype=np.float32)
    for c, weight in enumerate(RGB_TO_GRAY):
        gray[:, 0] += np.float32(weight) * planes[:, c].astype(np.float32)
    return gray


def as_planes(
    data: np.ndarray, axes: str, in_channels: int
) -> tuple[np.ndarray, tuple[int, ...], str]:
    """Arrange an image as the stack of 2D planes a 2D model runs on.

    Args:
        data: the image (any numeric dtype; may be a memmap), one axis per letter of ``axes``.
        axes: letters from ``"TZCYXS"`` (others are kept as extra stack axes); must contain Y and
            X. ``S`` (RGB samples) is handled as channels.
        in_channels: channels the model expects.

    Returns:
        ``(planes, leading_shape, out_axes)``: ``planes`` (N, C, Y, X) in ``data``'s dtype (a view
        where possible; float32 when RGB is converted to gray), with N the product of
        ``leading_shape`` (the sizes of the non-channel axes before Y, X, in their original order)
        and ``out_axes`` the axes of the result without channels, e.g. ``"TZYX"``.

    Raises:
        InputMismatchError: axes that do not fit the data, or a channel count the model cannot use
            (RGB converts to gray for a 1-channel model and RGBA drops alpha for a 3-channel one).
    """
    layout = Layout(axes, np.shape(data))
    planes = _match_channels(
        layout.planes(data), layout.axes, layout.shape, layout.channel, in_channels
    )
    return planes, layout.leading_shape, layout.label_axes


def _match_channels(
    planes: np.ndarray,
    axes: str,
    shape: tuple[int, ...],
    channel_letter: str | None,
    in_channels: int,
) -> np.ndarray:
    """Fit the channel axis of ``planes`` (N, C, Y, X) to ``in_channels`` or raise."""
    n_channels = planes.shape[1]
    if n_channels == in_channels:
        return planes
    if channel_letter == "S" and n_channels in (3, 4):
        if in_channels == 1:
            logger.info("converting the RGB image to grayscale for a 1-channel model")
            return _to_gray(planes)
        if in_channels == 3:
            logger.info("dropping the alpha channel of the RGBA image")
            return planes[:, :3]
    raise InputMismatchError(
        f"The image has {n_channels} channel{'s' if n_channels != 1 else ''} "
        f"(axes {axes!r}, shape {tuple(shape)}) but the model expects {in_channels}."
    )
