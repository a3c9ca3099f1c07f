"""What the Segment widget decides, without Qt or a viewer: axes, planes, names, settings.

Axes are core axes strings (letters from ``"TZCYXS"`` ending in ``"YX"`` or ``"YXS"``), read
with :func:`napari_unet._napari.files.layer_info.layer_layout` and taken apart by
:class:`napari_unet.core.axes.Layout` (leading axes, labels' axes and shape). A napari image layer
has one *layer dimension* per data axis except ``S`` (RGB samples live in the last data axis of an
``rgb`` layer).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from napari_unet.core.config import TilingConfig
    from napari_unet.core.inference.postprocess import PostprocessConfig

#: Key of the layer metadata that Segment writes into the Labels layers it makes.
METADATA_KEY = "napari_unet"


# --- axes and planes ---------------------------------------------------------------------------


def select_plane(data: Any, axes: str, index: Mapping[str, int]) -> tuple[Any, str]:
    """The plane of ``data`` at ``index`` (from :meth:`~napari_unet.core.axes.Layout.leading_at`,
    keyed by letter) and its axes.

    Returns:
        ``(plane, plane_axes)``: ``data`` indexed at the leading axes (channels, Y, X and RGB
        samples kept; a view for a numpy array), and its axes, e.g. ``"YX"`` or ``"CYX"``.
    """
    key = tuple(index[a] if a in index else slice(None) for a in axes)
    return data[key], "".join(a for a in axes if a not in index)


def plane_region(labels_axes: str, index: Mapping[str, int]) -> tuple[int | slice, ...]:
    """Where a plane goes in labels with ``labels_axes``: an index per axis (slices for Y, X)."""
    return tuple(index[a] if a in index else slice(None) for a in labels_axes)


def labels_geometry(
    axes: str, scale: Sequence[float], translate: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Scale and translate for labels made from a layer (one value per layer dimension in, the
    channel dimension dropped out)."""
    from napari_unet.core.axes import label_dims

    keep = label_dims(axes)
    return tuple(float(scale[i]) for i in keep), tuple(float(translate[i]) for i in keep)


def full_resolution(layer: Any) -> Any:
    """A layer's data array; for a multiscale layer, its first (full-resolution) level."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


# --- names --------------------------------------------------------------------------------------


def unique_name(base: str, existing: Iterable[str]) -> str:
    """``base``, or ``base (2)``, ``base (3)``... : the first one not in ``existing``."""
    taken = set(existing)
    if base not in taken:
        return base
    n = 2
    while f"{base} ({n})" in taken:
        n += 1
    return f"{base} ({n})"


def labels_name(image_name: str, model_name: str, existing: Iterable[str]) -> str:
    """The name of a new Labels layer, e.g. ``"nuclei labels [starter]"``, made unique."""
    return unique_name(f"{image_name} labels [{model_name}]", existing)


# --- settings ------------------------------------------------------------------------------


def build_tiling(base: TilingConfig, tile_size: int, batch_size: int) -> TilingConfig:
    """``base`` with the tile size and batch chosen in the widget (halo and exactness kept)."""
    return replace(base, tile_size=int(tile_size), batch_size=int(batch_size))


def build_postprocess(
    task: str,
    interior_threshold: float,
    foreground_threshold: float,
    min_size: int,
    min_seed_size: int = 4,
    seed_sigma: float = 0.0,
) -> PostprocessConfig:
    """The post-processing settings from the widget's values (semantic models ignore them)."""
    from napari_unet.core.inference.postprocess import PostprocessConfig

    return PostprocessConfig(
        mode="semantic" if task == "semantic" else "instances",
        interior_threshold=float(interior_threshold),
        foreground_threshold=float(foreground_threshold),
        min_size=int(min_size),
        min_seed_size=int(min_seed_size),
        seed_sigma=float(seed_sigma),
    )


# --- what was written --------------------------------------------------------------------------


def fingerprint(data: Any) -> str:
    """A cheap content hash of an array (shape, dtype and CRC-32 of the bytes), to tell whether
    a Labels layer changed since it was written."""
    array = np.ascontiguousarray(np.asarray(data))
    crc = zlib.crc32(memoryview(array).cast("B")) if array.size else 0
    return f"{array.shape}|{array.dtype}|{crc:08x}"


