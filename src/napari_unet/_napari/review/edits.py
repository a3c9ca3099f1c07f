"""Which objects of a Labels layer the user reviewed: edit tracking and the review state.

napari's brush, eraser, fill and polygon tools, and :meth:`Labels.data_setitem`, all record an undo
item and emit the layer's ``paint`` event with the changed pixels and their old and new values.
:func:`track` listens to it and keeps, in ``layer.metadata["napari_unet_review"]`` (a dict):

- ``"touched"``: set of the ids whose pixels were changed (the old and the new values);
- ``"edited"``: ``{plane: bool (H, W)}``, the changed pixels of each 2D plane (planes numbered in
  C order over the leading axes);
- ``"accepted"``: ids accepted as they are. Anything may add ids to it (a list or a set);
  :func:`accept_objects` does. Deleting an object is writing 0 over it with ``data_setitem``: the
  area becomes reviewed background.

Replacing the whole data (``layer.data = ...``, as Segment does when it runs again) starts a new
review. :func:`review_mask` turns the state into the annotated mask of Fine-tune (see
:mod:`napari_unet.core.training.annotated`). The state is saved next to a labels file as
``<file>.review.json`` (:func:`save_review`, called by the writer) and read back with it
(:func:`load_review`, called by the reader).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.training.annotated import (
    REVIEW_MARGIN,
    reviewed_mask,
    reviewed_objects,
    reviewed_volume_mask,
)

logger = logging.getLogger(__name__)

#: Key of the review state in a Labels layer's metadata.
REVIEW_KEY = "napari_unet_review"
#: Suffix added to a labels file's name for its review sidecar.
SIDECAR_SUFFIX = ".review.json"
_FORMAT = "napari-unet-review"


# ------------------------------------------------------------------------------ the state


def review_state(layer: Any, create: bool = False) -> dict[str, Any] | None:
    """The layer's review state (made, empty, when ``create``), or ``None``."""
    metadata = layer.metadata
    state = metadata.get(REVIEW_KEY) if isinstance(metadata, Mapping) else None
    if not isinstance(state, dict):
        if not create:
            return None
        state = {}
        layer.metadata[REVIEW_KEY] = state
    if create:
        state.setdefault("touched", set())
        state.setdefault("edited", {})
        state.setdefault("accepted", set())
    return state


def _ids(values: Any) -> set[int]:
    try:
        return {int(v) for v in (values or ())}
    except (TypeError, ValueError):
        return set()


def touched_ids(layer: Any) -> set[int]:
    """The ids of the objects of a Labels layer whose pixels the user has changed."""
    state = review_state(layer)
    return _ids(state.get("touched")) if state is not None else set()


def accept_objects(layer: Any, ids: Iterable[int]) -> list[int]:
    """Mark the objects ``ids`` of a Labels layer as reviewed and right as they are, in
    ``layer.metadata["napari_unet_review"]["accepted"]``; returns all accepted ids, sorted."""
    state = review_state(layer, create=True)
    accepted = state.get("accepted")
    merged = _ids(accepted) | {int(i) for i in ids if int(i) != 0}
    state["accepted"] = sorted(merged)
    return sorted(merged)


def clear_review(layer: Any) -> None:
    """Forget the layer's review state (its data was replaced as a whole)."""
    if isinstance(layer.metadata, Mapping) and REVIEW_KEY in layer.metadata:
        layer.metadata[REVIEW_KEY] = {"touched": set(), "edited": {}, "accepted": set()}


# --------------------------------------------------------------------------- tracking


def _plane_numbers(shape: tuple[int, ...], index: tuple[np.ndarray, ...]) -> np.ndarray:
    """The plane number of each pixel at data ``index`` (one int array per axis of ``shape``)."""
    if len(shape) == 2:
        return np.zeros(index[-1].shape, dtype=np.int64)
    return np.ravel_multi_index(index[:-2], shape[:-2])


def _record(
    state: dict[str, Any],
    shape: tuple[int, ...],
    index: tuple[np.ndarray, ...],
    old: np.ndarray,
    new: Any,
) -> None:
    """Record changed pixels at data ``index`` (one int array per axis), with their old values
    and new value(s)."""
    if len(shape) < 2 or not index or index[0].size == 0:
        return
    touched = state["touched"]
    touched.update(int(v) for v in np.unique(old) if v)
    touched.update(int(v) for v in np.unique(np.asarray(new)) if v)
    edited = state["edited"]
    planes = _plane_numbers(shape, index)
    for k in np.unique(planes):
        at = planes == k
        plane = edited.get(int(k))
        if plane is None:
            plane = edited[int(k)] = np.zeros(shape[-2:], dtype=bool)
        plane[index[-2][at], index[-1][at]] = True


