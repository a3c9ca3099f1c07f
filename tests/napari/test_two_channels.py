"""Two single-channel layers as one model input (nucleus + cytoplasm): a tiny two-channel model
fine-tuned through the Fine-tune widget, then run by Segment on the same two layers."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image
from napari.utils.notifications import notification_manager
from scipy import ndimage as ndi

from napari_unet._napari.files.channels import stack_channels
from napari_unet._napari.finetune.job import scratch_channels
from napari_unet._napari.finetune.training_data import WHOLE, collect_inputs
from napari_unet._napari.finetune.widget import FinetuneWidget
from napari_unet._napari.segment.widget import SegmentWidget
from napari_unet.core.config import ModelConfig
from napari_unet.core.errors import UserError
from napari_unet.core.network.model import build_model
from napari_unet.core.network.weights import new_metadata, read_metadata, save_model
from napari_unet.core.synthetic.images import SyntheticConfig, make_image

TWO = ModelConfig(in_channels=2, depth=2, base_channels=4)
TIMEOUT = 120_000


@pytest.fixture
def pair():
    """A nucleus image, a cytoplasm image around the nuclei (uint16, 96 x 96) and the labels."""
    nuclei, labels = make_image(
        SyntheticConfig(shape=(96, 96), radius=(6.0, 10.0), debris=0.0), seed=3, dtype=np.uint16
    )
    cells = ndi.grey_dilation(labels, size=(7, 7)) > 0
    rng = np.random.default_rng(0)
    cyto = ndi.gaussian_filter(cells.astype(float), 2) * 800 + rng.normal(100, 10, cells.shape)
    return nuclei, cyto.clip(0, 65535).astype(np.uint16), labels


@pytest.fixture
def two_channel_base(isolated_models):
    return save_model(
        isolated_models / "two.safetensors", build_model(TWO, seed=0), new_metadata(TWO, name="two")
    )


def notices() -> list[str]:
    return [str(n.message) for n in notification_manager.records]


def test_a_two_channel_model_trains_and_segments_on_two_layers(
    make_napari_viewer, qtbot, pair, two_channel_base, isolated_models
):
    viewer = make_napari_viewer()
    nuclei, cyto, truth = pair
    first = viewer.add_image(nuclei, name="nuclei", scale=(0.5, 0.5))
    second = viewer.add_image(cyto, name="cytoplasm", scale=(0.5, 0.5))
    labels = viewer.add_labels(truth.copy(), name="nuclei labels")

    _, tune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    assert isinstance(tune, FinetuneWidget)
    tune.backend = "thread"
    tune.refresh_models(select="two")
    row = tune.pair_rows[0]
    row.image.value, row.labels_layer.value = first, labels
    assert row.second.value is None  # none by default
    row.second.value = second
    assert tune.second_channels == [second]
    tune.rule.value = WHOLE
    tune.epochs.value, tune.steps_per_epoch.value = 1, 2
    tune.batch_size.value, tune.patch_size.value = 2, 64
    tune.model_name.value = "two-tuned"
    tune.confirm = lambda message: pytest.fail(f"unexpected question: {message}")
    tune.train()
    assert tune.running
    qtbot.waitUntil(lambda: not tune.running, timeout=TIMEOUT)
    out = isolated_models / "two-tuned.safetensors"
    assert out.exists(), tune.status.value
    meta = read_metadata(out)
    assert meta["in_channels"] == 2 and meta["config"]["in_channels"] == 2

    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert isinstance(segment, SegmentWidget)
    qtbot.waitUntil(lambda: segment.ready, timeout=TIMEOUT)
    segment.refresh_models(select="two-tuned")
    segment.precision.value = "fp32"
    segment.select_image(first)  # one layer for a two-channel model: refused, and why
    assert segment.run() is None and not segment.busy
    assert "expects 2" in notices()[-1] and "Second channel" in notices()[-1]

    segment.select_image(first, second)
    assert segment.run() is not None
    qtbot.waitUntil(lambda: not segment.busy, timeout=TIMEOUT)
    result = viewer.layers["nuclei labels [two-tuned]"]
    assert result.data.shape == nuclei.shape and result.data.dtype == np.uint16
    np.testing.assert_allclose(result.scale, (0.5, 0.5))

    segment.refresh_models(select="starter")  # a one-channel model with two layers: refused
    assert segment.run() is None
    assert "'nuclei + cytoplasm' has 2 channels" in notices()[-1] and "expects 1" in notices()[-1]


def test_second_channels_stack_as_c_and_mismatches_are_refused(pair):
    nuclei, cyto, truth = pair
    first, second = Image(nuclei, name="nuclei"), Image(cyto, name="cytoplasm")
    data, axes = stack_channels([first, second])
    assert axes == "CYX" and data.shape == (2, 96, 96) and data.dtype == np.uint16
    np.testing.assert_array_equal(data[1], cyto)
    movie = [Image(np.stack([nuclei] * 3), name=n, metadata={"axes": "TYX"}) for n in "ab"]
    assert stack_channels(movie)[1] == "TCYX" and stack_channels(movie)[0].shape == (3, 2, 96, 96)
    with pytest.raises(UserError, match="does not match"):
        stack_channels([first, Image(cyto[:64], name="small")])
    with pytest.raises(UserError, match="twice"):
        stack_channels([first, first])
    with pytest.raises(UserError, match="channels already"):
        stack_channels([first, Image(np.stack([cyto, cyto]), name="cc", metadata={"axes": "CYX"})])

    from napari.layers import Labels

    labels = Labels(truth, name="labels")
    inputs, _ = collect_inputs([(first, labels)], WHOLE, None, [second])
    assert inputs[0].axes == "CYX" and inputs[0].image.shape == (2, 96, 96)
    assert scratch_channels(inputs[0]) == 2  # a new network takes both channels
    single, _ = collect_inputs([(first, labels)], WHOLE)
    assert single[0].axes == "YX" and scratch_channels(single[0]) == 1
