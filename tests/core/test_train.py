"""The training loop: learning, the masked loss, cancellation and safe checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from napari_unet.core.config import ModelConfig, NormalizeConfig
from napari_unet.core.errors import ModelNotFoundError, UserError
from napari_unet.core.network import registry
from napari_unet.core.network import weights as weights_module
from napari_unet.core.network.model import build_model
from napari_unet.core.network.registry import load_model
from napari_unet.core.network.weights import LoadedModel
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.config import SyntheticConfig
from napari_unet.core.synthetic.images import make_image
from napari_unet.core.training.augment import AugmentConfig
from napari_unet.core.training.data import PatchSampler, ValidationCrop, make_pairs
from napari_unet.core.training.loop import weighted_loss
from napari_unet.core.training.settings import TrainConfig
from napari_unet.core.training.targets import TargetConfig
from napari_unet.core.training.train import train
from napari_unet.core.training.validation import validate

TINY = ModelConfig(depth=2, base_channels=4)
SYNTH = SyntheticConfig(shape=(96, 96), radius=(6.0, 10.0), debris=0.0, gradient=0.0)
CPU = torch.device("cpu")


def quick(**kwargs) -> TrainConfig:
    settings = dict(
        epochs=1, steps_per_epoch=3, batch_size=2, patch_size=64, val_fraction=0.0, warmup_steps=2
    )
    return TrainConfig(**{**settings, **kwargs})


@pytest.fixture(scope="module")
def pairs():
    image, labels = make_image(SYNTH, seed=1)
    return make_pairs(image, labels, "YX", 1, NormalizeConfig(), name="synthetic")


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------
# the masked loss


def test_pixels_outside_the_mask_get_zero_gradient():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=gen, requires_grad=True)
    classes = torch.randint(0, 3, (2, 16, 16), generator=gen)
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[0, 2:9, 3:12] = True
    mask[1, 10:, :5] = True
    weights = torch.where(mask, torch.rand(2, 16, 16, generator=gen) * 5 + 0.5, 0.0)

    loss = weighted_loss(logits, classes, weights)
    loss.backward()
    grad = logits.grad
    outside = (~mask).unsqueeze(1).expand_as(grad)
    assert torch.count_nonzero(grad[outside]) == 0
    assert (grad.abs().sum(dim=1)[mask] > 0).all()

    # other labels outside the mask change neither the loss nor the gradient
    other = torch.where(mask, classes, (classes + 1) % 3)
    logits2 = logits.detach().clone().requires_grad_(True)
    loss2 = weighted_loss(logits2, other, weights)
    loss2.backward()
    assert loss2.item() == loss.item()
    assert torch.equal(logits2.grad, grad)

    # the weighted mean over annotated pixels
    per_pixel = torch.nn.functional.cross_entropy(logits.detach(), classes, reduction="none")
    expected = (per_pixel * weights)[mask].sum() / mask.sum()
    torch.testing.assert_close(loss.detach(), expected)


def test_labels_outside_the_mask_do_not_change_training():
    image, labels = make_image(
        SyntheticConfig(shape=(96, 128), radius=(6.0, 9.0), debris=0.0), seed=3
    )
    mask = np.zeros(labels.shape, bool)
    mask[:, :48] = True
    other = labels.copy()
    other[:, 52:] = np.where(other[:, 52:] > 0, 0, 500)  # everything else, beyond a 1 px border
    no_gap = TargetConfig(w0=0.0)  # the border term reaches across the mask's edge by design
    results, batches = [], []
    for lab in (labels, other):
        pairs = make_pairs(image, lab, "YX", 1, NormalizeConfig(), mask=mask, target_config=no_gap)
        sampler = PatchSampler(pairs, 64, np.random.default_rng(0))
        model = build_model(TINY, seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            batch = sampler.sample(2)
            batches.append(batch)
            loss = weighted_loss(
                model(torch.from_numpy(batch.images)),
                torch.from_numpy(batch.classes),
                torch.from_numpy(batch.weights),
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results.append(model.state_dict())
    # the patches did hold different labels, outside the mask only
    changed = batches[0].classes != batches[2].classes
    assert changed.any() and not (changed & batches[0].mask).any()
    for key, value in results[0].items():
        assert torch.equal(value, results[1][key]), key


# --------------------------------------------------------------------------------------------
# learning


def test_a_few_steps_lower_the_loss_and_raise_the_iou(tmp_path, pairs):
    val_image, val_labels = make_image(SYNTH, seed=2)
    (val,) = make_pairs(val_image, val_labels, "YX", 1, NormalizeConfig())
    crop = ValidationCrop(val.image, val.labels, np.ones(val.labels.shape, bool))
    batch = PatchSampler([val], 64, np.random.default_rng(1)).sample(4)
    inputs = torch.from_numpy(batch.images)
    target = torch.from_numpy(batch.classes), torch.from_numpy(batch.weights)

    config = quick(
        steps_per_epoch=40,
        learning_rate=0.01,
        warmup_steps=5,
        seed=0,
        augment=AugmentConfig(elastic=True),
    )
    start = build_model(TINY, seed=config.seed).eval()  # what train() starts from
    with torch.no_grad():
        loss_before = weighted_loss(start(inputs), *target).item()
    before = validate(start, [crop], "instances", CPU)

    events = []
    gen = train(pairs, tmp_path / "m.safetensors", config=config, device="cpu", model_config=TINY)
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    with torch.no_grad():
        loss_after = weighted_loss(result.model(inputs), *target).item()
    after = validate(result.model, [crop], "instances", CPU)

    assert loss_after < 0.7 * loss_before
    assert after["pixel_iou"] > max(0.7, before["pixel_iou"] + 0.3), (before, after)
    assert set(after) == {"ap_50", "pixel_iou", "score"}
    steps = [e.payload for e in events if e.payload.kind == "step"]
    assert [s.step for s in steps] == list(range(1, 41))
    assert steps[-1].loss < steps[0].loss
    assert all(0 <= e.done <= e.total == 40 for e in events)
    assert isinstance(result, LoadedModel) and result.path == tmp_path / "m.safetensors"


def test_metadata_of_the_saved_model(tmp_path, pairs):
    base = LoadedModel.from_model(build_model(TINY, seed=5), name="parent-net")
    result = drain(train(pairs, tmp_path / "child", base=base, config=quick(), device="cpu"))
    assert result.path == tmp_path / "child.safetensors"
    meta = load_model(tmp_path / "child.safetensors").metadata
    assert meta["name"] == "child" and meta["task"] == "instances"
    prov = meta["provenance"]
    assert prov["parent"] == "parent-net"
    assert prov["data_hashes"] and prov["data_hashes"][0].startswith("sha256:")
    assert prov["settings"]["steps_per_epoch"] == 3 and prov["settings"]["steps"] == 3
    assert prov["settings"]["augment"]["elastic"] is True
    # too little annotation for a held-out split: no score, and the file says so
    assert "score" not in prov["metrics"] and prov["metrics"]["baseline"] == {}
    assert prov["metrics"]["scored_on"].startswith("no held-out data")
    assert prov["created"][:4].isdigit() and prov["version"]
    # the base model is not changed by fine-tuning
    for key, value in build_model(TINY, seed=5).state_dict().items():
        assert torch.equal(base.model.state_dict()[key], value)


def _running_stats(model) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("freeze", [None, True, False])
def test_batchnorm_statistics_frozen_when_fine_tuning(tmp_path, pairs, freeze):
    """Fine-tuning keeps the base model's BatchNorm statistics unless told otherwise; training
    from scratch updates them."""
    base = LoadedModel.from_model(build_model(TINY, seed=5), name="parent-net")
    before = _running_stats(base.model)
    tuned = drain(
        train(
            pairs, tmp_path / "ft", base=base, config=quick(freeze_batchnorm=freeze), device="cpu"
        )
    )
    same = all(torch.equal(a, b) for a, b in zip(before, _running_stats(tuned.model), strict=True))
    assert same == (freeze is not False)
    scratch = drain(train(pairs, tmp_path / "new", config=quick(), device="cpu", model_config=TINY))
    fresh = _running_stats(build_model(TINY, seed=0))
    assert not all(
        torch.equal(a, b) for a, b in zip(fresh, _running_stats(scratch.model), strict=True)
    )


def test_time_budget_stops_training(tmp_path, pairs):
    config = quick(epochs=10_000, steps_per_epoch=5, max_minutes=1.0 / 60)
    started = time.perf_counter()
    result = drain(
        train(pairs, tmp_path / "m.safetensors", config=config, device="cpu", model_config=TINY)
    )
    assert time.perf_counter() - started < 20
    assert 1 <= result.metadata["provenance"]["settings"]["steps"] < 50_000


def _loss_weights_seen(monkeypatch, tmp_path, pairs, config) -> list[torch.Tensor]:
    from napari_unet.core.training import loop as loop_module

    seen = []

    def spy(logits, classes, weights):
        seen.append(weights.detach().clone())
        return weighted_loss(logits, classes, weights)

    monkeypatch.setattr(loop_module, "weighted_loss", spy)
    drain(train(pairs, tmp_path / "m.safetensors", config=config, device="cpu", model_config=TINY))
    return seen


def test_without_the_border_term_the_loss_keeps_the_class_balance(monkeypatch, tmp_path):
    """Turning the border weight map off (``targets.w0 = 0``) keeps the class weights: the loss
    gets more than one weight value inside the annotated pixels, and none of the gap's peaks."""
    image, labels = make_image(SYNTH, seed=1)
    config = quick(targets=TargetConfig(w0=0.0), augment=AugmentConfig(elastic=False))
    no_gap = make_pairs(image, labels, "YX", 1, NormalizeConfig(), target_config=config.targets)
    seen = _loss_weights_seen(monkeypatch, tmp_path, no_gap, config)
    values = torch.unique(torch.cat([w[w > 0] for w in seen]))
    assert len(values) >= 2  # background, interior and boundary weighted differently
    assert float(values.max()) < 10  # no border term (w0 = 10 by default)
    table = no_gap[0].targets.weights
    assert np.allclose(np.unique(table[table > 0]), values.numpy(), atol=1e-3, rtol=0)


