"""The label contract in one place: 0 is background, ids are positive integers, and a label
image is uint16 when its largest id fits, else uint32 (never int64, which Fiji rejects).

- :func:`labels_dtype` is the dtype rule; :func:`chosen_dtype` applies a dtype the user chose;
  :func:`check_label_values` and :func:`as_label_array` check and cast arrays to be written.
- :func:`offset_ids`, :class:`IdOffsets` and :func:`stack_ids` keep instance ids unique across
  the planes of a stack or the volumes of a time-lapse.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def check_label_values(labels: np.ndarray) -> int:
    """Check that ``labels`` can be a label image and return its largest id (0 when empty).

    Args:
        labels: integer, bool or integer-valued float array, any shape.

    Raises:
        UserError: values that are not whole numbers (NaN, fractions), not numbers, or negative.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return int(labels.any())
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise UserError("Labels must be whole numbers; got non-integer or NaN values.")
    elif labels.dtype.kind not in "iu":
        raise UserError(f"Labels must be an integer array, not {labels.dtype}.")
    if labels.size == 0:
        return 0
    low = labels.min()
    if low < 0:
        raise UserError(f"Labels must not be negative; the smallest label is {low}.")
    return int(labels.max())


def chosen_dtype(max_id: int, dtype: str | np.dtype | None = None) -> np.dtype:
    """The dtype of labels with ids up to ``max_id`` written as ``dtype``: ``dtype`` itself
    (``"uint16"`` or ``"uint32"``), or for None :func:`labels_dtype`.

    Raises:
        UserError: ``dtype`` is neither uint16 nor uint32.
        LabelIdsTooLarge: ``max_id`` does not fit in ``dtype`` (or in uint32).
    """
    needed = labels_dtype(max_id)
    if dtype is None:
        return needed
    chosen = np.dtype(dtype)
    if chosen not in (np.uint16, np.uint32):
        raise UserError(f"Labels are written as uint16 or uint32, not {chosen}.")
    if chosen.itemsize < needed.itemsize:
        raise LabelIdsTooLarge(
            f"Label ids go up to {int(max_id)}, which does not fit in {chosen} "
            f"(at most {np.iinfo(chosen).max}); use uint32."
        )
    return chosen


def as_label_array(labels: np.ndarray, dtype: str | np.dtype | None = None) -> np.ndarray:
    """``labels`` (integer, bool or integer-valued float array, any shape) as uint16 or uint32
    (see :func:`chosen_dtype`); not copied when it already has that dtype.

    Raises:
        UserError: see :func:`check_label_values` and :func:`chosen_dtype`.
    """
    labels = np.asarray(labels)
    return labels.astype(chosen_dtype(check_label_values(labels), dtype), copy=False)


# --- ids across planes and volumes --------------------------------------------------------------


def offset_ids(labels: np.ndarray, offset: int) -> np.ndarray:
    """``labels`` with every id above 0 raised by ``offset`` (background stays 0).

    Args:
        labels: non-negative integer labels, any shape.
        offset: how far the ids move, >= 0 (e.g. the largest id already used elsewhere).

    Returns:
        A new array of ``labels``' shape, :func:`labels_dtype` of the largest shifted id.
    """
    top = int(offset) + (int(labels.max()) if labels.size else 0)
    dtype = labels_dtype(top)
    out = np.asarray(labels).astype(dtype)
    if offset:
        out[out > 0] += dtype.type(offset)
    return out


class IdOffsets:
    """Instance ids unique over a sequence of planes or volumes: each part's ids 1..N move past
    the ids of the parts before it (part 1 keeps 1..N1, part 2 gets N1+1..N1+N2, ...).

    Attributes:
        used: the largest id handed out so far.
    """

    def __init__(self) -> None:
        self.used = 0

    def add(self, labels: np.ndarray) -> np.ndarray:
        """The next part's labels with ids moved past :attr:`used` (see :func:`offset_ids`)."""
        out = offset_ids(labels, self.used)
        self.used += int(labels.max()) if labels.size else 0
        return out


def stack_ids(parts: Iterable[np.ndarray]) -> np.ndarray:
    """Stack labels of equal shape (*S) into (N, *S) with ids unique over the stack
    (:class:`IdOffsets`), as :func:`labels_dtype` of the largest id.

    Raises:
        ValueError: ``parts`` is empty.
    """
    ids = IdOffsets()
    shifted = [ids.add(np.asarray(part)) for part in parts]
    return np.stack(shifted).astype(labels_dtype(ids.used))


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
