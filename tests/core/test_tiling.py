"""Overlap-tile inference: the grid, mirror padding, batching, progress, cancellation, OOM retry,
and agreement of tiled and whole-image passes of a real (tiny) U-Net."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from napari_unet.core.config import ModelConfig, TilingConfig
from napari_unet.core.errors import UserError
from napari_unet.core.inference.events import TileBatchDone
from napari_unet.core.inference.tiling import (
    default_halo,
    mirror_indices,
    predict_tiled,
    read_window,
    resolve_halo,
    tile_grid,
)
from napari_unet.core.network.model import build_model, receptive_radius
from napari_unet.core.progress import Progress, drain

WHOLE = TilingConfig(tile_size=100_000)  # one tile: the whole-image reference pass


class PlusOne:
    """Trivial predictor ``x + 1`` that records the batch shapes it saw."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(batch.shape))
        return batch + 1


def _image(channels: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((channels, height, width), dtype=np.float32)


# --- grid and mirror padding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "tile", "halo", "stride"),
    [((37, 53), 16, 5, 4), ((200, 131), 64, 32, 16), ((1, 40), 8, 3, 8), ((7, 9), 256, 16, 16)],
)
def test_grid_cores_partition_the_image_with_aligned_equal_windows(shape, tile, halo, stride):
    tiles = tile_grid(shape, tile, halo, stride)
    covered = np.zeros(shape, dtype=int)
    for t in tiles:
        covered[t.core] += 1
        assert (t.height, t.width) == (tiles[0].height, tiles[0].width)
        assert t.height % stride == 0 and t.width % stride == 0
        # windows start on the stride grid of the padded image (origin `halo` above-left)
        assert (t.y + halo) % stride == 0 and (t.x + halo) % stride == 0
        rows, cols = t.inner
        assert (rows.start, cols.start) == (halo, halo)
        assert rows.stop - rows.start == t.core[0].stop - t.core[0].start
        assert t.height - rows.stop >= halo and t.width - cols.stop >= halo  # full context below
    assert (covered == 1).all()


def test_tile_size_at_least_the_image_gives_one_tile():
    (tile,) = tile_grid((100, 70), 100, 8, 16)  # 100 is not a multiple of the stride
    assert tile.core == (slice(0, 100), slice(0, 70))
    assert (tile.y, tile.x) == (-8, -8)
    assert (tile.height, tile.width) == (128, 96)  # 112 + 16 and 80 + 16 rounded to the stride


def test_cores_are_balanced_and_never_above_the_tile_size():
    tiles = tile_grid((300, 257), 256, 0, 16)
    cores = {(t.core[0].stop - t.core[0].start, t.core[1].stop - t.core[1].start) for t in tiles}
    assert len(tiles) == 4
    assert max(max(c) for c in cores) <= 256
    assert tiles[0].height == 160  # two cores of 160 rows cover 300, not 256 + 256


