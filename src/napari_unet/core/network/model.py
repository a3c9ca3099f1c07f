"""The U-Net, 2D or 3D: building blocks, the builder from a :class:`ModelConfig`, the
receptive field, and inference fusion.

Convolutions are 3x3 (3x3x3 for a 3D network, ``ModelConfig.spatial_dims == 3``) with zero padding
("same" size), so the output has the input's size. Any input size works: the input is padded at the
end of each axis to a multiple of the network's stride and the output is cropped back. A 3D network
may pool only Y and X in its first levels (``ModelConfig.xy_only_levels``), for stacks whose Z step
is coarser than their pixel.
"""

from __future__ import annotations

import copy
import functools
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..config import ModelConfig

logger = logging.getLogger(__name__)


def _conv(dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _norm(kind: str, channels: int, dims: int = 2) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels) if dims == 3 else nn.BatchNorm2d(channels)
    if kind == "group":
        groups = math.gcd(channels, 8)
        return nn.GroupNorm(groups, channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)  # instance norm with affine parameters
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two (3x3 convolution, normalisation, ReLU) layers: (B, c_in, H, W) -> (B, c_out, H, W);
    3x3x3 on (B, c, Z, Y, X) with ``dims=3``."""

    def __init__(self, c_in: int, c_out: int, norm: str, dims: int = 2) -> None:
        bias = norm == "none"
        conv = _conv(dims)
        super().__init__(
            conv(c_in, c_out, 3, padding=1, bias=bias),
            _norm(norm, c_out, dims),
            nn.ReLU(inplace=True),
            conv(c_out, c_out, 3, padding=1, bias=bias),
            _norm(norm, c_out, dims),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Up-sampling by ``factor`` (2, or (f_z, 2, 2) in 3D) from ``c_in`` to ``c_out`` channels."""

    def __init__(self, c_in: int, c_out: int, mode: str, factor: int | tuple[int, ...] = 2) -> None:
        super().__init__()
        dims = 3 if isinstance(factor, tuple) else 2
        if mode == "transpose":
            transpose = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
            self.op: nn.Module = transpose(c_in, c_out, kernel_size=factor, stride=factor)
        else:
            scale = tuple(float(f) for f in factor) if dims == 3 else 2
            self.op = nn.Sequential(
                nn.Upsample(
                    scale_factor=scale,
                    mode="trilinear" if dims == 3 else "bilinear",
                    align_corners=False,
                ),
                _conv(dims)(c_in, c_out, 1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class UNet(nn.Module):
    """A U-Net (Ronneberger et al. 2015) with "same" convolutions, 2D or 3D
    (``config.spatial_dims``).

    Input: float tensor (B, in_channels, H, W), any H and W >= 1; (B, in_channels, Z, Y, X) for a
    3D network.
    Output: logits (B, out_classes, H, W) (or (B, out_classes, Z, Y, X)), float.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dims = config.spatial_dims
        c = config.channels
        self.encoders = nn.ModuleList()
        c_prev = config.in_channels
        for level in range(config.depth + 1):
            self.encoders.append(ConvBlock(c_prev, c(level), config.norm, dims))
            c_prev = c(level)
        if dims == 2:
            self.pool: nn.Module = nn.MaxPool2d(2)
        else:
            self.pool = nn.ModuleList(
                nn.MaxPool3d(config.pool_kernel(level)) for level in range(config.depth)
            )
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(config.depth)):
            self.ups.append(
                Up(c(level + 1), c(level), config.upsampling, config.pool_kernel(level))
            )
            self.decoders.append(ConvBlock(2 * c(level), c(level), config.norm, dims))
        self.head = _conv(dims)(c(0), config.out_classes, 1)

    def _pool(self, x: torch.Tensor, level: int) -> torch.Tensor:
        if isinstance(self.pool, nn.ModuleList):
            return self.pool[level](x)
        return self.pool(x)

    def _strides(self) -> tuple[int, ...]:
        s = self.config.stride
        return (self.config.z_stride, s, s) if self.config.spatial_dims == 3 else (s, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = tuple(x.shape[2:])
        strides = self._strides()
        if len(sizes) != len(strides):
            raise ValueError(
                f"a {self.config.spatial_dims}D network takes (B, C, {len(strides)} axes), got "
                f"shape {tuple(x.shape)}"
            )
        pads = [(-n) % s for n, s in zip(sizes, strides, strict=True)]
        if any(pads):
            x = F.pad(x, [v for p in reversed(pads) for v in (0, p)], mode="replicate")
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < self.config.depth:
                skips.append(x)
                x = self._pool(x, i)
        for up, dec in zip(self.ups, self.decoders, strict=True):
            x = up(x)
            x = dec(torch.cat([skips.pop(), x], dim=1))
        x = self.head(x)
        if any(pads):
            x = x[(..., *(slice(0, n) for n in sizes))]
        return x


def build_model(config: ModelConfig, seed: int | None = None) -> UNet:
    """A freshly initialised U-Net for ``config`` (deterministic when ``seed`` is given)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return UNet(config)
    return UNet(config)


@functools.cache
def _input_span(
    factors: tuple[int, ...], upsampling: str, level: int, x: int, decoder: bool
) -> tuple[int, int]:
    """First and last input pixel (1D, full-resolution coordinates) that the feature at position
    ``x`` of ``level`` depends on, along one axis whose pooling factor per step is ``factors``
    (2, or 1 where the axis is not pooled); ``decoder`` picks the decoder's output, else the
    encoder's. Pooling by 2 pairs positions (2y, 2y + 1), so the span depends on ``x`` modulo the
    stride."""
    depth = len(factors)
    if not decoder or level == depth:
        if level == 0:
            return x - 2, x + 2  # two 3x3 convolutions
        f = factors[level - 1]
        first = _input_span(factors, upsampling, level - 1, f * (x - 2), False)[0]
        last = _input_span(factors, upsampling, level - 1, f * (x + 2) + f - 1, False)[1]
        return first, last

    def up(y: int) -> tuple[int, int]:
        if factors[level] == 1:
            coarse = [y]
        else:
            k = y // 2
            bilinear = [k - 1, k] if y % 2 == 0 else [k, k + 1]
            coarse = [k] if upsampling == "transpose" else bilinear
        spans = [_input_span(factors, upsampling, level + 1, p, True) for p in coarse]
        return min(a for a, _ in spans), max(b for _, b in spans)

    skip_first, _ = _input_span(factors, upsampling, level, x - 2, False)
    _, skip_last = _input_span(factors, upsampling, level, x + 2, False)
    return min(skip_first, up(x - 2)[0]), max(skip_last, up(x + 2)[1])


def receptive_radius(config: ModelConfig, axis: str = "x") -> int:
    """Context margin that makes tiled inference exact, in pixels (a multiple of the stride).

    For tiles whose windows start on the network's stride grid, an output pixel of the tile's
    core depends only on input pixels inside its window when the margin is at least this: the
    farthest reach, over the positions modulo the stride, of the network's receptive field,
    rounded up to the stride. (Depth 4 with transposed convolutions: 94 px, so 96.) ``axis``
    (``"z"``, ``"y"`` or ``"x"``) matters for 3D networks, whose Z may be pooled less.
    """
    factors = config.pool_factors(axis)
    s = math.prod(factors)
    spans = [_input_span(factors, config.upsampling, 0, r, True) for r in range(s)]
    reach = max(max(-first for first, _ in spans), max(last - (s - 1) for _, last in spans))
    return int(math.ceil(reach / s) * s)


def receptive_radii(config: ModelConfig) -> tuple[int, int, int]:
    """The exact margins (z, y, x) of a 3D network, see :func:`receptive_radius`."""
    return receptive_radius(config, "z"), receptive_radius(config, "y"), receptive_radius(config)


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
                if isinstance(conv, nn.Conv2d | nn.Conv3d) and isinstance(
                    norm, nn.BatchNorm2d | nn.BatchNorm3d
                ):
                    module[i] = fuse_conv_bn_eval(conv, norm)
                    module[i + 1] = nn.Identity()
    return fused


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
