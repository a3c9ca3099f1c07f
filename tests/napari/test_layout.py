"""The three widgets fit a 1366 x 768 laptop window at once, and messages wrap.

Each test opens the widgets through the manifest, as the Plugins menu does, in a shown window of
the size of a laptop screen, and measures the docks and the canvas.
"""

from __future__ import annotations

import numpy as np
import pytest
from magicgui.widgets import Container, Label
from qtpy.QtWidgets import QScrollArea

from napari_unet._napari.layout import Message, breakable, fit_in_dock
from napari_unet.core.io import writing

WIDTH, HEIGHT = 1366, 768
WIDGETS = ("Segment", "Fine-tune", "Export")
LONG_PATH = "/home/someone/data/" + "/".join(f"experiment_{i:02d}_condition_long" for i in range(8))


@pytest.fixture
def laptop(make_napari_viewer, qtbot, isolated_models):
    """A shown viewer of 1366 x 768 with a 2D image and labels."""
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(WIDTH, HEIGHT)
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 1000, (96, 96), dtype=np.uint16), name="cells")
    viewer.add_labels(np.zeros((96, 96), np.uint16), name="cells labels")
    qtbot.wait(50)
    return viewer


def dock(viewer, name):
    return viewer.window.add_plugin_dock_widget("napari-unet", name)


def settle(qtbot):
    qtbot.wait(200)  # the docks share the height on the next turns of the event loop


def canvas_width(viewer) -> int:
    return viewer.window._qt_viewer.canvas.native.width()


def test_all_three_docks_fit_a_laptop_window(laptop, qtbot):
    docks = [dock(laptop, name)[0] for name in WIDGETS]
    settle(qtbot)
    window = laptop.window._qt_window
    assert (window.width(), window.height()) == (WIDTH, HEIGHT)
    assert canvas_width(laptop) >= WIDTH // 2
    bottom = window.height() - window.statusBar().height()
    for item in docks:
        geometry = item.geometry()
        assert item.isVisible()
        assert geometry.width() <= WIDTH // 4 + 10
        assert geometry.bottom() <= bottom
        # each dock keeps a usable height, and what does not fit scrolls
        assert geometry.height() >= 140
        assert item.widget().findChild(QScrollArea) is not None
    # Segment's and Export's controls fit the dock's width: no horizontal scrolling; their main
    # button and status line stay in view, below what scrolls
    for name, button in (("Segment", "run_button"), ("Export", "export_button")):
        widget = dock(laptop, name)[1]
        scroll = widget.native.findChild(QScrollArea)
        assert scroll.widget().minimumSizeHint().width() <= scroll.viewport().width()
        for pinned in (getattr(widget, button), widget.status):
            assert pinned.native.isVisible() and not scroll.isAncestorOf(pinned.native)
    # Fine-tune's controls (an image, labels and second-channel row per pair) fit its width too
    scroll = dock(laptop, "Fine-tune")[1].native.findChild(QScrollArea)
    assert scroll.widget().minimumSizeHint().width() <= scroll.viewport().width()
    assert not scroll.horizontalScrollBar().isVisible()
    # the docks share the height in proportion to their content: none squeezed to the minimum
    heights = sorted(d.height() for d in docks)
    assert heights[-1] < 3 * heights[0]


def test_the_review_dock_leaves_half_the_window_to_the_canvas(laptop, qtbot):
    item, widget = dock(laptop, "Review")
    widget.status.value = "163 objects, 0 possible misses; worst first. " + LONG_PATH
    settle(qtbot)
    assert canvas_width(laptop) >= WIDTH // 2
    assert item.geometry().width() <= WIDTH // 4 + 10
    scroll = widget.native.findChild(QScrollArea)
    assert scroll.widget().minimumSizeHint().width() <= scroll.viewport().width()


def test_a_long_export_message_wraps_instead_of_widening_the_dock(laptop, qtbot, tmp_path):
    folder = tmp_path / LONG_PATH.lstrip("/")
    folder.mkdir(parents=True)
    item, widget = dock(laptop, "Export")
    settle(qtbot)
    before = item.width()
    widget.folder.value = folder
    widget.file_name.value = "cells_labels.tif"
    writing.write_labels(folder / "cells_labels.tif", np.zeros((4, 4), np.uint16), "YX")
    assert widget.start_export() is None  # refused: the file exists
    settle(qtbot)
    assert "already exist" in widget.status.value
    assert str(folder) in widget.status.value  # reads back without the break hints
    assert item.width() <= before + 2
    assert canvas_width(laptop) >= WIDTH // 2


def test_a_long_segment_status_wraps(laptop, qtbot):
    item, widget = dock(laptop, "Segment")
    settle(qtbot)
    before = item.width()
    widget.status.value = f"Exported 12 files to '{LONG_PATH}' " + "and more words " * 30
    settle(qtbot)
    assert item.width() <= before + 2
    assert canvas_width(laptop) >= WIDTH // 2


def test_the_fine_tune_status_wraps(laptop, qtbot):
    item, widget = dock(laptop, "Fine-tune")
    settle(qtbot)
    before = item.width()
    widget.status.value = "epoch 12 · step 300 · loss 0.1234 · validation AP50 0.81 · " * 6
    settle(qtbot)
    assert item.width() <= before + 2
    assert canvas_width(laptop) >= WIDTH // 2


def test_message_reads_back_what_was_set():
    message = Message(value="a_b/c")
    assert message.value == "a_b/c"
    assert message.native.text() == breakable("a_b/c") != "a_b/c"
    message.value = LONG_PATH
    assert message.value == LONG_PATH


def test_widgets_appended_after_fitting_go_into_the_scroll_area(qtbot):
    container = Container(widgets=[Label(value="first")])
    fit_in_dock(container)
    late = Label(value="late")
    container.append(late)
    scroll = container.native.findChild(QScrollArea)
    assert late.native.parent() is not None
    assert scroll.widget().isAncestorOf(late.native)
