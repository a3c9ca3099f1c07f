"""The probabilities Segment just computed, offered to Review so that ranking needs no new pass.

Segment keeps the class probabilities of its last runs (``segment.job.ProbabilityStore``, for
re-thresholding). After a run it offers them here with :func:`offer`, under the key of its store:
(image layer ``unique_id``, ``id`` of the image's data, (model file, its modification time),
plane or stack). Only weak references are held: when Segment's store lets a run go (or the widget
is closed), the offer goes with it, so no probabilities are kept alive here.

:func:`find` gives Review the probabilities for its Labels layer when they are still right: the
run wrote that layer, the image layer and its data are the ones the run saw, the model named in
Review is the file the run used and that file has not changed since, and the probabilities cover
the whole layer. Edits of the labels do not matter: the probabilities belong to the image.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

from ..segment.logic import full_resolution

_OFFERS: dict[Hashable, weakref.ReferenceType] = {}


def offer(key: Hashable, kept: Any) -> None:
    """Offer the probabilities of a Segment run (``kept``: a ``segment.job.Kept``, which
    names the Labels layer it wrote) under Segment's store ``key``."""
    _prune()
    _OFFERS[key] = weakref.ref(kept)


def _prune() -> None:
    for key in [k for k, ref in _OFFERS.items() if ref() is None]:
        del _OFFERS[key]


def _model_file(name: str) -> tuple[str, int] | None:
    """(resolved path, modification time in ns) of the model ``name`` (a name or a file), or
    ``None`` when it cannot be found."""
    from napari_unet.core.errors import UserError
    from napari_unet.core.network.registry import resolve_model

    try:
        path = Path(resolve_model(name or None)).resolve()
        return str(path), path.stat().st_mtime_ns
    except (UserError, OSError):
        return None


def _same_model(recorded: tuple[str, int], name: str) -> bool:
    """Whether the model ``name`` is the file ``recorded`` = (path, mtime), unchanged."""
    path, mtime = recorded
    try:
        current = Path(path).resolve()
        unchanged = current.stat().st_mtime_ns == mtime
    except OSError:
        return False
    found = _model_file(name)
    return unchanged and found is not None and found[0] == str(current)


def find(labels_layer: Any, image_layer: Any, model_name: str) -> np.ndarray | None:
    """Segment's probabilities for ``labels_layer``, float16 (3, *labels shape), when they are
    still right for ``image_layer`` and the model ``model_name`` (see the module docstring);
    else ``None``."""
    _prune()
    data = full_resolution(image_layer)
    shape = tuple(np.shape(full_resolution(labels_layer)))
    for key, ref in list(_OFFERS.items()):
        kept = ref()
        if kept is None or kept.labels_layer != labels_layer.unique_id:
            continue
        if not (isinstance(key, tuple) and len(key) >= 3):
            continue
        image_id, data_id, model = key[0], key[1], key[2]
        if image_id != image_layer.unique_id or data_id != id(data):
            continue
        probs = kept.probabilities
        if kept.task != "instances" or probs.shape[0] != 3 or tuple(probs.shape[1:]) != shape:
            continue
        if _same_model(model, model_name):
            return probs
    return None
