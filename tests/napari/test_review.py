"""The Review widget in a real viewer: ranking, moving the camera, accepting and deleting."""

import numpy as np
import pytest
from napari.utils.key_bindings import KeymapHandler

from napari_unet._napari.review.widget import ReviewWidget, accept_objects, delete_objects
from napari_unet.core.analysis.review import MISS


def _disc(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _scene(shape=(120, 160)):
    """Labels with three objects, probabilities where object 2 is doubtful and an unlabelled
    foreground blob (a likely miss)."""
    probs = np.zeros((3, *shape), np.float32)
    probs[0], probs[1], probs[2] = 0.97, 0.02, 0.01
    labels = np.zeros(shape, np.uint16)
    for ident, centre, sure in ((1, (25, 30), True), (2, (80, 120), False), (3, (30, 120), True)):
        disc = _disc(shape, centre, 9)
        probs[:, disc] = (
            np.array([[0.02], [0.95], [0.03]]) if sure else np.array([[0.42], [0.38], [0.2]])
        )
        labels[disc] = ident
    probs[:, _disc(shape, (90, 30), 8)] = np.array([[0.05], [0.9], [0.05]])  # no label there
    return labels, probs


def _press(layer, key):
    handler = KeymapHandler()
    handler.keymap_providers = [layer]
    handler.press_key(key)
    handler.release_key(key)


@pytest.fixture
def review(make_napari_viewer):
    viewer = make_napari_viewer()
    labels, probs = _scene()
    viewer.add_image(np.random.default_rng(0).random(labels.shape).astype(np.float32), name="img")
    layer = viewer.add_labels(labels, name="cells", scale=(0.5, 0.5))
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Review")
    assert isinstance(widget, ReviewWidget)
    assert widget.labels_layer.value is layer
    return viewer, widget, layer, probs


def test_worst_first_and_next_moves_the_camera(review):
    viewer, widget, layer, probs = review
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (0.0, 0.0)
    camera.zoom = 1.0
    queue = widget.set_probabilities(layer, probs)
    kinds = [(item.kind, item.ident) for item in queue.items]
    assert kinds[:2] == [(MISS, 1), ("object", 2)]  # the unlabelled blob, then the doubtful one
    # the widget went to the first item: the miss at (90, 30) in data = (45, 15) in world
    np.testing.assert_allclose(camera.center[-2:], (45.0, 15.0), atol=0.3)
    assert camera.zoom > 1.0
    item = widget.next()
    assert (item.kind, item.ident) == ("object", 2)
    np.testing.assert_allclose(camera.center[-2:], (40.0, 60.0), atol=0.3)
    assert layer.selected_label == 2
    widget.previous()
    np.testing.assert_allclose(camera.center[-2:], (45.0, 15.0), atol=0.3)
    assert layer.metadata["napari_unet_quality"]["ids"] == [1, 2, 3]
    assert "0 reviewed" in widget.counts.value and "4 to go" in widget.counts.value


def test_keys_accept_and_delete(review):
    _viewer, widget, layer, probs = review
    widget.set_probabilities(layer, probs)
    widget.next()  # object 2
    _press(layer, "a")
    assert layer.metadata["napari_unet_review"]["accepted"] == [2]
    assert widget.queue.current.ident in (1, 3) and layer.selected_label in (1, 3)
    target = widget.queue.current.ident
    _press(layer, "d")
    assert not (layer.data == target).any()
    assert (layer.data == 2).any()
    assert "2 reviewed (1 accepted, 1 deleted)" in widget.counts.value
    lines = [widget.items.native.item(i).text() for i in range(len(widget.queue.items))]
    assert lines[widget.queue.index_of(2)].endswith("(accepted)")
    assert lines[widget.queue.index_of(target)].endswith("(deleted)")
    layer.undo()  # the deletion went through napari's history
    assert (layer.data == target).any()
    _press(layer, "Shift-N")
    assert widget.queue.position >= 0


def test_ctrl_click_deletes_the_object_under_the_mouse(review):
    _viewer, widget, layer, probs = review
    widget.set_probabilities(layer, probs)
    assert widget.delete_at((12.5, 15.0)) == 1  # world coordinates of (25, 30)
    assert not (layer.data == 1).any()
    assert widget.delete_at((1.0, 1.0)) == 0
    assert "1 deleted" in widget.counts.value


def test_quality_and_probability_layers(review):
    _viewer, widget, layer, probs = review
    widget.set_probabilities(layer, probs)
    quality = widget.show_quality()
    assert quality.data.shape == layer.data.shape
    assert np.isnan(quality.data[0, 0])
    assert quality.data[80, 120] < quality.data[25, 30]
    added = widget.show_probabilities()
    assert [a.name for a in added] == [
        "cells p(background)",
        "cells p(interior)",
        "cells p(boundary)",
    ]
    np.testing.assert_array_equal(added[1].data, probs[1])
    widget.reset_choices()  # what napari does when layers are added
    assert widget.next() is not None
    assert widget.items.value == [widget.queue.position]
    assert tuple(added[1].scale) == (0.5, 0.5)
    assert "img" in [name for name, _ in widget._image_choices()]
    assert "cells quality" not in [name for name, _ in widget._image_choices()]


def test_accept_and_delete_helpers_keep_the_contract(make_napari_viewer):
    viewer = make_napari_viewer()
    labels = np.zeros((20, 20), np.uint16)
    labels[2:5, 2:5], labels[10:15, 10:15] = 4, 7
    layer = viewer.add_labels(labels)
    assert accept_objects(layer, [7, 4]) == [4, 7]
    assert accept_objects(layer, [np.int64(4), 9]) == [4, 7, 9]
    assert all(type(i) is int for i in layer.metadata["napari_unet_review"]["accepted"])
    seen = []
    layer.events.paint.connect(lambda event: seen.append(event))
    assert delete_objects(layer, [7]) == 25
    assert not (layer.data == 7).any() and seen


def test_rank_runs_the_model_in_the_background(make_napari_viewer, qtbot):
    from dataclasses import replace

    from napari_unet.core.inference.postprocess import labels_from_probabilities
    from napari_unet.core.inference.predict import predict_probabilities
    from napari_unet.core.network.registry import get_model
    from napari_unet.core.progress import drain
    from napari_unet.core.synthetic.config import SAMPLE_CONFIG
    from napari_unet.core.synthetic.images import make_image

    viewer = make_napari_viewer()
    image, _ = make_image(replace(SAMPLE_CONFIG, shape=(96, 96)), 0)
    probs = drain(predict_probabilities(image, "YX", get_model(None), device="cpu"))
    labels = labels_from_probabilities(probs, "instances")
    viewer.add_image(image, name="raw")
    layer = viewer.add_labels(labels, name="raw labels")
    widget = ReviewWidget(viewer)
    widget.image_layer.value = viewer.layers["raw"]
    widget.tta.value = True
    job = widget.rank()
    assert job is not None
    qtbot.waitUntil(lambda: widget.queue is not None and widget.job is None, timeout=60_000)
    assert widget.queue.counts()["objects"] == len(np.unique(labels)) - 1
    assert widget._quality.agreement is not None  # test-time augmentation was used
    assert layer.metadata["napari_unet_quality"]["ids"] == np.unique(labels)[1:].tolist()
    assert layer.selected_label == widget.queue.current.ident or widget.queue.current.kind == MISS


def test_keys_follow_the_layer_under_review(review):
    viewer, widget, layer, probs = review
    other = viewer.add_labels(layer.data.copy(), name="other")
    widget.set_probabilities(layer, probs)
    widget.set_probabilities(other, probs)
    before = widget.queue.position
    _press(layer, "n")  # no longer bound on the first layer
    assert widget.queue.position == before
    _press(other, "n")
    assert widget.queue.position != before


def test_next_goes_to_the_plane_of_the_object_in_a_stack(make_napari_viewer):
    viewer = make_napari_viewer()
    labels2d, probs2d = _scene((60, 80))
    labels = np.zeros((3, 60, 80), np.uint16)
    labels[2] = labels2d == 1  # one object, in the last plane
    probs = np.zeros((3, 3, 60, 80), np.float32)
    probs[0], probs[1], probs[2] = 0.97, 0.02, 0.01
    probs[:, 2] = probs2d  # the object (and the other objects of the scene: cut off) there
    layer = viewer.add_labels(labels, name="stack")
    viewer.dims.set_point(0, 0)
    widget = ReviewWidget(viewer)
    queue = widget.set_probabilities(layer, probs)
    assert queue.counts()["objects"] == 1
    assert viewer.dims.current_step[0] == 2
    assert queue.current.centroid[0] == 2


def test_next_skips_objects_the_user_already_painted_over(review):
    """Repainting a nucleus from one fragment covers the others: Next does not send the user
    back to an object whose pixels were changed, and the counts say so."""
    _viewer, widget, layer, probs = review
    queue = widget.set_probabilities(layer, probs)
    order = [item.ident for item in queue.items if item.kind == "object"]
    assert order[0] == 2  # the doubtful object comes before objects 1 and 3
    layer.data_setitem(np.nonzero(layer.data == order[1]), 9)  # repaint the second
    seen = [widget.next() for _ in range(2 * len(queue.items))]  # Next goes round
    objects = [item.ident for item in seen if item.kind == "object"]
    assert objects[0] == order[0] and order[1] not in objects
    assert queue.status[queue.index_of(order[1])] == "edited"
    assert "1 corrected by painting" in widget.counts.value
    lines = widget.items.native
    assert lines.item(queue.index_of(order[1])).text().endswith("(painted)")
    assert not lines.item(queue.index_of(order[0])).text().endswith(")")
