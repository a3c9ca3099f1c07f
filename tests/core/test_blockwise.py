"""Blockwise prediction against the whole image in memory: same probabilities, same objects, no
object split by a block border, globally unique ids; outputs, progress and cancellation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage as ndi

from _blockwise_helpers import nuclei_image, nuclei_model
from napari_unet.core.analysis.metrics import match
from napari_unet.core.errors import InputMismatchError, UserError
from napari_unet.core.inference.postprocess import PostprocessConfig
from napari_unet.core.inference.predict import predict_labels
from napari_unet.core.io.lazy import lazy_from_array, open_lazy
from napari_unet.core.io.reading import read_image
from napari_unet.core.large.blocks import chunk_side, default_block_size, make_grid, relative
from napari_unet.core.large.blockwise import BlockDone, predict_blockwise
from napari_unet.core.large.stitch import BlockLabels, Stitcher, matching_pairs
from napari_unet.core.progress import Progress, drain

BLOCK, OVERLAP = 64, 48  # small blocks: many borders on a 320 px image


@pytest.fixture(scope="module")
def model():
    return nuclei_model()


@pytest.fixture(scope="module")
def image():
    return nuclei_image(320)


@pytest.fixture(scope="module")
def in_memory(model, image):
    return drain(predict_labels(image, "YX", model, device="cpu", precision="fp32"))


def _blockwise(image, model, output=None, axes="YX", **kwargs):
    events: list[Progress] = []
    result = drain(
        predict_blockwise(
            image,
            model,
            output,
            axes=axes,
            block_size=BLOCK,
            overlap=OVERLAP,
            device="cpu",
            precision="fp32",
            **kwargs,
        ),
        events.append,
    )
    return result, events


def _crossing(labels: np.ndarray, block: int) -> list[int]:
    """Ids of objects that cross a block border (rows or columns at multiples of ``block``)."""
    ids = set()
    for border in range(block, labels.shape[0], block):
        above, below = labels[border - 1], labels[border]
        ids |= set(above[(above > 0) & (above == below)].tolist())
    for border in range(block, labels.shape[1], block):
        left, right = labels[:, border - 1], labels[:, border]
        ids |= set(left[(left > 0) & (left == right)].tolist())
    return sorted(ids)


def test_blockwise_equals_in_memory(model, image, in_memory, tmp_path):
    probs, labels = in_memory
    result, _ = _blockwise(
        image, model, tmp_path / "labels.zarr", probabilities=tmp_path / "probs.zarr"
    )
    blockwise = np.asarray(result.labels[...])
    np.testing.assert_allclose(
        zarr.open_array(str(tmp_path / "probs.zarr" / "0"))[...], probs, atol=1e-5
    )
    assert result.n_blocks == 25 and result.block_size == BLOCK and result.axes == "YX"
    agreement = match(blockwise, labels, 0.5)
    assert agreement.ap >= 0.99, agreement.to_dict()
    # no object split along a block border: each in-memory object that crosses one is exactly
    # one blockwise object
    crossing = _crossing(labels, BLOCK)
    assert len(crossing) >= 10
    pairs = dict(zip(agreement.true_ids.tolist(), agreement.pred_ids.tolist(), strict=True))
    for obj in crossing:
        assert obj in pairs, f"object {obj} has no blockwise counterpart"
        np.testing.assert_array_equal(blockwise == pairs[obj], labels == obj)


def test_ids_are_unique_and_consecutive(model, image, tmp_path):
    result, _ = _blockwise(image, model)
    labels = np.asarray(result.labels[...])
    ids = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(ids, np.arange(1, result.n_objects + 1))
    assert labels.dtype == np.uint16 == result.dtype
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        _, n_parts = ndi.label(labels[box] == index)
        assert n_parts == 1, f"id {index} is used by {n_parts} separate objects"


def test_stack_ids_unique_across_planes_and_tiff_output(model, tmp_path):
    stack = np.stack([nuclei_image(200, seed=s) for s in (1, 2)])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path, stack, imagej=True, resolution=(2.0, 2.0), metadata={"axes": "TYX", "unit": "um"}
    )
    _, expected = drain(predict_labels(stack, "TYX", model, device="cpu", precision="fp32"))
    result, _ = _blockwise(open_lazy(path), model, tmp_path / "labels.tif", axes=None)
    assert result.labels is None and result.axes == "TYX"
    written = read_image(tmp_path / "labels.tif")
    assert written.axes == "TYX" and written.pixel_size == pytest.approx((0.5, 0.5))
    labels = np.asarray(written.data)
    assert labels.dtype == np.uint16
    assert not set(np.unique(labels[0])[1:]) & set(np.unique(labels[1])[1:])
    assert match(labels, expected, 0.5).ap >= 0.99
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:  # a time-lapse for ImageJ too
        assert tif.is_imagej and tif.imagej_metadata["frames"] == 2 and not tif.is_bigtiff


def test_rgb_image_is_converted_like_in_memory(model):
    gray = nuclei_image(160, seed=9)
    rgb = np.stack([gray, gray // 2, gray // 3], axis=-1)
    _, expected = drain(predict_labels(rgb, "YXS", model, device="cpu", precision="fp32"))
    result, _ = _blockwise(rgb, model, axes="YXS")
    assert result.axes == "YX"
    assert match(np.asarray(result.labels[...]), expected, 0.5).ap >= 0.99


def test_semantic_model_gives_the_same_classes(model, image, in_memory):
    probs, _ = in_memory
    post = PostprocessConfig(mode="semantic")
    result, _ = _blockwise(image, model, postprocess=post)
    classes = np.asarray(result.labels[...])
    assert result.n_objects is None and classes.dtype == np.uint8
    np.testing.assert_array_equal(classes, np.argmax(probs, axis=0))


def test_writes_into_a_given_zarr_array_with_progress(model, image, in_memory):
    _, labels = in_memory
    out = zarr.zeros(shape=image.shape, chunks=(64, 64), dtype="uint32")
    result, events = _blockwise(lazy_from_array(image, "YX"), model, out, axes=None)
    assert result.labels is out and result.path is None
    assert match(np.asarray(out[...]), labels, 0.5).ap >= 0.99
    stages = [e.stage for e in events]
    assert stages[0] == "normalize" and "predict" in stages and stages[-1] == "stitch"
    covered = np.zeros(image.shape, bool)
    for event in events:
        assert 0 <= event.done <= event.total
        if isinstance(event.payload, BlockDone) and event.payload.final:
            covered[event.payload.rows, event.payload.cols] = True
    assert covered.all()


def test_cancelling_leaves_nothing_behind(model, image, tmp_path):
    gen = predict_blockwise(
        image,
        model,
        tmp_path / "labels.zarr",
        axes="YX",
        block_size=BLOCK,
        overlap=OVERLAP,
        device="cpu",
        probabilities=tmp_path / "p.zarr",
    )
    for event in gen:
        if event.stage == "predict" and event.done >= 500:
            break
    gen.close()
    assert list(tmp_path.iterdir()) == []


def test_bad_requests_fail_before_any_work(model, image, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        next(predict_blockwise(image, model, tmp_path / "no" / "x.zarr", axes="YX"))
    with pytest.raises(UserError, match=r"\.zarr, \.tif or \.tiff"):
        next(predict_blockwise(image, model, tmp_path / "x.png", axes="YX"))
    with pytest.raises(UserError, match="axes"):
        next(predict_blockwise(image, model, None))
    (tmp_path / "file.zarr").write_text("")
    with pytest.raises(UserError, match="not a zarr store"):
        next(predict_blockwise(image, model, tmp_path / "file.zarr", axes="YX"))
    rgb2 = np.zeros((2, 64, 64), np.uint16)
    with pytest.raises(InputMismatchError, match="channels"):
        drain(predict_blockwise(rgb2, model, None, axes="CYX"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.zarr"]


# --- the pieces ------------------------------------------------------------------------------


def test_grid_covers_the_plane_with_aligned_reads():
    grid = make_grid(n_planes=2, height=150, width=97, block=40, margin=12, halo=24, stride=8)
    assert grid.block == 40 and grid.context == 40 and grid.strip == 12
    blocks = grid.blocks()
    assert len(blocks) == 2 * 4 * 3
    counts = np.zeros((2, 150, 97), int)
    for block in blocks:
        counts[(block.plane, *block.core)] += 1
        for region, outer in ((block.core, block.labels), (block.labels, block.read)):
            inner = relative(region, outer)
            assert all(
                s.start >= 0 and s.stop <= o.stop - o.start
                for s, o in zip(inner, outer, strict=True)
            )
        assert all(s.start % 8 == 0 for s in block.read)  # the network's pooling grid
        for _, strip in block.faces:
            relative(strip, block.labels)
            assert all(
                s.start >= o.start and s.stop <= o.stop
                for s, o in zip(strip, block.labels, strict=True)
            )
    assert (counts == 1).all()


def test_block_and_chunk_sizes():
    assert chunk_side(3776) == 944 and chunk_side(64) == 64 and chunk_side(4096) == 1024
    # a block with its context (64 + 96 px on each side) is four 1024 px tiles
    assert default_block_size(1024, 64, 96, 16, (20000, 9000)) == 4096 - 2 * 160
    assert default_block_size(1024, 64, 96, 16, (4000, 2500)) == 4000  # one block: no borders


def test_matching_and_stitching_do_not_depend_on_order():
    strip_a = np.array([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2]])
    strip_b = np.array([[5, 5, 0, 3, 0], [5, 5, 0, 0, 0]])  # 2 vs 3: IoU 0.25, not the same
    assert matching_pairs(strip_a, strip_b) == [(1, 5)]
    face = (0, "x", 0, 0)
    blocks = [
        BlockLabels(0, 2, np.array([1, 2], np.uint32), {face: strip_a}),
        BlockLabels(1, 5, np.array([3, 5], np.uint32), {face: strip_b}),
    ]
    tables = []
    for order in (blocks, blocks[::-1], random.Random(0).sample(blocks, 2)):
        stitcher = Stitcher()
        for block in order:
            stitcher.add(block)
        table, total = stitcher.lookup_tables([0, 1])
        assert total == 3
        tables.append({k: v.tolist() for k, v in table.items()})
    assert tables[0] == tables[1] == tables[2]
    assert tables[0] == {0: [0, 1, 2], 1: [0, 0, 0, 3, 0, 1]}
