"""The Review widget: the objects of a Labels layer, worst first, one key to accept or delete each.

"Rank objects" takes the class probabilities Segment computed when it made the layer with that
model from that image (:mod:`.reuse`: instant, no network pass); else it runs the model (the one
Segment recorded for the layer, else the name typed in the Model box) on the image once more, in
the background. It estimates each object's quality (the chance that it is right,
:mod:`napari_unet.core.analysis.quality`) from the class probabilities, with test-time
augmentation when ticked (three more network passes). Regions the network calls
foreground but that carry no label join the queue as possible misses.

Next / Previous (keys ``n`` / ``Shift-N`` on the labels layer) centre and zoom the camera on the
item and select its label; ``a`` accepts the current object, ``d`` deletes it, and Ctrl-click
deletes the object under the mouse (in pan/zoom or pick mode). What was accepted is recorded in
``layer.metadata["napari_unet_review"]["accepted"]`` (sorted ids); deletions go through
``Labels.data_setitem``, so napari's undo and the edit tracking see them. The quality and the
class probabilities can be shown as image layers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, PushButton, Select
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning

from napari_unet.core.analysis.review import MISS, Item, ReviewQueue, build_queue
from napari_unet.core.errors import UserError
from napari_unet.core.progress import Progress

from ..files.layer_info import layer_layout
from ..layout import fit_in_dock
from ..segment.logic import METADATA_KEY, full_resolution
from . import reuse
from .edits import accept_objects, touched_ids, watch_viewer

if TYPE_CHECKING:
    import napari

    from napari_unet.core.analysis.quality import QualityResult

    from ..jobs.workers import Job

logger = logging.getLogger(__name__)

QUALITY_KEY = "napari_unet_quality"
CLASS_NAMES = ("background", "interior", "boundary")
#: Share of the smaller canvas side that the object's bounding box fills after a move.
ZOOM_FILL = 0.12


def delete_objects(layer: Labels, ids: Iterable[int]) -> int:
    """Set the pixels of objects ``ids`` to 0 through ``layer.data_setitem`` (one undoable step
    per object); returns the number of pixels changed."""
    data = np.asarray(full_resolution(layer))
    changed = 0
    for ident in ids:
        indices = np.nonzero(data == int(ident))
        if indices[0].size:
            layer.data_setitem(indices, 0)
            changed += int(indices[0].size)
    return changed


def rank_job(
    image: Any,
    axes: str,
    model_name: str,
    labels: np.ndarray,
    tta: bool,
    probs: np.ndarray | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray | None]]:
    """Probabilities of ``image`` by the model ``model_name`` (and the TTA agreement of the
    objects of ``labels``): returns (float16 (3, *labels.shape), float64 (N,) or None); float16
    as Segment keeps them, so that a fresh pass ranks exactly as Segment's probabilities do.

    ``probs``: probabilities already computed (by Segment) for this image and model: the network
    then runs only for the test-time augmentation."""
    from napari_unet.core.analysis.quality import tta_agreement
    from napari_unet.core.inference.engine import InferenceEngine
    from napari_unet.core.network.registry import get_model

    model = get_model(model_name or None)
    if model.task != "instances" or model.config.out_classes != 3:
        raise UserError(f"Review needs an instance model; '{model.name}' gives semantic classes.")
    # one engine (one predictor) for the image and its flipped copies; none when nothing runs
    engine = InferenceEngine(model) if probs is None or tta else None
    if probs is None and engine is not None:
        probs = yield from engine.predict_image(np.asarray(image), axes, dtype=np.float16)
    if probs.shape[1:] != labels.shape:
        raise UserError(
            f"The image gives probabilities of shape {probs.shape[1:]} but the labels "
            f"have shape {labels.shape}: choose the image they were made from."
        )
    agreement = None
    if tta and engine is not None:
        agreement = yield from tta_agreement(np.asarray(image), axes, engine, labels)
    return probs, agreement


def _camera_and_canvas(viewer: Any) -> tuple[Any, tuple[float, float]]:
    """The viewer's camera and its canvas size in screen pixels (napari 0.5 to 0.9+)."""
    scene = getattr(viewer, "scene", None)
    camera = scene.camera if scene is not None else viewer.camera
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None) if canvas is not None else None
    if not size or min(size) <= 0:
        size = (600, 800)
    return camera, (float(size[0]), float(size[1]))


