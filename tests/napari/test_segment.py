"""The Segment widget in a real viewer: opened through the manifest, run on real images."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import Qt

import napari_unet
from napari_unet._napari.segment.job import PlaneLabels
from napari_unet.core.config import ModelConfig, TilingConfig
from napari_unet.core.inference.postprocess import PostprocessConfig, labels_from_probabilities
from napari_unet.core.inference.predict import predict_probabilities
from napari_unet.core.io import reading, writing
from napari_unet.core.labels import ids_per_time_point
from napari_unet.core.network.device import Predictor
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.model import build_model
from napari_unet.core.network.registry import get_model
from napari_unet.core.network.weights import save_model
from napari_unet.core.progress import drain

SAMPLES = Path(napari_unet.__file__).parent / "samples"
TINY = ModelConfig(depth=2, base_channels=4)
TIMEOUT = 60_000


@pytest.fixture
def calls(monkeypatch):
    """Counts the network's forward passes (each batch of tiles goes through Predictor); set
    ``["sleep"]`` to slow each one down, ``["fail"]`` to an exception to raise it."""
    counter = {"n": 0, "sleep": 0.0, "fail": None}
    original = Predictor.__call__

    def counting(self, batch):
        counter["n"] += 1
        time.sleep(counter["sleep"])
        if counter["fail"] is not None:
            raise counter["fail"]
        return original(self, batch)

    monkeypatch.setattr(Predictor, "__call__", counting)
    return counter


@pytest.fixture
def stack():
    """A (5, 160, 160) uint16 time-lapse crop of the shipped sample stack."""
    return np.ascontiguousarray(
        reading.read_image(SAMPLES / "nuclei_stack.tif").data[:, :160, :160]
    )


@pytest.fixture
def crop():
    """A (128, 128) uint16 crop of the shipped 2D sample."""
    return np.ascontiguousarray(reading.read_image(SAMPLES / "nuclei.tif").data[:128, :128])


def wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)


def names(viewer):
    return [layer.name for layer in viewer.layers]


def notices():
    """Texts of the notifications shown so far."""
    return [str(n.message) for n in notification_manager.records]


def kept_labels(image: np.ndarray, axes: str) -> np.ndarray:
    """Labels as Segment makes them: from the float16 probabilities it keeps."""
    probs = drain(predict_probabilities(image, axes, get_model("starter"), device="cpu",
                                        dtype=np.float16))  # fmt: skip
    return labels_from_probabilities(probs, "instances")


def test_segments_the_sample_into_labels_with_the_image_geometry(segment, qtbot):
    viewer, widget = segment
    sample = reading.read_image(SAMPLES / "nuclei.tif")
    image = viewer.add_image(sample.data, name="nuclei", scale=(0.5, 0.5), translate=(10, -4))
    assert widget.image.value == image.unique_id
    assert widget.model.value.name == "starter"
    assert "starter" in widget.model_info.value and "instances" in widget.model_info.value
    assert widget.device_info.value.startswith("CPU")
    job = widget.run()
    assert job is not None and widget.busy and widget.run_button.text == "Cancel"
    wait(qtbot, widget)
    labels = viewer.layers["nuclei labels [starter]"]
    assert labels.data.shape == (512, 512) and labels.data.dtype == np.uint16
    expected = kept_labels(sample.data, "YX")
    np.testing.assert_array_equal(labels.data, expected)
    assert labels.data.max() > 20
    np.testing.assert_allclose(labels.scale, (0.5, 0.5))
    np.testing.assert_allclose(labels.translate, (10, -4))
    assert labels.metadata["axes"] == "YX"
    assert labels.metadata["napari_unet"]["model"] == "starter"
    assert widget.run_button.text == "Run"
    assert f"{labels.data.max()} objects" in widget.status.value


def test_this_plane_then_whole_stack_plane_by_plane(segment, qtbot, stack):
    viewer, widget = segment
    viewer.add_image(stack, name="movie", scale=(1, 0.5, 0.5), translate=(0, 3, 7),
                     metadata={"axes": "TYX", "pixel_size": (0.5, 0.5)})  # fmt: skip
    assert widget.scope.enabled
    viewer.dims.set_current_step(0, 3)
    widget.scope.value = "this plane"
    widget.run()
    wait(qtbot, widget)
    plane = viewer.layers["movie labels [starter]"]
    assert plane.data.shape == (5, 160, 160)
    np.testing.assert_allclose(plane.scale, (1, 0.5, 0.5))
    np.testing.assert_allclose(plane.translate, (0, 3, 7))
    assert plane.axis_labels == ("T", "Y", "X")
    expected = kept_labels(stack[3], "YX")
    np.testing.assert_array_equal(plane.data[3], expected)
    assert expected.max() > 3
    assert not plane.data[[0, 1, 2, 4]].any()

    widget.scope.value = "whole stack"
    job = widget.run()
    live = []

    def record(event):  # runs after the widget's own handler for the same event
        if isinstance(event.payload, PlaneLabels):
            layer = viewer.layers["movie labels [starter] (2)"]
            live.append((event.payload.index, bool(layer.data[event.payload.index].any())))

    job.worker.yielded.connect(record)
    wait(qtbot, widget)
    assert live == [(i, True) for i in range(5)]
    whole = viewer.layers["movie labels [starter] (2)"]
    expected = kept_labels(stack, "TYX")
    # a time-lapse's ids restart in each time point by default
    np.testing.assert_array_equal(whole.data, ids_per_time_point(expected, "TYX"))
    for frame in whole.data:
        assert set(np.unique(frame[frame > 0])) == set(range(1, int(frame.max()) + 1))
    assert whole.data.dtype == np.uint16 and whole.data.max() < expected.max()
    assert whole.metadata["axes"] == "TYX" and whole.metadata["pixel_size"] == (0.5, 0.5)
    np.testing.assert_allclose(whole.translate, (0, 3, 7))

    widget.ids.value = "stack"  # or unique across the time points
    widget.run()
    wait(qtbot, widget)
    unique = viewer.layers["movie labels [starter] (3)"]
    np.testing.assert_array_equal(unique.data, expected)
    assert len(np.unique(unique.data[unique.data > 0])) == unique.data.max()


def test_rethresholding_reuses_the_probabilities(segment, qtbot, crop, calls):
    viewer, widget = segment
    viewer.add_image(crop, name="cells")
    widget.run()
    wait(qtbot, widget)
    layer = viewer.layers["cells labels [starter]"]
    first = layer.data.copy()
    ran = calls["n"]
    assert ran >= 1

    widget.foreground_threshold.value = 0.95  # applied by itself after a short pause
    qtbot.waitUntil(lambda: not np.array_equal(layer.data, first), timeout=10_000)
    wait(qtbot, widget)
    widget.min_size.value = 150
    assert widget.apply_thresholds() is not None
    wait(qtbot, widget)
    assert calls["n"] == ran  # the network did not run again
    assert names(viewer) == ["cells", "cells labels [starter]"]
    probs = drain(predict_probabilities(crop, "YX", get_model("starter"), device="cpu"))
    config = PostprocessConfig(foreground_threshold=0.95, min_size=150)
    np.testing.assert_array_equal(layer.data, labels_from_probabilities(probs, "instances", config))
    assert layer.data.max() < first.max()


def test_rethresholding_asks_before_replacing_edits(segment, qtbot, crop, calls):
    viewer, widget = segment
    viewer.add_image(crop, name="cells")
    widget.run()
    wait(qtbot, widget)
    layer = viewer.layers["cells labels [starter]"]
    layer.paint((64, 64), 500)
    edited = layer.data.copy()
    asked = []
    widget.confirm = lambda message: asked.append(message) or False
    widget.min_size.value = 150
    assert widget.apply_thresholds(ask=False) is None  # the automatic path leaves edits alone
    assert widget.apply_thresholds() is None and len(asked) == 1
    assert "'cells labels [starter]' was edited" in asked[0]
    np.testing.assert_array_equal(layer.data, edited)


def test_cancel_leaves_no_half_layer_and_other_labels_untouched(segment, qtbot, stack, calls):
    viewer, widget = segment
    viewer.add_image(stack, name="movie", metadata={"axes": "TYX"})  # a time-lapse
    mine = viewer.add_labels(np.zeros((5, 160, 160), np.uint16), name="mine")
    mine.paint((2, 40, 40), 7)
    before = mine.data.copy()
    calls["sleep"] = 0.3
    widget.run()
    qtbot.waitUntil(lambda: "movie labels [starter]" in names(viewer), timeout=TIMEOUT)
    widget.cancel()
    wait(qtbot, widget)
    assert names(viewer) == ["movie", "mine"]
    np.testing.assert_array_equal(mine.data, before)
    assert "Segmentation cancelled; no labels were changed." in notices()

    widget.output.value = mine.unique_id  # replace, explicitly, then cancel with the button
    widget.confirm = lambda message: True
    widget.run_button.native.click()
    assert widget.busy and widget.run_button.text == "Cancel"
    qtbot.waitUntil(lambda: calls["n"] >= 1, timeout=TIMEOUT)
    qtbot.wait(600)  # longer than a double click
    widget.run_button.native.click()
    wait(qtbot, widget)
    np.testing.assert_array_equal(mine.data, before)
    assert names(viewer) == ["movie", "mine"] and widget.run_button.text == "Run"


def test_a_double_click_on_run_does_not_cancel_the_run(segment, qtbot, crop, calls):
    viewer, widget = segment
    viewer.add_image(crop, name="crop")
    calls["sleep"] = 0.2
    qtbot.mouseClick(widget.run_button.native, Qt.MouseButton.LeftButton)
    qtbot.mouseDClick(widget.run_button.native, Qt.MouseButton.LeftButton)
    widget.run_button.native.click()  # a third quick click, as a trembling hand does
    assert widget.busy and not widget.job.cancelled
    wait(qtbot, widget)
    assert "crop labels [starter]" in names(viewer)
    assert "Cancelled" not in widget.status.value


def test_edited_labels_go_to_a_new_layer_and_replace_asks(segment, qtbot, crop):
    viewer, widget = segment
    viewer.add_image(crop, name="cells")
    widget.run()
    wait(qtbot, widget)
    first = viewer.layers["cells labels [starter]"]
    result = first.data.copy()
    first.paint((10, 10), 900)  # the user corrects the labels
    edited = first.data.copy()
    widget.run()
    wait(qtbot, widget)
    assert names(viewer)[-1] == "cells labels [starter] (2)"
    np.testing.assert_array_equal(first.data, edited)

    asked = []
    widget.confirm = lambda message: asked.append(message) or False
    widget.output.value = first.unique_id
    assert widget.run() is None  # declined
    assert len(asked) == 1 and "'cells labels [starter]'" in asked[0]
    np.testing.assert_array_equal(first.data, edited)

    widget.confirm = lambda message: asked.append(message) or True
    widget.run()
    wait(qtbot, widget)
    np.testing.assert_array_equal(first.data, result)
    assert len(asked) == 2 and len(viewer.layers) == 3

    widget.run()  # the layer holds what Segment wrote: no question
    wait(qtbot, widget)
    assert len(asked) == 2 and len(viewer.layers) == 3


def test_replacing_one_plane_keeps_the_other_planes(segment, qtbot, stack):
    viewer, widget = segment
    viewer.add_image(stack, name="movie", metadata={"axes": "TYX"})  # a time-lapse
    mine = viewer.add_labels(np.zeros((5, 160, 160), np.uint16), name="mine")
    mine.paint((0, 40, 40), 3)
    widget.confirm = lambda message: True
    widget.output.value = mine.unique_id
    widget.scope.value = "this plane"
    viewer.dims.set_current_step(0, 2)
    widget.run()
    wait(qtbot, widget)
    assert mine.data[0, 40, 40] == 3 and mine.data[2].max() > 3
    # ids restart in this time point (per frame, the default)
    assert set(np.unique(mine.data[2])) == set(range(int(mine.data[2].max()) + 1))
    assert len(viewer.layers) == 2

    widget.ids.value = "stack"  # ids unique in the stack: offset past the other planes
    viewer.dims.set_current_step(0, 4)
    widget.run()
    wait(qtbot, widget)
    assert mine.data[0, 40, 40] == 3 and mine.data[4].max() > 3
    assert set(np.unique(mine.data[4])) & set(np.unique(mine.data[:4])) == {0}


def test_a_bad_model_file_gives_a_notification(segment, qtbot, tmp_path, isolated_models, crop):
    viewer, widget = segment
    viewer.add_image(crop, name="cells")
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a model")
    assert widget.load_model_file(bad) is None
    assert any("broken.safetensors" in text for text in notices())
    assert widget.model.value.name == "starter"

    (isolated_models / "junk.safetensors").write_bytes(b"\x00" * 16)
    widget.refresh_models(select="junk")
    assert widget.model.value.name == "junk" and "cannot be read" in widget.model.value.label
    assert widget.run() is None and not widget.busy
    assert "junk.safetensors" in notices()[-1]
    assert names(viewer) == ["cells"]


def test_wrong_channels_and_failures_are_notifications(segment, qtbot, crop, calls):
    viewer, widget = segment
    viewer.add_image(np.zeros((2, 64, 64), np.uint16), name="two", metadata={"axes": "CYX"})
    assert widget.run() is None
    assert "'two' has 2 channels" in notices()[-1] and "expects 1" in notices()[-1]

    image = viewer.add_image(crop, name="cells")
    widget.select_image(image)
    calls["fail"] = RuntimeError("boom")
    widget.run()
    wait(qtbot, widget)
    assert notices()[-1] == "Segmentation failed (RuntimeError: boom). Details are in the log."
    calls["fail"] = MemoryError()
    widget.run()
    wait(qtbot, widget)
    assert "ran out of memory" in notices()[-1]
    assert names(viewer) == ["two", "cells"] and widget.run_button.text == "Run"


def test_rgb_image_runs_as_gray(segment, qtbot, crop):
    viewer, widget = segment
    rgb = np.stack([crop // 256] * 3, axis=-1).astype(np.uint8)
    viewer.add_image(rgb, name="colour", rgb=True, scale=(2, 2))
    assert not widget.scope.enabled
    widget.run()
    wait(qtbot, widget)
    labels = viewer.layers["colour labels [starter]"]
    assert labels.data.shape == (128, 128) and labels.data.max() > 0
    np.testing.assert_allclose(labels.scale, (2, 2))


def test_new_user_models_are_listed_and_selected(segment, isolated_models, tmp_path):
    _, widget = segment
    model = build_model(TINY, seed=0)
    meta = new_metadata(TINY, name="mine-v1", parent="starter", metrics={"ap_50": 0.9},
                        tiling=TilingConfig(tile_size=128, batch_size=2))  # fmt: skip
    save_model(isolated_models / "mine-v1.safetensors", model, meta)
    widget.refresh_models(select="mine-v1")
    assert widget.model.value.name == "mine-v1" and widget.model.value.source == "user"
    assert "from starter" in widget.model_info.value and "AP50 0.90" in widget.model_info.value
    assert (widget.tile_size.value, widget.batch_size.value) == (128, 2)

    elsewhere = save_model(tmp_path / "other.safetensors", model, new_metadata(TINY))
    choice = widget.load_model_file(elsewhere)
    assert choice is not None and widget.model.value == choice
    assert widget.model.value.label == "other (file)"
    widget.refresh_models()  # files loaded stay listed, the selection stays
    assert widget.model.value == choice


def test_load_from_file_entry_asks_for_a_file(segment, tmp_path):
    _, widget = segment
    path = save_model(
        tmp_path / "picked.safetensors", build_model(TINY, seed=0), new_metadata(TINY)
    )
    widget.choose_model_file = lambda: None  # the dialog was closed: selection unchanged
    widget.model.value = "<load from file>"
    assert widget.model.value.name == "starter"
    widget.choose_model_file = lambda: str(path)
    widget.model.value = "<load from file>"
    assert widget.model.value.name == "picked" and widget.model.value.source == "file"
    assert "picked" in widget.model_info.value


def test_without_any_model_run_says_so(segment, no_builtin_models, crop):
    viewer, widget = segment
    widget.refresh_models()
    assert widget.model.value is None and widget.model_info.value == "No model."
    viewer.add_image(crop, name="cells")
    assert widget.run() is None and notices()[-1] == "Choose a model first."
    widget.choose_model_file = lambda: None
    widget.model.value = "<load from file>"  # closing the dialog leaves no model, no loop
    assert widget.model.value is None


def test_the_first_opening_loads_pytorch_in_the_background(
    make_napari_viewer, qtbot, isolated_models, monkeypatch, crop
):
    """In a viewer where PyTorch is not imported yet, the widget opens at once with Run
    disabled, and enables it (with the models listed) when the background import is done."""
    from napari_unet._napari.segment import engine as _segment_engine

    monkeypatch.setattr(_segment_engine, "engine_loaded", lambda: False)
    viewer = make_napari_viewer()
    viewer.add_image(crop, name="crop")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert not widget.ready and not widget.run_button.enabled
    assert widget.device_info.value == "Loading PyTorch..."
    assert widget.run() is None
    assert "still loading" in notices()[-1]
    qtbot.waitUntil(lambda: widget.ready, timeout=TIMEOUT)
    assert widget.run_button.enabled and widget.model.value.name == "starter"
    assert widget.device_info.value.startswith("CPU")
    assert widget.run() is not None
    wait(qtbot, widget)
    assert "crop labels [starter]" in names(viewer)


def test_pixel_size_field_calibrates_an_uncalibrated_image(segment, qtbot, crop, tmp_path):
    """An image without calibration shows 0; a typed size reaches the layer where the reader
    writes a file's calibration, and the labels made next take it."""
    viewer, widget = segment
    path = tmp_path / "plain.tif"
    writing.write_image(path, crop, "YX", None)
    [image] = viewer.open(path, plugin="napari-unet")
    assert image.metadata["pixel_size"] is None
    assert widget.pixel_size.value == 0
    widget.pixel_size.value = 0.65
    assert image.metadata["pixel_size"] == (0.65, 0.65)
    np.testing.assert_allclose(image.scale, (0.65, 0.65))
    assert tuple(str(u) for u in image.units) == ("micrometer", "micrometer")
    widget.run()
    wait(qtbot, widget)
    labels = viewer.layers["plain labels [starter]"]
    np.testing.assert_allclose(labels.scale, (0.65, 0.65))
    assert labels.metadata["pixel_size"] == (0.65, 0.65)
    # a calibrated image shows its own size
    calibrated = tmp_path / "calibrated.tif"
    writing.write_image(calibrated, crop, "YX", (0.25, 0.25))
    [other] = viewer.open(calibrated, plugin="napari-unet")
    widget.select_image(other)
    assert widget.pixel_size.value == pytest.approx(0.25)
