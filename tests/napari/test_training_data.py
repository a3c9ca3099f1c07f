"""The Fine-tune widget's helpers without Qt: layers to training inputs, shapes to masks, the
training job, model names, augmentation presets, and the background-process protocol."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest
from napari.layers import Image, Labels, Shapes

from napari_unet._napari.files.layer_info import layer_layout
from napari_unet._napari.finetune.job import (
    BAR_STEPS,
    TrainingInput,
    TrainRequest,
    augment_config,
    check_model_name,
    free_name,
    preview_samples,
    training_job,
)
from napari_unet._napari.finetune.training_data import (
    PLANES,
    SHAPES,
    WHOLE,
    collect_inputs,
    matching_labels,
    shapes_mask,
    shown_plane_number,
)
from napari_unet._napari.jobs.background import ErrorReport, child_main
from napari_unet.core.config import ModelConfig
from napari_unet.core.errors import InputMismatchError, UserError
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.model import build_model
from napari_unet.core.network.registry import load_model
from napari_unet.core.network.weights import save_model
from napari_unet.core.progress import Progress, drain
from napari_unet.core.synthetic.config import SyntheticConfig
from napari_unet.core.synthetic.images import make_image
from napari_unet.core.training.data import training_pairs
from napari_unet.core.training.data3d import annotated_training_pairs
from napari_unet.core.training.settings import TrainConfig

TINY = ModelConfig(depth=2, base_channels=4)
SYNTH = SyntheticConfig(shape=(96, 96), radius=(6.0, 10.0), debris=0.0)


@pytest.fixture(scope="module")
def sample():
    return make_image(SYNTH, seed=1, dtype=np.uint16)


@pytest.fixture
def tiny_model(isolated_models):
    return save_model(
        isolated_models / "tiny.safetensors",
        build_model(TINY, seed=0),
        new_metadata(TINY, name="tiny"),
    )


# ------------------------------------------------------------------------------- layers


def test_axes_from_metadata_or_shape():
    def layer_axes(layer):
        return layer_layout(layer).axes

    assert layer_axes(Image(np.zeros((8, 9)))) == "YX"
    assert layer_axes(Image(np.zeros((3, 8, 9)))) == "ZYX"
    assert layer_axes(Image(np.zeros((2, 3, 8, 9)))) == "TZYX"
    assert layer_axes(Image(np.zeros((8, 9, 3), np.uint8), rgb=True)) == "YXS"
    assert layer_axes(Image(np.zeros((3, 8, 9)), metadata={"axes": "TYX"})) == "TYX"
    # metadata that does not fit the data is ignored
    assert layer_axes(Image(np.zeros((3, 8, 9)), metadata={"axes": "YX"})) == "ZYX"
    rgb = Image(np.zeros((8, 9, 3), np.uint8), rgb=True)
    assert layer_layout(rgb).label_shape == (8, 9)
    channels = Image(np.zeros((2, 8, 9)), metadata={"axes": "CYX"})
    assert layer_layout(channels).label_shape == (8, 9)


def test_matching_labels_and_plane_index():
    image = Image(np.zeros((4, 8, 9)), scale=(2, 1, 1))
    small, fits, also = (
        Labels(np.zeros((8, 9), int)),
        Labels(np.zeros((4, 8, 9), int)),
        Labels(np.zeros((4, 8, 9), int)),
    )
    assert matching_labels(image, [small, fits, also]) is also
    assert matching_labels(image, [small]) is None
    assert shown_plane_number(image, (4.0, 0.0, 0.0)) == 2  # world z 4 = plane 2 at scale 2
    assert shown_plane_number(image, (40.0, 0.0, 0.0)) is None
    assert shown_plane_number(Image(np.zeros((8, 9))), (0.0, 0.0)) == 0


def test_labels_are_copied_and_2d_is_annotated_everywhere(sample):
    image, labels = sample
    layer = Labels(labels.copy())
    inputs, skipped = collect_inputs([(Image(image), layer)], PLANES)
    assert skipped == [] and len(inputs) == 1
    item = inputs[0]
    assert item.mask is None and item.axes == "YX"
    layer.data[:] = 0  # painting after Train is pressed does not reach the run
    assert np.array_equal(item.labels, labels)


def test_repeated_pair_is_read_once(sample):
    image, labels = Image(sample[0]), Labels(sample[1])
    inputs, _ = collect_inputs([(image, labels), (image, labels)], WHOLE)
    assert len(inputs) == 1


def test_planes_with_labels_rule_on_a_stack(sample):
    image, labels = sample
    stack = np.stack([image] * 4)
    stack_labels = np.zeros_like(stack)
    stack_labels[1], stack_labels[3] = labels, labels
    inputs, _ = collect_inputs([(Image(stack), Labels(stack_labels))], PLANES)
    assert inputs[0].mask is None and inputs[0].axes == "ZYX"  # a volume (Z slices)
    pairs = annotated_training_pairs(inputs, None, TINY)
    names = [p.name.split(", ", 1)[-1] for p in pairs]
    assert [n for n in names if n.startswith("XY")] == ["XY, plane 2", "XY, plane 4"]
    # "whole layer": the unlabelled planes count as annotated background
    inputs, _ = collect_inputs([(Image(stack), Labels(stack_labels))], WHOLE)
    pairs = annotated_training_pairs(inputs, None, TINY)
    assert inputs[0].mask.all() and sum(p.name.count("XY") for p in pairs) == 4


def test_shapes_mask_2d_with_scale():
    labels = Labels(np.zeros((20, 30), int), scale=(0.5, 0.5))
    # the shapes layer is in world units (scale 1): a rectangle from (2, 3) to (5, 8) world
    shapes = Shapes([np.array([[2, 3], [2, 8], [5, 8], [5, 3]], float)], shape_type="rectangle")
    mask = shapes_mask(shapes, labels)
    expected = np.zeros((20, 30), bool)
    expected[4:11, 6:17] = True  # world (2..5, 3..8) = pixels (4..10, 6..16)
    assert mask.shape == (20, 30)
    assert np.array_equal(mask, expected)


def test_shapes_mask_per_plane_and_broadcast():
    labels = Labels(np.zeros((3, 10, 10), int))
    on_plane_1 = Shapes(
        [np.array([[1, 2, 2], [1, 2, 5], [1, 6, 5], [1, 6, 2]], float)], shape_type="rectangle"
    )
    mask = shapes_mask(on_plane_1, labels)
    assert mask[1, 2:7, 2:6].all() and mask.sum() == 20
    assert not mask[0].any() and not mask[2].any()
    drawn_in_2d = Shapes(
        [np.array([[0, 0], [0, 3], [3, 3], [3, 0]], float)], shape_type="rectangle"
    )
    mask = shapes_mask(drawn_in_2d, labels)
    assert mask.sum() == 3 * 16 and mask[:, :4, :4].all()
    lines = Shapes([np.array([[0, 0], [5, 5]], float)], shape_type="line")
    assert not shapes_mask(lines, labels).any()
    tilted = Shapes(
        [np.array([[0, 2, 2], [1, 2, 5], [1, 6, 5], [0, 6, 2]], float)], shape_type="polygon"
    )
    with pytest.raises(UserError, match="one YX plane"):
        shapes_mask(tilted, labels)


def test_shapes_rule_trains_only_inside_the_shapes(sample):
    image, labels = sample
    box = Shapes(
        [np.array([[10, 10], [10, 50], [60, 50], [60, 10]], float)], shape_type="rectangle"
    )
    outside = Shapes([np.array([[200, 200], [200, 220], [220, 220]], float)], shape_type="polygon")
    other = (Image(image, name="b"), Labels(labels, name="lb"))
    inputs, skipped = collect_inputs([(Image(image, name="a"), Labels(labels)), other], SHAPES, box)
    assert skipped == [] and len(inputs) == 2
    expected = np.zeros(labels.shape, bool)
    expected[10:61, 10:51] = True
    assert np.array_equal(inputs[0].mask, expected)
    pairs = training_pairs(inputs[:1], None, TINY)
    assert np.array_equal(pairs[0].targets.mask, expected)
    assert not pairs[0].targets.weights[~expected].any()
    with pytest.raises(UserError, match="covers the labels"):
        collect_inputs([other], SHAPES, outside)


@pytest.mark.parametrize(
    "case, message",
    [
        ("no pair", "at least one pair"),
        ("no labels", "Choose an image layer and a labels layer"),
        ("mismatch", "have shape"),
        ("all zero", "all zero"),
        ("no shapes layer", "Choose the Shapes layer"),
        ("background only", "holds an object"),
        ("bad rule", "Unknown annotation rule"),
    ],
)
def test_bad_inputs(sample, case, message):
    image, labels = Image(sample[0]), Labels(sample[1])
    empty = Labels(np.zeros_like(sample[1]))
    background = Shapes(
        [np.array([[0, 0], [0, 95], [95, 95], [95, 0]], float)], shape_type="rectangle"
    )
    calls = {
        "no pair": ([], PLANES, None),
        "no labels": ([(image, None)], PLANES, None),
        "mismatch": ([(image, Labels(sample[1][:50]))], PLANES, None),
        "all zero": ([(image, empty)], WHOLE, None),
        "no shapes layer": ([(image, labels)], SHAPES, None),
        "background only": ([(image, empty)], SHAPES, background),
        "bad rule": ([(image, labels)], "everything", None),
    }
    with pytest.raises(UserError, match=message) as info:
        collect_inputs(*calls[case])
    if case == "mismatch":
        assert isinstance(info.value, InputMismatchError)


# --------------------------------------------------------------------- names and presets


@pytest.mark.parametrize(
    "text, name",
    [
        ("my model", "my model"),
        (" nuclei-v2.safetensors ", "nuclei-v2"),
        ("a_b+c.1", "a_b+c.1"),
    ],
)
def test_model_names(text, name):
    assert check_model_name(text) == name


@pytest.mark.parametrize("text", ["", "  ", "../evil", "a/b", "-x", "x.", "a" * 101, "é?"])
def test_bad_model_names(text):
    with pytest.raises(UserError):
        check_model_name(text)


def test_free_name():
    assert free_name("m", []) == "m"
    assert free_name("m", ["M", "m-2"]) == "m-3"


def test_augment_presets():
    off, light, default, strong = (
        augment_config(level) for level in ("off", "light", "default", "strong")
    )
    assert off.strength == 0 and light.strength == 0.5 and default.strength == 1
    assert strong.elastic_std > default.elastic_std and strong.rotation > default.rotation
    assert not augment_config("default", elastic=False).elastic
    with pytest.raises(UserError):
        augment_config("extreme")


def test_preview_samples(sample):
    image, labels = sample
    stack = np.stack([image, image])
    stack_labels = np.stack([np.zeros_like(labels), labels])
    item = TrainingInput(stack, stack_labels, "ZYX")
    images, row = preview_samples(item, 1, augment_config("off"), plane=0, patch_size=64, n=3)
    gap = 4
    assert images.shape == (1, 64, 3 * (64 + gap)) and row.shape == (64, 3 * (64 + gap))
    assert row.dtype == labels.dtype
    # plane 0 has no labels: the annotated plane 1 is shown, unchanged at strength 0
    patch = row[:, :64]
    assert patch.any() and set(np.unique(patch)) <= set(np.unique(labels))


# ------------------------------------------------------------------------ the training job


def _request(sample, output, base, **config):
    image, labels = sample
    settings = {
        "epochs": 2,
        "steps_per_epoch": 2,
        "batch_size": 2,
        "patch_size": 64,
        "augment": augment_config("off"),
        **config,
    }
    return TrainRequest(
        (TrainingInput(image, labels.copy(), "YX", name="sample"),),
        output,
        base,
        TrainConfig(**settings),
        "new",
        threads=1,
    )


def test_training_job_fine_tunes(sample, tiny_model, tmp_path):
    events: list[Progress] = []
    path = drain(
        training_job(_request(sample, tmp_path / "new.safetensors", tiny_model)), events.append
    )
    assert path == tmp_path / "new.safetensors"
    model = load_model(path)
    assert model.name == "new" and model.metadata["provenance"]["parent"] == "tiny"
    train_events = [e for e in events if e.stage == "train"]
    assert events[0].stage == "prepare"
    assert [e.payload.step for e in train_events if e.payload.kind == "step"] == [1, 2, 3, 4]
    done = [e.done for e in train_events]
    assert all(e.total == BAR_STEPS for e in train_events)
    assert done == sorted(done) and done[-1] == BAR_STEPS


def test_training_job_from_scratch_and_stop(sample, tmp_path):
    output = tmp_path / "scratch.safetensors"
    gen = training_job(_request(sample, output, None, epochs=100))
    for event in gen:
        if event.stage == "train" and event.payload.step >= 2:
            break
    gen.close()  # Stop
    model = load_model(output)  # the best checkpoint so far
    assert model.metadata["provenance"]["parent"] is None
    assert model.config.depth == ModelConfig().depth


# ---------------------------------------------------------------- the child's protocol


def _count(n, fail=False):
    for i in range(n):
        yield Progress("count", i + 1, n)
    if fail:
        raise UserError("nothing to count")
    return n * 10


def _run_child(args, stop=False):
    inbox, events, flag = queue.Queue(), queue.Queue(), threading.Event()
    if stop:
        flag.set()
    inbox.put((_count, args))
    child_main(inbox, events, flag)
    out = []
    while not events.empty():
        out.append(events.get())
    return out


def test_child_protocol():
    messages = _run_child((3,))
    assert [k for k, _ in messages] == ["progress"] * 3 + ["result"]
    assert messages[-1][1] == 30
    assert [k for k, _ in _run_child((3,), stop=True)] == ["progress", "cancelled"]
    kind, report = _run_child((1, True))[-1]
    assert kind == "error" and isinstance(report, ErrorReport) and report.user_error
    error = report.to_exception()
    assert isinstance(error, UserError) and str(error) == "nothing to count"
    assert "_count" in report.details
    other = ErrorReport("KeyError", "'x'", False, "").to_exception()
    assert not isinstance(other, UserError) and "KeyError" in str(other)


def test_a_native_3d_base_model_is_refused_with_a_way_forward(sample, tmp_path):
    config = ModelConfig(depth=2, base_channels=2, spatial_dims=3, xy_only_levels=1)
    base = save_model(tmp_path / "m3d", build_model(config, seed=0).eval(),
                      new_metadata(config, pixel_size=(2.0, 0.5, 0.5)))  # fmt: skip
    output = tmp_path / "new.safetensors"
    with pytest.raises(UserError, match=r"native 3D U-Net.*train --dims 3"):
        drain(training_job(_request(sample, output, base)))
    assert not output.exists()
