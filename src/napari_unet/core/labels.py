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
