"""Stitching the instance labels of blocks into one label image with globally unique ids.

Each block labels its core plus a margin with block-local ids 1..n and writes only its core.
Two neighbouring blocks both label the strip around their common border (see
:mod:`~.blocks`). In that strip, an object seen by one block and an object seen by the other are
the same object when their intersection over union there exceeds 0.5; such pairs are merged
(union-find across all faces, so an object spread over four blocks becomes one). When the margin
exceeds the objects' size, both blocks see every border-crossing object whole, label it as a
whole-image pass would, and their strips agree pixel for pixel (IoU 1).

Final ids are consecutive, 1..N, numbered by the first block (in grid order) whose core holds the
object, then by local id: the numbering does not depend on the order in which blocks finish.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .blocks import FaceKey

logger = logging.getLogger(__name__)

#: IoU (inside the strip) above which two blocks' objects are the same object.
MATCH_IOU = 0.5

ObjectKey = tuple[int, int]
"""(block index, local id)."""


@dataclass
class BlockLabels:
    """What the stitching needs from one labelled block (small: no core pixels).

    Attributes:
        index: the block's index in its grid.
        n_objects: the largest local id of the block (ids 1..n_objects).
        core_ids: local ids present in the block's core, sorted, uint32 (n,).
        strips: labels (local ids, uint32 (h, w)) of each face's strip, by face key.
    """

    index: int
    n_objects: int
    core_ids: np.ndarray
    strips: dict[FaceKey, np.ndarray] = field(default_factory=dict)


def matching_pairs(first: np.ndarray, second: np.ndarray) -> list[tuple[int, int]]:
    """Pairs of ids (first, second) whose IoU inside the strip exceeds :data:`MATCH_IOU`.

    Args:
        first, second: two blocks' labels of the same strip, integer arrays of one shape.

    Returns:
        ``(id in first, id in second)`` pairs; each id appears in at most one pair.
    """
    a = first.ravel().astype(np.uint64)
    b = second.ravel().astype(np.uint64)
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    pairs, overlap = np.unique((a[both] << np.uint64(32)) | b[both], return_counts=True)
    ids_a, ids_b = (pairs >> np.uint64(32)).astype(np.int64), (pairs & 0xFFFFFFFF).astype(np.int64)
    area_a = _areas(a, ids_a)
    area_b = _areas(b, ids_b)
    iou = overlap / (area_a + area_b - overlap)
    keep = iou > MATCH_IOU
    return list(zip(ids_a[keep].tolist(), ids_b[keep].tolist(), strict=True))


def _areas(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Pixel count of each of ``ids`` in ``labels`` (1D)."""
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    return counts[np.searchsorted(values, ids)].astype(np.float64)


class Stitcher:
    """Collects labelled blocks in any order and gives each block's lookup table local -> final.

    Strips are kept only until both blocks of a face have arrived.
    """

    def __init__(self) -> None:
        self._blocks: dict[int, BlockLabels] = {}
        self._pending: dict[FaceKey, tuple[int, np.ndarray]] = {}
        self._parent: dict[ObjectKey, ObjectKey] = {}
        self.merges = 0

    def add(self, block: BlockLabels) -> None:
        """Record a block; match its strips against those of neighbours already recorded."""
        for face, strip in block.strips.items():
            other = self._pending.pop(face, None)
            if other is None:
                self._pending[face] = (block.index, strip)
                continue
            index, other_strip = other
            for id_other, id_here in matching_pairs(other_strip, strip):
                self._union((index, id_other), (block.index, id_here))
        self._blocks[block.index] = BlockLabels(block.index, block.n_objects, block.core_ids)

    def _find(self, key: ObjectKey) -> ObjectKey:
        root = key
        while self._parent.get(root, root) != root:
            root = self._parent[root]
        while key != root:  # path compression
            parent = self._parent[key]
            self._parent[key] = root
            key = parent
        return root

    def _union(self, a: ObjectKey, b: ObjectKey) -> None:
        root_a, root_b = self._find(a), self._find(b)
        if root_a != root_b:
            self._parent[max(root_a, root_b)] = min(root_a, root_b)
            self.merges += 1

    def lookup_tables(self, indices: Iterable[int]) -> tuple[dict[int, np.ndarray], int]:
        """Lookup tables local id -> final id for the blocks ``indices`` (all must be added).

        Returns:
            ``({block index: uint32 array (n_objects + 1,)}, number of objects)``; entry 0 is 0,
            ids absent from the block's core map to 0.

        Raises:
            UserError: more objects than a uint32 label image can hold.
        """
        numbers: dict[ObjectKey, int] = {}
        tables: dict[int, np.ndarray] = {}
        for index in sorted(indices):
            block = self._blocks[index]
            table = np.zeros(block.n_objects + 1, dtype=np.uint64)
            for local in block.core_ids.tolist():
                root = self._find((index, local))
                if root not in numbers:
                    numbers[root] = len(numbers) + 1
                table[local] = numbers[root]
            tables[index] = table
        total = len(numbers)
        if total > np.iinfo(np.uint32).max:
            raise UserError(f"{total} objects do not fit in a uint32 label image.")
        logger.debug("stitched %d objects (%d merges across block borders)", total, self.merges)
        return {k: v.astype(np.uint32) for k, v in tables.items()}, total
