"""Review ranks the objects Segment just made from Segment's own probabilities, without running the
network again, and predicts anew when the image or the model changed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from napari.layers import Labels

import napari_unet
from napari_unet._napari.review.widget import ReviewWidget, rank_job
from napari_unet.core.io.reading import read_image
from napari_unet.core.network.model import UNet
from napari_unet.core.network.registry import get_model
from napari_unet.core.network.weights import save_model
from napari_unet.core.progress import drain

SAMPLES = Path(napari_unet.__file__).parent / "samples"
TIMEOUT = 60_000


@pytest.fixture
def forwards():
    """Counts the forward passes of every napari-unet network, in any thread."""
    calls = {"n": 0}

    def hook(module, args, output):
        if isinstance(module, UNet):
            calls["n"] += 1

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield calls
    handle.remove()


@pytest.fixture
def crop():
    """A (128, 128) uint16 crop of the shipped 2D sample."""
    return np.ascontiguousarray(read_image(SAMPLES / "nuclei.tif").data[:128, :128])


def segmented(segment, qtbot, crop, model="starter"):
    """(viewer, image layer, labels layer) after Segment ran ``model`` on ``crop``."""
    viewer, widget = segment
    image = viewer.add_image(crop, name="nuclei")
    qtbot.waitUntil(lambda: widget.ready, timeout=TIMEOUT)
    widget.refresh_models(select=model)
    widget.select_image(image)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
    labels = [layer for layer in viewer.layers if isinstance(layer, Labels)][-1]
    return viewer, image, labels


def review_of(viewer, labels) -> ReviewWidget:
    review = ReviewWidget(viewer)
    review.labels_layer.value = labels  # takes the image and the model Segment recorded
    return review


def ranking(queue):
    return [(item.kind, item.ident) for item in queue.items], [item.quality for item in queue.items]


def test_ranking_after_segment_runs_no_network_and_ranks_the_same(segment, qtbot, crop,
                                                                  forwards):  # fmt: skip
    viewer, image, labels = segmented(segment, qtbot, crop)
    assert forwards["n"] > 0  # the counter sees Segment's passes
    review = review_of(viewer, labels)
    assert review.image_layer.value is image and review.model_name.value == "starter"
    forwards["n"] = 0
    assert review.rank() is None  # no background job: ranked at once
    assert forwards["n"] == 0 and review.queue is not None
    assert "from Segment's probabilities" in review.status.value
    order, quality = ranking(review.queue)
    assert len(order) > 5

    # the same ranking as a fresh pass of the network
    probs, _ = drain(rank_job(crop, "YX", "starter", np.asarray(labels.data), False))
    assert forwards["n"] > 0
    fresh_order, fresh_quality = ranking(ReviewWidget(viewer).set_probabilities(labels, probs))
    assert fresh_order == order
    np.testing.assert_allclose(fresh_quality, quality, atol=1e-4)

    # edits of the labels keep the probabilities valid: still no pass
    labels.data_setitem(np.nonzero(np.asarray(labels.data) == order[-1][1]), 0)
    forwards["n"] = 0
    assert review.rank() is None and forwards["n"] == 0


def test_another_model_or_image_predicts_again(segment, qtbot, crop, forwards, isolated_models):
    viewer, image, labels = segmented(segment, qtbot, crop)
    starter = get_model("starter")
    save_model(isolated_models / "other.safetensors", starter.model, starter.metadata)
    review = review_of(viewer, labels)
    review.model_name.value = "other"  # the same weights, but not the file Segment ran
    forwards["n"] = 0
    job = review.rank()
    assert job is not None
    qtbot.waitUntil(lambda: review.job is None, timeout=TIMEOUT)
    assert forwards["n"] > 0 and review.queue is not None

    review.model_name.value = "starter"
    image.data = np.ascontiguousarray(crop[::-1])  # the image changed since Segment ran
    forwards["n"] = 0
    assert review.rank() is not None
    qtbot.waitUntil(lambda: review.job is None, timeout=TIMEOUT)
    assert forwards["n"] > 0


def test_a_model_file_changed_since_segment_predicts_again(segment, qtbot, crop, forwards,
                                                           isolated_models):  # fmt: skip
    starter = get_model("starter")
    path = save_model(isolated_models / "mine.safetensors", starter.model, starter.metadata)
    viewer, _, labels = segmented(segment, qtbot, crop, model="mine")
    review = review_of(viewer, labels)
    assert review.model_name.value == "mine"
    forwards["n"] = 0
    assert review.rank() is None and forwards["n"] == 0
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # e.g. fine-tuned again
    assert review.rank() is not None
    qtbot.waitUntil(lambda: review.job is None, timeout=TIMEOUT)
    assert forwards["n"] > 0


def test_test_time_augmentation_reuses_the_probabilities_and_runs_only_its_passes(
    segment, qtbot, crop, forwards
):
    viewer, _, labels = segmented(segment, qtbot, crop)
    review = review_of(viewer, labels)
    review.tta.value = True
    forwards["n"] = 0
    assert review.rank() is not None
    qtbot.waitUntil(lambda: review.job is None, timeout=TIMEOUT)
    with_reuse = forwards["n"]
    assert review._quality.agreement is not None
    forwards["n"] = 0
    drain(rank_job(np.asarray(viewer.layers["nuclei"].data), "YX", "starter",
                   np.asarray(labels.data), True))  # fmt: skip
    assert 0 < with_reuse < forwards["n"]  # one pass fewer than predicting everything


def test_ranking_with_augmentation_predicts_the_image_and_its_copies_on_one_predictor(crop):
    labels = np.ascontiguousarray(read_image(SAMPLES / "nuclei_labels.tif").data[:128, :128])
    networks = set()

    def hook(module, args):
        if isinstance(module, UNet):
            networks.add(id(module))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        probs, agreement = drain(rank_job(crop, "YX", "starter", labels, True))
    finally:
        handle.remove()
    assert probs.shape == (3, 128, 128) and agreement is not None
    assert len(networks) == 1  # the image and its flipped copies: one predictor
