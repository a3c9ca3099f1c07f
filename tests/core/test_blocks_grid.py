"""The block grid of blockwise prediction, on its own: cores tile the plane exactly, regions nest,
faces pair up, and the sizes follow the network's stride."""

import numpy as np
import pytest

from napari_unet.core.large.blocks import chunk_side, default_block_size, make_grid, relative


@pytest.mark.parametrize(("height", "width", "block"), [(100, 130, 32), (64, 64, 64), (17, 5, 16)])
def test_cores_cover_every_pixel_once(height, width, block):
    grid = make_grid(2, height, width, block, margin=8, halo=20, stride=16)
    counts = np.zeros((2, height, width), dtype=int)
    for b in grid.blocks():
        counts[(b.plane, *b.core)] += 1
    assert (counts == 1).all()
    assert len(grid) == 2 * grid.rows * grid.cols


def test_regions_nest_and_stay_inside_the_plane():
    grid = make_grid(1, 200, 150, 48, margin=12, halo=30, stride=16)
    for b in grid.blocks():
        for core, labels, read, n in zip(b.core, b.labels, b.read, (200, 150), strict=True):
            assert 0 <= read.start <= labels.start <= core.start
            assert core.stop <= labels.stop <= read.stop <= n
        # the labels margin is the given one wherever the plane allows it
        if b.row > 0:
            assert b.core[0].start - b.labels[0].start == 12


def test_context_and_block_are_rounded_to_the_stride():
    grid = make_grid(1, 500, 500, 50, margin=10, halo=21, stride=16)
    assert grid.block == 64
    assert grid.context == 32
    assert grid.strip == 10


def test_every_face_is_shared_by_exactly_two_blocks():
    grid = make_grid(1, 130, 100, 32, margin=8, halo=8, stride=8)
    seen: dict[tuple, list[int]] = {}
    for b in grid.blocks():
        for key, region in b.faces:
            seen.setdefault(key, []).append(b.index)
            assert region == grid.strip_region(key[1], key[2], key[3])
    assert all(len(owners) == 2 for owners in seen.values())
    # faces between rows and between columns: (rows - 1) * cols + rows * (cols - 1)
    assert len(seen) == (grid.rows - 1) * grid.cols + grid.rows * (grid.cols - 1)


def test_no_faces_without_a_margin():
    grid = make_grid(1, 64, 64, 16, margin=0, halo=8, stride=8)
    assert all(b.faces == () for b in grid.blocks())


def test_relative_regions_index_the_read_array():
    grid = make_grid(1, 90, 90, 32, margin=4, halo=10, stride=16)
    image = np.arange(90 * 90).reshape(90, 90)
    for b in grid.blocks():
        read = image[b.read]
        assert np.array_equal(read[relative(b.core, b.read)], image[b.core])


def test_invalid_grid_is_refused():
    with pytest.raises(ValueError):
        make_grid(1, 10, 10, 0, margin=1, halo=1, stride=1)


def test_default_block_size():
    # a small plane is one block, rounded to the stride
    assert default_block_size(256, 64, 96, 16, plane=(1000, 3000)) == 3008
    big = default_block_size(256, 64, 96, 16, plane=(20000, 20000))
    assert big % 16 == 0 and big >= 1024


@pytest.mark.parametrize("block", [1024, 1536, 4096, 3008, 100])
def test_chunk_side_divides_the_block(block):
    side = chunk_side(block)
    assert block % side == 0 and side <= 1024
