"""What Segment keeps for re-thresholding: float16 probabilities (6 bytes per pixel for 3 classes),
from which labels come out as the run made them, and as float32 probabilities make them within
the documented tolerance (see ``napari_unet._napari.segment.job``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_unet
from napari_unet._napari.segment.job import (
    KEPT_DTYPE,
    SegmentRequest,
    rethreshold_job,
    segment_job,
)
from napari_unet.core.analysis.metrics import match
from napari_unet.core.inference.engine import InferenceEngine
from napari_unet.core.inference.postprocess import PostprocessConfig, labels_from_probabilities
from napari_unet.core.io.reading import read_image
from napari_unet.core.network.registry import get_model, resolve_model
from napari_unet.core.progress import drain

SAMPLES = Path(napari_unet.__file__).parent / "samples"


@pytest.fixture(scope="module")
def sample():
    """(image (512, 512) uint16, starter model, the Segment job's result) for the shipped sample."""
    image = read_image(SAMPLES / "nuclei.tif").data
    model = get_model(None)
    request = SegmentRequest(image, "YX", Path(resolve_model(None)), model, None,
                             PostprocessConfig(), device="cpu")  # fmt: skip
    return image, model, drain(segment_job(request))


def test_segment_keeps_float16_probabilities_of_6_bytes_per_pixel(sample):
    image, _, result = sample
    kept = result.probabilities
    assert kept.dtype == KEPT_DTYPE == np.float16
    assert kept.shape == (3, *image.shape)
    assert kept.nbytes == 6 * image.size  # half of float32's 12
    np.testing.assert_allclose(kept.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)


def test_rethresholding_with_the_same_settings_gives_the_labels_of_the_run(sample):
    _, _, result = sample
    again = drain(rethreshold_job(result.probabilities, "instances", PostprocessConfig()))
    np.testing.assert_array_equal(again, result.labels)


@pytest.mark.parametrize("interior", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("foreground", [0.3, 0.7])
def test_rethresholding_the_kept_probabilities_matches_float32_within_the_tolerance(
    sample, interior, foreground
):
    image, model, result = sample
    full = drain(InferenceEngine(model, device="cpu").predict_image(image, "YX"))
    assert full.dtype == np.float32
    np.testing.assert_array_equal(result.probabilities, full.astype(np.float16))  # rounded once
    config = PostprocessConfig(interior_threshold=interior, foreground_threshold=foreground)
    kept = drain(rethreshold_job(result.probabilities, "instances", config))
    exact = labels_from_probabilities(full, "instances", config)
    scores = match(kept, exact, 0.5)
    assert kept.max() == exact.max() > 100
    assert scores.tp == scores.n_true == scores.n_pred  # every object matched at IoU 0.5
    assert np.count_nonzero(kept != exact) <= 1e-4 * image.size
    assert scores.mean_matched_iou >= 0.999
