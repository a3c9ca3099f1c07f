"""Model files, model metadata and options that ask for the impossible: one clear line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import load_file, save_file

from _blockwise_helpers import nuclei_image
from _cli_helpers import one_error, predict_cpu, run, train_argv
from napari_unet.core.config import ModelConfig
from napari_unet.core.errors import ModelFileError
from napari_unet.core.network.metadata import METADATA_KEY
from napari_unet.core.network.model import build_model
from napari_unet.core.network.registry import list_models, load_model
from napari_unet.core.network.weights import LoadedModel, save_model, weights_hash

pytestmark = pytest.mark.usefixtures("isolated_models")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "img.tif"
    tifffile.imwrite(path, nuclei_image(64, seed=2))
    return path


def rewrite(source: Path, target: Path, edit=None, tensors_edit=None) -> Path:
    """A copy of ``source`` with its metadata passed through ``edit`` (a dict -> dict or str)
    and its tensors through ``tensors_edit``."""
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as handle:
        meta = json.loads(handle.metadata()[METADATA_KEY])
    tensors = load_file(str(source))
    if tensors_edit is not None:
        tensors_edit(tensors)
        meta["weights_sha256"] = weights_hash(tensors)
    text = edit(meta) if edit is not None else meta
    save_file(
        tensors,
        str(target),
        metadata={METADATA_KEY: text if isinstance(text, str) else json.dumps(text)},
    )
    return target


def _config(**changes):
    def edit(meta):
        meta["config"].update(changes)
        return meta

    return edit


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (_config(depth=4.5), ["depth must be a whole number"]),
        (_config(base_channels=16.0), ["base_channels must be a whole number"]),
        (_config(depth=True), ["depth must be a whole number"]),
        (_config(base_channels=100000, max_channels=100000), ["at most 4096"]),
        (_config(depth=8, base_channels=4096, max_channels=4096), ["million weights"]),
        (_config(in_channels=10**9), ["in_channels"]),
        (
            lambda m: {**m, "normalize": {"method": "percentile", "low": "a", "high": 99}},
            ["normalize 'low'"],
        ),
        (
            lambda m: {**m, "normalize": {"method": "percentile", "low": 90, "high": 10}},
            ["normalize"],
        ),
        (lambda m: {**m, "normalize": {"method": ["x"]}}, ["normalize 'method'"]),
        (lambda m: {**m, "normalize": {"low": 1e400}}, ["normalize"]),
        (lambda m: {**m, "tiling": {"tile_size": 10**9, "batch_size": 1}}, ["tile size"]),
        (lambda m: {**m, "tiling": {"tile_size": 256, "batch_size": 10**9}}, ["batch"]),
        (lambda m: {**m, "tiling": {"tile_size": 256, "halo": 100000}}, ["overlap"]),
        (lambda m: {**m, "tiling": {"tile_size": 256.5}}, ["tile size"]),
        (lambda m: "[" * 100000 + "]" * 100000, ["nested too deeply"]),
    ],
)
def test_hostile_metadata_is_refused_in_one_line(
    capsys, tmp_path, model_file, image_file, edit, words
):
    bad = rewrite(model_file, tmp_path / "bad.safetensors", edit)
    code, err = predict_cpu(capsys, image_file, tmp_path, bad)
    one_error(code, err, *words)


def test_a_deeply_nested_model_does_not_break_the_model_list(capsys, isolated_models, model_file):
    rewrite(model_file, isolated_models / "deep.safetensors", lambda m: "[" * 100000 + "]" * 100000)
    rewrite(model_file, isolated_models / "good.safetensors")
    entries = {e.name: e for e in list_models() if not e.builtin}
    assert entries["good"].error is None and "nested too deeply" in entries["deep"].error
    code, err = run(capsys, "models")
    assert code == 0, err


def _nan_statistics(tmp_path: Path) -> Path:
    net = build_model(ModelConfig(depth=1, base_channels=4), seed=0).eval()
    path = save_model(
        tmp_path / "bn.safetensors", net, LoadedModel.from_model(net, name="bn").metadata
    )

    def poison(tensors):
        key = next(k for k in tensors if k.endswith("running_var"))
        tensors[key][0] = float("nan")

    return rewrite(path, tmp_path / "nan.safetensors", tensors_edit=poison)


def test_nan_statistics_are_refused_at_load(capsys, tmp_path, image_file):
    bad = _nan_statistics(tmp_path)
    with pytest.raises(ModelFileError, match="running_var holds NaN"):
        load_model(bad)
    code, err = predict_cpu(capsys, image_file, tmp_path, bad)
    one_error(code, err, "NaN")


def test_a_model_with_nan_weights_is_never_saved(tmp_path):
    net = build_model(ModelConfig(depth=1, base_channels=4), seed=0)
    with torch.no_grad():
        net.head.weight.fill_(float("inf"))
    with pytest.raises(Exception, match="NaN or infinite"):
        save_model(tmp_path / "m.safetensors", net, LoadedModel.from_model(net).metadata)
    assert not [p for p in tmp_path.iterdir() if "m.safetensors" in p.name]


@pytest.mark.parametrize(
    "option",
    [["--batch-size", "1000000000"], ["--overlap", "100000"], ["--tile-size", "1000000"]],
)
def test_absurd_tiling_options_are_refused(capsys, tmp_path, model_file, image_file, option):
    for out in (tmp_path, tmp_path / "out.zarr"):
        code, err = predict_cpu(capsys, image_file, out, model_file, *option)
        one_error(code, err)
    assert not (tmp_path / "out.zarr").exists()


def test_a_batch_larger_than_the_tiles_runs(capsys, tmp_path, model_file, image_file):
    code, err = predict_cpu(
        capsys, image_file, tmp_path, model_file, "--batch-size", "1000", "--tile-size", "32", "-q"
    )
    assert code == 0, err


@pytest.fixture
def training_files(tmp_path) -> tuple[Path, Path]:
    image = nuclei_image(64, seed=4)
    labels = np.zeros((64, 64), np.uint16)
    labels[10:20, 10:20] = 1
    labels[30:44, 30:40] = 2
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "img_labels.tif", labels)
    return tmp_path / "img.tif", tmp_path / "img_labels.tif"


@pytest.mark.parametrize(
    "option",
    [
        ["--patch-size", "100000"],
        ["--batch-size", "100000"],
        ["--batch-size", "1000", "--patch-size", "4096"],
        ["--model", "scratch", "--base-channels", "100000"],
    ],
)
def test_absurd_training_sizes_leave_no_model(capsys, tmp_path, training_files, model_file, option):
    image, labels = training_files
    out = tmp_path / "new.safetensors"
    model = [] if "--model" in option else ["--model", model_file]
    code, err = run(
        capsys,
        "train",
        "--image",
        image,
        "--labels",
        labels,
        "-o",
        out,
        "--device",
        "cpu",
        "-q",
        *model,
        *option,
    )
    one_error(code, err)
    assert not out.exists()


def test_a_diverging_training_never_writes_a_nan_model(
    capsys, tmp_path, training_files, model_file
):
    image, labels = training_files
    out = tmp_path / "new.safetensors"
    code, err = run(
        capsys,
        *train_argv(image, labels, out, model_file),
        "--learning-rate",
        "1e30",
        "--validation-fraction",
        "0",
        "--epochs",
        "2",
        "--steps-per-epoch",
        "2",
        "--patch-size",
        "32",
        "--batch-size",
        "1",
    )
    one_error(code, err, "diverged")
    loaded = load_model(out)  # whatever is there loads: the last good model
    assert all(torch.isfinite(t).all() for t in loaded.model.state_dict().values())


_YAML_ANCHORS = "".join(
    f"{name}: &{name} [{','.join(['*' + prev] * 9 if prev else ['x'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("rdf", "words"),
    [
        (": : :\n\t- [", ["not valid YAML"]),
        ("!!python/object/apply:os.system ['touch pwned']\n", ["not valid YAML"]),
        ("[" * 100000 + "]" * 100000, ["nested too deeply"]),
        (_YAML_ANCHORS + "type: model\n", ["format_version"]),
        ("type: model\nformat_version: 0.5.3\nname: x\n", ["Invalid model description: name"]),
    ],
)
def test_a_hostile_rdf_yaml_is_one_clear_line(capsys, tmp_path, rdf, words):
    import zipfile

    pytest.importorskip("bioimageio.spec")
    package = tmp_path / "pkg.zip"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("rdf.yaml", rdf)
    code, err = run(capsys, "import-model", package, "--name", "imported")
    one_error(code, err, "not a valid bioimage.io model package", *words)
    assert not (tmp_path / "pwned").exists()


def test_a_package_that_is_not_a_zip_is_one_clear_line(capsys, tmp_path):
    pytest.importorskip("bioimageio.spec")
    package = tmp_path / "pkg.zip"
    package.write_bytes(b"PK\x03\x04garbage")
    code, err = run(capsys, "import-model", package)
    one_error(code, err, "not a valid bioimage.io model package")


def test_an_integer_of_5000_digits_in_the_metadata_is_one_clear_line(
    capsys, tmp_path, isolated_models, model_file, image_file
):
    text = '{"format": "napari-unet", "format_version": 1' + "0" * 5000 + "}"
    bad = rewrite(model_file, tmp_path / "bad.safetensors", lambda m: text)
    code, err = predict_cpu(capsys, image_file, tmp_path, bad)
    one_error(code, err, "the model metadata cannot be read")
    rewrite(model_file, isolated_models / "huge.safetensors", lambda m: text)
    code, err = run(capsys, "models")
    assert code == 0, err


@pytest.mark.parametrize(
    ("provenance", "words"),
    [
        ({"metrics": [1, 2]}, ["'provenance.metrics' must be a JSON object"]),
        ({"settings": "x"}, ["'provenance.settings' must be a JSON object"]),
        ({"metrics": {"rounds": "x"}}, ["'provenance.metrics.rounds' must be a list"]),
        ({"data_hashes": "x"}, ["'provenance.data_hashes' must be a list"]),
    ],
)
def test_provenance_of_the_wrong_type_is_refused_before_training(
    capsys, tmp_path, training_files, model_file, provenance, words
):
    """It broke the fine-tune only when saving, after the training: exit 1."""
    bad = rewrite(
        model_file, tmp_path / "bad.safetensors", lambda m: {**m, "provenance": provenance}
    )
    image, labels = training_files
    out = tmp_path / "out.safetensors"
    code, err = run(capsys, *train_argv(image, labels, out, bad, "--epochs", "1"))
    one_error(code, err, *words)
    assert not out.exists()


def test_class_names_of_a_megabyte_are_not_printed_whole(capsys, tmp_path, model_file, image_file):
    bad = rewrite(
        model_file, tmp_path / "bad.safetensors", lambda m: {**m, "class_names": "x" * 10**6}
    )
    code, err = predict_cpu(capsys, image_file, tmp_path, bad)
    one_error(code, err, "'class_names' must be a list of 3 strings")
    assert len(err) < 1000


def test_a_model_that_is_a_fifo_is_named_as_such(capsys, tmp_path, image_file):
    import os

    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    code, err = predict_cpu(capsys, image_file, tmp_path, fifo)
    one_error(code, err, "not a regular file")
