"""Sparse fine-tuning keeps the base model's confident predictions outside the annotation."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet.core.config import ModelConfig, NormalizeConfig, TilingConfig
from napari_unet.core.inference.engine import InferenceEngine
from napari_unet.core.network.weights import LoadedModel
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.config import SyntheticConfig
from napari_unet.core.synthetic.images import make_image
from napari_unet.core.training.augment import AugmentConfig
from napari_unet.core.training.data import PatchSampler, make_pairs, split_validation
from napari_unet.core.training.keep_base import (
    keep_base_loss,
    keep_base_targets,
    pseudo_labels,
)
from napari_unet.core.training.settings import TrainConfig
from napari_unet.core.training.train import train

TINY = ModelConfig(depth=2, base_channels=4)
SYNTH = SyntheticConfig(shape=(96, 96), radius=(6.0, 10.0), debris=0.0, gradient=0.0)
CPU = torch.device("cpu")


def test_pseudo_labels_are_the_confident_unannotated_argmax():
    probs = np.array(
        [
            [[0.95, 0.2], [0.5, 0.05]],
            [[0.03, 0.7], [0.3, 0.92]],
            [[0.02, 0.1], [0.2, 0.03]],
        ],
        np.float32,
    )
    annotated = np.array([[False, False], [False, True]])
    keep = pseudo_labels(probs, annotated, confidence=0.9)
    assert keep.classes.dtype == np.uint8
    np.testing.assert_array_equal(keep.classes, [[0, 1], [0, 1]])
    # (0, 0) is confident; (0, 1) and (1, 0) are not; (1, 1) is confident but annotated
    np.testing.assert_array_equal(keep.mask, [[True, False], [False, False]])
    assert pseudo_labels(probs, annotated, confidence=0.7).mask.sum() == 2


def test_keep_loss_is_the_mean_cross_entropy_on_kept_pixels_only():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=gen, requires_grad=True)
    classes = torch.randint(0, 3, (2, 8, 8), generator=gen)
    keep = torch.zeros(2, 8, 8, dtype=torch.bool)
    keep[0, :3] = True
    loss = keep_base_loss(logits, classes, keep)
    loss.backward()
    per_pixel = torch.nn.functional.cross_entropy(logits.detach(), classes, reduction="none")
    torch.testing.assert_close(loss.detach(), per_pixel[keep].mean())
    assert torch.count_nonzero(logits.grad.abs().sum(dim=1)[~keep]) == 0
    assert keep_base_loss(logits, classes, torch.zeros_like(keep)).item() == 0.0


@pytest.fixture(scope="module")
def base() -> LoadedModel:
    """A tiny model trained a little on fully annotated synthetic images."""
    torch.manual_seed(0)
    image, labels = make_image(SYNTH, seed=1)
    pairs = make_pairs(image, labels, "YX", 1, NormalizeConfig(), name="full")
    config = TrainConfig(
        epochs=1, steps_per_epoch=40, batch_size=4, patch_size=64, val_fraction=0.0,
        warmup_steps=2, learning_rate=3e-3, augment=AugmentConfig(strength=0.0),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trained = drain(train(pairs, Path(tmp) / "base", config=config, model_config=TINY))
    trained.model.eval()
    return trained


def _sparse_pairs(image, labels, corner):
    mask = np.zeros(labels.shape, bool)
    mask[corner] = True
    return make_pairs(image, labels, "YX", 1, NormalizeConfig(), mask=mask, name="sparse")


def test_only_sparse_planes_get_pseudo_labels(base):
    image, labels = make_image(SYNTH, seed=2)
    full = make_pairs(image, labels, "YX", 1, NormalizeConfig(), name="full")
    sparse = _sparse_pairs(image, labels, (slice(0, 24), slice(0, 24)))
    out = keep_base_targets(full + sparse, base.model, CPU, confidence=0.6)
    assert out[0] is full[0] and out[0].keep is None
    keep = out[1].keep
    assert keep is not None and keep.mask.any()
    assert not (keep.mask & sparse[0].targets.mask).any()
    engine = InferenceEngine(base.model, TilingConfig(tile_size=256, batch_size=4), CPU)
    probs = drain(engine.predict_plane(sparse[0].image))
    expected = (probs.max(0) >= 0.6) & ~sparse[0].targets.mask
    np.testing.assert_array_equal(keep.mask, expected)
    np.testing.assert_array_equal(keep.classes[keep.mask], probs.argmax(0)[keep.mask])


def test_patches_carry_pseudo_labels_beside_the_annotation(base):
    image, labels = make_image(SYNTH, seed=2)
    pairs = keep_base_targets(
        _sparse_pairs(image, labels, (slice(30, 60), slice(30, 60))), base.model, CPU, 0.6
    )
    batch = PatchSampler(pairs, 64, np.random.default_rng(0)).sample(6)
    assert batch.keep.any() and batch.mask.any()
    assert not (batch.keep & batch.mask).any()
    assert set(np.unique(batch.classes[batch.keep])) <= {0, 1, 2}


def test_held_out_blocks_lose_their_pseudo_labels(base):
    image, labels = make_image(replace(SYNTH, shape=(256, 256)), seed=4)
    mask = np.zeros(labels.shape, bool)
    mask[:, :200] = True
    pairs = make_pairs(image, labels, "YX", 1, NormalizeConfig(), mask=mask)
    pairs = keep_base_targets(pairs, base.model, CPU, 0.5)
    training, crops = split_validation(pairs, 0.3, np.random.default_rng(0), block=64)
    assert crops
    held = pairs[0].targets.mask & ~training[0].targets.mask
    assert held.any() and not (training[0].keep.mask & held).any()


def _far_change(base, weight: float) -> float:
    """Mean absolute change of the probabilities far from a small annotated corner after a
    sparse fine-tune; the corner is painted as one object (background and all), which pulls
    the model toward seeing objects everywhere."""
    image, labels = make_image(SYNTH, seed=5)
    corner = (slice(0, 24), slice(0, 24))
    painted = labels.copy()
    painted[corner] = 1
    pairs = _sparse_pairs(image, painted, corner)
    config = TrainConfig(
        epochs=1, steps_per_epoch=15, batch_size=2, patch_size=64, val_fraction=0.0,
        warmup_steps=1, learning_rate=1e-2, keep_base_weight=weight, keep_base_confidence=0.6,
        augment=AugmentConfig(strength=0.0), seed=3,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tuned = drain(train(pairs, Path(tmp) / "tuned", base=base, config=config, device="cpu"))
    before, after = (
        drain(
            InferenceEngine(m, TilingConfig(tile_size=256, batch_size=4), CPU).predict_plane(
                pairs[0].image
            )
        )
        for m in (base.model, tuned.model)
    )
    far = np.zeros(labels.shape, bool)
    far[40:, 40:] = True
    return float(np.abs(after - before)[:, far].mean())


def test_sparse_fine_tuning_keeps_predictions_far_from_the_annotation(base):
    assert TrainConfig().keep_base_weight > 0  # on by default
    without = _far_change(base, 0.0)
    with_keep = _far_change(base, TrainConfig().keep_base_weight)
    assert with_keep < 0.5 * without, (with_keep, without)


def test_full_annotation_trains_exactly_as_without_the_term(base):
    image, labels = make_image(SYNTH, seed=6)
    pairs = make_pairs(image, labels, "YX", 1, NormalizeConfig(), name="full")
    states = []
    for weight in (0.0, 3.0):
        config = TrainConfig(
            epochs=1, steps_per_epoch=3, batch_size=2, patch_size=64, val_fraction=0.0,
            warmup_steps=1, keep_base_weight=weight, seed=1,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            tuned = drain(train(pairs, Path(tmp) / "m", base=base, config=config, device="cpu"))
        states.append(tuned.model.state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
