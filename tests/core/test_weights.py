"""Model files (safetensors + JSON metadata) and the model registry."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_unet.core.config import DEFAULT_MODEL, ModelConfig
from napari_unet.core.errors import ModelFileError, ModelNotFoundError
from napari_unet.core.network import registry, weights
from napari_unet.core.network.metadata import METADATA_KEY, new_metadata
from napari_unet.core.network.model import build_model
from napari_unet.core.network.registry import (
    get_model,
    list_models,
    load_model,
    resolve_model,
    user_models_dir,
)
from napari_unet.core.network.weights import save_model

CONFIG = ModelConfig(depth=2, base_channels=4)


def _trained_like(config: ModelConfig = CONFIG, seed: int = 0) -> torch.nn.Module:
    """A tiny U-Net whose BatchNorm statistics are not the defaults (as after training)."""
    model = build_model(config, seed=seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, config.in_channels, 20, 20) * 3 + 1)
    return model.eval()


def _save(path, config: ModelConfig = CONFIG, seed: int = 0, **kwargs):
    model = _trained_like(config, seed)
    meta = new_metadata(config, name=kwargs.pop("name", path.stem), **kwargs)
    return model, save_model(path, model, meta)


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "user-models"
    folder.mkdir()
    monkeypatch.setenv("NAPARI_UNET_MODELS", str(folder))
    return folder


def test_round_trip_same_outputs_and_metadata(tmp_path):
    model, path = _save(
        tmp_path / "nuclei.safetensors",
        parent="starter",
        data_hashes=["abc123"],
        settings={"epochs": 3},
        metrics={"ap_50": np.float32(0.75), "val_loss": float("nan")},
    )
    loaded = load_model(path)
    x = torch.randn(1, 1, 37, 29)
    with torch.inference_mode():
        np.testing.assert_array_equal(loaded.model(x).numpy(), model(x).numpy())
    assert not loaded.model.training
    assert loaded.config == CONFIG
    assert loaded.path == path
    assert loaded.task == "instances"
    assert loaded.class_names == ["background", "interior", "boundary"]
    assert loaded.name == "nuclei"
    prov = loaded.metadata["provenance"]
    assert prov["parent"] == "starter"
    assert prov["data_hashes"] == ["abc123"]
    assert prov["settings"] == {"epochs": 3}
    assert prov["metrics"]["ap_50"] == pytest.approx(0.75)
    assert prov["metrics"]["val_loss"] is None  # NaN stored as null: the metadata is strict JSON
    assert prov["created"] and prov["version"]
    assert loaded.metadata["in_channels"] == 1


def test_name_defaults_to_the_file_name(tmp_path):
    path = save_model(tmp_path / "my-cells.safetensors", build_model(CONFIG), new_metadata(CONFIG))
    loaded = load_model(path)
    assert loaded.name == "my-cells" == loaded.metadata["name"]
    assert loaded.tiling is None  # no tile defaults stored: the device's defaults apply


def test_file_holds_float32_contiguous_tensors_and_one_metadata_key(tmp_path):
    model = build_model(CONFIG, seed=1).double()
    path = save_model(tmp_path / "m", model, new_metadata(CONFIG))
    assert path.name == "m.safetensors"
    tensors = load_file(str(path))
    floats = [t for k, t in tensors.items() if "num_batches_tracked" not in k]
    assert floats and all(t.dtype == torch.float32 for t in floats)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert list(meta) == [METADATA_KEY]
    assert json.loads(meta[METADATA_KEY])["format"] == "napari-unet"


def test_semantic_model_round_trip(tmp_path):
    config = ModelConfig(in_channels=3, out_classes=4, depth=1, base_channels=4, norm="group")
    _, path = _save(tmp_path / "sem.safetensors", config, task="semantic")
    loaded = load_model(path)
    assert loaded.task == "semantic"
    assert loaded.class_names == ["background", "class 1", "class 2", "class 3"]
    assert loaded.config.in_channels == 3


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    _, path = _save(tmp_path / "a.safetensors")
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(weights, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(path, build_model(CONFIG, seed=5), new_metadata(CONFIG))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_save_rejects_invalid_metadata(tmp_path):
    meta = new_metadata(CONFIG)
    meta["task"] = "painting"
    with pytest.raises(ModelFileError, match="unknown task"):
        save_model(tmp_path / "x.safetensors", build_model(CONFIG), meta)
    assert not list(tmp_path.iterdir())


def test_instances_need_three_classes():
    with pytest.raises(ModelFileError, match="3 output classes"):
        new_metadata(ModelConfig(out_classes=2, depth=1, base_channels=2), task="instances")


@pytest.mark.parametrize("cut", [0.5, 0.99, 5])
def test_truncated_file(tmp_path, cut):
    _, path = _save(tmp_path / "t.safetensors")
    data = path.read_bytes()
    n = int(len(data) * cut) if cut < 1 else cut
    path.write_bytes(data[:n])
    with pytest.raises(ModelFileError, match=r"t\.safetensors.*(corrupt|truncated)"):
        load_model(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        load_model(path)


def test_flipped_weight_bytes_are_detected(tmp_path):
    _, path = _save(tmp_path / "flip.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelFileError, match=r"noise\.safetensors"):
        load_model(path)


def test_plain_safetensors_without_our_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file(dict(build_model(CONFIG).state_dict()), str(path))
    with pytest.raises(ModelFileError, match="not a napari-unet model"):
        load_model(path)


def test_foreign_format_metadata(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={METADATA_KEY: '{"format": "x"}'})
    with pytest.raises(ModelFileError, match="not a napari-unet model"):
        load_model(path)


def test_invalid_metadata_json(tmp_path):
    path = tmp_path / "badjson.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={METADATA_KEY: "{not json"})
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(path)


def test_newer_format_version(tmp_path):
    meta = new_metadata(CONFIG)
    meta["format_version"] = 99
    path = tmp_path / "future.safetensors"
    save_file(
        dict(build_model(CONFIG).state_dict()), str(path), metadata={METADATA_KEY: json.dumps(meta)}
    )
    with pytest.raises(ModelFileError, match="upgrade"):
        load_model(path)


class _Boom:
    """Unpickling this object would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_renamed_to_safetensors_is_not_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    for name, payload in [
        ("pickle.safetensors", pickle.dumps(_Boom(str(marker)))),
        ("torchsave.safetensors", None),
    ]:
        path = tmp_path / name
        if payload is None:
            torch.save({"boom": _Boom(str(marker))}, path)
        else:
            path.write_bytes(payload)
        with pytest.raises(ModelFileError, match=name.replace(".", r"\.")):
            load_model(path)
    assert not marker.exists()


