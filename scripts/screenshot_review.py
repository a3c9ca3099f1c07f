"""Take the documentation screenshot of the Review widget in a real napari viewer (under Xvfb).

    xvfb-run -a -s "-screen 0 1366x768x24" python scripts/screenshot_review.py

The shipped sample opened from File > Open Sample, segmented by the Segment widget with the starter
model, then ranked by the Review widget (docked from the Plugins menu's entry), with the quality
layer shown and the camera on the worst object. Saves ``docs/images/review_widget.png``.
"""

from __future__ import annotations

import os
import sys
import tempfile

from _screenshot_common import IMAGES, wait


def main() -> int:
    import napari
    import napari._qt.qt_main_window as main_window

    main_window.SHOW_QT_WARNING = False  # napari's PyQt5 notice would cover the canvas
    with tempfile.TemporaryDirectory() as models:
        os.environ["NAPARI_UNET_MODELS"] = models
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.showMaximized()
        viewer.window._qt_window.resize(1366, 768)
        viewer.open_sample("napari-unet", "nuclei")
        if "nuclei ground truth" in viewer.layers:
            viewer.layers["nuclei ground truth"].visible = False
        _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
        segment.select_image(viewer.layers["nuclei"])
        wait(lambda: segment.ready, 120)  # PyTorch loads in the background
        segment.run()
        wait(lambda: not segment.busy, 600)
        labels = [layer for layer in viewer.layers if layer.name.startswith("nuclei labels")][-1]
        labels.contour = 2
        _, review = viewer.window.add_plugin_dock_widget("napari-unet", "Review")
        for dock in list(viewer.window._dock_widgets.values()):
            if "Segment" in dock.name:
                dock.hide()
        review.labels_layer.value = labels
        review.image_layer.value = viewer.layers["nuclei"]
        review.rank()
        wait(lambda: review.queue is not None and review.job is None, 600)
        quality = review.show_quality()
        quality.opacity = 0.35
        viewer.layers.selection.active = labels
        review.next()
        review.next()
        wait(lambda: False, 6.0)  # napari's notifications fade after a few seconds
        if "-v" in sys.argv:
            item = review.queue.current
            sys.stderr.write(
                f"camera {viewer.scene.camera.center} zoom {viewer.scene.camera.zoom} "
                f"item {item} canvas {viewer.canvas.size} scale {labels.scale}\n"
            )
        IMAGES.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(IMAGES / "review_widget.png"), canvas_only=False)
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