def written_by_us(metadata: Mapping[str, Any] | None, data: Any) -> bool:
    """Whether a Labels layer still holds exactly what Segment last wrote into it (no edits)."""
    record = (metadata or {}).get(METADATA_KEY)
    if not isinstance(record, dict) or "fingerprint" not in record:
        return False
    return record["fingerprint"] == fingerprint(data)


def merge_plane(
    stack: np.ndarray, region: tuple[int | slice, ...], plane: np.ndarray, instances: bool = True
) -> np.ndarray:
    """Write the labels of one plane into ``stack``.

    Instance ids (1..N) are offset past the largest id elsewhere in the stack, so that ids stay
    unique in the stack; class ids (``instances=False``) are written as they are. The stack's
    dtype grows (uint16 -> uint32) when needed: then a new array is returned, else ``stack``
    itself, changed in place.

    Args:
        stack: labels (*leading, Y, X), an unsigned integer dtype.
        region: the plane's place (from :func:`plane_region`).
        plane: labels (Y, X), 0 background.
        instances: whether the labels are instance ids.
    """
    from napari_unet.core.labels import offset_ids

    offset = 0
    if instances and stack.ndim > plane.ndim:
        saved = stack[region].copy()
        stack[region] = 0
        offset = int(stack.max())
        stack[region] = saved
    shifted = offset_ids(plane, offset)
    dtype = np.promote_types(stack.dtype, shifted.dtype)
    if dtype != stack.dtype:
        stack = stack.astype(dtype)
    stack[region] = shifted
    return stack


def channel_problem(
    axes: str, shape: Sequence[int], in_channels: int | None, image: str, model: str
) -> str | None:
    """Why a model cannot run on an image's channels, or ``None`` when it can.

    RGB(A) images run through 1-channel models (as gray) and 3-channel models (alpha dropped),
    as :func:`napari_unet.core.network.normalize.as_planes` does.
    """
    if in_channels is None:
        return None
    from napari_unet.core.axes import Layout

    layout = Layout(axes, shape)
    letter, count = layout.channel, layout.n_channels
    if count == in_channels or (letter == "S" and count in (3, 4) and in_channels in (1, 3)):
        return None
    return (
        f"'{image}' has {count} channel{'s' if count != 1 else ''} (axes {axes}, shape "
        f"{tuple(int(n) for n in shape)}) but the model '{model}' expects {in_channels}: choose "
        f"another model or image."
    )


def count_text(labels: np.ndarray, task: str) -> str:
    """``"42 objects"`` for instance labels (ids 1..N), ``"2 classes"`` for class ids."""
    if task == "instances":
        n = int(labels.max()) if labels.size else 0
        return f"{n} object{'s' if n != 1 else ''}"
    classes = int(np.count_nonzero(np.bincount(labels.ravel())[1:])) if labels.size else 0
    return f"{classes} class{'es' if classes != 1 else ''}"


#: How the widgets word a :class:`~napari_unet.core.errors.Hint`, by setting.
_GUI_HINTS = {
    "device": "choose the {value} device under Advanced settings",
    "model": "choose 'Load from file...' in the model list",
}


def error_message(exc: BaseException, what: str) -> str:
    """The notification for a failed job: a :class:`UserError`'s message as it is; out of memory
    with advice; anything else in short (the caller logs its traceback).

    Args:
        exc: the exception.
        what: the job, e.g. ``"Segmentation"``.
    """
    from napari_unet.core.errors import UserError
    from napari_unet.core.network.device import is_out_of_memory

    if isinstance(exc, UserError):
        hint = _GUI_HINTS.get(exc.hint.setting) if exc.hint is not None else None
        return f"{str(exc).rstrip('.')}; {hint.format(value=exc.hint.value)}" if hint else str(exc)
    if isinstance(exc, MemoryError) or is_out_of_memory(exc):
        return (
            f"{what} ran out of memory: choose a smaller tile size or batch under Advanced "
            "settings, or segment one plane at a time."
        )
    return f"{what} failed ({type(exc).__name__}: {exc}). Details are in the log."
