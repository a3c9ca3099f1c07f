"""Z-stacks as volumes: 3D instance labels from a 2D network, or from a native 3D network.

Four ways to label a stack with axes ``ZYX`` (or ``TZYX``, one volume per time point):

- ``"ortho"`` (the default for a Z axis): the 2D network predicts class probabilities on the XY
  planes, and, with Z resampled to the XY pixel size (isotropic voxels, from the voxel size), on
  the XZ and YZ planes; the three are resampled back to the stack's planes and averaged. The side
  views see a nucleus's out-of-focus light above and below it as what it is (a dim smear, not a
  nucleus), so the average keeps it out of the foreground. A seeded 3D watershed
  (:func:`instances_3d`, the 3D form of :mod:`.postprocess`) then gives one id per nucleus.
- ``"link"``: per-plane labels linked across Z by overlap (:mod:`.link3d`); one network pass per
  plane, so about three times cheaper than ortho, for large stacks.
- ``"planes"``: each plane labelled on its own (the behaviour for stacks of 2D frames, ``TYX``).
- ``"native"``: a 3D network (``ModelConfig.spatial_dims == 3``) predicts the volume in exact-halo
  3D tiles (:mod:`.volume`), then the same seeded 3D watershed. The mode follows the model: a 3D
  model always predicts natively, a 2D model never does.

Each view runs through the ordinary tiled inference
(:meth:`~.engine.InferenceEngine.predict_image`), with the stack's axes renamed so that the wanted
plane is the one it tiles; one engine (one predictor) serves every view and plane of a run.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from ..axes import Layout
from ..errors import InputMismatchError
from ..labels import labels_dtype, stack_ids
from ..progress import Progress
from .engine import InferenceEngine
from .link3d import link_stack
from .postprocess import PostprocessConfig
from .volume import native_probabilities

if TYPE_CHECKING:
    import torch

    from ..config import TilingConfig
    from ..network.model import UNet
    from ..network.weights import LoadedModel

logger = logging.getLogger(__name__)

StackMode = Literal["planes", "link", "ortho", "native"]
STACK_MODES: tuple[str, ...] = ("planes", "link", "ortho", "native")
_VIEWS = ("xy", "xz", "yz")
_SWAP = {"xy": {}, "xz": {"Z": "Y", "Y": "Z"}, "yz": {"Z": "X", "X": "Z"}}
_PER_VIEW = 1000  # progress units per view


@dataclass(frozen=True)
class Stack3DConfig:
    """How a Z-stack becomes 3D labels.

    Attributes:
        min_size: objects smaller than this many voxels (of the stack) are removed.
        min_seed_size: seeds smaller than this many voxels are ignored.
        seed_sigma: Gaussian smoothing (voxels of the isotropic grid) of the interior
            probability before seeding; 0 turns it off.
        link_overlap: ``"link"``: two objects in neighbouring planes are one when their overlap
            (shared pixels over the smaller object's area) is at least this.
    """

    min_size: int = 40
    min_seed_size: int = 8
    seed_sigma: float = 1.0
    link_overlap: float = 0.5

    def __post_init__(self) -> None:
        if self.min_size < 0 or self.min_seed_size < 0 or self.seed_sigma < 0:
            raise ValueError("min_size, min_seed_size and seed_sigma must not be negative")
        if not 0.0 < self.link_overlap <= 1.0:
            raise ValueError(f"link_overlap must be in (0, 1], got {self.link_overlap}")


def default_mode(axes: str) -> str:
    """``"ortho"`` for an image with a Z axis of several planes' meaning, else ``"planes"``."""
    return "ortho" if "Z" in axes.upper() else "planes"


def resample_axis(a: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Linear resampling of ``a`` along ``axis`` to ``n_out`` samples, first and last aligned.

    Args:
        a: any array (float32 out for float input; other dtypes become float32).
        axis: the axis to resample.
        n_out: its new length (>= 1).

    Returns:
        float32 array, ``a``'s shape with ``n_out`` on ``axis``.
    """
    n_in = a.shape[axis]
    if n_in == n_out:
        return np.asarray(a, dtype=np.float32)
    pos = np.linspace(0.0, n_in - 1.0, n_out) if n_out > 1 else np.zeros(1)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (pos - lo).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    lo_v = np.take(a, lo, axis=axis).astype(np.float32, copy=False)
    hi_v = np.take(a, hi, axis=axis).astype(np.float32, copy=False)
    return lo_v * (1.0 - w) + hi_v * w


def _check_axes(image: np.ndarray, axes: str) -> str:
    axes = axes.upper()
    if len(axes) != image.ndim:
        raise InputMismatchError(f"axes {axes!r} do not fit an image of shape {image.shape}")
    if (
        "Z" not in axes
        or not set(axes) <= set("TZCYX")
        or ("T" in axes and axes.index("T") > axes.index("Z"))
    ):
        raise InputMismatchError(
            f"3D labelling needs a Z axis and axes from 'TZCYX' (T before Z), got {axes!r}; "
            "label the planes one by one instead"
        )
    return axes


def _canonical(probs: np.ndarray, letters: str) -> np.ndarray:
    """Transpose (K, *letters) to (K, T?, Z, Y, X)."""
    order = [letters.index(a) + 1 for a in "TZYX" if a in letters]
    return np.transpose(probs, [0, *order])


def _view_probabilities(
    image: np.ndarray, axes: str, view: str, engine: InferenceEngine, n_iso: int
) -> Generator[Progress, None, np.ndarray]:
    """Probabilities (K, T?, Z, Y, X) of one view, at the stack's own Z sampling."""
    z_axis = axes.index("Z")
    n_z = image.shape[z_axis]
    data = image if view == "xy" else resample_axis(image, z_axis, n_iso)
    swap = _SWAP[view]
    renamed = "".join(swap.get(a, a) for a in axes)
    probs = yield from _tagged(engine.predict_image(data, renamed), view)
    out_letters = Layout(renamed, data.shape).label_axes  # in the renamed space
    letters = "".join(swap.get(a, a) for a in out_letters)  # the swap is its own inverse
    probs = _canonical(probs, letters)
    if view != "xy":
        probs = resample_axis(probs, probs.ndim - 3, n_z)
    return probs


def _tagged(
    gen: Generator[Progress, None, np.ndarray], view: str
) -> Generator[Progress, None, np.ndarray]:
    """Pass ``gen``'s events on, counted over the three views (``done`` of 3000) and their
    message prefixed with the view (``"XZ planes, ..."``)."""
    first = _VIEWS.index(view) * _PER_VIEW
    try:
        while True:
            event = next(gen)
            share = round(_PER_VIEW * event.done / event.total) if event.total else 0
            yield Progress(
                "predict",
                first + share,
                len(_VIEWS) * _PER_VIEW,
                f"{view.upper()} planes, {event.message}",
                payload=event.payload,
            )
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


def ortho_probabilities(
    image: np.ndarray,
    axes: str,
    model: LoadedModel | UNet,
    voxel_size: Sequence[float],
    tiling: TilingConfig | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> Generator[Progress, None, np.ndarray]:
    """Class probabilities of a Z-stack fused from its XY, XZ and YZ planes.

    Args:
        image: the raw stack, one axis per letter of ``axes`` (must hold Z; may hold T and C).
        axes: letters from ``"TZCYX"``.
        model: the 2D network (a loaded model file or a bare U-Net).
        voxel_size: (z, y, x), any unit: Z is resampled by ``z / y`` for the side views.
        tiling, device, precision: as for :func:`~.predict.predict_probabilities`.

    Yields:
        The tiled inference's events (stage ``"predict"``), counted over the three views as
        ``done`` of 3000, with messages like ``"XZ planes, plane 3/48, tile batch 1/1"``.

    Returns:
        float32 (K, T?, Z, Y, X), the mean of the three views, summing to 1 over K.
    """
    engine = InferenceEngine(model, tiling, device, precision)
    return (yield from fused_probabilities(engine, image, axes, voxel_size))


def fused_probabilities(
    engine: InferenceEngine, image: np.ndarray, axes: str, voxel_size: Sequence[float]
) -> Generator[Progress, None, np.ndarray]:
    """:func:`ortho_probabilities` with an engine already built: the three views run on it.

    Returns:
        float32 (K, T?, Z, Y, X), the mean of the three views, summing to 1 over K.
    """
    axes = _check_axes(image, axes)
    n_z = image.shape[axes.index("Z")]
    anisotropy = float(voxel_size[0]) / float(voxel_size[1])
    n_iso = max(1, round((n_z - 1) * anisotropy) + 1)
    logger.info(
        "ortho fusion: %d planes, Z resampled to %d for the side views (anisotropy %.2f)",
        n_z,
        n_iso,
        anisotropy,
    )
    fused = yield from _view_probabilities(image, axes, _VIEWS[0], engine, n_iso)
    fused = np.array(fused, dtype=np.float32)
    for view in _VIEWS[1:]:
        probs = yield from _view_probabilities(image, axes, view, engine, n_iso)
        fused += probs
        del probs
    fused /= np.float32(len(_VIEWS))
    return fused


def _mode_for_model(mode: str, spatial_dims: int) -> str:
    """The stack mode that the model allows: ``"native"`` for a 3D model, ``mode`` otherwise."""
    if spatial_dims == 3:
        if mode != "native":
            logger.info("a 3D model predicts Z-stacks natively (3D tiles), not by %r", mode)
        return "native"
    if mode == "native":
        raise InputMismatchError(
            "native 3D prediction needs a 3D model (spatial_dims 3); a 2D model labels stacks "
            "by ortho, link or planes"
        )
    return mode


def instances_3d(
    probs: np.ndarray,
    post: PostprocessConfig | None = None,
    config: Stack3DConfig | None = None,
    anisotropy: float = 1.0,
) -> np.ndarray:
    """3D instance labels from (background, interior, boundary) probabilities of one volume.

    The 3D form of :func:`~.postprocess.instances_from_probabilities`: foreground where
    ``1 - p(background)`` exceeds the threshold, seeds = 6-connected components of
    ``p(interior) > interior_threshold`` in it (smaller than ``min_seed_size`` voxels ignored), a
    watershed of ``1 - p(interior)`` from the seeds within the foreground; foreground components
    with no seed become one object each; objects under ``min_size`` voxels are removed.

    Args:
        probs: float (3, Z, Y, X).
        post: the thresholds (its 2D sizes are not used; see ``config``).
        config: 3D sizes and smoothing.
        anisotropy: Z step over XY pixel, for the smoothing's Z sigma.

    Returns:
        (Z, Y, X) labels, ids 1..N consecutive, uint16 when N fits else uint32.
    """
    post = post or PostprocessConfig()
    config = config or Stack3DConfig()
    if probs.ndim != 4 or probs.shape[0] != 3:
        raise InputMismatchError(
            f"3D instance labels need probabilities (3, Z, Y, X), got shape {probs.shape}"
        )
    interior = np.asarray(probs[1], dtype=np.float32)
    if config.seed_sigma > 0:
        sigma = (config.seed_sigma / max(anisotropy, 1e-6), config.seed_sigma, config.seed_sigma)
        interior = ndi.gaussian_filter(interior, sigma, mode="nearest")
    foreground = np.asarray(probs[0], dtype=np.float32) < 1.0 - post.foreground_threshold
    seeds, n_seeds = ndi.label((interior > post.interior_threshold) & foreground)
    if n_seeds and config.min_seed_size > 1:
        small = np.bincount(seeds.ravel()) < config.min_seed_size
        small[0] = False
        seeds[small[seeds]] = 0
    components, n_components = ndi.label(foreground)
    seeded = np.zeros(n_components + 1, bool)
    seeded[components[seeds > 0]] = True
    markers = seeds.astype(np.int64)
    offset = int(markers.max()) if markers.size else 0
    unseeded = ~seeded[components] & foreground
    markers[unseeded] = components[unseeded] + offset
    elevation = 255 - np.clip(interior * 255.0 + 0.5, 0, 255).astype(np.uint8)
    labels = watershed(elevation, markers, mask=foreground, connectivity=1)
    return _consecutive(labels, config.min_size)


def _consecutive(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects under ``min_size`` voxels and number the rest 1..N (uint16/uint32)."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    count = int(keep.sum())
    lut = np.zeros(len(sizes), dtype=labels_dtype(count))
    lut[keep] = np.arange(1, count + 1)
    return lut[labels]


def volume_labels(
    probs: np.ndarray,
    post: PostprocessConfig | None = None,
    config: Stack3DConfig | None = None,
    anisotropy: float = 1.0,
) -> Generator[Progress, None, np.ndarray]:
    """3D labels of every volume of (3, T?, Z, Y, X) probabilities, ids unique over T.

    Yields:
        One ``"postprocess"`` event per volume.

    Returns:
        (T?, Z, Y, X) uint16 or uint32 labels.
    """
    volumes = probs.reshape(probs.shape[0], -1, *probs.shape[-3:])
    n = volumes.shape[1]
    parts = []
    for t in range(n):
        parts.append(instances_3d(volumes[:, t], post, config, anisotropy))
        yield Progress("postprocess", t + 1, n, f"3D labels of volume {t + 1} of {n}")
    out = stack_ids(parts)
    return out.reshape(probs.shape[1:])


def predict_stack(
    image: np.ndarray,
    axes: str,
    model: LoadedModel | UNet,
    mode: str,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    tiling: TilingConfig | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    post: PostprocessConfig | None = None,
    config: Stack3DConfig | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Probabilities and labels of a stack in one of the :data:`STACK_MODES`.

    Args:
        image: the raw image, one axis per letter of ``axes``.
        axes: letters from ``"TZCYX"``; ``"link"`` and ``"ortho"`` need a Z axis.
        model: the network (2D, or 3D for ``"native"``).
        mode: ``"planes"`` (each plane on its own), ``"link"`` (per-plane labels linked across
            Z) or ``"ortho"`` (XY, XZ and YZ views fused, then a 3D watershed), for a 2D model;
            a 3D model predicts natively (``"native"``) whatever ``mode`` says, with a note in
            the log.
        voxel_size: (z, y, x) for ``"ortho"`` and ``"native"`` (the watershed's smoothing).
        tiling, device, precision: as for :func:`~.predict.predict_probabilities`.
        post: thresholds (and, for ``"planes"``/``"link"``, the 2D sizes).
        config: 3D sizes and the link threshold.

    Returns:
        ``(probabilities, labels)``: float32 (K, *leading, Y, X) and labels (*leading, Y, X),
        the leading axes in ``axes``' order. With ``"link"``, ``"ortho"`` and ``"native"`` an
        instance id is one object across the planes of a volume; ids are unique over T.
    """
    from .postprocess import postprocess

    if mode not in STACK_MODES:
        raise ValueError(f"unknown stack mode {mode!r}; expected one of {STACK_MODES}")
    config = config or Stack3DConfig()
    engine = InferenceEngine(model, tiling, device, precision)  # one for every view and plane
    task = engine.task
    mode = _mode_for_model(mode, engine.config.spatial_dims)
    if mode in ("ortho", "native"):
        if mode == "ortho":
            probs = yield from fused_probabilities(engine, image, axes, voxel_size)
        else:
            probs = yield from native_probabilities(engine, image, axes)
        if task != "instances":
            labels = yield from postprocess(probs, task, post)
            return probs, labels
        anisotropy = float(voxel_size[0]) / float(voxel_size[1])
        labels = yield from volume_labels(probs, post, config, anisotropy)
        return probs, labels
    if mode == "link":
        _check_axes(image, axes)
    probs = yield from engine.predict_image(image, axes)
    labels = yield from postprocess(probs, task, post)
    if mode == "link" and task == "instances":
        labels = link_stack(labels, config.link_overlap)
    return probs, labels
