"""Stitching on its own: objects that two (or four) blocks see in their shared strips become one
object, others stay apart, and the numbering does not depend on the order blocks arrive in."""

import itertools

import numpy as np
import pytest

from napari_unet.core.errors import UserError
from napari_unet.core.large.stitch import BlockLabels, Stitcher, matching_pairs


def test_matching_pairs_by_iou_in_the_strip():
    first = np.array([[1, 1, 1, 0, 2, 2]], dtype=np.uint32)
    second = np.array([[5, 5, 0, 0, 7, 0]], dtype=np.uint32)
    # 1 vs 5: 2 of 3 pixels -> IoU 0.67 (merged); 2 vs 7: 1 of 2 -> IoU 0.5 (not above 0.5)
    assert matching_pairs(first, second) == [(1, 5)]
    assert matching_pairs(first, np.zeros_like(first)) == []


def _block(index, n, core_ids, strips):
    return BlockLabels(index, n, np.array(core_ids, dtype=np.uint32), strips)


def _four_blocks_one_object():
    """Blocks 0 1 / 2 3 around one object in the middle (local id 1 in each), plus an object of
    its own (local id 2) in block 0."""
    strip = np.ones((2, 2), dtype=np.uint32)
    faces = {
        0: {(0, "x", 0, 0): strip, (0, "y", 0, 0): strip},
        1: {(0, "x", 0, 0): strip, (0, "y", 0, 1): strip},
        2: {(0, "y", 0, 0): strip, (0, "x", 1, 0): strip},
        3: {(0, "y", 0, 1): strip, (0, "x", 1, 0): strip},
    }
    return [
        _block(0, 2, [1, 2], faces[0]),
        _block(1, 1, [1], faces[1]),
        _block(2, 1, [1], faces[2]),
        _block(3, 1, [1], faces[3]),
    ]


def test_an_object_over_four_blocks_is_one_object():
    stitcher = Stitcher()
    for block in _four_blocks_one_object():
        stitcher.add(block)
    tables, total = stitcher.lookup_tables(range(4))
    assert total == 2
    assert {int(tables[i][1]) for i in range(4)} == {1}
    assert int(tables[0][2]) == 2
    assert all(t[0] == 0 and t.dtype == np.uint32 for t in tables.values())


def test_numbering_does_not_depend_on_arrival_order():
    results = set()
    for order in itertools.permutations(range(4)):
        blocks = _four_blocks_one_object()
        stitcher = Stitcher()
        for i in order:
            stitcher.add(blocks[i])
        tables, total = stitcher.lookup_tables(range(4))
        results.add((total, tuple(tuple(tables[i].tolist()) for i in range(4))))
    assert len(results) == 1


def test_objects_that_do_not_overlap_stay_apart_and_ids_outside_the_core_vanish():
    a = np.array([[1, 1, 0, 0]], dtype=np.uint32)
    b = np.array([[0, 0, 3, 3]], dtype=np.uint32)
    stitcher = Stitcher()
    stitcher.add(_block(0, 1, [1], {(0, "x", 0, 0): a}))
    # block 1 labels object 3 in its margin only: it is not in its core
    stitcher.add(_block(1, 3, [1, 2], {(0, "x", 0, 0): b}))
    tables, total = stitcher.lookup_tables([0, 1])
    assert total == 3
    assert tables[1][3] == 0
    assert stitcher.merges == 0


def test_too_many_objects_for_uint32(monkeypatch):
    stitcher = Stitcher()
    stitcher.add(_block(0, 2, [1, 2], {}))
    monkeypatch.setattr(np, "iinfo", lambda dtype: type("I", (), {"max": 1})())
    with pytest.raises(UserError, match="uint32"):
        stitcher.lookup_tables([0])
