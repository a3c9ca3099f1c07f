"""Take the documentation screenshots in a real napari viewer (run under Xvfb), in a window of
a laptop screen's size (1366 x 768) with the three widgets docked, as ``napari-unet demo`` opens.

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1366x768x24" python scripts/screenshots.py

Everything goes through the plugin as a user would use it: the shipped sample opened as
File > Open Sample does, the widgets docked from the plugin's manifest. Saves in
``docs/images/``:

- ``napari_window.png``: the whole window while Fine-tune trains, after Segment ran;
- ``predict_sample.png`` and ``predict_sample_zoom.png``: the sample with the starter model's
  labels (the canvas, and a close-up of touching nuclei drawn as contours);
- ``segment_widget.png``, ``finetune_widget.png`` (during a short training run, with its live
  plot), ``export_widget.png``: each widget's controls, whole (in the window they scroll).
"""

from __future__ import annotations

import sys
import tempfile

from _screenshot_common import IMAGES, wait


def grab(widget, name: str) -> None:
    """Save the whole of a widget's controls: what its dock scrolls out of view, and the rows
    kept in view below the scroll area (the main button, the status line)."""
    from qtpy.QtGui import QPainter, QPixmap
    from qtpy.QtWidgets import QScrollArea

    scroll = widget.native.findChild(QScrollArea)
    if scroll is None:
        widget.native.grab().save(str(IMAGES / name))
        return
    layout = widget.native.layout()
    below = [layout.itemAt(i).widget() for i in range(1, layout.count())]
    parts = [scroll.widget().grab()] + [row.grab() for row in below if row is not None]
    image = QPixmap(max(p.width() for p in parts), sum(p.height() for p in parts))
    image.fill(scroll.widget().palette().window().color())
    painter = QPainter(image)
    top = 0
    for part in parts:
        painter.drawPixmap(0, top, part)
        top += part.height()
    painter.end()
    image.save(str(IMAGES / name))


def docked(viewer, name: str):
    return viewer.window.add_plugin_dock_widget("napari-unet", name)[1]


def segment(viewer) -> None:
    """Segment the sample with the starter model; screenshots of the result and the widget."""
    image = viewer.layers["nuclei"]
    widget = docked(viewer, "Segment")
    wait(lambda: widget.ready, 120)
    widget.select_image(image)
    widget.run()
    wait(lambda: not widget.busy, 600)
    labels = [layer for layer in viewer.layers if layer.name.startswith("nuclei labels")][-1]
    labels.opacity = 0.45
    labels.contour = 0
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)  # napari >= 0.9
    (overlays.scale_bar if overlays is not None else viewer.scale_bar).visible = True
    viewer.reset_view()
    wait(lambda: False, 0.5)
    grab(widget, "segment_widget.png")
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


def correct_left_part(viewer, labels, fraction: float = 0.3) -> None:
    """Correct the objects of the left ``fraction`` of ``labels`` as a user would with the brush:
    the predicted objects there are erased and the ground truth's painted in their place, through
    ``Labels.data_setitem`` (what napari's brush, eraser and fill write through)."""
    import numpy as np

    truth = np.asarray(viewer.layers["nuclei ground truth"].data)
    predicted = np.asarray(labels.data)
    width = int(predicted.shape[-1] * fraction)
    columns = np.arange(predicted.shape[-1])[None, :]
    inside = [
        i
        for i in np.unique(truth[:, :width])
        if i and columns[0][np.any(truth == i, 0)].max() < width
    ]
    objects = np.isin(truth, inside)
    erased = np.isin(predicted, np.unique(predicted[objects])) & (predicted > 0)
    labels.data_setitem(np.nonzero(erased), 0)
    fresh = np.where(objects, truth.astype(np.int64) + int(predicted.max()) + 1, 0)
    where = np.nonzero(objects)
    labels.data_setitem(where, fresh[where].astype(labels.data.dtype))


def finetune(viewer) -> None:
    """Correct the left part of the predicted labels, then fine-tune the starter on them (the
    default: the objects you reviewed) for a minute; screenshot while it trains, then Stop."""
    widget = docked(viewer, "Fine-tune")
    labels = [layer for layer in viewer.layers if layer.name.startswith("nuclei labels")][-1]
    correct_left_part(viewer, labels)
    row = next(iter(widget.pair_rows))
    row.image.value = viewer.layers["nuclei"]
    row.labels_layer.value = labels
    widget.model_name.value = "my nuclei"
    widget.budget.value = "minutes"
    widget.minutes.value = 5.0
    widget.train()
    wait(lambda: len(widget.plot.scores) >= 3 or not widget.running, 900)
    wait(lambda: False, 1.0)
    grab(widget, "finetune_widget.png")
    from qtpy.QtWidgets import QScrollArea

    scroll = widget.native.findChild(QScrollArea)  # show the live plot in the window
    top = widget.plot.mapTo(scroll.widget(), widget.plot.rect().topLeft()).y()
    scroll.verticalScrollBar().setValue(top - 60)
    wait(lambda: False, 0.5)
    viewer.screenshot(str(IMAGES / "napari_window.png"), canvas_only=False)
    widget.stop()
    wait(lambda: not widget.running, 300)


def export(viewer, window: bool) -> None:
    widget = docked(viewer, "Export")
    widget.folder.value = tempfile.gettempdir()
    wait(lambda: False, 6.0)  # napari's notifications fade after a few seconds
    grab(widget, "export_widget.png")
    if window:  # without a training run: the window after Segment ran
        viewer.screenshot(str(IMAGES / "napari_window.png"), canvas_only=False)


def main() -> int:
    import os

    import napari
    import napari._qt.qt_main_window as main_window

    from napari_unet._napari.demo import build_demo

    # under PyQt5, napari's notice that its support is deprecated would sit on the canvas
    main_window.SHOW_QT_WARNING = False

    with tempfile.TemporaryDirectory() as models:
        os.environ["NAPARI_UNET_MODELS"] = models  # the user's own models stay untouched
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1366, 768)
        build_demo(viewer)  # the sample and the three widgets, as `napari-unet demo` opens
        wait(lambda: False, 0.5)
        IMAGES.mkdir(parents=True, exist_ok=True)
        segment(viewer)
        training = "--no-finetune" not in sys.argv
        if training:
            finetune(viewer)
        export(viewer, window=not training)
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