def test_bf16_training_on_the_cpu(tmp_path, pairs):
    from napari_unet.core.network.device import cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no bfloat16")
    result = drain(
        train(
            pairs,
            tmp_path / "m.safetensors",
            config=quick(cpu_bf16=True),
            device="cpu",
            model_config=TINY,
        )
    )
    assert result.metadata["provenance"]["settings"]["cpu_bf16"] is True
    assert all(
        p.dtype == torch.float32 and torch.isfinite(p).all() for p in result.model.parameters()
    )


@pytest.mark.parametrize(
    "settings", [{"epochs": 0}, {"max_minutes": 0.0}, {"max_minutes": -1.0}, {"batch_size": 0}]
)
def test_bad_settings(settings):
    with pytest.raises(UserError):
        quick(**settings)


# --------------------------------------------------------------------------------------------
# cancellation and safe writes


@pytest.mark.parametrize("stop_after", [1, 6])
def test_cancelling_leaves_the_best_checkpoint(tmp_path, pairs, stop_after):
    output = tmp_path / "m.safetensors"
    gen = train(
        pairs, output, config=quick(epochs=3, steps_per_epoch=4), device="cpu", model_config=TINY
    )
    steps = 0
    for event in gen:
        steps += event.payload.kind == "step"
        if steps == stop_after:
            break
    gen.close()
    loaded = load_model(output)
    settings = loaded.metadata["provenance"]["settings"]
    # step 1: only the start model was saved; step 6 (in epoch 2): the model after epoch 1
    assert settings["epochs_done"] == (0 if stop_after == 1 else 1)
    assert settings["steps"] == (0 if stop_after == 1 else 4)
    assert leftovers(tmp_path) == ["m.safetensors"]
    with torch.no_grad():
        out = loaded.model(torch.zeros(1, 1, 32, 32))
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def _failing_save_file(fail_on_call: int):
    calls = []
    real = weights_module.save_file

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == fail_on_call:
            with open(filename, "wb") as fh:  # half a file, then the crash
                fh.write(b"\x00" * 64)
            raise OSError(28, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    return save_file


def test_a_failed_first_write_leaves_no_model_file(tmp_path, pairs, monkeypatch):
    monkeypatch.setattr(weights_module, "save_file", _failing_save_file(1))
    gen = train(pairs, tmp_path / "m.safetensors", config=quick(), device="cpu", model_config=TINY)
    with pytest.raises(OSError, match="No space"):
        drain(gen)
    assert leftovers(tmp_path) == []


def test_a_failed_later_write_keeps_the_previous_checkpoint(tmp_path, pairs, monkeypatch):
    monkeypatch.setattr(weights_module, "save_file", _failing_save_file(2))
    gen = train(pairs, tmp_path / "m.safetensors", config=quick(), device="cpu", model_config=TINY)
    with pytest.raises(OSError):
        drain(gen)
    assert leftovers(tmp_path) == ["m.safetensors"]
    assert load_model(tmp_path / "m.safetensors").metadata["provenance"]["settings"]["steps"] == 0


KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    from napari_unet.core.network import weights
    from napari_unet.core.config import ModelConfig
    from napari_unet.core.network.metadata import new_metadata
    from napari_unet.core.network.model import build_model

    def save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\\x00" * 100)
            fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    weights.save_file = save_file
    config = ModelConfig(depth=2, base_channels=4)
    weights.save_model(sys.argv[1], build_model(config), new_metadata(config))
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_write_leaves_no_model_file(tmp_path):
    target = tmp_path / "m.safetensors"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, str(target)],
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not target.exists()
    hidden = leftovers(tmp_path)
    assert len(hidden) == 1 and hidden[0].startswith(".")  # the killed write's temporary file
    with pytest.raises(ModelNotFoundError):
        load_model(target)
    assert registry._entries(tmp_path, builtin=False) == []  # and it is never listed


