"""Device choice, precision and the inference :class:`Predictor`."""

from __future__ import annotations

import re

import pytest
import torch

from napari_unet.core.config import ModelConfig
from napari_unet.core.errors import Hint, UserError
from napari_unet.core.network import device as dev
from napari_unet.core.network.device import (
    Predictor,
    configure_cpu_threads,
    describe_device,
    gpu_hint,
    is_out_of_memory,
    resolve_device,
    resolve_precision,
)
from napari_unet.core.network.model import build_model

CPU = torch.device("cpu")


def tiny_net(seed: int = 0) -> torch.nn.Module:
    """A depth-2 U-Net with BatchNorm statistics far from the identity."""
    net = build_model(ModelConfig(depth=2, base_channels=4), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                module.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.3)
                module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(c, generator=gen) * 0.2)
    return net.eval()


# --- resolve_device -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cpu", "CPU", " cpu ", CPU])
def test_resolve_cpu(name: str | torch.device) -> None:
    assert resolve_device(name) == CPU


def test_resolve_auto_picks_an_available_device() -> None:
    device = resolve_device("auto")
    if torch.cuda.is_available():
        assert device.type == "cuda"
    else:
        assert device.type in ("mps", "cpu")


def test_auto_prefers_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device().type == "cuda"


def test_auto_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    assert resolve_device("auto") == CPU


@pytest.mark.parametrize("name", ["gpu", "tpu", "", "cuda:x", "auto:0", "cpu cuda"])
def test_unknown_device_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match=r"Unknown device .*choose one of"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA"])
def test_unavailable_cuda_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match=r"Device 'cuda(:0)?' is not available: ") as caught:
        resolve_device(name)
    assert "--device" not in str(caught.value)
    assert caught.value.hint == Hint("device", "cpu")


@pytest.mark.skipif(dev._mps_available(), reason="needs a machine without MPS")
def test_unavailable_mps_is_a_user_error() -> None:
    with pytest.raises(UserError, match="'mps' is not available"):
        resolve_device("mps")


def test_cuda_index_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UserError, match=r"'cuda:3' is not available: .* 1 CUDA GPU"):
        resolve_device("cuda:3")


# --- descriptions and hints -----------------------------------------------------------------


def test_describe_cpu() -> None:
    text = describe_device(CPU)
    assert re.fullmatch(r"CPU \(\d+ threads?\)", text)
    assert str(torch.get_num_threads()) in text


def test_gpu_hint_for_a_cpu_build_on_a_gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(dev, "_nvidia_gpu_present", lambda: True)
    hint = gpu_hint()
    assert hint is not None and "CPU-only" in hint and "CUDA" in hint
    monkeypatch.setattr(dev, "_nvidia_gpu_present", lambda: False)
    assert gpu_hint() is None


def test_gpu_hint_none_for_a_cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(dev, "_nvidia_gpu_present", lambda: True)
    assert gpu_hint() is None


# --- out of memory --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"),
    ],
)
def test_out_of_memory_recognised(exc: BaseException) -> None:
    assert is_out_of_memory(exc)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("Given groups=1, weight of size [4, 1, 3, 3], expected input"),
        ValueError("CUDA out of memory"),
        KeyboardInterrupt(),
        UserError("bad file"),
    ],
)
def test_other_errors_are_not_out_of_memory(exc: BaseException) -> None:
    assert not is_out_of_memory(exc)


# --- precision ------------------------------------------------------------------------------


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cpu_is_bf16_only_where_native(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(dev, "cpu_supports_bf16", lambda: native_bf16)
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("FP32", CPU) == "fp32"
    if not native_bf16:
        with pytest.raises(UserError, match="bfloat16"):
            resolve_precision("bf16", CPU)


@pytest.mark.parametrize("name", ["fp8", "half", ""])
def test_unknown_precision(name: str) -> None:
    with pytest.raises(UserError, match="Unknown precision"):
        resolve_precision(name, CPU)


def test_fp16_on_cpu_is_refused() -> None:
    with pytest.raises(UserError, match="fp16"):
        Predictor(tiny_net(), CPU, precision="fp16")


# --- Predictor ------------------------------------------------------------------------------


def test_predictor_shape_dtype_and_softmax() -> None:
    predictor = Predictor(tiny_net(), CPU)
    batch = torch.randn(3, 1, 37, 50)  # not a multiple of the stride
    probs = predictor(batch)
    assert probs.shape == (3, 3, 37, 50)
    assert probs.dtype == torch.float32
    assert probs.device == CPU
    assert probs.is_contiguous()
    assert torch.all(probs >= 0)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3, 37, 50), atol=1e-5, rtol=0)


def test_predictor_equals_the_unfused_network() -> None:
    net = tiny_net(seed=3)
    batch = torch.randn(2, 1, 48, 40, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        expected = torch.softmax(net(batch), dim=1)
    probs = Predictor(net, CPU, precision="fp32")(batch)
    assert (probs - expected).abs().max().item() <= 1e-4
    # the BatchNorm statistics matter: a network with default statistics gives other results
    plain = build_model(ModelConfig(depth=2, base_channels=4), seed=3).eval()
    assert (Predictor(plain, CPU)(batch) - expected).abs().max().item() > 1e-3


def test_predictor_leaves_the_model_unchanged() -> None:
    net = tiny_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    Predictor(net, CPU)(torch.randn(1, 1, 16, 16))
    assert net.training
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_predictor_multichannel_input() -> None:
    net = build_model(ModelConfig(in_channels=3, out_classes=2, depth=1, base_channels=4), seed=0)
    probs = Predictor(net, CPU)(torch.rand(2, 3, 9, 11))
    assert probs.shape == (2, 2, 9, 11)


def test_predictor_rejects_a_non_batch() -> None:
    with pytest.raises(ValueError, match="batch"):
        Predictor(tiny_net(), CPU)(torch.randn(1, 16, 16))


@pytest.mark.skipif(not dev.cpu_supports_bf16(), reason="CPU without bfloat16 support")
def test_bf16_on_cpu_is_close_to_fp32() -> None:
    net = tiny_net()
    batch = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    fp32 = Predictor(net, CPU, precision="fp32")(batch)
    bf16 = Predictor(net, CPU, precision="bf16")
    assert bf16.precision == "bf16"
    probs = bf16(batch)
    assert probs.dtype == torch.float32
    assert (probs - fp32).abs().max().item() < 0.05


# --- threads --------------------------------------------------------------------------------


def test_configure_cpu_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_cpu_threads(1) == 1
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError):
            configure_cpu_threads(0)
    finally:
        torch.set_num_threads(before)
    assert 1 <= configure_cpu_threads() <= before
    torch.set_num_threads(before)
