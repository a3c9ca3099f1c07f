"""The training run of a native 3D network: the 2D run's loop, optimiser, saving and early
stopping, with 3D patches, 3D augmentation and 3D validation.

:class:`VolumeRun` is a :class:`~.loop.TrainingRun` whose data are :class:`~.patches3d.VolumePair`
volumes: patches of ``TrainConfig.patch_size`` pixels in Y and X and :func:`~.patches3d.patch_depth`
planes (about a physical cube), augmented by :func:`~.augment3d.augment_volume_batch`, and held-out
blocks of every plane (``TrainConfig.validation_block`` pixels a side) scored by
:func:`~.patches3d.validate_volumes`. The loss is the same weighted cross-entropy, per voxel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..network.model import UNet
from .augment3d import augment_volume_batch
from .loop import TrainingRun
from .patches3d import (
    VolumePair,
    VolumeSampler,
    patch_depth,
    split_volume_validation,
    validate_volumes,
)

logger = logging.getLogger(__name__)


def check_volume_pairs(pairs: Sequence[Any], spatial_dims: int) -> None:
    """Refuse training data that does not fit the network: volumes for a 3D network, planes
    for a 2D one.

    Raises:
        UserError: the reason.
    """
    volumes = sum(isinstance(p, VolumePair) for p in pairs)
    if spatial_dims == 3 and volumes != len(pairs):
        raise UserError(
            "A 3D model trains on Z-stacks (volumes with their 3D labels); some training "
            "images are 2D planes."
        )
    if spatial_dims == 2 and volumes:
        raise UserError(
            "A 2D model trains on planes; these volumes need a native 3D model (a new 3D network)."
        )


class VolumeRun(TrainingRun):
    """A :class:`~.loop.TrainingRun` of a 3D network on :class:`~.patches3d.VolumePair` data."""

    def _data(self, pairs: Sequence[Any], rng: np.random.Generator) -> tuple[list, list, Any]:
        config, net = self.config, self.model.config
        self.anisotropy = float(np.median([p.anisotropy for p in pairs]))
        training, crops = split_volume_validation(
            pairs, config.val_fraction, rng, block=config.validation_block
        )
        depth = patch_depth(config.patch_size, self.anisotropy, net.z_stride)
        shape = (depth, config.patch_size, config.patch_size)
        logger.info("3D training: patches of %s voxels, anisotropy %.2f", shape, self.anisotropy)
        return training, crops, VolumeSampler(training, shape, rng)

    def _augment(self, *batch: torch.Tensor) -> Any:
        return augment_volume_batch(
            *batch, config=self.config.augment, generator=self.generator,
            anisotropy=self.anisotropy,
        )  # fmt: skip

    def _score(self, model: UNet, task: str) -> dict[str, float]:
        return validate_volumes(model, self.crops, task, self.dev)
