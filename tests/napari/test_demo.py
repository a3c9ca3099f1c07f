"""``napari-unet demo``: the sample and the three widgets, ready to press Run."""

from __future__ import annotations

import numpy as np

from napari_unet._napari import demo as _demo
from napari_unet.cli import main


def test_demo_viewer_is_ready_to_run(make_napari_viewer, qtbot, isolated_models):
    viewer = _demo.build_demo(make_napari_viewer())
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei ground truth"]
    assert not viewer.layers["nuclei ground truth"].visible
    docked = viewer.window._wrapped_dock_widgets
    assert {f"{name} (napari-unet)" for name in _demo.WIDGETS} <= set(docked)
    segment = docked["Segment (napari-unet)"].inner_widget()
    assert segment.image.value == viewer.layers["nuclei"].unique_id
    qtbot.waitUntil(lambda: segment.ready, timeout=60_000)  # PyTorch may still be loading
    assert segment.model.value.name == "starter" and segment.run_button.enabled
    segment.run_button.native.click()  # what the user does next
    qtbot.waitUntil(lambda: not segment.busy, timeout=120_000)
    labels = viewer.layers["nuclei labels [starter]"]
    assert labels.data.max() > 20 and labels.data.dtype == np.uint16


def test_demo_command_builds_the_viewer_then_runs_napari(monkeypatch, make_napari_viewer):
    import napari

    events = []
    monkeypatch.setattr(_demo, "build_demo", lambda: events.append("built"))
    monkeypatch.setattr(napari, "run", lambda: events.append("run"))
    assert main(["demo"]) == 0
    assert events == ["built", "run"]


def test_demo_help(capsys):
    assert main(["demo", "--help"]) == 0
    assert "Fine-tune" in " ".join(capsys.readouterr().out.split())
