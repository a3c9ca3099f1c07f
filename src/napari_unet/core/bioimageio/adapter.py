"""A network from a bioimage.io package, behind napari-unet's network interface.

:class:`TensorLayout` reads what napari-unet needs from a package's description (axes, sizes,
halo, normalisation, output kind, class names, pixel size) and refuses what it cannot run;
:class:`PackageNet` wraps the package's TorchScript (or ONNX) network so that it takes a float32
(B, C, H, W) batch of any size and returns (B, K, H, W) values whose softmax over K is the class
probabilities, as napari-unet's U-Net does.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import NormalizeConfig
from ..errors import ModelFileError

logger = logging.getLogger(__name__)

INSTANCE_NAMES = ("background", "interior", "boundary")
_UNITS = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3}


@dataclass
class TensorLayout:
    """What napari-unet takes from a package's first input and output.

    Attributes:
        in_order: the input's axis ids in order, from ``batch``, ``channel``, ``y``, ``x``.
        out_order: the output's axis ids in order.
        in_channels: channels the network takes.
        raw_classes: channels the network gives.
        kind: ``"logits"`` (softmax postprocessing), ``"sigmoid"`` (independent channels, sigmoid
            postprocessing), ``"probabilities"`` (channels already summing to 1) or
            ``"foreground"`` (one channel of foreground probability).
        class_names: the classes napari-unet sees (``"background"`` added for sigmoid and
            foreground outputs).
        task: ``"instances"`` only for outputs named background, interior, boundary.
        minimum, step: valid input sizes ``minimum + n * step`` in y and x.
        halo: the output's halo, in pixels (the tiling margin).
        normalize: percentile normalisation (``scale_range``) or none.
        ops: the other preprocessing steps, run on each tile inside the network.
        pixel_size: (y, x) in µm from the input axes' scale, or ``None``.
    """

    in_order: list[str]
    out_order: list[str]
    in_channels: int
    raw_classes: int
    kind: str
    class_names: list[str]
    task: str
    minimum: int
    step: int
    halo: int
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    ops: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    pixel_size: list[float] | None = None

    @property
    def depth(self) -> int:
        """log2 of the step: the stride napari-unet aligns tiles to."""
        return round(math.log2(self.step))

    @property
    def tiling(self) -> dict[str, Any]:
        """Default tiling: a tile of at least 256 px and the package's halo."""
        tile = max(256, self.minimum)
        return {"tile_size": self.step * math.ceil(tile / self.step), "halo": self.halo,
                "batch_size": 1, "exact": False}  # fmt: skip

    @classmethod
    def from_descr(cls, descr: Any, path: Path) -> TensorLayout:
        """Read the layout of ``descr`` (a bioimage.io 0.5 ``ModelDescr``).

        Raises:
            ModelFileError: an input or output napari-unet cannot use; the message says which.
        """

        def fail(reason: str) -> ModelFileError:
            return ModelFileError(f"{path}: cannot use this package: {reason}")

        if len(descr.inputs) != 1:
            raise fail(f"it takes {len(descr.inputs)} inputs; napari-unet gives one image")
        inp, out = descr.inputs[0], descr.outputs[0]
        in_order, sizes, pixel = _input_axes(inp, fail)
        channels = _channel_count(inp)
        out_order, names, halo = _output_axes(out, fail)
        kind = _output_kind(out, len(names))
        if kind in ("sigmoid", "foreground"):
            names = ["background", *names]
        task = "instances" if tuple(n.lower() for n in names) == INSTANCE_NAMES else "semantic"
        normalize, ops = _preprocessing(inp, fail)
        minimum, step = sizes
        stride_halo = step * math.ceil(halo / step) if halo else step * math.ceil(32 / step)
        return cls(in_order, out_order, channels, len(names) - (kind in ("sigmoid", "foreground")),
                   kind, names, task, minimum, step, stride_halo, normalize, ops,
                   pixel)  # fmt: skip


def _axis_id(axis: Any) -> str:
    kind = str(axis.type)
    return kind if kind in ("batch", "channel") else str(axis.id)


