"""Edit tracking: which objects of a Labels layer the user reviewed, the annotated mask that
Fine-tune uses by default, and the review state saved next to a labels file."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_unet._napari.files.reader import read_layers
from napari_unet._napari.files.writer import write_labels
from napari_unet._napari.finetune.training_data import REVIEWED, NotAnnotated, collect_inputs
from napari_unet._napari.review import edits as _edits
from napari_unet._napari.review.edits import accept_objects, review_mask, sidecar_path, track


def objects() -> np.ndarray:
    """(60, 80) labels with four square objects 1-4, 16 px apart."""
    labels = np.zeros((60, 80), np.int32)
    for i, x in enumerate((4, 22, 40, 58)):
        labels[20:32, x : x + 12] = i + 1
    return labels


@pytest.fixture
def layer():
    layer = Labels(objects(), name="cells labels")
    track(layer)
    return layer


def test_painting_through_data_setitem_marks_the_object_reviewed(layer):
    assert not review_mask(layer).mask.any()
    # the user grows object 2 by a column, as napari's tools write: data_setitem
    layer.data_setitem((np.arange(20, 32), np.full(12, 34)), 2)
    review = review_mask(layer)
    assert _edits.review_state(layer)["touched"] == {2}
    assert review.objects == 1 and review.corrected
    assert review.mask[layer.data == 2].all()
    for untouched in (1, 3, 4):
        assert not review.mask[layer.data == untouched].any()


def test_brush_and_fill_are_tracked(layer):
    layer.paint((26, 14), 1)  # the brush grows object 1
    layer.fill((26, 46), 9)  # object 3 relabelled
    state = _edits.review_state(layer)
    assert state["touched"] == {1, 3, 9}
    review = review_mask(layer)
    assert review.mask[layer.data == 1].all() and review.mask[layer.data == 9].all()
    assert not review.mask[layer.data == 2].any() and not review.mask[layer.data == 4].any()


def test_default_mask_keeps_reviewed_objects_deletions_and_a_margin_only(layer):
    image = Image(np.random.default_rng(0).random((60, 80)), name="cells")
    layer.data_setitem(np.nonzero(layer.data == 4), 0)  # object 4 deleted: reviewed background
    accept_objects(layer, [1])  # object 1 accepted as it is
    layer.data_setitem((np.array([25]), np.array([34])), 2)  # object 2 touched
    (item,), skipped = collect_inputs([(image, layer)], REVIEWED)
    mask = item.mask
    assert skipped == []
    assert mask[objects() == 4].all() and not item.labels[objects() == 4].any()
    assert mask[item.labels == 1].all() and mask[item.labels == 2].all()
    assert not mask[item.labels == 3].any()  # untouched: never trained on
    # a background margin around the reviewed objects, not the whole image
    assert mask[20:32, 16].all() and mask[15, 10] and not mask[0, 0]
    assert 0 < mask.mean() < 0.6


def test_replacing_the_data_starts_a_new_review(layer):
    layer.data_setitem((np.array([25]), np.array([34])), 2)
    layer.data = objects()  # what Segment does when it runs again
    assert not review_mask(layer).mask.any()


def test_no_correction_is_refused_with_a_reason(layer):
    image = Image(np.zeros((60, 80)), name="cells")
    with pytest.raises(NotAnnotated, match="No object of 'cells labels' was corrected"):
        collect_inputs([(image, layer)], REVIEWED)
    accept_objects(layer, [1, 2])
    with pytest.raises(NotAnnotated, match=r"accepted 2 objects .* but corrected none"):
        collect_inputs([(image, layer)], REVIEWED)


def test_a_layer_painted_from_scratch_counts_its_painted_area(make_napari_viewer):
    viewer = make_napari_viewer()
    _edits.watch_viewer(viewer)
    layer = viewer.add_labels(np.zeros((60, 80), np.uint16), name="new")  # added afterwards
    layer.brush_size = 6
    layer.paint((30, 40), 1)
    review = review_mask(layer)
    painted = layer.data == 1
    assert painted.any() and review.mask[painted].all()
    assert review.mask.sum() > painted.sum()  # and its surroundings, as background
    assert not review.mask[0, 0]


def test_review_survives_save_and_reopen(layer, tmp_path):
    layer.data_setitem(np.nonzero(layer.data == 4), 0)
    layer.data_setitem((np.array([25]), np.array([34])), 2)
    accept_objects(layer, [1])
    path = tmp_path / "cells_labels.tif"
    (written,) = write_labels(
        str(path), layer.data, {"metadata": layer.metadata, "scale": (1.0, 1.0)}
    )
    assert sidecar_path(written).is_file()
    data, kwargs, kind = read_layers(written)[0]
    assert kind == "labels"
    reopened = Labels(data, **kwargs)
    assert np.array_equal(review_mask(reopened).mask, review_mask(layer).mask)
    assert review_mask(reopened).accepted == 1
    # labels changed elsewhere since: the review file no longer describes them
    changed = np.array(data)
    changed[0, 0] = 7
    assert _edits.load_review(written, changed) is None
    # saving labels with nothing reviewed removes a stale review file
    write_labels(str(path), layer.data, {"metadata": {}, "scale": (1.0, 1.0)})
    assert not sidecar_path(written).exists()


def test_stack_edits_count_in_their_plane(tmp_path):
    stack = np.stack([objects()] * 3)
    layer = Labels(stack.copy())
    track(layer)
    layer.data_setitem((np.array([1]), np.array([25]), np.array([34])), 2)
    mask = review_mask(layer).mask
    assert mask[1][stack[1] == 2].all()
    assert not mask[0].any() and not mask[2].any()