def test_mirror_indices_reflect_without_repeating_the_edge():
    np.testing.assert_array_equal(mirror_indices(-3, 10, 5), [3, 2, 1, 0, 1, 2, 3, 4, 3, 2])
    np.testing.assert_array_equal(mirror_indices(-2, 5, 1), [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(mirror_indices(-4, 9, 2), [0, 1, 0, 1, 0, 1, 0, 1, 0])


def test_windows_are_the_reflect_padded_image():
    image = _image(2, 23, 30)
    halo = 6
    padded = np.pad(image, ((0, 0), (halo, 40), (halo, 40)), mode="reflect")
    for t in tile_grid((23, 30), 8, halo, 4):
        window = read_window(image, t)
        y, x = t.y + halo, t.x + halo
        np.testing.assert_array_equal(window, padded[:, y : y + t.height, x : x + t.width])


# --- trivial predictor: the plumbing is exact ---------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "tiling", "halo", "stride"),
    [
        ((1, 37, 53), TilingConfig(tile_size=16, batch_size=3), 5, 4),  # odd sizes
        ((1, 37, 53), TilingConfig(tile_size=17, batch_size=1), 0, 1),  # odd tile, no halo
        ((2, 7, 9), TilingConfig(tile_size=256), 32, 16),  # smaller than a tile (and the halo)
        ((1, 1, 40), TilingConfig(tile_size=8, batch_size=2), 4, 4),  # one pixel high
        ((3, 1, 1), TilingConfig(tile_size=8), 4, 16),  # one pixel, three channels
        ((3, 45, 33), TilingConfig(tile_size=12, batch_size=5), 7, 8),  # multi-channel
    ],
)
def test_plus_one_comes_back_exactly(shape, tiling, halo, stride):
    image = _image(*shape)
    predictor = PlusOne()
    out = drain(predict_tiled(predictor, image, shape[0], tiling, halo, stride))
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_array_equal(out, image + 1)
    assert len(set(s[1:] for s in predictor.shapes)) == 1  # every tile has the same shape
    assert all(s[-1] % stride == 0 and s[-2] % stride == 0 for s in predictor.shapes)
    assert max(s[0] for s in predictor.shapes) <= tiling.batch_size


def test_writes_into_a_given_output_view():
    image = _image(1, 20, 30)
    out = np.zeros((1, 3, 20, 30), dtype=np.float32)
    result = drain(predict_tiled(PlusOne(), image, 1, TilingConfig(tile_size=8), 4, 4, out[:, 1]))
    assert np.shares_memory(result, out)
    np.testing.assert_array_equal(out[:, 1], image + 1)
    assert (out[:, 0] == 0).all() and (out[:, 2] == 0).all()


def test_one_progress_event_per_batch_covering_the_image():
    image = _image(1, 50, 50)
    events: list[Progress] = []
    drain(predict_tiled(PlusOne(), image, 1, TilingConfig(tile_size=10, batch_size=4), 2, 1),
          events.append)  # fmt: skip
    assert len(events) == 7  # 25 tiles in batches of 4
    assert [e.done for e in events] == list(range(1, 8))
    assert {e.total for e in events} == {7}
    assert events[1].message == "tile batch 2/7"
    covered = np.zeros((50, 50), dtype=int)
    for e in events:
        assert isinstance(e.payload, TileBatchDone)
        for region in e.payload.regions:
            covered[region] += 1
    assert (covered == 1).all()


def test_closing_the_generator_stops_between_batches():
    predictor = PlusOne()
    gen = predict_tiled(predictor, _image(1, 64, 64), 1, TilingConfig(tile_size=8, batch_size=2), 2)
    first = next(gen)
    assert first.done == 1 and first.total == 32
    gen.close()  # raises if the generator swallowed GeneratorExit and went on
    assert len(predictor.shapes) == 1
    with pytest.raises(StopIteration):
        next(gen)


def test_predictor_errors_other_than_out_of_memory_propagate():
    def broken(batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        drain(predict_tiled(broken, _image(1, 20, 20), 1, TilingConfig(tile_size=8), 2))


# --- out-of-memory retry --------------------------------------------------------------------------


class RunsOutOfMemory(PlusOne):
    """``x + 1`` that raises torch's CUDA OutOfMemoryError above a batch or pixel budget."""

    def __init__(self, max_batch: int = 1_000, max_pixels: int = 10**9) -> None:
        super().__init__()
        self.max_batch, self.max_pixels = max_batch, max_pixels
        self.failures = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        b, _, h, w = batch.shape
        if b > self.max_batch or h * w > self.max_pixels:
            self.failures += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().__call__(batch)


def test_out_of_memory_halves_the_batch_and_resumes(caplog):
    image = _image(1, 60, 60)
    predictor = RunsOutOfMemory(max_batch=2)
    tiling = TilingConfig(tile_size=10, batch_size=8)
    with caplog.at_level(logging.WARNING, logger="napari_unet.core.inference.tiling"):
        out = drain(predict_tiled(predictor, image, 1, tiling, 2, 1))
    np.testing.assert_array_equal(out, image + 1)
    assert predictor.failures == 2  # 8 -> 4 -> 2
    assert {s[0] for s in predictor.shapes} == {2}
    assert sum(s[0] for s in predictor.shapes) == 36  # no tile ran twice
    assert "out of device memory" in caplog.text


def test_out_of_memory_then_halves_the_tile(caplog):
    image = _image(1, 300, 300)
    predictor = RunsOutOfMemory(max_pixels=150 * 150)
    tiling = TilingConfig(tile_size=256, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="napari_unet.core.inference.tiling"):
        out = drain(predict_tiled(predictor, image, 1, tiling, 16, 16))
    np.testing.assert_array_equal(out, image + 1)
    assert predictor.failures == 2  # batch 2 -> 1, then tile 160 -> 80
    assert max(s[2] * s[3] for s in predictor.shapes) <= 150 * 150
    assert len(caplog.records) == 2


def test_out_of_memory_at_the_smallest_tile_is_a_user_error():
    predictor = RunsOutOfMemory(max_batch=0)
    with pytest.raises(UserError, match="out of memory"):
        drain(predict_tiled(predictor, _image(1, 200, 200), 1, TilingConfig(tile_size=128), 8, 16))


# --- a real network: tiled equals whole-image --------------------------------------------------


def _tiny_unet_predictor(depth: int = 2, sharpen: float = 20.0):
    """A random tiny U-Net (eval mode) with a sharpened head so probabilities are far from
    uniform; returns (predictor, config)."""
    config = ModelConfig(depth=depth, base_channels=4)
    net = build_model(config, seed=0).eval()
    with torch.no_grad():
        net.head.weight.mul_(sharpen)

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.softmax(net(batch), dim=1)

    return predictor, config


@pytest.mark.parametrize("tile_size", [48, 37, 16])
def test_exact_mode_matches_the_whole_image_pass(tile_size):
    predictor, config = _tiny_unet_predictor()
    image = _image(1, 100, 123)
    halo = resolve_halo(TilingConfig(exact=True), config)
    assert halo >= receptive_radius(config)
    whole = drain(predict_tiled(predictor, image, 3, WHOLE, halo, config.stride))
    tiled = drain(predict_tiled(predictor, image, 3, TilingConfig(tile_size), halo, config.stride))
    assert np.abs(tiled - whole).max() <= 1e-5


@pytest.mark.parametrize(("shape", "tile_size"), [((150, 187), 48), ((300, 280), 256)])
def test_default_halo_meets_the_tolerance(shape, tile_size):
    """With the default halo, tiled and whole-image passes differ by at most 0.001 in probability
    and agree on the class of >= 99.9% of pixels; the halo-0 control shows the check can fail."""
    predictor, config = _tiny_unet_predictor()
    image = _image(1, *shape)
    halo = default_halo(config)
    whole = drain(predict_tiled(predictor, image, 3, WHOLE, halo, config.stride))
    tiled = drain(predict_tiled(predictor, image, 3, TilingConfig(tile_size), halo, config.stride))
    assert np.abs(tiled - whole).max() <= 1e-3
    assert np.mean(tiled.argmax(0) == whole.argmax(0)) >= 0.999
    seams = drain(predict_tiled(predictor, image, 3, TilingConfig(tile_size), 0, config.stride))
    assert np.abs(seams - whole).max() > 1e-2


def test_default_halo_is_aligned_and_exact():
    for depth in range(6):
        config = ModelConfig(depth=depth)
        halo = default_halo(config)
        assert halo % config.stride == 0
        assert halo == receptive_radius(config) > 0
    config = ModelConfig(depth=4)
    assert resolve_halo(TilingConfig(halo=40), config) == 40
    assert resolve_halo(TilingConfig(), config) == default_halo(config)
    assert resolve_halo(TilingConfig(halo=0, exact=True), config) == receptive_radius(config)


# --- memory ---------------------------------------------------------------------------------------


def _peak_numpy_bytes(tiling: TilingConfig, image: np.ndarray, out: np.ndarray) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        drain(predict_tiled(lambda x: x + 1, image, 1, tiling, 16, 16, out=out))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_is_set_by_the_tile_batch_not_the_image():
    """Into a preallocated output, tiling a 2048 px image allocates about one tile batch; one
    whole-image window (the control) allocates more than the image."""
    image = np.zeros((1, 2048, 2048), np.float32)
    out = np.empty_like(image)
    tiled = _peak_numpy_bytes(TilingConfig(tile_size=256, batch_size=2), image, out)
    whole = _peak_numpy_bytes(TilingConfig(tile_size=2048, batch_size=1), image, out)
    assert tiled < image.nbytes / 8, tiled
    assert whole > image.nbytes, whole
    np.testing.assert_array_equal(out, 1.0)