def _input_axes(inp: Any, fail: Any) -> tuple[list[str], tuple[int, int], list[float] | None]:
    order = [_axis_id(a) for a in inp.axes]
    spatial = [str(a.id) for a in inp.axes if str(a.type) == "space"]
    others = [str(a.type) for a in inp.axes if str(a.type) not in ("batch", "channel", "space")]
    if others or sorted(spatial) != ["x", "y"]:
        raise fail(f"its input has axes {', '.join(order)}; napari-unet runs 2D packages (y, x)")
    sizes = set()
    scales, units = [], set()
    for axis in (a for a in inp.axes if str(a.type) == "space"):
        size = axis.size
        if isinstance(size, int):
            raise fail(f"its input has a fixed size ({size} px in {axis.id})")
        if not hasattr(size, "step"):
            raise fail(f"its input size in {axis.id} depends on another tensor")
        step = int(size.step)
        if step & (step - 1) or step > 256:
            raise fail(f"its input sizes step by {step} px, not a power of two")
        sizes.add((int(size.min), step))
        scales.append(float(axis.scale))
        units.add(None if axis.unit is None else str(axis.unit))
    minimum = max(m for m, _ in sizes)
    step = max(s for _, s in sizes)
    minimum = step * math.ceil(minimum / step)
    unit = units.pop() if len(units) == 1 else None
    pixel = [s * _UNITS[unit] for s in scales] if unit in _UNITS else None
    if pixel is not None and spatial[0] == "x":
        pixel = pixel[::-1]
    return order, (minimum, step), pixel


def _channel_count(inp: Any) -> int:
    for axis in inp.axes:
        if str(axis.type) == "channel":
            return len(axis.channel_names)
    return 1


def _output_axes(out: Any, fail: Any) -> tuple[list[str], list[str], int]:
    order = [_axis_id(a) for a in out.axes]
    if sorted(a for a in order if a not in ("batch", "channel")) != ["x", "y"]:
        raise fail(f"its output has axes {', '.join(order)}; napari-unet needs (channel,) y, x")
    names = ["foreground"]
    halo = 0
    for axis in out.axes:
        if str(axis.type) == "channel":
            names = [str(n) for n in axis.channel_names]
        elif str(axis.type) == "space":
            size = axis.size
            if not hasattr(size, "tensor_id") or getattr(size, "offset", 0):
                raise fail(f"its output size in {axis.id} is not the input's")
            halo = max(halo, int(getattr(axis, "halo", 0) or 0))
    return order, names, halo


def _output_kind(out: Any, channels: int) -> str:
    steps = [str(p.id) for p in out.postprocessing if str(p.id) != "ensure_dtype"]
    if "softmax" in steps and channels > 1:
        return "logits"
    if "sigmoid" in steps:
        return "sigmoid"
    if channels == 1:
        return "foreground"
    return "probabilities"


def _preprocessing(inp: Any, fail: Any) -> tuple[NormalizeConfig, list]:
    normalize = NormalizeConfig(method="none")
    ops: list[tuple[str, dict[str, Any]]] = []
    for step in inp.preprocessing:
        name, kwargs = str(step.id), getattr(step, "kwargs", None)
        if name == "ensure_dtype":
            continue
        if name == "scale_range" and normalize.method == "none" and not ops:
            normalize = NormalizeConfig("percentile", float(kwargs.min_percentile),
                                        float(kwargs.max_percentile))  # fmt: skip
        elif name in ("scale_linear", "fixed_zero_mean_unit_variance"):
            ops.append(("affine", _affine(name, kwargs)))
        elif name == "zero_mean_unit_variance":
            logger.warning("the package normalises each input by its mean and deviation: "
                           "napari-unet does it per tile, which differs a little from a "
                           "whole-image pass")  # fmt: skip
            ops.append(("standardise", {"eps": float(kwargs.eps)}))
        elif name == "clip":
            ops.append(("clip", {"min": kwargs.min, "max": kwargs.max}))
        else:
            raise fail(f"its input preprocessing '{name}' is not supported")
    return normalize, ops


def _affine(name: str, kwargs: Any) -> dict[str, Any]:
    if name == "scale_linear":
        gain, offset = np.asarray(kwargs.gain, float), np.asarray(kwargs.offset, float)
    else:
        mean, std = np.asarray(kwargs.mean, float), np.asarray(kwargs.std, float)
        gain, offset = 1.0 / std, -mean / std
    return {"gain": gain.reshape(-1).tolist(), "offset": offset.reshape(-1).tolist()}


