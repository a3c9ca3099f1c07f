"""Whole-image prediction: axes, stacks, channels, dtypes, normalisation, progress, labels.

Most tests use a *known-function* network: a depth-0 U-Net whose weights make it compute
``softmax([5 * x, 0])`` per pixel (x = the normalised input, or a weighted sum of channels), so
the expected probabilities can be written down exactly for any image and stack.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.config import ModelConfig, NormalizeConfig, TilingConfig
from napari_unet.core.errors import InputMismatchError
from napari_unet.core.inference.events import PlaneDone, TileBatchDone
from napari_unet.core.inference.predict import predict_labels, predict_probabilities
from napari_unet.core.network.model import UNet, build_model
from napari_unet.core.network.normalize import percentile_normalize
from napari_unet.core.progress import Progress, drain

GAIN = 5.0
ATOL = 1e-2  # leaves room for a reduced-precision CPU path; plane mix-ups differ by > 0.1


def known_net(channel_weights: tuple[float, ...] = (1.0,)) -> UNet:
    """A U-Net computing logits ``[GAIN * sum_c w_c x_c, 0]`` per pixel (for sums > -10)."""
    config = ModelConfig(
        in_channels=len(channel_weights), out_classes=2, depth=0, base_channels=1, norm="none"
    )
    net = build_model(config, seed=0).eval()
    conv1, conv2 = net.encoders[0][0], net.encoders[0][3]
    with torch.no_grad():
        for conv in (conv1, conv2):
            conv.weight.zero_()
        for c, w in enumerate(channel_weights):
            conv1.weight[0, c, 1, 1] = w
        conv1.bias.fill_(10.0)  # keep the ReLUs linear
        conv2.weight[0, 0, 1, 1] = 1.0
        conv2.bias.zero_()
        net.head.weight.zero_()
        net.head.weight[0, 0] = GAIN
        net.head.bias.copy_(torch.tensor([-10.0 * GAIN, 0.0]))
    return net


def expected_foreground(x: np.ndarray) -> np.ndarray:
    """Class-0 probability of :func:`known_net` for a normalised input sum ``x``."""
    return 1.0 / (1.0 + np.exp(-GAIN * x.astype(np.float64)))


def tiny_unet() -> UNet:
    return build_model(ModelConfig(depth=2, base_channels=4), seed=0).eval()


def _stack(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """uint16 planes whose intensity ranges differ strongly from plane to plane."""
    rng = np.random.default_rng(seed)
    planes = int(np.prod(shape[:-2]))
    offsets = (np.arange(planes) * 1000).reshape(*shape[:-2], 1, 1)
    return (offsets + rng.integers(0, 1000, size=shape)).astype(np.uint16)


SMALL_TILES = TilingConfig(tile_size=16, batch_size=4)


def test_stack_runs_plane_by_plane_with_whole_stack_normalisation():
    data = _stack((2, 3, 20, 24))
    probs = drain(
        predict_probabilities(
            data, "TZYX", known_net(), SMALL_TILES, device="cpu", precision="fp32"
        )
    )
    assert probs.shape == (2, 2, 3, 20, 24) and probs.dtype == np.float32
    expected = expected_foreground(percentile_normalize(data, channel_axis=None))
    np.testing.assert_allclose(probs[0], expected, atol=ATOL)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_channels_reach_the_network_in_order():
    data = np.stack([_stack((3, 18, 21), seed=1), _stack((3, 18, 21), seed=2)[::-1]], axis=1)
    net = known_net((1.0, -2.0))
    probs = drain(
        predict_probabilities(data, "ZCYX", net, SMALL_TILES, device="cpu", precision="fp32")
    )
    assert probs.shape == (2, 3, 18, 21)
    norm = percentile_normalize(data, channel_axis=1)
    expected = expected_foreground(norm[:, 0] - 2.0 * norm[:, 1])
    np.testing.assert_allclose(probs[0], expected, atol=ATOL)


def test_rgb_is_converted_to_gray_for_a_one_channel_model():
    rgb = np.random.default_rng(3).integers(0, 256, size=(30, 25, 3)).astype(np.uint8)
    probs = drain(
        predict_probabilities(rgb, "YXS", known_net(), SMALL_TILES, device="cpu", precision="fp32")
    )
    assert probs.shape == (2, 30, 25)
    gray = rgb.astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])
    expected = expected_foreground(percentile_normalize(gray, channel_axis=None))
    np.testing.assert_allclose(probs[0], expected, atol=ATOL)


def test_rgb_is_kept_for_a_three_channel_model():
    rgb = np.random.default_rng(4).integers(0, 256, size=(12, 14, 3)).astype(np.uint8)
    net = known_net((1.0, 0.0, -1.0))
    probs = drain(
        predict_probabilities(rgb, "YXS", net, SMALL_TILES, device="cpu", precision="fp32")
    )
    norm = percentile_normalize(rgb, channel_axis=2)
    np.testing.assert_allclose(
        probs[0], expected_foreground(norm[..., 0] - norm[..., 2]), atol=ATOL
    )


def test_channel_mismatch_fails_before_any_work():
    gen = predict_probabilities(np.zeros((2, 10, 10), np.uint8), "CYX", tiny_unet(), device="cpu")
    with pytest.raises(InputMismatchError, match="2 channels"):
        next(gen)


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(0).integers(0, 256, (41, 37)).astype(np.uint8),
        np.random.default_rng(0).integers(0, 65536, (41, 37)).astype(np.uint16),
        np.where(np.eye(41, 37) > 0, np.nan, np.random.default_rng(0).random((41, 37))).astype(
            np.float32
        ),
    ],
    ids=["uint8", "uint16", "float32-nan"],
)
def test_dtypes_give_finite_probabilities(image):
    probs = drain(
        predict_probabilities(image, "YX", tiny_unet(), SMALL_TILES, device="cpu", precision="fp32")
    )
    assert probs.shape == (3, 41, 37) and probs.dtype == np.float32
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 57), (5, 7), (1, 1)])
def test_tiny_images_tiled_equal_one_pass(shape):
    """Images one pixel high or smaller than a tile (and than the halo): a 16 px exact tiling
    gives the result of one whole-image pass."""
    image = np.random.default_rng(5).random(shape).astype(np.float32)
    net = tiny_unet()
    whole = drain(
        predict_probabilities(image, "YX", net, TilingConfig(tile_size=4096), "cpu", "fp32")
    )
    tiled = drain(
        predict_probabilities(
            image, "YX", net, TilingConfig(tile_size=4, exact=True), "cpu", "fp32"
        )
    )
    assert whole.shape == (3, *shape) and np.isfinite(whole).all()
    np.testing.assert_allclose(tiled, whole, atol=1e-3)


def test_progress_counts_over_all_planes():
    data = _stack((3, 40, 40))
    events: list[Progress] = []
    drain(
        predict_probabilities(data, "ZYX", known_net(), SMALL_TILES, "cpu", precision="fp32"),
        events.append,
    )
    batches = [e for e in events if isinstance(e.payload, TileBatchDone)]
    assert len(batches) == 9  # 3 planes x (9 tiles in batches of 4)
    assert [e.done for e in batches] == list(range(1, 10))
    assert {e.total for e in events} == {9} and {e.stage for e in events} == {"predict"}
    assert batches[4].message == "plane 2/3, tile batch 2/3"
    assert [e.payload.plane for e in batches] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # each plane's PlaneDone comes right after its last tile batch
    planes = [(i, e.payload) for i, e in enumerate(events) if isinstance(e.payload, PlaneDone)]
    assert [(i, p.index, p.n_planes) for i, p in planes] == [(3, 0, 3), (7, 1, 3), (11, 2, 3)]
    assert [events[i].done for i, _ in planes] == [3, 6, 9]


def test_closing_the_generator_stops_the_prediction():
    gen = predict_probabilities(
        _stack((4, 40, 40)), "ZYX", known_net(), SMALL_TILES, "cpu", precision="fp32"
    )
    first = next(gen)
    assert first.done == 1 and first.total == 12
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)


def test_loaded_model_normalisation_and_tiling_are_used():
    weights = pytest.importorskip("napari_unet.core.network.weights")
    loaded = weights.LoadedModel.from_model(
        known_net(),
        task="semantic",
        normalize=NormalizeConfig(method="none"),
        tiling=TilingConfig(tile_size=20, batch_size=1),
    )
    image = np.random.default_rng(6).normal(0.0, 0.5, (40, 40)).astype(np.float32)
    events: list[Progress] = []
    probs = drain(
        predict_probabilities(image, "YX", loaded, device="cpu", precision="fp32"), events.append
    )
    np.testing.assert_allclose(probs[0], expected_foreground(image), atol=ATOL)
    # 2 x 2 tiles of 20 px, one per batch, then the plane
    assert [type(e.payload) for e in events] == [TileBatchDone] * 4 + [PlaneDone]


def test_predict_labels_semantic_gives_class_ids():
    pytest.importorskip("napari_unet.core.network.weights")
    from napari_unet.core.network.weights import LoadedModel

    loaded = LoadedModel.from_model(known_net(), task="semantic", class_names=["fg", "bg"])
    data = _stack((2, 30, 30))
    events: list[Progress] = []
    probs, labels = drain(
        predict_labels(data, "ZYX", loaded, SMALL_TILES, "cpu", precision="fp32"), events.append
    )
    assert probs.shape == (2, 2, 30, 30) and labels.shape == (2, 30, 30)
    assert labels.dtype in (np.uint8, np.uint16)
    np.testing.assert_array_equal(labels, probs.argmax(axis=0))
    assert set(np.unique(labels)) == {0, 1}
    assert events[-1].stage == "postprocess" and events[-1].done == events[-1].total


def test_predict_labels_instances_from_a_bare_unet():
    image = np.random.default_rng(7).random((2, 33, 35)).astype(np.float32)
    probs, labels = drain(
        predict_labels(image, "ZYX", tiny_unet(), SMALL_TILES, "cpu", precision="fp32")
    )
    assert probs.shape == (3, 2, 33, 35)
    assert labels.shape == (2, 33, 35) and labels.dtype in (np.uint16, np.uint32)