def _line(item: Item, status: str | None) -> str:
    """The list line of ``item``: ``"#12  quality 0.23"``, then what was done with it
    (``"(accepted)"``, ``"(deleted)"``, ``"(painted)"``, ``"(seen)"``)."""
    if status is None:
        return item.describe()
    return f"{item.describe()}  ({'painted' if status == 'edited' else status})"


class ReviewWidget(Container):
    """Rank the objects of a Labels layer by quality and review them one by one."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.job: Job | None = None
        self.queue: ReviewQueue | None = None
        self.probabilities: np.ndarray | None = None
        self._quality: QualityResult | None = None
        self._layer: Labels | None = None
        self._marked: dict[int, str] = {}  # the item statuses the list lines show
        watch_viewer(viewer)  # the review keys, the brush and Ctrl-click are edits to follow
        self.labels_layer = ComboBox(label="Labels", choices=self._labels_choices)
        self.image_layer = ComboBox(label="Image", choices=self._image_choices)
        self.model_name = LineEdit(label="Model", value="starter")
        self.tta = CheckBox(text="Test-time augmentation (3 more passes)", value=False)
        self.rank_button = PushButton(text="Rank objects")
        self.items = Select(label="Worst first", choices=self._item_choices, allow_multiple=False)
        self.previous_button = PushButton(text="Previous (Shift-N)")
        self.next_button = PushButton(text="Next (N)")
        self.accept_button = PushButton(text="Accept (A)")
        self.delete_button = PushButton(text="Delete (D)")
        self.counts = Label(value="")
        self.quality_button = PushButton(text="Show quality layer")
        self.probs_button = PushButton(text="Show probabilities")
        self.status = Label(value="")
        moves = Container(
            widgets=[self.previous_button, self.next_button], layout="horizontal", labels=False
        )
        edits = Container(
            widgets=[self.accept_button, self.delete_button], layout="horizontal", labels=False
        )
        shows = Container(
            widgets=[self.quality_button, self.probs_button], layout="horizontal", labels=False
        )
        super().__init__(widgets=[self.labels_layer, self.image_layer, self.model_name, self.tta,
                                  self.rank_button, self.items, moves, edits, self.counts, shows,
                                  self.status])  # fmt: skip
        self.items.native.setMinimumHeight(160)
        self.rank_button.changed.connect(self.rank)
        self.next_button.changed.connect(self.next)
        self.previous_button.changed.connect(self.previous)
        self.accept_button.changed.connect(self.accept)
        self.delete_button.changed.connect(self.delete)
        self.quality_button.changed.connect(self.show_quality)
        self.probs_button.changed.connect(self.show_probabilities)
        self.items.changed.connect(self._on_item_chosen)
        self.labels_layer.changed.connect(self._on_labels_changed)
        viewer.layers.events.inserted.connect(self._refresh_choices)
        viewer.layers.events.removed.connect(self._refresh_choices)
        self._on_labels_changed(self.labels_layer.value)
        fit_in_dock(self)  # beside the canvas on a laptop screen; messages wrap

    # --- choices -----------------------------------------------------------------------------

    def _labels_choices(self, _: Any = None) -> list[tuple[str, Labels]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _image_choices(self, _: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and not layer.metadata.get(QUALITY_KEY)]  # fmt: skip

    def _item_choices(self, _: Any = None) -> list[tuple[str, int]]:
        if self.queue is None:
            return []
        status = self.queue.status
        self._marked = dict(status)
        return [(_line(item, status.get(i)), i) for i, item in enumerate(self.queue.items)]

    def _mark_lines(self) -> None:
        """Write what was done (accepted, deleted, ...) on the list lines whose item changed."""
        if self.queue is None:
            return
        status, native = self.queue.status, self.items.native
        for index in {*status, *self._marked}:
            if status.get(index) != self._marked.get(index) and index < native.count():
                native.item(index).setText(_line(self.queue.items[index], status.get(index)))
        self._marked = dict(status)

    def _refresh_choices(self, _: Any = None) -> None:
        self.labels_layer.reset_choices()
        self.image_layer.reset_choices()

    def _on_labels_changed(self, layer: Labels | None) -> None:
        record = (layer.metadata or {}).get(METADATA_KEY) if layer is not None else None
        if isinstance(record, dict):
            if record.get("model"):
                self.model_name.value = str(record["model"])
            for _, image in self._image_choices():
                if record.get("image") in (image.name, image.unique_id):
                    self.image_layer.value = image

    # --- ranking -----------------------------------------------------------------------------

    def rank(self, _: Any = None) -> Job | None:
        """Fill the queue: from Segment's probabilities when they are still right (at once;
        returns ``None``), else by running the model on the image in the background (returns
        the job)."""
        from ..jobs.workers import start_job

        layer, image = self.labels_layer.value, self.image_layer.value
        if layer is None or image is None:
            show_warning("Choose a Labels layer and the image it was made from.")
            return None
        if self.job is not None and self.job.running:
            return self.job
        data = full_resolution(image)
        try:
            axes = layer_layout(image).axes
        except UserError as exc:
            show_warning(str(exc))
            return None
        labels = np.array(full_resolution(layer))
        model = self.model_name.value.strip()
        known = reuse.find(layer, image, model)  # Segment's, when still right: no network pass
        if known is not None and not self.tta.value:
            self.set_probabilities(layer, known)
            self.status.value += " (from Segment's probabilities)"
            return None
        self.status.value = "Ranking objects..."
        self.rank_button.enabled = False
        self.job = start_job(
            rank_job(data, axes, model, labels, self.tta.value, known),
            f"Ranking the objects of {layer.name}",
            on_result=lambda result: self.set_probabilities(layer, *result),
            on_error=self._failed, on_finished=self._finished,
        )  # fmt: skip
        return self.job

    def set_probabilities(
        self, layer: Labels, probs: np.ndarray, agreement: np.ndarray | None = None
    ) -> ReviewQueue:
        """Rank the objects of ``layer`` from ``probs`` (float16 or float32 (3, *layer shape))
        and go to the worst one; returns the queue."""
        from napari_unet.core.analysis.object_table import is_volume
        from napari_unet.core.analysis.objects import likely_misses
        from napari_unet.core.analysis.quality import object_quality

        labels = np.asarray(full_resolution(layer))
        axes = "Z" * (labels.ndim - 2) + "YX"
        spatial = 3 if labels.ndim == 3 and is_volume(labels, axes) else 2
        ids = np.unique(labels)
        if agreement is not None and len(agreement) != int((ids > 0).sum()):
            agreement = None  # the labels changed since the run
        result = object_quality(probs, labels, agreement, spatial_ndim=spatial)
        misses = likely_misses(probs, labels, spatial_ndim=spatial)
        self._attach(layer)
        self.probabilities = probs
        self.queue = build_queue(labels, result, misses)
        layer.metadata[QUALITY_KEY] = {
            "ids": result.ids.tolist(),
            "quality": [round(float(q), 4) for q in result.quality],
        }
        self._quality = result
        with self.items.changed.blocked():
            self.items.reset_choices()
        self.status.value = (f"{len(result.ids)} objects, {len(misses)} possible misses; worst "
                             "first.")  # fmt: skip
        self.next()
        return self.queue

    def _failed(self, exc: BaseException) -> None:
        if not isinstance(exc, UserError):
            logger.error("ranking failed", exc_info=exc)
        show_error(f"Ranking failed: {exc}")
        self.status.value = "Ranking failed."

    def _finished(self) -> None:
        self.job = None
        self.rank_button.enabled = True

    def _attach(self, layer: Labels) -> None:
        """Bind the review keys and Ctrl-click to ``layer`` (and release the previous one)."""
        if self._layer is not None and self._layer is not layer:
            self._detach()
        self._layer = layer
        bindings = {"n": self.next, "Shift-N": self.previous, "a": self.accept,
                    "d": self.delete}  # fmt: skip
        for key, action in bindings.items():
            layer.bind_key(key, lambda _layer, action=action: action(), overwrite=True)
        if self._on_click not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.append(self._on_click)

    def _detach(self) -> None:
        layer = self._layer
        if layer is None:
            return
        for key in ("n", "Shift-N", "a", "d"):
            layer.bind_key(key, None)
        if self._on_click in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_click)
        self._layer = None

    # --- moving ------------------------------------------------------------------------------

    def next(self, _: Any = None) -> Item | None:
        """Go to the next item not reviewed yet."""
        if self.queue is None:
            return None
        edited = touched_ids(self._layer) if self._layer is not None else set()
        item = self.queue.next(edited=edited)
        if item is None:
            self.status.value = "Every object was reviewed."
        return self._show(item)

    def previous(self, _: Any = None) -> Item | None:
        """Go back to the item before the current one."""
        return self._show(self.queue.previous()) if self.queue is not None else None

    def _on_item_chosen(self, value: Any) -> None:
        if self.queue is None or value is None or value == []:
            return
        index = value[0] if isinstance(value, (list, tuple)) else value
        if index is not None and index != self.queue.position:
            self._show(self.queue.go(index))

    def _show(self, item: Item | None) -> Item | None:
        self._update_counts()
        if item is None or self._layer is None:
            return item
        layer = self._layer
        world = np.asarray(layer.data_to_world(item.centroid), dtype=float)
        extent = np.asarray(item.extent, float) * np.abs(np.asarray(layer.scale, float))
        displayed = list(self.viewer.dims.displayed)
        for axis in range(self.viewer.dims.ndim):
            if axis not in displayed and axis < len(world):
                self.viewer.dims.set_point(axis, world[axis])
        camera, canvas = _camera_and_canvas(self.viewer)
        camera.center = tuple(world[displayed])
        size = max(float(extent[displayed].max()), 1.0)
        camera.zoom = ZOOM_FILL * min(canvas) / size
        if item.kind != MISS:
            layer.selected_label = item.ident
        with self.items.changed.blocked():
            self.items.value = self.queue.position if self.queue is not None else None
        return item

    def _update_counts(self) -> None:
        self._mark_lines()
        if self.queue is None:
            self.counts.value = ""
            return
        c = self.queue.counts()
        edited = f", {c['edited']} corrected by painting" if c["edited"] else ""
        self.counts.value = (
            f"{c['reviewed']} reviewed ({c['accepted']} accepted, {c['deleted']} deleted"
            f"{edited}), {c['remaining']} to go"
        )

    # --- decisions ---------------------------------------------------------------------------

    def accept(self, _: Any = None) -> Item | None:
        """Accept the current object (a miss: mark it seen) and go to the next item."""
        return self._decide(accept_objects, "accepted")

    def delete(self, _: Any = None) -> Item | None:
        """Delete the current object (set its pixels to 0) and go to the next item."""
        return self._decide(delete_objects, "deleted")

    def _decide(self, act: Callable[[Labels, list[int]], object], status: str) -> Item | None:
        """Apply ``act`` to the current object (a miss is only marked seen), record ``status``
        in the queue and go to the next item."""
        item = self.queue.current if self.queue is not None else None
        if item is None or self._layer is None:
            return None
        if item.kind == MISS:
            self.queue.mark("seen")
        else:
            act(self._layer, [item.ident])
            self.queue.mark(status)
        return self.next()

    def delete_at(self, position: Any) -> int:
        """Delete the object under the world ``position``; returns its id (0: none there)."""
        layer = self._layer
        if layer is None:
            return 0
        value = layer.get_value(position, world=True)
        ident = int(value) if value is not None and np.isscalar(value) else 0
        if ident:
            delete_objects(layer, [ident])
            index = self.queue.index_of(ident) if self.queue is not None else None
            if index is not None:
                self.queue.mark("deleted", index)
            self._update_counts()
        return ident

    def _on_click(self, layer: Labels, event: Any) -> None:
        if "Control" in event.modifiers and layer.mode in ("pan_zoom", "pick"):
            self.delete_at(event.position)

    # --- layers ------------------------------------------------------------------------------

    def show_quality(self, _: Any = None) -> Image | None:
        """Add (or refresh) an image layer with each object's quality on its pixels."""
        from napari_unet.core.analysis.quality import quality_map

        if self.queue is None or self._layer is None:
            show_info("Rank the objects first.")
            return None
        data = quality_map(np.asarray(full_resolution(self._layer)), self._quality)
        name = f"{self._layer.name} quality"
        if name in self.viewer.layers:
            self.viewer.layers[name].data = data
            return self.viewer.layers[name]
        return self.viewer.add_image(
            data, name=name, colormap="inferno", contrast_limits=(0.0, 1.0), opacity=0.6,
            scale=self._layer.scale, translate=self._layer.translate, units=self._layer.units,
            metadata={QUALITY_KEY: True},
        )  # fmt: skip

    def show_probabilities(self, _: Any = None) -> list[Image]:
        """Add one image layer per class probability (background, interior, boundary)."""
        if self.probabilities is None or self._layer is None:
            show_info("Rank the objects first.")
            return []
        added = []
        for k, name in enumerate(CLASS_NAMES[: self.probabilities.shape[0]]):
            title = f"{self._layer.name} p({name})"
            if title in self.viewer.layers:
                self.viewer.layers[title].data = self.probabilities[k]
                added.append(self.viewer.layers[title])
                continue
            added.append(self.viewer.add_image(
                self.probabilities[k], name=title, colormap="gray", contrast_limits=(0.0, 1.0),
                blending="additive", visible=k == 1, scale=self._layer.scale,
                translate=self._layer.translate, units=self._layer.units,
                metadata={QUALITY_KEY: True},
            ))  # fmt: skip
        return added
