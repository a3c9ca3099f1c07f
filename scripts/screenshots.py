"""Take the documentation screenshots in a real napari viewer (run under Xvfb).

    xvfb-run -a -s "-screen 0 1400x1000x24" python scripts/screenshots.py

Everything goes through the plugin as a user would use it: the shipped sample opened from
File > Open Sample, the widgets docked from the Plugins menu's entries. Saves in ``docs/images/``:

- ``predict_sample.png`` and ``predict_sample_zoom.png``: the sample with the starter model's
  labels (whole window, and a close-up of touching nuclei drawn as contours);
- ``segment_widget.png``: the Segment widget after a run;
- ``finetune_widget.png``: the Fine-tune widget during a short training run, with its live plot;
- ``export_widget.png``: the Export widget.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"


def wait(condition: Callable[[], bool], seconds: float) -> None:
    """Process Qt events until ``condition()`` holds (or ``seconds`` pass)."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()


def segment(viewer) -> None:
    """Segment the sample with the starter model; screenshots of the result and the widget."""
    image = viewer.layers["nuclei"]
    truth = viewer.layers["nuclei ground truth"] if "nuclei ground truth" in viewer.layers else None
    if truth is not None:
        truth.visible = False
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    widget.select_image(image)
    widget.run()
    wait(lambda: not widget.busy, 600)
    labels = [layer for layer in viewer.layers if layer.name.startswith("nuclei labels")][-1]
    labels.opacity = 0.45
    labels.contour = 0
    viewer.scale_bar.visible = True
    viewer.reset_view()
    wait(lambda: False, 0.5)
    viewer.screenshot(str(IMAGES / "segment_widget.png"), canvas_only=False)
    viewer.screenshot(str(IMAGES / "predict_sample.png"), canvas_only=True)
    labels.contour = 2
    labels.opacity = 1.0
    scale = image.scale[-2:]
    viewer.scene.camera.center = (0.0, 128 * scale[0], 128 * scale[1])
    viewer.scene.camera.zoom = viewer.scene.camera.zoom * 2.5
    viewer.screenshot(str(IMAGES / "predict_sample_zoom.png"), canvas_only=True)
    viewer.reset_view()
    labels.contour = 0
    labels.opacity = 0.45


def finetune(viewer) -> None:
    """Fine-tune the starter on the predicted labels (as if corrected) for a minute; screenshot
    while it trains, then Stop."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    row = next(iter(widget.pair_rows))
    row.image.value = viewer.layers["nuclei"]
    row.labels_layer.value = [layer for layer in viewer.layers
                              if layer.name.startswith("nuclei labels")][-1]
    widget.model_name.value = "my nuclei"
    widget.budget.value = "minutes"
    widget.minutes.value = 5.0
    widget.train()
    wait(lambda: len(widget.plot.scores) >= 3 or not widget.running, 900)
    wait(lambda: False, 1.0)
    viewer.screenshot(str(IMAGES / "finetune_widget.png"), canvas_only=False)
    widget.stop()
    wait(lambda: not widget.running, 300)


def export(viewer) -> None:
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Export")
    widget.folder.value = tempfile.gettempdir()
    wait(lambda: False, 6.0)  # napari's notifications fade after a few seconds
    viewer.screenshot(str(IMAGES / "export_widget.png"), canvas_only=False)


def main() -> int:
    import os

    import napari
    import napari._qt.qt_main_window as main_window

    # napari's notice that PyQt5 support is deprecated would sit on the canvas in every picture
    main_window.SHOW_QT_WARNING = False

    with tempfile.TemporaryDirectory() as models:
        os.environ["NAPARI_UNET_MODELS"] = models  # the user's own models stay untouched
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1400, 950)
        viewer.open_sample("napari-unet", "nuclei")
        IMAGES.mkdir(parents=True, exist_ok=True)
        segment(viewer)
        if "--no-finetune" not in sys.argv:
            finetune(viewer)
        export(viewer)
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