def _record_atom(state: dict[str, Any], shape: tuple[int, ...], atom: Any) -> None:
    if hasattr(atom, "slice_key"):  # a masked edit (brush, fill, polygon) of napari >= 0.6
        key = tuple(atom.slice_key)
        box = tuple(s.indices(n) for s, n in zip(key, shape, strict=False))
        box_shape = tuple(len(range(*b)) for b in box)
        where = np.ones(box_shape, bool) if atom.mask is None else np.asarray(atom.mask, bool)
        local = np.nonzero(where)
        index = tuple(loc + b[0] for loc, b in zip(local, box, strict=True))
        old = np.asarray(atom.old_values)
        old = old[where] if atom.mask is None else old
        _record(state, shape, index, old, atom.new_value)
        return
    indices, old, new = atom  # data_setitem: (fancy index, old values, new value(s))
    index = tuple(np.asarray(i, dtype=np.int64).ravel() for i in indices)
    _record(state, shape, index, np.asarray(old), new)


def _on_paint(event: Any) -> None:
    layer = event.source
    shape = tuple(int(n) for n in layer.data.shape)
    state = review_state(layer, create=True)
    for atom in event.value or ():
        try:
            _record_atom(state, shape, atom)
        except (TypeError, ValueError, IndexError) as exc:  # an edit of an unknown form
            logger.warning("cannot follow an edit of %r: %s", layer.name, exc)
            state["untracked"] = True


def _on_data(event: Any) -> None:
    clear_review(event.source)


def track(layer: Any) -> None:
    """Follow the user's edits of a Labels layer (idempotent; other layers are ignored)."""
    from napari.layers import Labels

    if not isinstance(layer, Labels) or getattr(layer, "multiscale", False):
        return
    if _on_paint not in layer.events.paint.callbacks:
        layer.events.paint.connect(_on_paint)
    if _on_data not in layer.events.data.callbacks:
        layer.events.data.connect(_on_data)


def _on_inserted(event: Any) -> None:
    track(event.value)


def watch_viewer(viewer: Any) -> None:
    """Track every Labels layer of ``viewer``, and those added later (idempotent)."""
    for layer in viewer.layers:
        track(layer)
    if _on_inserted not in viewer.layers.events.inserted.callbacks:
        viewer.layers.events.inserted.connect(_on_inserted)


def watch_current_viewer() -> None:
    """:func:`watch_viewer` on napari's current viewer, if there is one."""
    try:
        import napari

        viewer = napari.current_viewer()
    except (ImportError, RuntimeError):
        return
    if viewer is not None:
        watch_viewer(viewer)


# ------------------------------------------------------------------------ the mask


