"""Take the documentation screenshots in a real napari viewer (run under Xvfb).

    xvfb-run -a python scripts/screenshots.py

Segments the shipped sample with the starter model and saves ``docs/images/predict_sample.png``:
the sample image with the predicted labels on top, as napari shows them.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "napari_unet" / "samples"
IMAGES = ROOT / "docs" / "images"


def main() -> int:
    import napari
    import numpy as np

    from napari_unet.core.io import read_image
    from napari_unet.core.predict import predict_labels
    from napari_unet.core.progress import drain
    from napari_unet.core.weights import get_model

    image = read_image(SAMPLES / "nuclei.tif")
    _, labels = drain(predict_labels(image.data, image.axes, get_model(None), device="cpu"))
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1200, 900)
    scale = image.pixel_size or (1.0, 1.0)
    low, high = np.percentile(image.data, (1, 99.8))
    viewer.add_image(image.data, name="nuclei", scale=scale, colormap="gray",
                     contrast_limits=(float(low), float(high)), units=("um", "um"))
    layer = viewer.add_labels(labels, name="nuclei labels (starter model)", scale=scale,
                              opacity=0.45, units=("um", "um"))
    layer.contour = 0
    viewer.scale_bar.visible = True
    viewer.reset_view()
    IMAGES.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(IMAGES / "predict_sample.png"), canvas_only=False)
    # a close-up of touching nuclei, labels drawn as contours
    layer.contour = 2
    layer.opacity = 1.0
    viewer.camera.center = (0.0, 128 * scale[0], 128 * scale[1])
    viewer.camera.zoom = viewer.camera.zoom * 2.5
    viewer.screenshot(str(IMAGES / "predict_sample_zoom.png"), canvas_only=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
