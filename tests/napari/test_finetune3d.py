"""Fine-tune on a Z-stack with 3D labels, in a real viewer: the pair is read as a volume with the
layer's voxel size, objects corrected in 3D count in every plane they span, training sees XY, XZ
and YZ planes, Shapes drawn on a Z slice cover that slice."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from napari_unet._napari.finetune.training_data import (
    PLANES,
    REVIEWED,
    SHAPES,
    collect_inputs,
    describe_annotation,
)
from napari_unet._napari.finetune.widget import FinetuneWidget
from napari_unet._napari.review.edits import review_mask
from napari_unet._napari.segment.layers import mark_written
from napari_unet.core.config import ModelConfig
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.model import build_model
from napari_unet.core.network.registry import load_model
from napari_unet.core.network.weights import read_metadata, save_model
from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume
from napari_unet.core.training.data3d import AnnotatedVolume, annotated_training_pairs

TINY = ModelConfig(depth=2, base_channels=4)
SHAPE = (12, 48, 48)
SCALE = (1.5, 0.5, 0.5)  # z step 3 pixels: 12 planes are 34 rows at isotropic voxels
N_ISO = (SHAPE[0] - 1) * 3 + 1
TIMEOUT = 60_000


@pytest.fixture(scope="module")
def volume():
    """A (12, 48, 48) uint16 synthetic Z-stack and its 3D labels (one id per nucleus)."""
    image, labels = make_volume(Synthetic3DConfig(shape=SHAPE), 0, dtype=np.uint16)
    assert labels.max() >= 3
    return image, labels


@pytest.fixture
def tiny(isolated_models):
    return save_model(
        isolated_models / "tiny.safetensors",
        build_model(TINY, seed=0),
        new_metadata(TINY, name="tiny"),
    )


@pytest.fixture
def stack(make_napari_viewer, tiny, volume):
    """A viewer with the stack (voxel 1.5 x 0.5 x 0.5 µm) and its labels as Segment left them,
    and the Fine-tune widget (a thread worker, a few small steps)."""
    viewer = make_napari_viewer()
    image = viewer.add_image(volume[0], name="nuclei", scale=SCALE, metadata={"axes": "ZYX"})
    labels = viewer.add_labels(volume[1].copy(), name="nuclei labels (tiny)", scale=SCALE)
    mark_written(labels, "tiny", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    assert isinstance(widget, FinetuneWidget)
    widget.backend = "thread"
    widget.refresh_models(select="tiny")
    widget.epochs.value, widget.steps_per_epoch.value = 1, 2
    widget.batch_size.value, widget.patch_size.value = 2, 32
    widget.confirm = lambda message: pytest.fail(f"unexpected question: {message}")
    yield viewer, widget, image, labels
    if widget.running:
        widget.stop()


def _paint_in_3d(layer, target: int) -> None:
    """Erase a ball (brush in 3D) at the middle of object ``target``."""
    zs, ys, xs = np.nonzero(layer.data == target)
    layer.n_edit_dimensions = 3
    layer.brush_size = 3
    layer.paint((int(np.median(zs)), int(np.median(ys)), int(np.median(xs))), 0)


def test_objects_corrected_in_3d_train_in_three_orientations(stack, qtbot, isolated_models):
    _, widget, image, layer = stack
    assert "nothing yet" in widget.annotated_info.value
    ids = [int(i) for i in np.unique(layer.data) if i]
    corrected, untouched = ids[:2], ids[2:]
    for target in corrected:
        _paint_in_3d(layer, target)
    assert widget.annotated_info.value.startswith("annotated: 2 objects (3D), ")
    assert "of the volume" in widget.annotated_info.value

    (item,), skipped = collect_inputs([(image, layer)], REVIEWED)
    assert skipped == [] and isinstance(item, AnnotatedVolume)
    assert item.voxel_size == SCALE and item.image.shape == SHAPE
    for target in corrected:  # each corrected nucleus counts in every plane it spans
        spans = layer.data == target
        assert len(np.unique(np.nonzero(spans)[0])) > 1 and item.mask[spans].all()
    assert not item.mask[np.isin(layer.data, untouched)].any()
    # a plane-by-plane review would have taken the corrected nuclei in the painted planes only
    assert item.mask.sum() > review_mask(layer).mask.sum()

    pairs = annotated_training_pairs([item], load_model(widget.base_model.value))
    views = Counter(p.name.split(", ")[-2] for p in pairs)
    assert set(views) == {"XY", "XZ", "YZ"}
    shapes = {p.name.split(", ")[-2]: p.image.shape for p in pairs}
    assert shapes == {"XY": (1, 48, 48), "XZ": (1, N_ISO, 48), "YZ": (1, N_ISO, 48)}
    for p in pairs:  # only the corrected objects (and background) are annotated
        assert set(np.unique(p.labels[p.targets.mask])) <= {0, *corrected}

    widget.train()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    saved = read_metadata(isolated_models / "tiny-tuned.safetensors")["provenance"]["settings"]
    assert saved["training_pixels"] == sum(p.annotated_pixels for p in pairs)


def test_shapes_on_a_z_slice_cover_that_slice(stack, volume):
    viewer, widget, image, layer = stack
    box = np.array([[5, 4, 4], [5, 4, 20], [5, 20, 20], [5, 20, 4]], float) * SCALE
    on_slice = viewer.add_shapes([box], shape_type="rectangle", name="slice 5", ndim=3)
    everywhere = viewer.add_shapes([box[:, 1:]], shape_type="rectangle", name="all slices")
    layer.data = volume[1].copy()  # as if painted by hand: not a model's output
    (item,), _ = collect_inputs([(image, layer)], SHAPES, on_slice)
    assert isinstance(item, AnnotatedVolume)
    assert np.flatnonzero(item.mask.any(axis=(1, 2))).tolist() == [5]
    assert item.mask[5].sum() == 17 * 17
    (item,), _ = collect_inputs([(image, layer)], SHAPES, everywhere)
    assert item.mask.any(axis=(1, 2)).all() and item.mask.sum() == SHAPE[0] * 17 * 17
    widget.rule.value, widget.shapes_layer.value = SHAPES, on_slice
    assert widget.annotated_info.value.endswith(
        f"{100 * 17 * 17 / layer.data.size:.1f}% of the volume"
    )


def test_a_stack_without_z_step_is_taken_as_isotropic(make_napari_viewer, volume):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    image = viewer.add_image(volume[0], name="plain")  # 3D without metadata: a Z-stack
    labels = viewer.add_labels(volume[1].copy(), name="plain labels")
    assert "isotropic voxels assumed" in describe_annotation([(image, labels)], PLANES)
    (item,), _ = collect_inputs([(image, labels)], PLANES)
    assert isinstance(item, AnnotatedVolume) and item.voxel_size == (1.0, 1.0, 1.0)
    assert any("isotropic" in str(n.message) for n in notification_manager.records)
    pairs = annotated_training_pairs([item], None, TINY)
    assert {p.image.shape for p in pairs if ", XZ," in p.name} == {(1, SHAPE[0], SHAPE[2])}
