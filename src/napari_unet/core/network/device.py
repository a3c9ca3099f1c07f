"""Device choice and the fast inference path: which device, at which precision, in which layout.

``resolve_device("auto")`` picks CUDA, then Apple's MPS, then the CPU; an explicit name that is
unknown or not available here is a :class:`~.errors.UserError`. :class:`Predictor` wraps a U-Net
for inference on one device: BatchNorm folded into the convolutions, channels-last memory layout,
``torch.inference_mode``, autocast at a reduced precision, and on CUDA cuDNN autotuning. The
inference engine (:mod:`napari_unet.core.inference.engine`) builds one predictor per run.

Precision ``"auto"`` (:func:`resolve_precision`) is not float32 everywhere: it is bfloat16
autocast on CUDA cards that support it (else float16), bfloat16 autocast on CPUs with native
bfloat16 instructions (AMX/AVX-512-BF16), where it runs about twice as fast as float32 with the
same AP on the shipped sample and synthetic images, and float32 only on other CPUs and on MPS.
Its class probabilities differ from float32 by up to about 0.01, so tests and comparisons that
need exact values ask for ``precision="fp32"``. See ``docs/benchmarks.md`` (precision).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from ..config import PRECISIONS
from ..errors import Hint, UserError
from .model import UNet, fuse_for_inference

logger = logging.getLogger(__name__)

_DEVICE_NAME = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")
_DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The :class:`torch.device` for a device name.

    Args:
        name: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``,
            ``"mps"`` (case and surrounding spaces ignored), or a :class:`torch.device`.

    Raises:
        UserError: the name is unknown, or names a device that this machine or this PyTorch
            build does not have.
    """
    text = str(name).strip().lower()
    match = _DEVICE_NAME.match(text)
    if match is None:
        raise UserError(f"Unknown device {str(name)!r}: choose one of {_DEVICE_CHOICES}.")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if index is not None:
            raise UserError(f"Unknown device {str(name)!r}: choose one of {_DEVICE_CHOICES}.")
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise UserError(
                f"Device {text!r} is not available: MPS needs an Apple-silicon Mac with a PyTorch "
                "build that supports it.",
                hint=Hint("device", "cpu"),
            )
        return torch.device("mps")
    return _resolve_cuda(text, None if index is None else int(index))


def _resolve_cuda(text: str, index: int | None) -> torch.device:
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            reason = "this PyTorch build has no CUDA support"
            hint = gpu_hint()
            if hint:
                reason += f" ({hint})"
        else:
            reason = "no CUDA GPU was found (check the NVIDIA driver)"
        raise UserError(f"Device {text!r} is not available: {reason}.", hint=Hint("device", "cpu"))
    if index is not None and index >= torch.cuda.device_count():
        raise UserError(
            f"Device {text!r} is not available: this machine has "
            f"{torch.cuda.device_count()} CUDA GPU(s), numbered from 0."
        )
    return torch.device("cuda", index) if index is not None else torch.device("cuda")


