"""One image layout for the whole package: which axes are spatial, which holds channels, which
index planes, and what the labels made from the image look like.

Axes are strings of letters, one per dimension, from :data:`AXES` (``T`` time, ``Z`` depth,
``C`` channels, ``Y``, ``X``, ``S`` RGB(A) samples; other letters such as ``Q`` are extra stack
axes). A :class:`Layout` pairs such a string with a shape and derives the rest:

- the *spatial* axes: ``"YX"``, or ``"ZYX"`` when a stack is treated as a volume;
- the *channel* axis: ``C`` or ``S``, or none (:data:`CHANNEL_AXES`);
- the *leading* axes: all others, in their order; each combination of their indices is one
  *plane* (a 2D image, or a volume), numbered 0..N-1 in row-major (C) order;
- the *label* axes and shape: the leading axes then the spatial axes, i.e. the image without
  its channel axis; what every labels array made from the image has.

For example ``Layout("TZCYX", (2, 5, 3, 64, 64))`` has leading ``"TZ"`` (10 planes), channel
``"C"`` (3 channels), labels ``"TZYX"`` (2, 5, 64, 64); with ``volume=True`` its leading axes are
``"T"`` (2 volumes) and its spatial axes ``"ZYX"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputMismatchError

#: The axis letters used throughout napari-unet, in the order ImageJ stores them.
AXES = "TZCYXS"
#: Axis letters that hold channels, not planes: ``C`` (channels) and ``S`` (RGB(A) samples).
CHANNEL_AXES = "CS"


@dataclass(frozen=True)
class Layout:
    """The layout of an image of ``shape`` with ``axes``.

    Attributes:
        axes: one letter per dimension (upper case), e.g. ``"YX"``, ``"TZCYX"``, ``"YXS"``.
        shape: the image's shape, one size per letter of ``axes``.
        volume: treat a Z axis as spatial (3D planes ``(Z, Y, X)``) instead of as a plane axis.

    Raises:
        InputMismatchError: ``axes`` do not fit ``shape``, repeat a letter, lack Y or X, or hold
            both ``C`` and ``S``.
    """

    axes: str
    shape: tuple[int, ...]
    volume: bool = False

    def __post_init__(self) -> None:
        axes = str(self.axes).upper()
        shape = tuple(int(n) for n in self.shape)
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "shape", shape)
        if len(axes) != len(shape):
            raise InputMismatchError(
                f"Axes {axes!r} do not fit an image with {len(shape)} dimensions (shape {shape})."
            )
        if len(set(axes)) != len(axes):
            raise InputMismatchError(f"Axes {axes!r} name an axis more than once.")
        if "Y" not in axes or "X" not in axes:
            raise InputMismatchError(f"Axes {axes!r} lack Y or X; a 2D image needs both.")
        if "C" in axes and "S" in axes:
            raise InputMismatchError(
                f"Axes {axes!r} have both channels (C) and RGB samples (S); only one is supported."
            )

    # --- letters -------------------------------------------------------------------------------

    @property
    def channel(self) -> str | None:
        """The channel letter (``"C"`` or ``"S"``), or ``None`` for a single-channel image."""
        return next((a for a in self.axes if a in CHANNEL_AXES), None)

    @property
    def spatial(self) -> str:
        """The spatial axes: ``"ZYX"`` for a volume with a Z axis, else ``"YX"``."""
        return "ZYX" if self.volume and "Z" in self.axes else "YX"

    @property
    def leading_axes(self) -> str:
        """The plane-indexing axes, in their order: all but the channel and spatial ones."""
        skip = self.spatial + (self.channel or "")
        return "".join(a for a in self.axes if a not in skip)

    @property
    def label_axes(self) -> str:
        """The axes of labels made from the image: leading then spatial, e.g. ``"TZYX"``."""
        return self.leading_axes + self.spatial

    @property
    def plane_axes(self) -> str:
        """The axes of one plane as :meth:`arrange` gives it: channel (if any) then spatial,
        e.g. ``"CYX"``, ``"YX"``, ``"SYX"``."""
        return (self.channel or "") + self.spatial

    @property
    def layer_dims(self) -> str:
        """The axes of a napari layer's dimensions (its sliders, ``scale``): all but ``S``."""
        return self.axes.replace("S", "")

    # --- sizes ---------------------------------------------------------------------------------

    def size(self, letter: str) -> int:
        """The size of axis ``letter``; 1 when the image has no such axis."""
        return self.shape[self.axes.index(letter)] if letter in self.axes else 1

    @property
    def n_channels(self) -> int:
        """The number of channels (1 without a channel axis)."""
        return self.size(self.channel) if self.channel else 1

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """The sizes of the leading axes (``()`` for a single plane)."""
        return tuple(self.size(a) for a in self.leading_axes)

    @property
    def plane_shape(self) -> tuple[int, ...]:
        """The sizes of the spatial axes: (Y, X), or (Z, Y, X) for a volume."""
        return tuple(self.size(a) for a in self.spatial)

    @property
    def label_shape(self) -> tuple[int, ...]:
        """The shape of labels made from the image: (*leading, *spatial), e.g. (T, Z, Y, X)."""
        return self.leading_shape + self.plane_shape

    @property
    def n_planes(self) -> int:
        """The number of planes: the product of the leading sizes (1 for a single plane)."""
        return int(math.prod(self.leading_shape))

    # --- planes --------------------------------------------------------------------------------

    def leading_index(self, plane: int) -> tuple[int, ...]:
        """The leading coordinates of plane number ``plane`` (row-major); ``()`` for one plane."""
        if not self.leading_shape:
            return ()
        return tuple(int(i) for i in np.unravel_index(int(plane), self.leading_shape))

    def plane_number(self, index: Sequence[int]) -> int:
        """The number of the plane at leading coordinates ``index`` (inverse of
        :meth:`leading_index`)."""
        if not self.leading_shape:
            return 0
        return int(np.ravel_multi_index(tuple(int(i) for i in index), self.leading_shape))

    def leading_at(self, position: Sequence[float], clip: bool = False) -> tuple[int, ...] | None:
        """The leading coordinates at a position given per layer dimension (:attr:`layer_dims`,
        e.g. ``layer.world_to_data(viewer.dims.point)``), rounded.

        Returns:
            One index per leading axis; coordinates outside the image are clipped into it when
            ``clip``, else the result is ``None``.
        """
        dims = self.layer_dims
        index = []
        for letter in self.leading_axes:
            k, n = round(float(position[dims.index(letter)])), self.size(letter)
            if clip:
                k = min(max(k, 0), n - 1)
            elif not 0 <= k < n:
                return None
            index.append(int(k))
        return tuple(index)

    def key(self, index: Sequence[int]) -> tuple[int | slice, ...]:
        """An index into the image (one entry per axis of :attr:`axes`) selecting the plane at
        leading coordinates ``index``: integers on the leading axes, full slices elsewhere."""
        at = dict(zip(self.leading_axes, index, strict=True))
        return tuple(int(at[a]) if a in at else slice(None) for a in self.axes)

    def label_key(self, index: Sequence[int]) -> tuple[int | slice, ...]:
        """The same plane's place in labels of :attr:`label_shape`: the leading coordinates,
        then full slices over the spatial axes."""
        return (*(int(i) for i in index), *(slice(None),) * len(self.spatial))

    # --- arranging -----------------------------------------------------------------------------

    @property
    def order(self) -> tuple[int, ...]:
        """The transposition taking the image to (*leading, [channel], *spatial)."""
        letters = self.leading_axes + (self.channel or "") + self.spatial
        return tuple(self.axes.index(a) for a in letters)

    def arrange(self, data: Any) -> Any:
        """``data`` transposed to (*leading, [channel], *spatial) (a view for numpy and dask)."""
        return data.transpose(self.order)

    def planes(self, data: Any) -> np.ndarray:
        """``data`` as a stack of planes: (N, C, *spatial), C = 1 without a channel axis (a view
        where numpy can reshape without copying).

        Raises:
            InputMismatchError: ``data`` does not have :attr:`shape`.
        """
        if tuple(np.shape(data)) != self.shape:
            raise InputMismatchError(
                f"An array of shape {tuple(np.shape(data))} does not have the layout's shape "
                f"{self.shape} (axes {self.axes!r})."
            )
        arranged = np.transpose(data, self.order)
        if self.channel is None:
            arranged = np.expand_dims(arranged, len(self.leading_axes))
        return arranged.reshape(self.n_planes, *arranged.shape[len(self.leading_axes) :])

    def without(self, letters: str) -> Layout:
        """The layout with the axes in ``letters`` removed (e.g. once a plane is selected)."""
        kept = [i for i, a in enumerate(self.axes) if a not in letters.upper()]
        axes = "".join(self.axes[i] for i in kept)
        return Layout(axes, tuple(self.shape[i] for i in kept), self.volume)


def label_dims(axes: str) -> list[int]:
    """Which of a napari image layer's dimensions (its data ``axes`` without ``S``) the labels
    made from it keep: all but the channel dimension ``C``. ``"ZCYX"`` -> ``[0, 2, 3]``."""
    return [i for i, a in enumerate(axes.upper().replace("S", "")) if a != "C"]
