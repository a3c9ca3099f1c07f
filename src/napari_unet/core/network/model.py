"""The 2D U-Net: building blocks, the builder from a :class:`ModelConfig`, and inference fusion.

Convolutions are 3x3 with zero padding ("same" size), so the output has the input's size. Any input
size works: the input is padded at the bottom/right to a multiple of the network's stride and the
output is cropped back.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..config import ModelConfig

logger = logging.getLogger(__name__)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = math.gcd(channels, 8)
        return nn.GroupNorm(groups, channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)  # instance norm with affine parameters
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two (3x3 convolution, normalisation, ReLU) layers: (B, c_in, H, W) -> (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """2x up-sampling from ``c_in`` to ``c_out`` channels."""

    def __init__(self, c_in: int, c_out: int, mode: str) -> None:
        super().__init__()
        if mode == "transpose":
            self.op: nn.Module = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
        else:
            self.op = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(c_in, c_out, 1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class UNet(nn.Module):
    """A 2D U-Net (Ronneberger et al. 2015) with "same" convolutions.

    Input: float tensor (B, in_channels, H, W), any H and W >= 1.
    Output: logits (B, out_classes, H, W), float.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.encoders = nn.ModuleList()
        c_prev = config.in_channels
        for level in range(config.depth + 1):
            self.encoders.append(ConvBlock(c_prev, c(level), config.norm))
            c_prev = c(level)
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(config.depth)):
            self.ups.append(Up(c(level + 1), c(level), config.upsampling))
            self.decoders.append(ConvBlock(2 * c(level), c(level), config.norm))
        self.head = nn.Conv2d(c(0), config.out_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.config.stride
        ph, pw = (-h) % s, (-w) % s
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < self.config.depth:
                skips.append(x)
                x = self.pool(x)
        for up, dec in zip(self.ups, self.decoders, strict=True):
            x = up(x)
            x = dec(torch.cat([skips.pop(), x], dim=1))
        x = self.head(x)
        return x[..., :h, :w] if (ph or pw) else x


def build_model(config: ModelConfig, seed: int | None = None) -> UNet:
    """A freshly initialised U-Net for ``config`` (deterministic when ``seed`` is given)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return UNet(config)
    return UNet(config)


def _input_span(config: ModelConfig, level: int, x: int, decoder: bool) -> tuple[int, int]:
    """First and last input pixel (1D, full-resolution coordinates) that the feature at position
    ``x`` of ``level`` depends on; ``decoder`` picks the decoder's output, else the encoder's.
    Pooling pairs positions (2y, 2y + 1), so the span depends on ``x`` modulo the stride."""
    if not decoder or level == config.depth:
        if level == 0:
            return x - 2, x + 2  # two 3x3 convolutions
        first = _input_span(config, level - 1, 2 * (x - 2), False)[0]
        last = _input_span(config, level - 1, 2 * (x + 2) + 1, False)[1]
        return first, last

    def up(y: int) -> tuple[int, int]:
        k = y // 2
        coarse = (
            [k] if config.upsampling == "transpose" else ([k - 1, k] if y % 2 == 0 else [k, k + 1])
        )
        spans = [_input_span(config, level + 1, p, True) for p in coarse]
        return min(a for a, _ in spans), max(b for _, b in spans)

    skip_first, _ = _input_span(config, level, x - 2, False)
    _, skip_last = _input_span(config, level, x + 2, False)
    return min(skip_first, up(x - 2)[0]), max(skip_last, up(x + 2)[1])


def receptive_radius(config: ModelConfig) -> int:
    """Context margin that makes tiled inference exact, in pixels (a multiple of the stride).

    For tiles whose windows start on the network's stride grid, an output pixel of the tile's
    core depends only on input pixels inside its window when the margin is at least this: the
    farthest reach, over the positions modulo the stride, of the network's receptive field,
    rounded up to the stride. (Depth 4 with transposed convolutions: 94 px, so 96.)
    """
    s = config.stride
    spans = [_input_span(config, 0, r, True) for r in range(s)]
    reach = max(max(-first for first, _ in spans), max(last - (s - 1) for _, last in spans))
    return int(math.ceil(reach / s) * s)


def fuse_for_inference(model: UNet) -> UNet:
    """A copy of ``model`` in eval mode with every BatchNorm folded into the convolution before it.

    The result computes the same function as ``model.eval()`` (to float rounding) with fewer
    operations. Models with other normalisations are returned as an eval-mode copy.
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, ConvBlock):
            layers = list(module)
            for i in (0, 3):
                conv, norm = layers[i], layers[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(conv, norm)
                    module[i + 1] = nn.Identity()
    return fused


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