def describe_device(device: torch.device) -> str:
    """A short human-readable description, e.g. ``"CUDA: NVIDIA H100 (80 GB)"`` or
    ``"CPU (2 threads)"``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"CUDA: {props.name} ({props.total_memory / 1e9:.0f} GB)"
    if device.type == "mps":
        return "MPS: Apple GPU"
    if device.type == "cpu":
        return f"CPU ({torch.get_num_threads()} threads)"
    return str(device)


def _nvidia_gpu_present() -> bool:
    """Whether an NVIDIA GPU and driver appear to be installed (without importing CUDA)."""
    if Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists():
        return True
    return shutil.which("nvidia-smi") is not None


def gpu_hint() -> str | None:
    """A hint for the user when an NVIDIA GPU is present but PyTorch is a CPU-only build, else
    ``None``."""
    if torch.version.cuda is None and _nvidia_gpu_present():
        return (
            "an NVIDIA GPU is present but this PyTorch build is CPU-only; install a CUDA build of "
            "PyTorch (https://pytorch.org/get-started/locally/) to use it"
        )
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means the device ran out of memory (CUDA or MPS), so that a smaller
    batch or tile may succeed."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):  # also torch.OutOfMemoryError
        return True
    if isinstance(exc, RuntimeError):
        message = str(exc)
        return "CUDA out of memory" in message or "MPS backend out of memory" in message
    return False


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup v2 quota (containers), or ``None`` when unlimited/unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, int(int(quota) // int(period)))


def configure_cpu_threads(threads: int | None = None) -> int:
    """Set PyTorch's intra-op CPU threads and return the number used.

    With ``threads=None``: leave an explicit ``OMP_NUM_THREADS`` alone; otherwise use the CPUs
    this process may run on (affinity and container quota), capped at PyTorch's own default
    (physical cores). Over-subscribing the cores slows convolutions down markedly.
    """
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        try:
            usable = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            usable = os.cpu_count() or 1
        quota = _cgroup_cpu_limit()
        if quota is not None:
            usable = min(usable, quota)
        threads = min(usable, torch.get_num_threads())
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        logger.info("using %d CPU threads", threads)
    return threads


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 support (AVX-512-BF16 or AMX) that oneDNN uses."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision actually used: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``"auto"`` is bf16 on CUDA cards that support it, fp16 on other CUDA cards, bf16 on CPUs with
    native bfloat16 instructions (AVX-512-BF16 or AMX: 2.3x the fp32 speed, the same AP on the
    sample and synthetic images, see ``benchmarks/precision.py``), and fp32 on other CPUs and MPS.

    Raises:
        UserError: an unknown precision, or one the device cannot run.
    """
    name = precision.strip().lower()
    if name not in PRECISIONS:
        raise UserError(f"Unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if device.type == "cuda":
        if name == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError("Precision 'bf16' is not supported by this GPU; use fp16 or fp32.")
        return name
    if name == "auto":
        return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"
    if name == "fp16" and device.type == "cpu":
        raise UserError("Precision 'fp16' needs a GPU; on the CPU use fp32 or bf16.")
    if name == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        raise UserError("Precision 'bf16' needs a CPU with bfloat16 support; use fp32.")
    return name


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Predictor:
    """A U-Net ready for inference on one device: a callable from a batch of images to class
    probabilities.

    ``predictor(batch)``: float32 (B, C, h, w) tensor on the CPU -> float32 (B, K, h, w)
    probabilities (softmax over the K classes) on the CPU, contiguous; (B, C, d, h, w) ->
    (B, K, d, h, w) for a 3D network.

    The model is copied (the caller's model is not changed), put in eval mode with BatchNorm
    folded into the convolutions, moved to ``device`` and, on the CPU and CUDA, stored
    channels-last (2D networks). On CUDA, cuDNN autotuning is switched on; reduced precision
    runs under autocast and the softmax is always computed in float32.

    Args:
        model: the network (any mode, any device).
        device: where to run it (see :func:`resolve_device`).
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see :func:`resolve_precision`).
    """

    def __init__(self, model: UNet, device: torch.device, precision: str = "auto") -> None:
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.out_channels = int(model.config.out_classes)
        self.spatial_dims = int(model.config.spatial_dims)
        self.channels_last = self.device.type in ("cpu", "cuda") and self.spatial_dims == 2
        net = fuse_for_inference(model).to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        for param in net.parameters():
            param.requires_grad_(False)
        self.model = net
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        logger.debug("predictor on %s, %s", self.device, self.precision)

    def _autocast(self) -> AbstractContextManager[object]:
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities: float32 (B, C, h, w) -> float32 (B, K, h, w), CPU, contiguous
        ((B, C, d, h, w) -> (B, K, d, h, w) for a 3D network)."""
        if batch.ndim != self.spatial_dims + 2:
            expected = "(B, C, Z, Y, X)" if self.spatial_dims == 3 else "(B, C, H, W)"
            raise ValueError(f"expected a batch {expected}, got shape {tuple(batch.shape)}")
        with torch.inference_mode():
            x = batch.to(self.device, dtype=torch.float32, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = self.model(x)
            probs = torch.softmax(logits.float(), dim=1)
            return probs.to("cpu").contiguous()

    def __repr__(self) -> str:
        return f"Predictor(device={self.device}, precision={self.precision!r})"
