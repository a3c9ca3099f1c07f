"""The inference engine: built once per run (one predictor, BatchNorm fused once), the tiling rule,
typed events, and pickling (how it reaches a dask worker)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import zarr

from napari_unet.core.config import ModelConfig, TilingConfig
from napari_unet.core.inference.engine import InferenceEngine, choose_tiling
from napari_unet.core.inference.events import BlockDone, PlaneDone, TileBatchDone
from napari_unet.core.inference.predict import predict_probabilities
from napari_unet.core.inference.tiling import default_tiling, resolve_halo
from napari_unet.core.large.blockwise import predict_blockwise
from napari_unet.core.network.model import UNet, build_model
from napari_unet.core.network.weights import LoadedModel
from napari_unet.core.progress import drain


def _batchnorm_net() -> UNet:
    """A tiny real U-Net with BatchNorm (so a predictor folds it), with non-trivial running
    statistics."""
    net = build_model(ModelConfig(depth=1, base_channels=4), seed=0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _record_forwards(net: UNet) -> list[torch.nn.Module]:
    """The modules that ran ``net``'s forward pass: a hook on ``net`` that travels with every copy
    of it (a predictor runs a BatchNorm-folded copy), so each distinct module is one copy."""
    ran: list[torch.nn.Module] = []
    net.register_forward_pre_hook(lambda module, inputs: ran.append(module))
    return ran


def _image(size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, size=(size, size)).astype(np.uint16)


def test_a_blockwise_run_builds_one_predictor_for_all_its_blocks():
    net = _batchnorm_net()
    ran = _record_forwards(net)
    labels = zarr.zeros((96, 96), dtype="uint32")
    result = drain(
        predict_blockwise(
            _image(), net, labels, axes="YX", block_size=32, overlap=8,
            tiling=TilingConfig(tile_size=32, batch_size=1), device="cpu", precision="fp32",
        )
    )  # fmt: skip
    assert result.n_blocks == 9
    assert len(ran) >= result.n_blocks  # every block ran the network
    copies = {id(module): module for module in ran}
    assert len(copies) == 1  # one predictor, one BatchNorm folding, for the whole run
    [fused] = copies.values()
    assert fused is not net
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # caller's unchanged


def test_a_stack_runs_on_one_predictor_and_reports_each_plane():
    net = _batchnorm_net()
    ran = _record_forwards(net)
    stack = np.stack([_image(40, seed) for seed in range(3)])
    events = []
    probs = drain(
        predict_probabilities(stack, "ZYX", net, TilingConfig(tile_size=16), "cpu", "fp32"),
        events.append,
    )
    assert probs.shape == (3, 3, 40, 40)
    assert len({id(module) for module in ran}) == 1
    done = [e.payload for e in events if isinstance(e.payload, PlaneDone)]
    assert done == [PlaneDone(0, 3), PlaneDone(1, 3), PlaneDone(2, 3)]
    batches = [e.payload for e in events if isinstance(e.payload, TileBatchDone)]
    covered = np.zeros((3, 40, 40), int)
    for batch in batches:
        for region in batch.regions:
            covered[(batch.plane, *region)] += 1
    assert (covered == 1).all()


def test_blockwise_events_name_each_block_twice():
    net = _batchnorm_net()
    events = []
    labels = zarr.zeros((64, 64), dtype="uint32")
    drain(
        predict_blockwise(_image(64), net, labels, axes="YX", block_size=32, overlap=8,
                          device="cpu", precision="fp32"),
        events.append,
    )  # fmt: skip
    blocks = [e.payload for e in events if isinstance(e.payload, BlockDone)]
    assert sorted(b.block for b in blocks if not b.final) == [0, 1, 2, 3]
    assert sorted(b.block for b in blocks if b.final) == [0, 1, 2, 3]
    assert {(b.rows.start, b.cols.start) for b in blocks} == {(0, 0), (0, 32), (32, 0), (32, 32)}


def test_tiling_is_the_given_else_the_model_files_else_the_devices():
    net = _batchnorm_net()
    config = net.config
    given, own = TilingConfig(tile_size=48, batch_size=2), TilingConfig(tile_size=80, batch_size=3)
    assert choose_tiling(given, own, config, "cpu") is given
    assert choose_tiling(None, own, config, "cpu") is own
    assert choose_tiling(None, None, config, "cuda") == default_tiling(config, "cuda")
    loaded = LoadedModel.from_model(net, tiling=own)
    assert InferenceEngine(loaded, device="cpu").tiling == own
    assert InferenceEngine(loaded, given, device="cpu").tiling == given
    engine = InferenceEngine(net, device="cpu")
    assert engine.tiling == default_tiling(config, "cpu")
    assert engine.halo == resolve_halo(engine.tiling, config)


def test_a_pickled_engine_builds_its_own_predictor_and_predicts_the_same():
    engine = InferenceEngine(_batchnorm_net(), TilingConfig(tile_size=32), "cpu", "fp32")
    copy = pickle.loads(pickle.dumps(engine))
    assert copy.predictor is not engine.predictor
    assert (copy.tiling, copy.halo, copy.precision) == (engine.tiling, engine.halo, "fp32")
    image = _image(70)
    np.testing.assert_array_equal(
        drain(copy.predict_image(image, "YX")), drain(engine.predict_image(image, "YX"))
    )


def test_a_bad_precision_is_refused_before_any_work():
    from napari_unet.core.errors import UserError

    with pytest.raises(UserError, match="fp16"):
        InferenceEngine(_batchnorm_net(), device="cpu", precision="fp16")


@pytest.mark.parametrize("mode", ["ortho", "link"])
def test_a_z_stack_in_3d_runs_every_view_on_one_predictor(mode):
    from napari_unet.core.inference.stack3d import predict_stack

    net = _batchnorm_net()
    ran = _record_forwards(net)
    stack = np.stack([_image(24, seed) for seed in range(6)])
    probs, labels = drain(
        predict_stack(stack, "ZYX", net, mode, (2.0, 1.0, 1.0), TilingConfig(tile_size=16),
                      "cpu", "fp32")
    )  # fmt: skip
    assert probs.shape == (3, 6, 24, 24) and labels.shape == (6, 24, 24)
    assert len(ran) >= 6  # planes (and, for ortho, side views) all went through the network
    assert len({id(module) for module in ran}) == 1  # one predictor for the whole run


def test_test_time_augmentation_runs_its_copies_on_the_engine_given():
    from napari_unet.core.analysis.quality import tta_agreement

    net = _batchnorm_net()
    ran = _record_forwards(net)
    engine = InferenceEngine(net, TilingConfig(tile_size=32), "cpu", "fp32")
    image = _image(48)
    drain(engine.predict_image(image, "YX"))
    # one object, fixed: a random network's probabilities on noise are flat to 1e-4, and labels
    # thresholded from them came out empty in one CI run
    labels = np.zeros(image.shape, np.uint16)
    labels[8:24, 16:40] = 1
    agreement = drain(tta_agreement(image, "YX", engine, labels))
    assert agreement.shape == (1,) and 0.0 <= agreement[0] <= 1.0
    assert len({id(module) for module in ran}) == 1  # the image and its 3 copies: one predictor


def test_float16_probabilities_are_the_float32_ones_rounded_and_other_dtypes_are_refused():
    engine = InferenceEngine(_batchnorm_net(), TilingConfig(tile_size=32), "cpu", "fp32")
    image = _image(64)
    full = drain(engine.predict_image(image, "YX"))
    half = drain(engine.predict_image(image, "YX", dtype=np.float16))
    assert full.dtype == np.float32 and half.dtype == np.float16
    np.testing.assert_array_equal(half, full.astype(np.float16))
    with pytest.raises(ValueError, match="float32 or float16"):
        drain(engine.predict_image(image, "YX", dtype=np.float64))
    with pytest.raises(ValueError, match="out must be"):
        drain(engine.predict_image(image, "YX", out=np.empty((3, 1, 64, 64), np.float32),
                                   dtype=np.float16))  # fmt: skip