def test_weights_that_do_not_match_the_config(tmp_path):
    # a file whose metadata says depth 2 but whose tensors come from a wider network
    wide = build_model(ModelConfig(depth=2, base_channels=8))
    meta = new_metadata(CONFIG)
    path = tmp_path / "mismatch.safetensors"
    tensors = {k: v.contiguous() for k, v in wide.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(ModelFileError, match=r"mismatch\.safetensors.*shape"):
        load_model(path)

    deeper = build_model(ModelConfig(depth=3, base_channels=4))
    tensors = {k: v.contiguous() for k, v in deeper.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(ModelFileError, match="unexpected"):
        load_model(path)

    tensors = {k: v.contiguous() for k, v in build_model(CONFIG).state_dict().items()}
    tensors.pop("head.weight")
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(ModelFileError, match=r"missing head\.weight"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")


def test_user_models_dir_from_environment(models_dir):
    assert user_models_dir() == models_dir


def test_user_models_dir_default(monkeypatch):
    monkeypatch.delenv("NAPARI_UNET_MODELS", raising=False)
    folder = user_models_dir()
    assert folder.name == "models"
    assert "napari-unet" in str(folder)


def test_registry_lists_and_resolves_user_models(models_dir, tmp_path):
    model, path = _save(models_dir / "nuclei.safetensors", metrics={"ap_50": 0.5})
    (models_dir / "broken.safetensors").write_bytes(b"garbage" * 10)
    (models_dir / "notes.txt").write_text("not a model")

    entries = {e.name: e for e in list_models() if not e.builtin}
    assert set(entries) == {"nuclei", "broken"}
    assert entries["nuclei"].error is None
    assert entries["nuclei"].path == path
    summary = entries["nuclei"].summary()
    assert summary["task"] == "instances" and summary["metrics"] == {"ap_50": 0.5}
    assert entries["broken"].metadata is None
    assert "broken.safetensors" in entries["broken"].error
    json.dumps([e.summary() for e in entries.values()])  # JSON-ready

    assert resolve_model("nuclei") == path
    assert resolve_model(str(path)) == path
    loaded = get_model("nuclei")
    x = torch.randn(1, 1, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), model(x))


def test_unknown_name_lists_available_models(models_dir):
    _save(models_dir / "alpha.safetensors")
    with pytest.raises(ModelNotFoundError, match=r"no model named 'beta'.*alpha"):
        resolve_model("beta")


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelNotFoundError, match="folder"):
        resolve_model(str(tmp_path) + "/")


def test_default_model_missing_says_so(models_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "builtin_models_dir", lambda: tmp_path / "no-builtin")
    for value in (None, "", DEFAULT_MODEL):
        with pytest.raises(ModelNotFoundError, match=r"starter.*not installed") as caught:
            resolve_model(value)
        # core names no command-line flag; the interface words the hint
        assert "--" not in str(caught.value)
        assert caught.value.hint is not None and caught.value.hint.setting == "model"


def test_default_model_found_in_user_folder(models_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "builtin_models_dir", lambda: tmp_path / "no-builtin")
    _, path = _save(models_dir / f"{DEFAULT_MODEL}.safetensors")
    assert resolve_model(None) == path


def test_builtin_folder_is_in_the_package(models_dir, monkeypatch, tmp_path):
    import napari_unet

    folder = registry.builtin_models_dir()
    assert folder == Path(napari_unet.__file__).resolve().parent / "models"
    # a built-in model is found by name and listed as built-in
    shipped = tmp_path / "shipped-models"
    shipped.mkdir()
    monkeypatch.setattr(registry, "builtin_models_dir", lambda: shipped)
    _, path = _save(shipped / "shipped.safetensors")
    assert resolve_model("shipped") == path
    assert [(e.name, e.builtin) for e in list_models()] == [("shipped", True)]