@dataclass(frozen=True)
class Review:
    """What the user reviewed in a Labels layer.

    Attributes:
        mask: bool, the labels' shape: the reviewed pixels (see :func:`review_mask`).
        objects: objects in the reviewed pixels.
        edited_pixels: pixels the user changed.
        accepted: objects accepted as they are (and still present).
        untracked: the layer changed in a way that was not followed (not through napari's
            tools), so some corrections may be missing.
    """

    mask: np.ndarray
    objects: int
    edited_pixels: int
    accepted: int
    untracked: bool

    @property
    def share(self) -> float:
        """The share of the image that is reviewed (0 to 1)."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def corrected(self) -> bool:
        """Whether the user changed anything (accepting alone corrects nothing)."""
        return self.edited_pixels > 0


def _changed_since_segment(layer: Any, labels: np.ndarray) -> bool:
    from ..segment.logic import METADATA_KEY, written_by_us

    return METADATA_KEY in layer.metadata and not written_by_us(layer.metadata, labels)


def review_mask(
    layer: Any,
    labels: np.ndarray | None = None,
    margin: int = REVIEW_MARGIN,
    anisotropy: float | None = None,
) -> Review:
    """What the user reviewed in ``layer``.

    Args:
        layer: a Labels layer.
        labels: its data (a copy taken for training), default the layer's data.
        margin: background margin around reviewed objects and changed pixels, in pixels.
        anisotropy: for (Z, Y, X) labels of a volume (one id per object across planes), its Z
            step over its XY pixel: a reviewed object then counts in every plane it spans and
            the margin is 3D (:func:`~napari_unet.core.training.annotated.reviewed_volume_mask`);
            ``None``: plane by plane.
    """
    labels = np.asarray(layer.data if labels is None else labels)
    state = review_state(layer) or {}
    edited = {
        int(k): v
        for k, v in (state.get("edited") or {}).items()
        if np.shape(v) == labels.shape[-2:]
    }
    accepted = _ids(state.get("accepted"))
    present = accepted & {int(v) for v in np.unique(labels)} if accepted else set()
    touched = _ids(state.get("touched"))
    if anisotropy is not None and labels.ndim == 3:
        mask = reviewed_volume_mask(labels, edited, touched, present, margin, anisotropy)
    else:
        mask = reviewed_mask(labels, edited, touched, present, margin)
    edited_pixels = int(sum(int(np.count_nonzero(v)) for v in edited.values()))
    untracked = bool(state.get("untracked")) or (
        edited_pixels == 0 and _changed_since_segment(layer, labels)
    )
    return Review(mask, reviewed_objects(labels, mask), edited_pixels, len(present), untracked)


def describe(review: Review) -> str:
    """One line for the user: how much of the layer is reviewed."""
    if not review.mask.any():
        return "nothing reviewed yet"
    parts = [f"{review.objects} object{'s' if review.objects != 1 else ''}"]
    if review.accepted:
        parts.append(f"{review.accepted} accepted")
    return f"{', '.join(parts)}, {100 * review.share:.1f}% of the image"


# --------------------------------------------------------------------------- sidecar


def sidecar_path(labels_path: str | os.PathLike) -> Path:
    """The review file of a labels file: ``labels.tif`` -> ``labels.tif.review.json``."""
    path = Path(labels_path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _crc(labels: np.ndarray) -> str:
    array = np.ascontiguousarray(labels, dtype=np.uint32)
    return f"{zlib.crc32(memoryview(array).cast('B')):08x}"


def _pack(plane: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.packbits(plane.astype(bool)).tobytes())).decode()


def _unpack(text: str, shape: tuple[int, int]) -> np.ndarray:
    bits = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8)
    return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)


def save_review(
    labels_path: str | os.PathLike, metadata: Mapping[str, Any] | None, labels: np.ndarray
) -> Path | None:
    """Write the review state in ``metadata`` next to the labels file just written (or remove a
    stale review file when there is nothing to save); returns the file written."""
    state = (metadata or {}).get(REVIEW_KEY)
    target = sidecar_path(labels_path)
    edited = (state or {}).get("edited") or {}
    if not isinstance(state, dict) or not (edited or _ids(state.get("accepted"))):
        target.unlink(missing_ok=True)
        return None
    content = {
        "format": _FORMAT,
        "version": 1,
        "shape": list(labels.shape),
        "crc32": _crc(labels),
        "accepted": sorted(_ids(state.get("accepted"))),
        "touched": sorted(_ids(state.get("touched"))),
        "edited": {str(k): _pack(v) for k, v in edited.items() if np.shape(v) == labels.shape[-2:]},
        "untracked": bool(state.get("untracked")),
    }
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(json.dumps(content))
    os.replace(temporary, target)
    return target


def load_review(labels_path: str | os.PathLike, labels: np.ndarray) -> dict[str, Any] | None:
    """The review state saved next to a labels file, or ``None`` (no file, unreadable, or the
    labels changed since: the file then no longer says what was reviewed)."""
    source = sidecar_path(labels_path)
    if not source.is_file():
        return None
    try:
        content = json.loads(source.read_text())
        if content.get("format") != _FORMAT or tuple(content["shape"]) != labels.shape:
            raise ValueError("not a review file of these labels")
        if content["crc32"] != _crc(labels):
            logger.warning("%s: the labels changed since the review was saved; ignored", source)
            return None
        plane = tuple(labels.shape[-2:])
        return {
            "accepted": _ids(content.get("accepted")),
            "touched": _ids(content.get("touched")),
            "edited": {int(k): _unpack(v, plane) for k, v in content["edited"].items()},
            "untracked": bool(content.get("untracked")),
        }
    except (OSError, ValueError, KeyError, TypeError, zlib.error) as exc:
        logger.warning("cannot read the review file %s: %s", source, exc)
        return None


def attach_review(layer_data: tuple, labels_path: str | os.PathLike) -> None:
    """Put the review state saved next to ``labels_path`` into a napari layer data tuple
    ``(data, kwargs, "labels")`` made by the reader."""
    data, kwargs = layer_data[0], layer_data[1]
    state = load_review(labels_path, np.asarray(data))
    if state is not None:
        kwargs.setdefault("metadata", {})[REVIEW_KEY] = state
