"""bioimage.io packages: export (checked by bioimageio.core's own test), import, and what is
refused; through the core API and the command line."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bioimageio.core")

from _bioimageio_helpers import foreign_package, tiny_model
from napari_unet.cli import main
from napari_unet.core.bioimageio.export import export_model
from napari_unet.core.errors import ModelFileError, UserError
from napari_unet.core.inference.predict import predict_labels
from napari_unet.core.io.reading import read_image
from napari_unet.core.io.writing import write_image
from napari_unet.core.network.registry import get_model, list_models
from napari_unet.core.network.weights import save_model
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.config import SAMPLE_CONFIG
from napari_unet.core.synthetic.images import make_image
from napari_unet.core.training.data import make_pairs
from napari_unet.core.training.settings import TrainConfig
from napari_unet.core.training.train import train

pytestmark = pytest.mark.usefixtures("isolated_models")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(model file, package) of the tiny model, exported once through the command line (which
    runs bioimageio.core's test_model and writes nothing if it fails)."""
    folder = tmp_path_factory.mktemp("export")
    loaded = tiny_model()
    model_file = save_model(folder / "tiny.safetensors", loaded.model, loaded.metadata)
    package = folder / "tiny.zip"
    code = main(["export-model", str(model_file), "-o", str(package), "--author", "Jane Doe", "-q"])
    assert code == 0
    return model_file, package


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    config = type(SAMPLE_CONFIG)(**{**vars(SAMPLE_CONFIG), "shape": (96, 120)})
    data, _ = make_image(config, np.random.default_rng(3))
    return data


def _rdf(package: Path) -> str:
    with zipfile.ZipFile(package) as archive:
        return archive.read("rdf.yaml").decode()


@pytest.mark.slow
def test_the_package_holds_what_consumers_need(exported):
    import yaml

    _, package = exported
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "test_input.npy",
            "test_output.npy", "cover.png", "README.md"} <= names  # fmt: skip
    rdf = yaml.safe_load(_rdf(package))
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert arch["import_from"] == "napari_unet.core.bioimageio.architecture"
    assert "source" not in arch and arch["kwargs"]["depth"] == 2
    y_axis = rdf["inputs"][0]["axes"][2]
    assert y_axis["size"]["step"] == 4 and y_axis["scale"] == 0.5 and y_axis["unit"] == "micrometer"
    assert y_axis["size"]["min"] > 2 * rdf["outputs"][0]["axes"][2]["halo"]
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["background", "interior", "boundary"]
    steps = [p["id"] for p in rdf["inputs"][0]["preprocessing"]]
    assert "scale_range" in steps
    assert rdf["outputs"][0]["postprocessing"][0]["id"] == "softmax"
    assert rdf["cite"][0]["doi"] == "10.1007/978-3-319-24574-4_28"
    assert rdf["authors"] == [{"name": "Jane Doe"}]
    assert rdf["config"]["napari_unet"]["pixel_size_um"] == [0.5, 0.5]
    assert "format_version" in rdf  # written by bioimageio.spec
    with zipfile.ZipFile(package) as archive:
        expected = np.load(archive.open("test_output.npy"))
    assert expected.dtype == np.float32
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-5)  # softmax probabilities


@pytest.mark.slow
def test_bioimageio_test_passes_on_the_written_package(exported):
    from bioimageio.core import test_model

    _, package = exported
    summary = test_model(package, devices=["cpu"])
    assert summary.status == "passed", summary.format()


@pytest.mark.slow
def test_import_predicts_the_same_labels(exported, image, isolated_models):
    model_file, package = exported
    _, original = drain(predict_labels(image, "YX", get_model(model_file), device="cpu"))
    _, from_zip = drain(predict_labels(image, "YX", get_model(str(package)), device="cpu"))
    np.testing.assert_array_equal(from_zip, original)
    assert main(["import-model", str(package), "--name", "shared", "-q"]) == 0
    assert (isolated_models / "shared.safetensors").is_file()
    imported = get_model("shared")
    assert imported.pixel_size == (0.5, 0.5) and imported.object_diameter == 12.0
    _, again = drain(predict_labels(image, "YX", imported, device="cpu"))
    np.testing.assert_array_equal(again, original)


@pytest.mark.slow
def test_a_napari_unet_package_can_be_fine_tuned(exported, image, tmp_path):
    _, package = exported
    base = get_model(str(package))
    labels = (image > np.percentile(image, 80)).astype(np.uint16)
    pairs = make_pairs(image, labels, "YX", 1, base.normalize)
    config = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, patch_size=32,
                         val_fraction=0.0)  # fmt: skip
    tuned = drain(train(pairs, tmp_path / "tuned.safetensors", base=base, config=config,
                        device="cpu"))  # fmt: skip
    assert tuned.metadata["provenance"]["parent"] == "tiny"


