"""Segment on a Z-stack: 3D labels by ortho fusion (see :mod:`napari_unet.core.inference.stack3d`).

The widget asks :func:`stack_settings` how to label the image it runs on (ortho fusion for an
image with a Z axis, planes otherwise) and with which voxel size (the layer's scale or metadata;
a missing Z step is assumed isotropic, with a notification). :func:`volume_job` is the worker's
job for a volume; :func:`volume_rethreshold` makes 3D labels again from kept probabilities.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet.core.progress import Progress

if TYPE_CHECKING:
    from napari_unet.core.inference.postprocess import PostprocessConfig
    from napari_unet.core.network.weights import LoadedModel


def stack_settings(image_layer: Any, axes: str) -> tuple[str, tuple[float, float, float] | None]:
    """``(mode, voxel size (z, y, x))`` for segmenting ``axes`` of ``image_layer``: ``"ortho"``
    with the layer's voxel size when ``axes`` has a Z axis, else ``("planes", None)``."""
    from napari.utils.notifications import show_info

    from napari_unet.core.inference.stack3d import default_mode
    from napari_unet.core.io.voxels import resolve_voxel_size

    from ..files.layer_info import physical_sizes

    mode = default_mode(axes)
    if mode == "planes" or image_layer is None:
        return "planes", None
    layer_axes = (
        image_layer.metadata.get("axes") if isinstance(image_layer.metadata, dict) else None
    )
    full_axes = layer_axes if layer_axes and len(layer_axes) == np.ndim(image_layer.data) else axes
    pixel_size, z_spacing = physical_sizes(full_axes, image_layer.scale, image_layer.metadata)
    voxel = resolve_voxel_size(pixel_size, z_spacing, name=f"'{image_layer.name}'")
    if voxel.note:
        show_info(voxel.note.replace("give --voxel-size Z,Y,X", "set the layer's scale (Z, Y, X)"))
    return mode, voxel.size


def volume_job(
    request: Any, model: LoadedModel, image: np.ndarray
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Probabilities (float32 (K, T?, Z, Y, X)) and 3D labels (T?, Z, Y, X) of a stack
    (``request`` is a ``SegmentRequest``)."""
    from napari_unet.core.inference.stack3d import predict_stack

    return (yield from predict_stack(
        image, request.axes, model, request.stack, request.voxel_size or (1.0, 1.0, 1.0),
        request.tiling, request.device, request.precision, request.postprocess,
    ))  # fmt: skip


def volume_rethreshold(
    probabilities: np.ndarray,
    task: str,
    config: PostprocessConfig,
    stack: str,
    voxel_size: tuple[float, float, float] | None,
) -> Generator[Progress, None, np.ndarray]:
    """3D labels again from kept probabilities (K, T?, Z, Y, X) with new thresholds."""
    from napari_unet.core.inference.link3d import link_stack
    from napari_unet.core.inference.postprocess import postprocess
    from napari_unet.core.inference.stack3d import volume_labels

    if task != "instances" or config.mode != "instances":
        return (yield from postprocess(probabilities, task, config))
    if stack == "link":
        labels = yield from postprocess(probabilities, task, config)
        return link_stack(labels)
    voxel = voxel_size or (1.0, 1.0, 1.0)
    return (yield from volume_labels(probabilities, config, None, voxel[0] / voxel[1]))
