"""The Fine-tune widget and the review loop in a real viewer: what counts as annotated by
default, a fine-tune with no real correction, the annotated count before Train, layers opened
after the widget, the preview's units, and closing the panel or the viewer during training."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet._napari.finetune.training_data import WHOLE
from napari_unet._napari.finetune.widget import FinetuneWidget
from napari_unet._napari.review.edits import accept_objects, review_mask
from napari_unet._napari.segment.layers import mark_written
from napari_unet.core.config import ModelConfig
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.model import build_model
from napari_unet.core.network.weights import read_metadata, save_model
from napari_unet.core.synthetic.config import SyntheticConfig
from napari_unet.core.synthetic.images import make_image

TINY = ModelConfig(depth=2, base_channels=4)
TIMEOUT = 60_000


@pytest.fixture
def tiny(isolated_models):
    return save_model(
        isolated_models / "tiny.safetensors",
        build_model(TINY, seed=0),
        new_metadata(TINY, name="tiny"),
    )


@pytest.fixture
def loop(make_napari_viewer, tiny):
    """A viewer with an image and labels as Segment left them, and the Fine-tune widget."""
    viewer = make_napari_viewer()
    image, labels = make_image(
        SyntheticConfig(shape=(96, 96), radius=(6.0, 10.0), debris=0.0), seed=1, dtype=np.uint16
    )
    viewer.add_image(image, name="cells")
    layer = viewer.add_labels(labels.copy(), name="cells labels (tiny)")
    mark_written(layer, "tiny", "cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    assert isinstance(widget, FinetuneWidget)
    widget.backend = "thread"
    widget.refresh_models(select="tiny")
    widget.epochs.value, widget.steps_per_epoch.value = 2, 2
    widget.batch_size.value, widget.patch_size.value = 2, 64
    widget.confirm = lambda message: pytest.fail(f"unexpected question: {message}")
    yield viewer, widget, layer
    if widget.running:
        widget.stop()


def models(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_fine_tune_with_no_real_correction_says_so_and_changes_nothing(loop, isolated_models):
    _, widget, layer = loop
    assert "nothing yet" in widget.annotated_info.value
    widget.train()
    assert not widget.running
    assert "No object of 'cells labels (tiny)' was corrected" in widget.status.value
    assert "No model was trained" in widget.status.value
    accept_objects(layer, [1, 2])
    widget.train()
    assert not widget.running and "corrected none" in widget.status.value
    widget.rule.value = WHOLE  # the whole layer, as Segment wrote it
    widget.train()
    assert not widget.running and "unedited output" in widget.status.value
    assert "Finished" not in widget.status.value
    assert models(isolated_models) == ["tiny.safetensors"]


def test_painting_counts_and_trains_on_the_reviewed_objects_only(loop, qtbot, isolated_models):
    _, widget, layer = loop
    ids = [i for i in np.unique(layer.data) if i]
    target = ids[0]
    ys, xs = np.nonzero(layer.data == target)
    layer.data_setitem((ys[:5], xs[:5]), 0)  # the user erases a bit of one object
    assert widget.annotated_info.value.startswith("annotated: 1 object,")
    assert "under 20 objects fine-tuning may not help yet" in widget.annotated_info.value
    expected = int(review_mask(layer).mask.sum())
    widget.train()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    settings = read_metadata(isolated_models / "tiny-tuned.safetensors")["provenance"]["settings"]
    assert settings["training_pixels"] == expected < layer.data.size // 2


def test_layers_opened_after_the_widget_are_picked_up(make_napari_viewer, tiny):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    assert widget.pairs == [(None, None)]
    image = viewer.add_image(np.zeros((64, 64), np.uint16), name="late")
    labels = viewer.add_labels(np.zeros((64, 64), np.uint16), name="late labels")
    assert widget.pairs == [(image, labels)]


def test_preview_layers_take_the_image_scale_and_units(loop):
    viewer, widget, layer = loop
    image = viewer.layers["cells"]
    image.scale = (0.25, 0.25)
    image.units = ("um", "um")
    layer.scale = (0.25, 0.25)
    widget.rule.value = WHOLE
    layer.data_setitem((np.array([0]), np.array([0])), 1)
    added = widget.preview_augmentation()
    assert added
    for preview in added:
        assert tuple(preview.scale) == (0.25, 0.25)
        assert [str(u) for u in preview.units] == [str(u) for u in image.units]


def _long_run(widget) -> None:
    widget.rule.value = WHOLE
    widget._viewer.layers["cells labels (tiny)"].data_setitem((np.array([0]), np.array([0])), 1)
    widget.epochs.value = 10_000
    widget.train()
    assert widget.running


def test_closing_the_panel_during_training_asks_first(loop, qtbot):
    viewer, widget, _ = loop
    questions = []
    widget.confirm = lambda message: questions.append(message) or len(questions) > 1
    _long_run(widget)
    qtbot.waitUntil(lambda: len(widget.plot.losses) >= 1, timeout=TIMEOUT)
    viewer.window.remove_dock_widget(widget.native)
    qtbot.waitUntil(lambda: len(questions) == 1, timeout=TIMEOUT)
    # "No": training goes on and the panel is back, so the run stays reachable
    qtbot.waitUntil(lambda: widget.native.parent() is not None, timeout=TIMEOUT)
    assert widget.running and "Training is running" in questions[0]
    viewer.window.remove_dock_widget(widget.native)
    qtbot.waitUntil(lambda: len(questions) == 2, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)  # "Yes": stopped


def test_closing_the_viewer_stops_training(loop, qtbot):
    viewer, widget, _ = loop
    _long_run(widget)
    job = widget._job
    assert viewer.window._qt_window._window._task_status_manager.is_busy()
    viewer.window._qt_window._window._task_status_manager.cancel_all()  # what closing does
    qtbot.waitUntil(lambda: not job.running, timeout=TIMEOUT)
