""" "Export for bioimage.io..." in napari: under Segment's About line and after a Fine-tune run;
the package is written in a background worker, tested by bioimageio.core, and loads back."""

from __future__ import annotations

import json
import sys

import pytest
from napari.utils.notifications import notification_manager

from _bioimageio_helpers import tiny_model
from napari_unet._napari.files import export_model as exporting
from napari_unet._napari.files.export_model import BUTTON_TEXT, ExportRequest
from napari_unet.core.network.weights import save_model
from napari_unet.core.synthetic.images import SyntheticConfig, make_image

TIMEOUT = 120_000


@pytest.fixture(autouse=True)
def config_home(tmp_path, monkeypatch):
    """A fresh user config folder (where the last author is remembered)."""
    folder = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(folder))
    return folder


@pytest.fixture
def tiny(isolated_models):
    loaded = tiny_model()
    return save_model(isolated_models / "tiny.safetensors", loaded.model, loaded.metadata)


class Answers:
    """Stands in for the dialog: records the defaults it was offered, answers ``reply``."""

    def __init__(self, reply):
        self.reply = reply
        self.offered: list[ExportRequest] = []

    def __call__(self, default):
        self.offered.append(default)
        return self.reply


def notices() -> list[str]:
    return [str(n.message) for n in notification_manager.records]


def check_package(path) -> None:
    """bioimageio.core reads ``path`` as a valid model and napari-unet loads it back."""
    from bioimageio.core import load_description
    from bioimageio.spec import InvalidDescr

    from napari_unet.core.network.registry import get_model

    descr = load_description(path)
    assert not isinstance(descr, InvalidDescr), descr.validation_summary
    assert [a.name for a in descr.authors] == ["Jane Doe"]
    assert list(get_model(path).class_names) == ["background", "interior", "boundary"]


def test_segment_exports_the_selected_model(segment, qtbot, tiny, tmp_path, config_home):
    pytest.importorskip("bioimageio.core")
    _, widget = segment
    widget.refresh_models(select="tiny")
    button = widget.exporter.button
    assert button.text == BUTTON_TEXT
    assert list(widget).index(button) == list(widget).index(widget.model_info) + 1
    package = tmp_path / "shared" / "tiny-for-zoo"  # no suffix: .zip is added
    package.parent.mkdir()
    answers = Answers(exporting.check_request(package, "  Jane Doe "))
    widget.exporter.ask = answers
    button.clicked.emit()  # the same signal as a click
    assert answers.offered[0].output.name == "tiny.zip" and answers.offered[0].author == ""
    job = widget.exporter.job
    assert job is not None
    qtbot.waitUntil(lambda: not job.running, timeout=TIMEOUT)
    written = package.with_name("tiny-for-zoo.zip")
    assert widget.exporter.written == written and written.is_file()
    assert any("bioimageio test passed" in text for text in notices())
    check_package(written)
    remembered = json.loads((config_home / "napari-unet" / "export.json").read_text())
    assert remembered == {"author": "Jane Doe", "folder": str(package.parent)}

    widget.exporter.ask = again = Answers(None)  # the next export offers the same author
    assert widget.exporter.export() is None
    assert again.offered[0] == ExportRequest(package.parent / "tiny.zip", "Jane Doe")


def test_finetune_exports_the_model_just_trained(make_napari_viewer, qtbot, tiny, tmp_path):
    pytest.importorskip("bioimageio.core")
    from napari_unet._napari.finetune.training_data import WHOLE

    image, labels = make_image(SyntheticConfig(shape=(96, 96), debris=0.0), seed=1)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    widget.backend = "thread"
    widget.refresh_models(select="tiny")
    widget.rule.value = WHOLE
    widget.epochs.value, widget.steps_per_epoch.value = 1, 1
    widget.batch_size.value, widget.patch_size.value = 1, 64
    button = widget.exporter.button
    assert not button.enabled  # nothing trained yet
    widget.train()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    assert widget.trained_model == "tiny-tuned" and button.enabled
    widget.exporter.ask = Answers(ExportRequest(tmp_path / "tuned.zip", "Jane Doe"))
    button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.exporter.running, timeout=TIMEOUT)
    assert widget.exporter.written == tmp_path / "tuned.zip"
    check_package(tmp_path / "tuned.zip")
    from napari_unet.core.network.registry import get_model

    assert get_model(tmp_path / "tuned.zip").metadata["provenance"]["parent"] == "tiny"


def test_without_the_extra_it_says_how_to_install_it(segment, tiny, monkeypatch, tmp_path):
    _, widget = segment
    widget.refresh_models(select="tiny")
    widget.exporter.ask = answers = Answers(ExportRequest(tmp_path / "x.zip", "Jane Doe"))
    monkeypatch.setitem(sys.modules, "bioimageio.core", None)  # as if not installed
    assert widget.exporter.export() is None
    assert answers.offered == []  # nothing asked
    assert any("napari-unet[bioimageio]" in text for text in notices())
    assert not (tmp_path / "x.zip").exists()


def test_an_author_is_required(segment, tiny, tmp_path):
    pytest.importorskip("bioimageio.core")
    with pytest.raises(exporting.UserError, match="author"):
        exporting.check_request(tmp_path / "x.zip", "   ")
    _, widget = segment
    widget.refresh_models(select="tiny")

    def refuse(default):
        return exporting.check_request(default.output, "")

    widget.exporter.ask = refuse
    assert widget.exporter.export() is None
    assert any("needs an author" in text for text in notices())


def test_a_package_failing_the_test_is_reported_and_not_written(segment, qtbot, tiny, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    pytest.importorskip("bioimageio.core")
    import numpy as np

    from napari_unet.core.bioimageio import export

    # a reference output that the network does not give: bioimageio's test must catch it
    monkeypatch.setattr(export, "_reference_output", lambda loaded, x: np.zeros(
        (1, 3, *x.shape[-2:]), np.float32) + 1 / 3)  # fmt: skip
    _, widget = segment
    widget.refresh_models(select="tiny")
    widget.exporter.ask = Answers(ExportRequest(tmp_path / "bad.zip", "Jane Doe"))
    job = widget.exporter.export()
    assert job is not None and not widget.exporter.button.enabled  # no second export meanwhile
    qtbot.waitUntil(lambda: not job.running, timeout=TIMEOUT)
    assert widget.exporter.button.enabled and widget.exporter.written is None
    assert any("nothing was written" in t and "fails bioimageio's test" in t for t in notices())
    assert not (tmp_path / "bad.zip").exists()