class OnnxModule(nn.Module):
    """ONNX weights run by onnxruntime on the CPU: (B, C, H, W) float32 -> its first output."""

    def __init__(self, model: bytes) -> None:
        super().__init__()
        import onnxruntime

        self._bytes = model
        self._session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __deepcopy__(self, memo: dict) -> OnnxModule:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        result = self._session.run(None, {self._input: array})[0]
        return torch.from_numpy(np.asarray(result, dtype=np.float32)).to(x.device)


class PackageNet(nn.Module):
    """A package's network with napari-unet's interface: float32 (B, C, H, W), any H, W ->
    (B, K, H, W) whose softmax over K gives the class probabilities of ``layout.class_names``.

    The input is padded (edge values) to a size the package accepts and the output cropped back;
    the network always runs in float32.
    """

    def __init__(self, module: nn.Module, layout: TensorLayout) -> None:
        super().__init__()
        if isinstance(module, torch.jit.ScriptModule):
            # weights become constants: nothing to train, and no parameters for callers to touch
            with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.freeze(module.eval())
        self.module = module
        self.layout = layout

    def __deepcopy__(self, memo: dict) -> PackageNet:
        module = self.module if isinstance(self.module, OnnxModule) else copy.deepcopy(self.module)
        clone = PackageNet(module, self.layout)
        if hasattr(self, "config"):
            clone.config = self.config
        return clone

    def _size(self, length: int) -> int:
        lay = self.layout
        return lay.minimum + lay.step * max(0, math.ceil((length - lay.minimum) / lay.step))

    def _preprocess(self, x: torch.Tensor) -> torch.Tensor:
        for name, kw in self.layout.ops:
            if name == "affine":
                gain = torch.tensor(kw["gain"], dtype=x.dtype).reshape(1, -1, 1, 1)
                offset = torch.tensor(kw["offset"], dtype=x.dtype).reshape(1, -1, 1, 1)
                x = x * gain + offset
            elif name == "standardise":
                mean = x.mean(dim=(2, 3), keepdim=True)
                x = (x - mean) / (x.std(dim=(2, 3), keepdim=True) + kw["eps"])
            elif name == "clip":
                x = x.clamp(kw["min"], kw["max"])
        return x

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, K_raw, H, W) through the package's axis order."""
        lay = self.layout
        present = ["batch", "channel", "y", "x"]
        if "channel" not in lay.in_order:
            x, present = x[:, 0], ["batch", "y", "x"]
        if "batch" not in lay.in_order:
            results = [self._forward_one(x[i], present[1:]) for i in range(x.shape[0])]
            return torch.stack(results)
        y = self.module(x.permute(*[present.index(a) for a in lay.in_order]))
        return self._to_bkyx(y, lay.out_order)

    def _forward_one(self, x: torch.Tensor, present: list[str]) -> torch.Tensor:
        lay = self.layout
        y = self.module(x.permute(*[present.index(a) for a in lay.in_order]))
        out_order = list(lay.out_order)
        y, out_order = y.unsqueeze(0), ["batch", *out_order]
        return self._to_bkyx(y, out_order)[0]

    @staticmethod
    def _to_bkyx(y: Any, order: list[str]) -> torch.Tensor:
        if isinstance(y, list | tuple):
            y = y[0]
        if "channel" not in order:
            y, order = y.unsqueeze(-1), [*order, "channel"]
        if "batch" not in order:
            y, order = y.unsqueeze(-1), [*order, "batch"]
        return y.permute(*[order.index(a) for a in ("batch", "channel", "y", "x")])

    def _as_logits(self, y: torch.Tensor) -> torch.Tensor:
        kind = self.layout.kind
        if kind == "logits":
            return y
        if kind == "sigmoid" or (kind == "foreground" and (y.min() < 0 or y.max() > 1)):
            p = torch.sigmoid(y)
        else:
            p = y.clamp(0.0, 1.0)
        if kind in ("sigmoid", "foreground"):
            p = torch.cat([1.0 - p.max(dim=1, keepdim=True).values, p], dim=1)
        return torch.log(p.clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        with torch.autocast(x.device.type, enabled=False):
            x = x.float().contiguous()
            ph, pw = self._size(h) - h, self._size(w) - w
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            y = self._run(self._preprocess(x)).float()
            return self._as_logits(y[..., :h, :w]).contiguous()