def test_export_refuses_without_authors(tmp_path):
    with pytest.raises(UserError, match="author"):
        export_model(tiny_model(), tmp_path / "x.zip", authors=[])
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.slow
def test_a_failing_package_is_not_written(tmp_path, monkeypatch):
    from napari_unet.core.bioimageio import export

    # a reference output that the network does not give: the bioimageio test must catch it
    monkeypatch.setattr(export, "_reference_output", lambda loaded, x: np.zeros(
        (1, 3, *x.shape[-2:]), np.float32) + 1 / 3)  # fmt: skip
    with pytest.raises(UserError, match="fails bioimageio's test"):
        export_model(tiny_model(), tmp_path / "bad.zip", authors=["A"])
    assert [p.name for p in tmp_path.iterdir() if p.name != "registry"] == []


def test_a_foreign_torchscript_package_predicts_semantic_labels(tmp_path, capsys):
    package = foreign_package(tmp_path / "pkg", "torchscript")
    model = get_model(str(package))
    assert model.task == "semantic"  # not (background, interior, boundary): no watershed
    assert model.class_names == ["background", "cells"]
    assert model.pixel_size == (0.25, 0.25)
    assert model.tiling.halo == 8  # the package's halo, on the stride grid
    image = np.zeros((50, 70), np.float32)
    image[10:30, 12:34] = 1.0
    probs, labels = drain(predict_labels(image, "YX", model, device="cpu"))
    assert probs.shape == (2, 50, 70)
    assert labels[20, 20] == 1 and labels[42, 60] == 0
    assert labels.max() == 1  # class ids, not object ids
    with pytest.raises(UserError, match="can only predict"):
        pairs = make_pairs(image, (image > 0).astype(np.uint16), "YX", 1, model.normalize,
                           task="semantic", n_classes=2)  # fmt: skip
        drain(train(pairs, tmp_path / "t.safetensors", base=model, device="cpu"))
    out = tmp_path / "labels.tif"
    write_image(tmp_path / "img.tif", (image * 1000).astype(np.uint16), "YX")
    assert main(["predict", str(tmp_path / "img.tif"), "-o", str(out), "--model", str(package),
                 "-q"]) == 0  # fmt: skip
    assert read_image(out).data.max() == 1
    assert main(["export-model", str(package), "-o", str(tmp_path / "again.zip"), "-q"]) == 2
    assert "only napari-unet's own networks" in capsys.readouterr().err
    assert main(["import-model", str(package), "--name", "blob", "-q"]) == 0
    listed = {entry.name: entry for entry in list_models()}
    assert listed["blob"].path.suffix == ".zip" and listed["blob"].error is None
    assert get_model("blob").class_names == ["background", "cells"]
    assert main(["models"]) == 0
    assert "blob" in capsys.readouterr().out


def test_a_foreign_onnx_package_runs_through_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    ts = get_model(str(foreign_package(tmp_path / "ts", "torchscript")))
    onnx = get_model(str(foreign_package(tmp_path / "onnx", "onnx")))
    assert onnx.metadata["source"]["weights"] == "onnx"
    image = np.random.default_rng(1).random((40, 56)).astype(np.float32)
    a, _ = drain(predict_labels(image, "YX", ts, device="cpu"))
    b, _ = drain(predict_labels(image, "YX", onnx, device="cpu"))
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize(
    ("weights", "reason"),
    [("file_architecture", "run that file's code"), ("pickle", "pickled")],
)
def test_packages_that_would_run_code_are_refused(tmp_path, capsys, weights, reason):
    package = foreign_package(tmp_path / "pkg", weights)
    with pytest.raises(ModelFileError, match=reason):
        get_model(str(package))
    assert main(["import-model", str(package), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1
    assert main(["predict", str(package), "-o", str(tmp_path), "--model", str(package)]) == 2


def test_a_package_that_is_not_one_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    assert main(["import-model", str(bad)]) == 2
    assert "not a valid bioimage.io model package" in capsys.readouterr().err


def test_without_the_extra_the_message_says_what_to_install(tmp_path, monkeypatch, capsys):
    import sys

    for name in ("bioimageio.spec", "bioimageio.spec.model", "bioimageio.core"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    out = tmp_path / "s.zip"
    assert main(["export-model", "starter", "-o", str(out), "--author", "A"]) == 2
    assert "napari-unet[bioimageio]" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "p.zip").write_bytes(b"PK")
    assert main(["import-model", str(tmp_path / "p.zip")]) == 2
    assert "napari-unet[bioimageio]" in capsys.readouterr().err
