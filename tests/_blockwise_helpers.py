"""A small network with known behaviour and nuclei images, shared by the blockwise tests.

:func:`nuclei_net` is a depth-2 U-Net whose output is set by hand: background where the image is
dark, interior where a blurred copy is bright, boundary in between; so it finds the synthetic
nuclei as a trained network would, at a fraction of the cost. Its deeper levels are random and
weighted in lightly, so the result also depends on the pooling grid: blocks that broke the
stride alignment would not reproduce the whole-image pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from napari_unet.core.config import ModelConfig
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.model import UNet, build_model
from napari_unet.core.network.weights import LoadedModel, save_model

CONFIG = ModelConfig(depth=2, base_channels=4, norm="none")
GAIN = 20.0
FOREGROUND = 0.15  # normalised intensity above which a pixel is foreground
INTERIOR = 0.45  # blurred intensity above which a pixel is interior
DEEP = 0.05  # weight of the network's deeper (pooled) levels


def _blur(conv: torch.nn.Conv2d, out: int, source: int) -> None:
    conv.weight[out, source] = 1.0 / 9.0


def nuclei_net() -> UNet:
    """The hand-set U-Net (1 input channel, 3 classes, stride 4), in eval mode."""
    net = build_model(CONFIG, seed=0).eval()
    enc, dec = net.encoders[0], net.decoders[-1]
    with torch.no_grad():
        for conv in (enc[0], enc[3], dec[0], dec[3]):
            conv.weight.zero_()
            conv.bias.zero_()
        enc[0].weight[0, 0, 1, 1] = 1.0  # ch0: x
        _blur(enc[0], 1, 0)  # ch1: blurred x
        enc[0].bias[:2] = 10.0  # keep the ReLUs linear
        enc[3].weight[0, 0, 1, 1] = 1.0
        _blur(enc[3], 1, 1)
        dec[0].weight[0, 0, 1, 1] = 1.0  # the skip connection's channels...
        dec[0].weight[1, 1, 1, 1] = 1.0
        dec[0].weight[1, 4:, 1, 1] = 1.0  # ... plus the deeper levels, weighted by DEEP
        dec[3].weight[0, 0, 1, 1] = 1.0
        dec[3].weight[1, 1, 1, 1] = 1.0
        up = net.ups[-1]
        for param in up.parameters():
            param.mul_(DEEP)
        net.head.weight.zero_()
        net.head.weight[0, 0] = -GAIN
        net.head.weight[1, 1] = GAIN
        net.head.bias.copy_(torch.tensor([GAIN * (10 + FOREGROUND), -GAIN * (10 + INTERIOR), 0.0]))
    return net


def nuclei_model(name: str = "nuclei-test") -> LoadedModel:
    """:func:`nuclei_net` wrapped as a model (default percentile normalisation)."""
    return LoadedModel.from_model(nuclei_net(), name=name)


def save_nuclei_model(path: Path) -> Path:
    """Save :func:`nuclei_net` as a model file at ``path``."""
    return save_model(path, nuclei_net(), new_metadata(CONFIG, name=path.stem))


def nuclei_image(size: int = 320, seed: int = 3) -> np.ndarray:
    """A synthetic fluorescence image of nuclei, uint16 (size, size)."""
    import dataclasses

    from napari_unet.core.synthetic.config import SAMPLE_CONFIG
    from napari_unet.core.synthetic.images import make_image

    config = dataclasses.replace(SAMPLE_CONFIG, shape=(size, size))
    image, _ = make_image(config, seed, dtype=np.uint16)
    return image
