"""Segment's "Load from file..." takes bioimage.io packages as well as model files."""

import numpy as np
import pytest

pytest.importorskip("bioimageio.spec")

from _bioimageio_helpers import foreign_package
from napari_unet._napari.segment.models import ModelList


def test_a_package_loads_from_file_and_predicts(tmp_path, isolated_models):
    package = foreign_package(tmp_path / "pkg")
    models = ModelList()
    choice = models.load_file(package)
    assert choice.path == package.resolve()
    assert choice in models.refresh()
    loaded = models.loaded(choice)
    assert loaded is not None
    from napari_unet.core.inference.predict import predict_labels
    from napari_unet.core.progress import drain

    image = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    _, labels = drain(predict_labels(image, "YX", loaded, device="cpu", precision="fp32"))
    assert labels.shape == image.shape


def test_the_file_dialog_offers_packages(make_napari_viewer, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    from napari_unet._napari.segment.widget import SegmentWidget

    seen = {}

    def fake(parent, caption, folder, filters):
        seen["filters"] = filters
        return "", ""

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(fake))
    widget = SegmentWidget(make_napari_viewer())
    assert widget.choose_model_file() is None
    assert "*.zip" in seen["filters"] and "rdf.yaml" in seen["filters"]
