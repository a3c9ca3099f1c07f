"""``napari-unet demo``: napari with the shipped sample and the three widgets, ready to Run.

:func:`build_demo` makes the viewer (tests call it); the command then starts napari's event loop.
"""

from __future__ import annotations

from typing import Any

WIDGETS = ("Segment", "Fine-tune", "Export")


def build_demo(viewer: Any = None) -> Any:
    """Open the sample nuclei image (its ground truth hidden) and dock Segment, Fine-tune and
    Export from the plugin's manifest, with the image selected in Segment; returns the viewer.

    Args:
        viewer: the napari viewer to use (default: a new one, shown).
    """
    import napari

    if viewer is None:
        viewer = napari.Viewer(title="napari-unet demo")
    layers = viewer.open_sample("napari-unet", "nuclei")
    image = next(layer for layer in layers if layer.name == "nuclei")
    for layer in layers:
        if layer is not image:
            layer.visible = False
    viewer.layers.selection.active = image
    segment = None
    for name in WIDGETS:
        _, widget = viewer.window.add_plugin_dock_widget("napari-unet", name)
        segment = widget if name == "Segment" else segment
    segment.select_image(image)
    return viewer


def run_demo() -> int:
    """Build the demo viewer and run napari until its window is closed; returns 0."""
    import napari

    build_demo()
    napari.run()
    return 0
