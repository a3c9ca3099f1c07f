"""The shipped starter model and sample: the README's main command works as written."""

from __future__ import annotations

import json
from pathlib import Path

import napari_unet
from napari_unet.cli import main
from napari_unet.core.config import DEFAULT_MODEL
from napari_unet.core.io.reading import read_image
from napari_unet.core.network.registry import get_model, list_models

SAMPLES = Path(napari_unet.__file__).parent / "samples"


def test_starter_model_ships_and_loads(isolated_models):
    model = get_model(None)
    assert model.name == DEFAULT_MODEL and model.task == "instances"
    assert model.config.in_channels == 1 and model.config.out_classes == 3
    provenance = model.metadata["provenance"]
    assert "make_starter.py" in provenance["settings"]["recipe"]
    assert provenance["metrics"]["ap_50"] > provenance["metrics"]["baseline"]["ap_50"]
    assert any(entry.name == DEFAULT_MODEL and entry.builtin for entry in list_models())


def test_readme_main_command_on_the_shipped_sample(capsys, tmp_path, isolated_models):
    """predict then evaluate, exactly the README's commands, on the shipped sample."""
    out = tmp_path / "nuclei_labels.tif"
    assert main(["predict", str(SAMPLES / "nuclei.tif"), "-o", str(out)]) == 0
    labels = read_image(out)
    assert labels.data.dtype.name == "uint16" and labels.pixel_size == (0.5, 0.5)
    capsys.readouterr()
    assert main(["evaluate", str(out), str(SAMPLES / "nuclei_labels.tif")]) == 0
    scores = json.loads(capsys.readouterr().out)
    # the starter separates most nuclei of the sample; a broken pipeline scores near 0
    assert scores["ap_50"] > 0.5, scores
    assert 0.7 < scores["n_pred"] / scores["n_true"] < 1.3


def test_models_command_reports_the_default_installed(capsys, isolated_models):
    assert main(["models", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["default_installed"] is True


def test_the_starter_records_the_diameter_of_its_2d_nuclei(isolated_models):
    """``--diameter auto`` compares an image's objects with the model's diameter: the starter's
    is that of its 2D training images (nuclei drawn as at 0.5 µm/px, like the sample's), not the
    smaller cross-sections of the Z-stack planes it also learned from."""
    from napari_unet.core.inference.rescale import object_diameter

    model = get_model(None)
    sample = object_diameter(read_image(SAMPLES / "nuclei_labels.tif").data)
    assert abs(model.object_diameter / sample - 1.0) < 0.2, (model.object_diameter, sample)
