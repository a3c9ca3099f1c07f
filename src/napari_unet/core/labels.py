"""The label contract in one place: 0 is background, ids are positive integers, and a label
image is uint16 when its largest id fits, else uint32 (never int64, which Fiji rejects)."""

from __future__ import annotations

import numpy as np

from .errors import UserError

UINT16_MAX = int(np.iinfo(np.uint16).max)
UINT32_MAX = int(np.iinfo(np.uint32).max)


class LabelIdsTooLarge(UserError, ValueError):
    """Label ids that no uint32 label image can hold."""


def labels_dtype(max_id: int) -> np.dtype:
    """The label dtype for ids up to ``max_id``: uint16 when it fits, else uint32.

    Raises:
        ValueError: ``max_id`` is negative.
        LabelIdsTooLarge: ``max_id`` does not fit in uint32 (also a :class:`ValueError`).
    """
    max_id = int(max_id)
    if max_id < 0:
        raise ValueError(f"label ids cannot be negative, got {max_id}")
    if max_id <= UINT16_MAX:
        return np.dtype(np.uint16)
    if max_id <= UINT32_MAX:
        return np.dtype(np.uint32)
    raise LabelIdsTooLarge(f"Label id {max_id} is too large for a label image (at most 2**32 - 1).")


#: How instance ids of a time-lapse are numbered: afresh in each time point (the default, which
#: keeps time-lapses uint16), or once across the whole stack.
ID_SCOPES = ("per-frame", "stack")


def ids_per_time_point(labels: np.ndarray, axes: str) -> np.ndarray:
    """Instance labels renumbered 1..N_t within each time point.

    The ids of labels that are unique across a stack become unique within each time point only
    (an object keeps one id across the Z planes of its volume); images without a ``T`` axis come
    back unchanged. This is the default numbering of time-lapse labels: the largest id is that of
    the busiest frame, so a time-lapse stays uint16 (which ImageJ opens as a hyperstack).

    Args:
        labels: instance labels, one axis per letter of ``axes`` (e.g. (T, Y, X) or
            (T, Z, Y, X)), unsigned integers, 0 background, ids of different time points
            distinct.
        axes: the labels' axes, e.g. ``"TYX"`` or ``"TZYX"``.

    Returns:
        Labels of the same shape, ids 1..N_t in each time point in the order of the input ids,
        uint16 when the largest N_t fits, else uint32.
    """
    labels = np.asarray(labels)
    if len(axes) != labels.ndim:
        raise ValueError(f"axes {axes!r} do not fit labels of shape {labels.shape}")
    if "T" not in axes.upper():
        return labels
    frames = np.moveaxis(labels, axes.upper().index("T"), 0)
    renumbered, largest = [], 0
    for frame in frames:
        ids, inverse = np.unique(frame, return_inverse=True)
        if ids.size and ids[0] != 0:  # no background in this frame: ids start at 1
            inverse = inverse + 1
        renumbered.append(inverse.reshape(frame.shape))
        largest = max(largest, int(inverse.max()) if inverse.size else 0)
    dtype = labels_dtype(largest)
    out = np.stack([frame.astype(dtype) for frame in renumbered]) if renumbered else frames
    return np.moveaxis(out.astype(dtype, copy=False), 0, axes.upper().index("T"))
