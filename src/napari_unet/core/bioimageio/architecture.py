"""The network class that bioimage.io packages of napari-unet models name.

A package's ``pytorch_state_dict`` weights give their architecture as a callable imported from an
installed library plus keyword arguments (``import_from: napari_unet.core.bioimageio.architecture``,
``callable: UNet2d``, ``kwargs``: the :class:`~napari_unet.core.config.ModelConfig` fields), so
loading them runs no code from the package itself.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from ..network.model import UNet

#: Where the architecture is imported from, and its name, as packages record them.
IMPORT_FROM = __name__
CALLABLE = "UNet2d"


class UNet2d(UNet):
    """napari-unet's 2D U-Net built from keyword arguments (the fields of
    :class:`~napari_unet.core.config.ModelConfig`): (B, C, H, W) float32 -> logits (B, K, H, W).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(ModelConfig(**kwargs))
