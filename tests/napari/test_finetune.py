"""The Fine-tune widget in a real viewer: opened through the manifest, training a tiny model for a
few steps in a thread worker and in a separate process, Stop, annotated regions, errors, the
augmentation preview, and the hand-over to the Segment widget."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

from napari_unet._napari.finetune import results as _results
from napari_unet._napari.finetune import training as _training
from napari_unet._napari.finetune.plot import TrainingPlot
from napari_unet._napari.finetune.training_data import PLANES, SHAPES, WHOLE, collect_inputs
from napari_unet._napari.finetune.widget import FinetuneWidget
from napari_unet.core.config import ModelConfig
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.model import build_model
from napari_unet.core.network.registry import load_model
from napari_unet.core.network.weights import read_metadata, save_model
from napari_unet.core.synthetic.config import SyntheticConfig
from napari_unet.core.synthetic.images import make_image
from napari_unet.core.training.data3d import annotated_training_pairs

TINY = ModelConfig(depth=2, base_channels=4)
SYNTH = SyntheticConfig(shape=(96, 96), radius=(6.0, 10.0), debris=0.0)
TIMEOUT = 60_000


@pytest.fixture(scope="module")
def sample():
    """A (96, 96) uint16 synthetic image and its labels."""
    return make_image(SYNTH, seed=1, dtype=np.uint16)


@pytest.fixture
def tiny(isolated_models):
    return save_model(
        isolated_models / "tiny.safetensors",
        build_model(TINY, seed=0),
        new_metadata(TINY, name="tiny"),
    )


@pytest.fixture
def errors(monkeypatch):
    """Messages given to show_error by the widget (its training and results parts)."""
    shown: list[str] = []
    for module in (_training, _results):
        monkeypatch.setattr(module, "show_error", lambda message: shown.append(str(message)))
    return shown


@pytest.fixture
def finetune(make_napari_viewer, qtbot, tiny, sample):
    """(viewer with an image and its labels, Fine-tune widget docked through the manifest) with
    the tiny model as base, a thread worker and a budget of a few small steps."""
    viewer = make_napari_viewer()
    viewer.add_image(sample[0], name="cells")
    viewer.add_labels(sample[1].copy(), name="cells labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    assert isinstance(widget, FinetuneWidget)
    widget.backend = "thread"
    widget.refresh_models(select="tiny")
    widget.epochs.value = 2
    widget.steps_per_epoch.value = 2
    widget.batch_size.value = 2
    widget.patch_size.value = 64
    widget.augmentation.value = "light"
    widget.rule.value = WHOLE  # the labels are ground truth, every object right
    widget.confirm = lambda message: pytest.fail(f"unexpected question: {message}")
    yield viewer, widget
    if widget.running:
        widget.stop()
        qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)


def train(qtbot, widget) -> None:
    widget.train()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)


def settings(path) -> dict:
    return read_metadata(path)["provenance"]["settings"]


def test_opens_with_the_selected_pair(finetune):
    viewer, widget = finetune
    assert widget.pairs == [(viewer.layers["cells"], viewer.layers["cells labels"])]
    assert widget.base_model.value.endswith("tiny.safetensors")
    assert widget.model_name.value == "tiny-tuned"
    assert widget.train_button.enabled and not widget.stop_button.enabled


def test_a_model_without_held_out_check_is_saved_but_not_selected(
    finetune, qtbot, isolated_models, errors
):
    viewer, widget = finetune
    train(qtbot, widget)
    assert errors == []
    assert [step for step, _ in widget.plot.losses] == [1, 2, 3, 4]
    output = isolated_models / "tiny-tuned.safetensors"
    model = load_model(output)
    assert model.name == "tiny-tuned"
    assert model.metadata["provenance"]["parent"] == "tiny"
    assert settings(output)["patch_size"] == 64
    assert settings(output)["steps"] in (0, 2, 4)  # the best of the checkpoints
    assert widget.trained_model == "tiny-tuned" and widget.apply_button.enabled
    assert widget.train_button.enabled and not widget.stop_button.enabled
    assert any(label == "tiny-tuned" for label, _ in widget._models)
    from napari_unet._napari.segment.widget import SegmentWidget

    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert isinstance(segment, SegmentWidget)
    # 96 x 96 px is too little annotation for held-out crops: no score to show, and the model
    # is not put in Segment's place of the one the user chose
    assert segment.model.value.name != "tiny-tuned"
    assert "too little annotation" in widget.status.value
    assert "validation score" not in widget.status.value
    assert "Finished (all 2 epochs done)" in widget.status.value
    metrics = model.metadata["provenance"]["metrics"]
    assert "score" not in metrics and metrics["scored_on"].startswith("no held-out")


def test_train_in_a_separate_process(finetune, qtbot, isolated_models, errors):
    _, widget = finetune
    widget.backend = "process"
    widget.model_name.value = "from process"
    train(qtbot, widget)
    assert errors == []
    assert [step for step, _ in widget.plot.losses] == [1, 2, 3, 4]
    assert widget.last_status.step == 4
    assert load_model(isolated_models / "from process.safetensors").name == "from process"
    assert not widget._job.process.is_alive()


def test_validation_scores_reach_the_plot(make_napari_viewer, qtbot, tiny, isolated_models):
    viewer = make_napari_viewer()
    image, labels = make_image(
        SyntheticConfig(shape=(340, 340), radius=(6.0, 10.0), debris=0.0), seed=3, dtype=np.uint16
    )
    viewer.add_image(image, name="big")
    viewer.add_labels(labels, name="big labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    widget.backend = "thread"
    widget.rule.value = WHOLE
    widget.refresh_models(select="tiny")
    widget.epochs.value, widget.steps_per_epoch.value = 2, 1
    widget.batch_size.value, widget.patch_size.value = 1, 64
    train(qtbot, widget)
    # enough annotation to hold out validation blocks: a score before training and per epoch
    assert [step for step, _ in widget.plot.scores] == [0, 1, 2]
    assert all(0 <= score <= 1 for _, score in widget.plot.scores)
    # the base and the new model scored on the same crops, both reported
    status = widget.last_status
    assert status.kind == "end" and status.validation_crops >= 1 and "ap_50" in status.baseline
    before = f"AP50 {status.baseline['ap_50']:.2f} → {status.best['ap_50']:.2f}"
    assert before in widget.status.value and "held-out crop" in widget.status.value
    # the model is judged on the mean of AP50 and pixel IoU: both are shown
    iou = f"pixel IoU {status.baseline['pixel_iou']:.2f} → {status.best['pixel_iou']:.2f}"
    assert iou in widget.status.value
    output = isolated_models / "tiny-tuned.safetensors"
    if status.best["score"] > status.baseline["score"]:
        metrics = read_metadata(output)["provenance"]["metrics"]
        assert metrics["baseline"] == status.baseline and "held-out" in metrics["scored_on"]
        assert metrics["rounds"][-1]["before"] == status.baseline
    else:  # not better than its base: said, and nothing saved
        assert "did not beat its base" in widget.status.value and not output.exists()


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_stop_keeps_the_best_checkpoint(finetune, qtbot, isolated_models, backend):
    _, widget = finetune
    widget.backend = backend
    widget.epochs.value = 1000
    widget.train()
    qtbot.waitUntil(lambda: len(widget.plot.losses) >= 3, timeout=TIMEOUT)
    widget.stop()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    output = isolated_models / "tiny-tuned.safetensors"
    assert load_model(output).name == "tiny-tuned"
    assert widget.last_status.step < 1000 * 2
    assert widget.trained_model == "tiny-tuned"
    # the status line tells the outcome instead of keeping the last step's "time left"
    assert widget.status.value.startswith("Stopped: the latest model is saved as")


def test_painting_during_training_does_not_reach_the_run(finetune, qtbot, isolated_models):
    viewer, widget = finetune
    layer = viewer.layers["cells labels"]
    widget.rule.value = WHOLE
    widget.train()
    layer.data[:] = 0  # the user erases everything (in place, as painting does) while it trains
    layer.refresh()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    assert load_model(isolated_models / "tiny-tuned.safetensors").name == "tiny-tuned"
    assert not layer.data.any()  # training never writes to the user's layers


def test_shapes_regions_are_the_only_annotated_pixels(finetune, qtbot, isolated_models):
    viewer, widget = finetune
    shapes = viewer.add_shapes(
        [np.array([[10, 10], [10, 50], [60, 50], [60, 10]], float)],
        shape_type="rectangle",
        name="reviewed",
    )
    widget.rule.value = SHAPES
    assert not widget.shapes_layer.native.isHidden()
    widget.shapes_layer.value = shapes
    train(qtbot, widget)
    assert settings(isolated_models / "tiny-tuned.safetensors")["training_pixels"] == 51 * 41


@pytest.mark.parametrize(
    ("axes", "planes_pixels", "whole_pixels"),
    [
        # frames of a time series: 2D planes, the labelled one only
        ("TYX", 96 * 96, 3 * 96 * 96),
        # a Z-stack: a volume, also cut in XZ and YZ planes (48 of each, evenly spaced, of
        # 3 rows at isotropic voxels), where the labelled Z slice is one row
        ("ZYX", 96 * 96 + 2 * 48 * 96, 3 * 96 * 96 + 2 * 48 * 3 * 96),
    ],
)
def test_planes_with_labels_on_a_stack(
    make_napari_viewer, qtbot, tiny, sample, isolated_models, axes, planes_pixels, whole_pixels
):
    viewer = make_napari_viewer()
    stack = np.stack([sample[0]] * 3)
    labels = np.zeros_like(stack)
    labels[1] = sample[1]
    viewer.add_image(stack, name="stack", metadata={"axes": axes})
    viewer.add_labels(labels, name="stack labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    widget.backend = "thread"
    widget.refresh_models(select="tiny")
    widget.epochs.value, widget.steps_per_epoch.value = 1, 1
    widget.batch_size.value, widget.patch_size.value = 1, 64
    assert widget.pairs == [(viewer.layers["stack"], viewer.layers["stack labels"])]
    widget.rule.value = PLANES
    train(qtbot, widget)
    assert settings(isolated_models / "tiny-tuned.safetensors")["training_pixels"] == planes_pixels
    inputs, _ = collect_inputs(widget.pairs, WHOLE)  # what Train would use
    pairs = annotated_training_pairs(inputs, load_model(widget.base_model.value))
    assert sum(p.annotated_pixels for p in pairs) == whole_pixels
    if axes == "TYX":  # (a volume's whole layer is enough to hold crops out, and a model
        # trained for one step then rightly does not beat its base: nothing would be saved)
        widget.rule.value = WHOLE
        widget.model_name.value = "whole"
        train(qtbot, widget)
        assert settings(isolated_models / "whole.safetensors")["training_pixels"] == whole_pixels


def test_two_pairs(finetune, qtbot, sample, isolated_models):
    viewer, widget = finetune
    image2, labels2 = make_image(SYNTH, seed=2, dtype=np.uint16)
    viewer.add_image(image2, name="more")
    viewer.add_labels(labels2, name="more labels")
    row = widget.add_pair()
    assert row.pair == (viewer.layers["more"], viewer.layers["more labels"])
    train(qtbot, widget)
    provenance = read_metadata(isolated_models / "tiny-tuned.safetensors")["provenance"]
    assert len(provenance["data_hashes"]) == 2
    widget.remove_pair(row)
    assert len(widget.pairs) == 1


@pytest.mark.parametrize(
    "case, message",
    [
        ("all zero", "all zero"),
        ("mismatch", "have shape"),
        ("no labels", "Choose an image layer and a labels layer"),
        ("no shapes", "Choose the Shapes layer"),
        ("empty shapes", "covers the labels"),
        ("bad name", "cannot be a model name"),
        ("built-in name", "built-in model"),
    ],
)
def test_bad_inputs_are_notified(finetune, isolated_models, errors, case, message):
    viewer, widget = finetune
    row = widget.pair_rows[0]
    if case == "all zero":
        viewer.layers["cells labels"].data = np.zeros((96, 96), np.uint16)
    elif case == "mismatch":
        row.labels_layer.value = viewer.add_labels(np.ones((50, 50), np.uint8), name="small")
    elif case == "no labels":
        row.labels_layer.value = None
    elif case in ("no shapes", "empty shapes"):
        widget.rule.value = SHAPES
        if case == "empty shapes":
            widget.shapes_layer.value = viewer.add_shapes(name="nothing drawn")
    elif case == "bad name":
        widget.model_name.value = "../outside"
    elif case == "built-in name":
        from napari_unet.core.network.registry import list_models

        builtin = [e.name for e in list_models() if e.builtin]
        if not builtin:
            pytest.skip("no built-in model installed")
        widget.model_name.value = builtin[0]
    widget.train()
    assert not widget.running
    assert len(errors) == 1 and message in errors[0]
    assert sorted(p.name for p in isolated_models.iterdir()) == ["tiny.safetensors"]


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_unreadable_base_model_is_notified(finetune, qtbot, isolated_models, errors, backend):
    _, widget = finetune
    broken = isolated_models / "broken.safetensors"
    broken.write_bytes((isolated_models / "tiny.safetensors").read_bytes())
    widget.refresh_models(select="broken")
    assert widget.base_model.value == str(broken)
    broken.write_bytes(b"not a model")  # damaged after it was listed
    widget.backend = backend
    widget.model_name.value = "new"
    train(qtbot, widget)
    assert len(errors) == 1 and "broken.safetensors" in errors[0]
    assert not (isolated_models / "new.safetensors").exists()
    assert widget.train_button.enabled


def test_an_existing_model_is_replaced_only_when_confirmed(finetune, qtbot, isolated_models):
    _, widget = finetune
    taken = isolated_models / "taken.safetensors"
    taken.write_bytes((isolated_models / "tiny.safetensors").read_bytes())
    questions: list[str] = []
    widget.confirm = lambda message: questions.append(message) or False
    widget.model_name.value = "taken"
    widget.train()
    assert not widget.running and len(questions) == 1 and "'taken'" in questions[0]
    assert taken.read_bytes() == (isolated_models / "tiny.safetensors").read_bytes()
    widget.confirm = lambda message: True
    train(qtbot, widget)
    assert load_model(taken).name == "taken"
    assert load_model(taken).metadata["provenance"]["parent"] == "tiny"


def test_preview_augmentation_adds_layers(finetune, errors):
    viewer, widget = finetune
    widget.augmentation.value = "strong"
    added = widget.preview_augmentation()
    assert errors == []
    image, labels = added
    assert image.data.shape == labels.data.shape == (64, 4 * 68)
    assert isinstance(labels, Labels) and labels.data.any()
    assert image.translate[-1] > viewer.layers["cells"].extent.world[1][-1]
    again = widget.preview_augmentation()
    preview_layers = [la for la in viewer.layers if la.metadata.get("augmentation_preview")]
    assert preview_layers == again  # the previous preview was replaced


def test_apply_to_image_runs_segment(finetune, qtbot):
    viewer, widget = finetune
    train(qtbot, widget)
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    count = len(viewer.layers)
    widget.apply_to_image()
    qtbot.waitUntil(lambda: not segment.busy and len(viewer.layers) > count, timeout=TIMEOUT)
    assert segment.model.value.name == "tiny-tuned"
    new = viewer.layers[-1]
    assert isinstance(new, Labels) and new.data.shape == (96, 96)


def test_plot_collects_points_and_redraws(qtbot):
    plot = TrainingPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 160)
    plot.show()
    qtbot.waitExposed(plot)
    before = plot.redraws
    for step in range(1, 500):
        plot.add_loss(step, 1.0 / step)
    plot.add_loss(500, float("nan"))
    plot.add_score(250, 0.4)
    plot.add_score(499, 0.7)
    assert len(plot.losses) == 499 and plot.scores == [(250, 0.4), (499, 0.7)]
    qtbot.waitUntil(lambda: plot.redraws > before, timeout=5000)
    # points arriving fast are drawn in a few redraws, not one each
    assert plot.redraws - before < 10
    plot.clear()
    assert plot.losses == [] and plot.scores == []


def test_a_dying_process_is_reported(qtbot):
    import os

    from napari_unet._napari.jobs.process import start_process_job

    outcome: dict = {}
    job = start_process_job(
        os._exit,
        (3,),
        "dies",
        on_error=lambda e: outcome.update(error=e),
        on_finished=lambda: outcome.update(finished=True),
    )
    qtbot.waitUntil(lambda: "finished" in outcome, timeout=TIMEOUT)
    assert not job.running
    assert "ended unexpectedly (exit code 3" in str(outcome["error"])


def test_children_do_not_rerun_the_main_script():
    import multiprocessing.spawn

    from napari_unet._napari.jobs.process import _without_main_module

    with _without_main_module():
        data = multiprocessing.spawn.get_preparation_data("child")
    assert "init_main_from_path" not in data and "init_main_from_name" not in data
    assert "sys_path" in data  # the child still finds the package
