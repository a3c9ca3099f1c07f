"""Reading label and mask images given on the command line, with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _read_array(path: Path) -> tuple[Any, str]:
    """The whole image at ``path`` in memory (a numpy array) and its axes."""
    import numpy as np

    from napari_unet.core.io import reading

    image = reading.read_image(path, memmap=False)
    return np.asarray(image.data), image.axes


def read_labels(path: Path, what: str) -> Any:
    """A label image as a non-negative integer array (any shape; floats holding whole numbers
    become int64, booleans uint8).

    Raises:
        InputMismatchError: an RGB image, non-integer or negative values, or a non-numeric
            dtype; ``what`` names the file's role in the message.
    """
    import numpy as np

    from napari_unet.core.errors import InputMismatchError

    data, axes = _read_array(path)
    if "S" in axes:
        raise InputMismatchError(f"{what} {path} is an RGB image, not a label image")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise InputMismatchError(f"{what} {path} is not a label image (non-integer values)")
        if data.size and data.max() > np.iinfo(np.uint32).max:
            raise InputMismatchError(
                f"{what} {path} has label ids up to {data.max():g}, more than a label image "
                f"holds (at most {np.iinfo(np.uint32).max})"
            )
        data = data.astype(np.int64)
    elif data.dtype.kind == "b":
        data = data.astype(np.uint8)
    elif data.dtype.kind not in "iu":
        raise InputMismatchError(f"{what} {path} is not a label image (dtype {data.dtype})")
    if data.size and data.min() < 0:
        raise InputMismatchError(f"{what} {path} has negative labels")
    return data


def read_mask(path: Path) -> Any:
    """A mask file as a bool array: True where non-zero (RGB: any sample non-zero).

    Raises:
        UserError: a non-numeric image, or no pixel is non-zero.
    """
    import numpy as np

    from napari_unet.core.errors import UserError

    data, axes = _read_array(path)
    if data.dtype.kind not in "uifb":
        raise UserError(f"the mask {path} is not a numeric image (dtype {data.dtype})")
    mask = np.nan_to_num(data) != 0
    if axes.endswith("S"):
        mask = mask.any(axis=-1)
    if not mask.any():
        raise UserError(f"the mask {path} marks no pixel as annotated (it is all zero)")
    return mask
