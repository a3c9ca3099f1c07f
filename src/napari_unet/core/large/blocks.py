"""The block grid of blockwise prediction: where each block reads, labels, writes and meets its
neighbours.

An image plane (H, W) is cut into square *cores* of ``block`` pixels (the last row and column of
blocks may be smaller). Around each core, three regions (image coordinates, clipped to the
plane):

- *labels*: the core plus ``margin`` pixels on every side; instance labels are made on it, so an
  object that crosses the core's border is seen whole when it is smaller than the margin;
- *read*: the labels region plus the network's context, ``context - margin`` more pixels, so the
  probabilities of every labelled pixel are those of a whole-image pass (``context`` is rounded
  to the network's stride, so the tiles inside a block keep the whole image's pooling grid);
- *strips*: the ``strip`` pixels on each side of the border with a neighbour (a *face*), across
  the width of the labels region; both blocks of a face label their strip, and the stitching
  compares them there.

Cores start at multiples of ``block``, a multiple of the stride and of the output chunk, so no two
blocks ever write the same chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Region = tuple[slice, slice]
FaceKey = tuple[int, str, int, int]
"""(plane, "y" or "x", row, column) of the block above (``"y"``) or left (``"x"``) of a face."""


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _span(start: int, stop: int, pad: int, length: int) -> slice:
    return slice(max(0, start - pad), min(length, stop + pad))


def relative(region: Region, origin: Region) -> Region:
    """``region`` (image coordinates) as slices of an array that holds ``origin``."""
    return tuple(  # type: ignore[return-value]
        slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, origin, strict=True)
    )


@dataclass(frozen=True)
class Block:
    """One block of a :class:`BlockGrid` (all regions in image coordinates of its plane).

    Attributes:
        index: position in :meth:`BlockGrid.blocks` (plane by plane, row-major).
        plane: index of the 2D plane (0 for a single image).
        row, col: position of the block in the plane's grid.
        core: the pixels this block writes.
        labels: core plus the margin: where labels are made.
        read: labels plus the network's context: the pixels read from the image.
        faces: ``(face key, strip region)`` for each neighbour below and right (``first``) or
            above and left (not first) of this block.
    """

    index: int
    plane: int
    row: int
    col: int
    core: Region
    labels: Region
    read: Region
    faces: tuple[tuple[FaceKey, Region], ...]


@dataclass(frozen=True)
class BlockGrid:
    """The blocks that cover ``n_planes`` planes of ``height`` x ``width`` pixels.

    Attributes:
        n_planes, height, width: the planes' count and size.
        block: core side in pixels.
        margin: labels margin around each core (objects up to this size are stitched exactly).
        context: read margin around each core, at least ``margin`` plus the network's halo.
        strip: half width of the strip compared at each face (at most ``margin``).
    """

    n_planes: int
    height: int
    width: int
    block: int
    margin: int
    context: int
    strip: int

    @property
    def rows(self) -> int:
        """Blocks along Y."""
        return math.ceil(self.height / self.block)

    @property
    def cols(self) -> int:
        """Blocks along X."""
        return math.ceil(self.width / self.block)

    def __len__(self) -> int:
        return self.n_planes * self.rows * self.cols

    def blocks(self) -> list[Block]:
        """Every block, plane by plane, row-major."""
        return [self.block_at(i) for i in range(len(self))]

    def block_at(self, index: int) -> Block:
        """The block at ``index`` (see :meth:`blocks`)."""
        per_plane = self.rows * self.cols
        plane, rest = divmod(index, per_plane)
        row, col = divmod(rest, self.cols)
        y0, x0 = row * self.block, col * self.block
        y1, x1 = min(y0 + self.block, self.height), min(x0 + self.block, self.width)
        core = (slice(y0, y1), slice(x0, x1))
        labels = (_span(y0, y1, self.margin, self.height), _span(x0, x1, self.margin, self.width))
        read = (_span(y0, y1, self.context, self.height), _span(x0, x1, self.context, self.width))
        return Block(index, plane, row, col, core, labels, read, self._faces(plane, row, col))

    def _faces(self, plane: int, row: int, col: int) -> tuple[tuple[FaceKey, Region], ...]:
        if self.strip <= 0:
            return ()
        faces = []
        for axis, r, c in (
            ("y", row - 1, col),
            ("x", row, col - 1),
            ("y", row, col),
            ("x", row, col),
        ):
            if (
                r < 0
                or c < 0
                or (axis == "y" and r + 1 >= self.rows)
                or (axis == "x" and c + 1 >= self.cols)
            ):
                continue
            faces.append(((plane, axis, r, c), self.strip_region(axis, r, c)))
        return tuple(faces)

    def strip_region(self, axis: str, row: int, col: int) -> Region:
        """The strip of the face below (``"y"``) or right of (``"x"``) block (row, col)."""
        w, m, b = self.strip, self.margin, self.block
        if axis == "y":
            border = (row + 1) * b
            x0, x1 = col * b, min((col + 1) * b, self.width)
            return (_span(border, border, w, self.height), _span(x0, x1, m, self.width))
        border = (col + 1) * b
        y0, y1 = row * b, min((row + 1) * b, self.height)
        return (_span(y0, y1, m, self.height), _span(border, border, w, self.width))


def make_grid(
    n_planes: int,
    height: int,
    width: int,
    block: int,
    margin: int,
    halo: int,
    stride: int,
) -> BlockGrid:
    """A :class:`BlockGrid` with the context rounded to ``stride`` and the strip chosen.

    Args:
        block: core side (rounded up to a multiple of ``stride``).
        margin: labels margin in pixels (>= 0).
        halo: the network's context margin (see :func:`~.tiling.resolve_halo`).
        stride: the network's stride.
    """
    if block < 1 or margin < 0 or halo < 0 or stride < 1:
        raise ValueError(f"invalid blocks: block {block}, margin {margin}, halo {halo}")
    block = _round_up(block, stride)
    context = _round_up(margin + halo, stride)
    strip = min(16, margin, block)
    return BlockGrid(n_planes, height, width, block, margin, context, strip)


def default_block_size(
    tile_size: int,
    margin: int,
    halo: int,
    stride: int,
    plane: tuple[int, int] = (0, 0),
    target: int = 4096,
) -> int:
    """The default core side of a block.

    A plane of at most ``target`` pixels a side is one block (no borders at all). Otherwise the
    core is chosen so that a block with its context on both sides is a whole number of tiles
    (about ``target`` pixels): the tiles inside a block then cost no more than the image's own.

    Args:
        tile_size: the tiling's tile side; margin, halo, stride: as for :func:`make_grid`.
        plane: (height, width) of the image's planes.

    Returns:
        A multiple of ``stride``, at least 1024 (or the stride).
    """
    if max(plane) and max(plane) <= target:
        return _round_up(max(plane), stride)
    context = _round_up(margin + halo, stride)
    tiles = max(1, round(target / max(tile_size, 1)))
    core = max(tiles * tile_size - 2 * context, 1024)
    return max(stride, core // stride * stride)


def chunk_side(block: int) -> int:
    """Side of the output chunks for cores of ``block`` pixels: the largest divisor of ``block``
    up to 1024, preferring multiples of 16 (TIFF tiles)."""
    divisors = [d for d in range(1, min(block, 1024) + 1) if block % d == 0]
    sixteen = [d for d in divisors if d % 16 == 0 and d >= 128]
    return max(sixteen) if sixteen else max(divisors)
