"""What the Segment widget decides and runs, without a viewer: axes, planes, names, models, jobs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_unet
from napari_unet._napari.files.layer_info import layer_axes
from napari_unet._napari.segment.job import (
    Kept,
    PlaneLabels,
    ProbabilityStore,
    SegmentRequest,
    rethreshold_job,
    segment_job,
)
from napari_unet._napari.segment.logic import (
    build_postprocess,
    build_tiling,
    channel_problem,
    count_text,
    error_message,
    fingerprint,
    full_resolution,
    labels_geometry,
    labels_name,
    merge_plane,
    plane_region,
    select_plane,
    written_by_us,
)
from napari_unet._napari.segment.models import ModelList, model_summary, model_tiling
from napari_unet.core.axes import Layout
from napari_unet.core.config import ModelConfig, TilingConfig
from napari_unet.core.errors import Hint, InputMismatchError, ModelFileError, UserError
from napari_unet.core.inference.events import PlaneDone, TileBatchDone
from napari_unet.core.inference.postprocess import PostprocessConfig, labels_from_probabilities
from napari_unet.core.inference.predict import predict_probabilities
from napari_unet.core.io import reading
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.model import build_model
from napari_unet.core.network.registry import get_model
from napari_unet.core.network.weights import save_model
from napari_unet.core.progress import drain

SAMPLES = Path(napari_unet.__file__).parent / "samples"
TINY = ModelConfig(depth=2, base_channels=4)


def test_axes_from_metadata_or_inferred():
    def image_axes(metadata, ndim, rgb=False):
        return layer_axes(ndim, metadata, rgb)

    assert image_axes({"axes": "tyx"}, 3) == "TYX"
    assert image_axes({"axes": "ZYX"}, 4) == "TZYX"  # metadata that does not fit is ignored
    assert image_axes(None, 2) == "YX" and image_axes({}, 3) == "ZYX"
    assert image_axes(None, 3, rgb=True) == "YXS" and image_axes(None, 4, rgb=True) == "ZYXS"
    assert image_axes({"axes": "CYX"}, 3) == "CYX"
    with pytest.raises(InputMismatchError):
        image_axes(None, 7)


def test_plane_index_select_plane_and_region():
    def plane_index(axes, shape, position):
        layout = Layout(axes, shape)
        return dict(zip(layout.leading_axes, layout.leading_at(position, clip=True), strict=True))

    data = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # T, C, Y, X
    index = plane_index("TCYX", data.shape, (1.4, 2.0, 0.0, 0.0))
    assert index == {"T": 1}
    assert plane_index("TCYX", data.shape, (9.0, 0, 0, 0)) == {"T": 1}  # clipped
    assert plane_index("TCYX", data.shape, (-3.0, 0, 0, 0)) == {"T": 0}
    plane, axes = select_plane(data, "TCYX", index)
    assert axes == "CYX" and plane.shape == (3, 4, 5)
    np.testing.assert_array_equal(plane, data[1])
    assert Layout("TCYX", data.shape).label_shape == (2, 4, 5)
    assert plane_region("TYX", index) == (1, slice(None), slice(None))
    rgb = np.zeros((3, 4, 5, 3))  # Z, Y, X, S: three layer dimensions
    assert plane_index("ZYXS", rgb.shape, (2.2, 0, 0)) == {"Z": 2}


def test_geometry_drops_the_channel_dimension_and_names_are_unique():
    scale, translate = labels_geometry("ZCYX", (2.0, 1.0, 0.5, 0.25), (5, 0, 1, 2))
    assert scale == (2.0, 0.5, 0.25) and translate == (5.0, 1.0, 2.0)
    assert labels_geometry("YXS", (3, 4), (1, 2)) == ((3.0, 4.0), (1.0, 2.0))
    assert labels_name("cells", "starter", []) == "cells labels [starter]"
    taken = ["cells labels [starter]", "cells labels [starter] (2)"]
    assert labels_name("cells", "starter", taken) == "cells labels [starter] (3)"


def test_merge_plane_keeps_ids_unique_and_grows_the_dtype():
    stack = np.zeros((3, 4, 4), np.uint16)
    stack[0, 0, 0] = 5
    plane = np.array([[0, 1], [2, 2]], np.uint16).repeat(2, 0).repeat(2, 1)
    merged = merge_plane(stack, (2, slice(None), slice(None)), plane)
    assert merged is stack and set(np.unique(merged[2])) == {0, 6, 7}
    again = merge_plane(stack, (2, slice(None), slice(None)), plane)  # the plane's old ids go
    assert set(np.unique(again[2])) == {0, 6, 7}
    classes = merge_plane(np.zeros((2, 4, 4), np.uint8), (1, slice(None), slice(None)),
                          plane.astype(np.uint8), instances=False)  # fmt: skip
    np.testing.assert_array_equal(classes[1], plane)
    big = np.zeros((2, 4, 4), np.uint16)
    big[0, 0, 0] = 65_535
    grown = merge_plane(big, (1, slice(None), slice(None)), plane)
    assert grown.dtype == np.uint32 and grown[1].max() == 65_537


def test_channel_problems_are_explained():
    assert channel_problem("YX", (8, 8), 1, "a", "m") is None
    assert channel_problem("YXS", (8, 8, 3), 1, "a", "m") is None  # RGB runs as gray
    assert channel_problem("YXS", (8, 8, 4), 3, "a", "m") is None  # alpha dropped
    text = channel_problem("CYX", (2, 8, 8), 1, "two", "starter")
    assert text.startswith("'two' has 2 channels (axes CYX, shape (2, 8, 8))")
    assert "'starter' expects 1" in text
    assert "has 1 channel " in channel_problem("YX", (8, 8), 2, "one", "m")


def test_fingerprint_tells_edits_apart():
    data = np.zeros((4, 5), np.uint16)
    metadata = {"napari_unet": {"fingerprint": fingerprint(data)}}
    assert written_by_us(metadata, data)
    data[1, 1] = 3
    assert not written_by_us(metadata, data)
    assert not written_by_us({}, data) and not written_by_us(None, data)
    assert fingerprint(data.astype(np.uint32)) != fingerprint(data)


def test_settings_from_widget_values():
    base = TilingConfig(tile_size=1024, halo=40, batch_size=1, exact=True)
    assert build_tiling(base, 256, 3) == TilingConfig(256, 40, 3, True)
    config = build_postprocess("instances", 0.6, 0.4, 20, 5, 1.0)
    assert config == PostprocessConfig("instances", 0.6, 0.4, 20, 5, 1.0)
    assert build_postprocess("semantic", 0.5, 0.5, 0).mode == "semantic"
    with pytest.raises(ValueError):
        build_postprocess("instances", 1.5, 0.5, 0)


def test_messages_for_counts_and_errors():
    assert count_text(np.array([[0, 1], [2, 3]]), "instances") == "3 objects"
    assert count_text(np.array([[0, 1]]), "instances") == "1 object"
    assert count_text(np.array([[0, 2], [2, 0]]), "semantic") == "1 class"
    assert error_message(ModelFileError("m.safetensors: corrupt"), "X") == "m.safetensors: corrupt"
    # a hint is worded for the widget, not with a command-line flag
    no_gpu = UserError("Device 'cuda' is not available: no GPU.", hint=Hint("device", "cpu"))
    assert error_message(no_gpu, "X") == (
        "Device 'cuda' is not available: no GPU; choose the cpu device under Advanced settings"
    )
    assert "ran out of memory" in error_message(MemoryError(), "Segmentation")
    assert error_message(KeyError("k"), "Segmentation") == (
        "Segmentation failed (KeyError: 'k'). Details are in the log."
    )


def test_model_list_summary_and_tiling(isolated_models, tmp_path):
    model = build_model(TINY, seed=0)
    meta = new_metadata(TINY, name="mine", parent="starter", metrics={"ap_50": 0.81234})
    save_model(isolated_models / "mine.safetensors", model, meta)
    (isolated_models / "broken.safetensors").write_bytes(b"nope")
    models = ModelList()
    choices = models.refresh()
    assert [(c.name, c.source) for c in choices] == [
        ("starter", "built-in"), ("broken", "user"), ("mine", "user")
    ]  # fmt: skip
    assert models.default().name == "starter"
    mine = models.find("mine")
    assert model_summary(mine) == (
        "mine · instances · 1 channel · from starter · AP50 0.81 on "
        "held-out blocks of its own training data"
    )
    broken = models.find("broken")
    assert broken.error and broken.label == "broken - cannot be read"
    assert model_summary(broken).startswith("broken: ")
    assert (
        model_tiling(mine, "cpu").tile_size == 1024 and model_tiling(mine, "cuda").batch_size == 4
    )
    with pytest.raises(ModelFileError, match=r"broken\.safetensors"):
        models.load_file(isolated_models / "broken.safetensors")
    with pytest.raises(UserError, match="does not exist"):
        models.load_file(tmp_path / "missing.safetensors")
    other = save_model(tmp_path / "other.safetensors", model, new_metadata(TINY))
    picked = models.load_file(other)
    assert picked.source == "file" and models.loaded(picked) is not None
    assert [c.name for c in models.refresh()][-1] == "other"
    models.load_file(isolated_models / "mine.safetensors")  # in the user folder: listed once
    assert [c.name for c in models.refresh()].count("mine") == 1


def test_segment_job_gives_planes_in_order_then_what_core_gives():
    image = reading.read_image(SAMPLES / "nuclei_stack.tif").data[:3, :128, :128]
    starter = get_model("starter")
    request = SegmentRequest(image, "TYX", starter.path, starter, None, PostprocessConfig())
    gen = segment_job(request)
    events = []
    result = drain(gen, events.append)
    planes = [e.payload for e in events if isinstance(e.payload, PlaneLabels)]
    assert [p.index for p in planes] == [0, 1, 2]
    for plane in planes:  # each plane comes right after the engine finished that plane
        position = next(i for i, e in enumerate(events) if e.payload is plane)
        assert events[position - 1].payload == PlaneDone(plane.index, 3)
        assert isinstance(events[position - 2].payload, TileBatchDone)
        assert events[position - 2].payload.plane == plane.index
    # what core gives, in the float16 that Segment keeps
    probs = drain(predict_probabilities(image, "TYX", starter, device="cpu", dtype=np.float16))
    np.testing.assert_array_equal(result.probabilities, probs)
    expected = labels_from_probabilities(probs, "instances")
    np.testing.assert_array_equal(result.labels, expected)
    assert expected.max() > 5
    for plane in planes:
        np.testing.assert_array_equal(plane.labels, expected[plane.index])
    relabelled = drain(rethreshold_job(probs, "instances", PostprocessConfig(min_size=200)))
    assert relabelled.max() < expected.max()


def test_segment_job_loads_the_model_file_and_reports_channel_errors(tmp_path):
    path = save_model(tmp_path / "t.safetensors", build_model(TINY, seed=0), new_metadata(TINY))
    image = np.random.default_rng(0).random((2, 24, 20)).astype(np.float32)
    request = SegmentRequest(image, "CYX", path, None, None, PostprocessConfig())
    with pytest.raises(InputMismatchError, match="2 channels"):
        drain(segment_job(request))
    plane = SegmentRequest(image[0], "YX", path, None, TilingConfig(8, 4, 2), PostprocessConfig())
    result = drain(segment_job(plane))
    assert result.labels.shape == (24, 20) and result.probabilities.shape == (3, 24, 20)
    assert result.model.path == path


def test_probability_store_keeps_the_last_runs_within_a_budget():
    def kept(n_bytes):
        return Kept(np.zeros(n_bytes // 4, np.float32), "instances", "layer", None, "m", (1,))

    store = ProbabilityStore(capacity=2, max_bytes=1000)
    store.put(("a", 1), kept(400))
    store.put(("b", 1), kept(400))
    assert store.get(("a", 1)) is not None  # now the most recent
    store.put(("c", 1), kept(400))
    assert store.get(("b", 1)) is None and len(store) == 2
    store.put(("d", 1), kept(800))  # over the byte budget: only the newest stays
    assert len(store) == 1 and store.get(("d", 1)) is not None
    store.put(("d", 2), kept(4000))  # too large alone, but the last run is always kept
    store.drop_image("d")
    assert len(store) == 0


def test_full_resolution_of_plain_and_multiscale_layers():
    from napari.layers import Image

    pyramid = [np.zeros((64, 48)), np.zeros((32, 24))]
    assert full_resolution(Image(pyramid, multiscale=True)).shape == (64, 48)
    assert full_resolution(Image(np.zeros((5, 8, 8)))).shape == (5, 8, 8)