# --------------------------------------------------------------------------------------------
# budget, honest results, rounds


class FakeClock:
    """A clock that advances ``tick`` seconds each time it is read."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_the_time_budget_ends_training_with_a_fake_clock(tmp_path, pairs):
    clock = FakeClock(1.0)  # one second per reading: a few readings per step
    config = quick(epochs=1000, max_minutes=0.5, steps_per_epoch=2)
    events = list(
        _events(
            train(
                pairs, tmp_path / "m", config=config, device="cpu", model_config=TINY, clock=clock
            )
        )
    )
    steps = [e.payload for e in events if e.payload.kind == "step"]
    end = events[-1].payload
    assert end.kind == "end" and end.reason == "budget"
    assert 2 <= len(steps) < 30  # 30 s of fake time, each step reads the clock more than once
    assert clock.now >= 30
    # the time left shrinks toward 0 as the budget is used
    assert steps[-1].seconds_left < steps[0].seconds_left


def _events(gen):
    while True:
        try:
            yield next(gen)
        except StopIteration:
            return


def _validated_pairs():
    image, labels = make_image(
        SyntheticConfig(shape=(300, 300), radius=(6.0, 10.0), debris=0.0), seed=4
    )
    return make_pairs(image, labels, "YX", 1, NormalizeConfig(), name="big")


def test_a_run_that_does_not_beat_its_base_writes_nothing(tmp_path):
    base = LoadedModel.from_model(build_model(TINY, seed=5), name="base")
    config = quick(epochs=2, steps_per_epoch=1, learning_rate=0.0, val_fraction=0.2, patience=0)

    def unimproved_run():
        return train(
            _validated_pairs(),
            tmp_path / "m",
            base=base,
            config=config,
            device="cpu",
            require_improvement=True,
        )

    events = list(_events(unimproved_run()))
    end = events[-1].payload
    assert end.validation_crops >= 1 and end.baseline["score"] == end.best["score"]
    assert not end.saved and not (tmp_path / "m.safetensors").exists()
    assert drain(unimproved_run()) is None


def test_rounds_are_kept_in_the_provenance(tmp_path, pairs):
    base = LoadedModel.from_model(build_model(TINY, seed=5), name="base")
    first = drain(train(pairs, tmp_path / "one", base=base, config=quick(), device="cpu"))
    second = drain(train(pairs, tmp_path / "two", base=first, config=quick(), device="cpu"))
    rounds = second.metadata["provenance"]["metrics"]["rounds"]
    assert [r["base"] for r in rounds] == ["base", "one"]
    assert all("before" in r and "after" in r and "scored_on" in r for r in rounds)


def test_training_leaves_torch_settings_as_they_were(tmp_path, pairs):
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    drain(train(pairs, tmp_path / "m", config=quick(), device="cpu", model_config=TINY))
    assert torch.get_num_threads() == threads
    assert torch.backends.cudnn.benchmark == benchmark


def test_a_moving_average_of_the_weights_is_saved_when_asked(tmp_path, pairs):
    base = LoadedModel.from_model(build_model(TINY, seed=5), name="base")
    raw = drain(train(pairs, tmp_path / "raw", base=base, config=quick(), device="cpu"))
    ema = drain(
        train(pairs, tmp_path / "ema", base=base, config=quick(ema_decay=0.9), device="cpu")
    )
    # same seed and steps: the averaged weights lie between the base's and the raw ones
    name = next(k for k, v in base.model.state_dict().items() if v.dtype.is_floating_point)
    start, end = base.model.state_dict()[name], raw.model.state_dict()[name]
    averaged = ema.model.state_dict()[name]
    assert not torch.equal(averaged, end)
    assert (averaged - start).abs().sum() < (end - start).abs().sum()


def test_keep_latest_saves_the_last_weights_that_beat_the_base(tmp_path):
    """``keep="latest"``: the file holds the latest validated weights (not the best-scoring
    checkpoint) and their scores; with ``require_improvement``, a run that never beats its base
    still writes nothing."""
    base = LoadedModel.from_model(build_model(TINY, seed=5), name="base")
    settings = dict(epochs=4, steps_per_epoch=2, val_fraction=0.2, patience=0, keep="latest")
    gen = train(
        _validated_pairs(), tmp_path / "m", base=base, config=quick(**settings), device="cpu"
    )
    events = list(_events(gen))
    last = [e.payload for e in events if e.payload.kind == "validation"][-1]
    saved = load_model(tmp_path / "m.safetensors")
    assert saved.metadata["provenance"]["metrics"]["score"] == last.metrics["score"]
    assert events[-1].payload.best == last.metrics

    frozen = quick(**{**settings, "learning_rate": 0.0})
    unimproved = train(
        _validated_pairs(), tmp_path / "n", base=base, config=frozen, device="cpu",
        require_improvement=True,
    )  # fmt: skip
    assert drain(unimproved) is None and not (tmp_path / "n.safetensors").exists()


def test_average_tail_saves_the_mean_of_the_last_weights(tmp_path, pairs):
    """``average_tail=0.5``: what is validated and saved is the uniform mean of the weights after
    each step of the second half of the run, not the latest weights."""
    from napari_unet.core.training.loop import TrainingRun

    base = LoadedModel.from_model(build_model(TINY, seed=5), name="base")
    config = quick(epochs=4, steps_per_epoch=2, average_tail=0.5)
    run = TrainingRun(pairs, tmp_path / "m", base, config, CPU, None, time.perf_counter)
    after = []
    for _ in range(8):
        run.train_step()
        after.append([p.detach().clone() for p in run.model.parameters()])
    assert run.averaged == 4 and run.scored is run.average
    for index, mean in enumerate(run.average.parameters()):
        expected = torch.stack([weights[index] for weights in after[4:]]).mean(0)
        torch.testing.assert_close(mean, expected)
    latest = after[-1]
    assert any(not torch.equal(m, w) for m, w in zip(run.average.parameters(), latest, strict=True))


def test_average_tail_must_be_a_share_below_one():
    with pytest.raises(UserError, match="average_tail"):
        TrainConfig(average_tail=1.0)
