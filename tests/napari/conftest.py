"""Fixtures shared by the napari tests."""

import pytest

from napari_unet._napari.segment.widget import SegmentWidget


@pytest.fixture
def segment(make_napari_viewer, isolated_models):
    """(viewer, Segment widget docked through the manifest), with an empty user model folder;
    a job still running at the end is cancelled."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert isinstance(widget, SegmentWidget)
    yield viewer, widget
    if widget.job is not None:
        widget.cancel()
