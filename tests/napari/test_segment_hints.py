"""Layers that napari's own reader opened: label TIFFs as Image layers, channels as a slider.

Real files opened with ``plugin="napari"`` (napari's reader, which napari preselects for .tif),
the widgets docked through the manifest.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from napari.layers import Image, Labels

from napari_unet._napari.files.layer_info import (
    channel_candidate,
    labels_candidates,
    looks_like_labels,
)

RNG = np.random.default_rng(3)


def _label_file(folder):
    labels = np.zeros((48, 48), np.uint16)
    labels[5:15, 5:15], labels[20:40, 22:30] = 1, 2
    path = folder / "cells_labels.tif"
    tifffile.imwrite(path, labels)
    return path, labels


def shown(widget) -> bool:
    """Whether the widget is shown when its window is (the test window itself is not)."""
    return not widget.native.isHidden()


def _image(shape):
    return RNG.integers(100, 4000, shape).astype(np.uint16)


@pytest.fixture
def viewer(make_napari_viewer, isolated_models):
    return make_napari_viewer()


def test_a_label_tiff_opened_as_image_is_offered_and_converted(viewer, tmp_path, qtbot):
    path, labels = _label_file(tmp_path)
    viewer.add_image(_image((48, 48)), name="cells")
    [opened] = viewer.open(path, plugin="napari")
    assert isinstance(opened, Image) and looks_like_labels(opened)
    assert not looks_like_labels(viewer.layers["cells"])
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert segment.image.value == viewer.layers["cells"].unique_id  # not the labels
    assert shown(segment.hints) and "cells_labels" in segment.hints.message.value
    offered = [text for text, _ in segment._output_choices()]
    assert "Replace 'cells_labels' (made a Labels layer)" in offered
    segment.hints.convert_button.native.click()
    converted = viewer.layers["cells_labels"]
    assert isinstance(converted, Labels) and viewer.layers.index(converted) == 1
    np.testing.assert_array_equal(converted.data, labels)
    assert not shown(segment.hints)
    converted.paint((10, 10), 5)  # editable
    assert converted.data[10, 10] == 5
    # the file it came from is still protected from Export
    _, export = viewer.window.add_plugin_dock_widget("napari-unet", "Export")
    export.labels_layer.value = converted
    export.folder.value = tmp_path
    export.file_name.value = "cells_labels.tif"
    export.overwrite.value = True
    assert export.export() == []
    np.testing.assert_array_equal(tifffile.imread(path), labels)


def test_segment_replaces_an_image_that_holds_labels(viewer, tmp_path, qtbot):
    path, _ = _label_file(tmp_path)
    viewer.add_image(_image((48, 48)), name="cells")
    [opened] = viewer.open(path, plugin="napari")
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    segment.image.value = viewer.layers["cells"].unique_id
    segment.output.value = opened.unique_id
    segment.confirm = lambda message: True
    assert segment.run() is not None
    qtbot.waitUntil(lambda: not segment.busy, timeout=60_000)
    layer = viewer.layers["cells_labels"]
    assert isinstance(layer, Labels) and "napari_unet" in layer.metadata


def test_export_offers_an_image_that_holds_labels(viewer, tmp_path):
    path, labels = _label_file(tmp_path)
    [opened] = viewer.open(path, plugin="napari")
    assert labels_candidates(viewer) == [opened]
    _, export = viewer.window.add_plugin_dock_widget("napari-unet", "Export")
    assert ("cells_labels (image)", opened) in export._labels_choices()
    out = tmp_path / "out"
    out.mkdir()
    export.labels_layer.value = opened
    export.folder.value = out
    [written] = export.export()
    assert written.name == "cells_labels.tif"
    np.testing.assert_array_equal(tifffile.imread(written), labels)


def test_a_short_first_axis_is_offered_as_channels(viewer, tmp_path):
    data = _image((2, 40, 40))
    path = tmp_path / "two_colours.tif"
    tifffile.imwrite(path, data)
    [opened] = viewer.open(path, plugin="napari")
    assert opened.data.shape == (2, 40, 40) and channel_candidate(opened) == 2
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert shown(segment.hints.split_button) and "2 planes" in segment.hints.message.value
    segment.hints.split_button.native.click()
    assert [layer.name for layer in viewer.layers] == ["two_colours [ch0]", "two_colours [ch1]"]
    for i, layer in enumerate(viewer.layers):
        np.testing.assert_array_equal(layer.data, data[i])
        assert layer.metadata["axes"] == "YX"
        assert layer.metadata["source_path"] == str(path)
    assert not shown(segment.hints)
    # a stack of many planes, or one whose axes are known, is not offered
    viewer.add_image(_image((12, 40, 40)), name="z stack")
    viewer.add_image(_image((3, 40, 40)), name="known", metadata={"axes": "ZYX"})
    assert not shown(segment.hints)
