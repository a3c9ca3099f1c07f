"""Outputs that would destroy what is not theirs, inputs that are not files, unreadable places."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from _blockwise_helpers import nuclei_image
from _cli_helpers import predict_cpu, run
from napari_unet.core.large.block_io import create_label_zarr

pytestmark = pytest.mark.usefixtures("isolated_models")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return nuclei_image(96, seed=3)


def predict(capsys, model_file, *argv) -> tuple[int, str]:
    return run(capsys, "predict", *argv, "-m", model_file, "--device", "cpu", "-q")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_an_ordinary_folder_named_zarr_is_never_replaced(capsys, tmp_path, model_file, image):
    tifffile.imwrite(tmp_path / "in.tif", image)
    results = tmp_path / "results.zarr"
    results.mkdir()
    (results / "notes.txt").write_text("my notes")
    before = snapshot(results)
    code, err = predict(capsys, model_file, tmp_path / "in.tif", "-o", results)
    assert code == 2 and err.count("\n") == 1, err
    assert "not a zarr store written by napari-unet" in err
    assert snapshot(results) == before


def test_a_foreign_zarr_store_is_never_replaced(capsys, tmp_path, model_file, image):
    tifffile.imwrite(tmp_path / "in.tif", image)
    store = tmp_path / "theirs.zarr"
    zarr.create_array(str(store), data=np.ones((8, 8), np.uint8))
    before = snapshot(store)
    for option in ("-o", "--probabilities"):
        argv = [tmp_path / "in.tif", "-o", tmp_path / "labels.zarr", option, store]
        if option == "-o":
            argv = [tmp_path / "in.tif", "-o", store]
        code, err = predict(capsys, model_file, *argv)
        assert code == 2 and "napari-unet replaces only stores it wrote" in err, err
        assert snapshot(store) == before


def test_the_input_store_is_never_the_output(capsys, tmp_path, model_file, image):
    store = tmp_path / "in.zarr"
    labels = create_label_zarr(store, image.shape, "uint16", (48, 48), "YX")  # ours, even
    labels[:] = image.astype(np.uint16)
    before = snapshot(store)
    code, err = predict(capsys, model_file, store / "0", "-o", store)
    assert code == 2 and "holds the input" in err, err
    assert snapshot(store) == before


def test_a_folder_holding_the_input_is_never_the_output(capsys, tmp_path, model_file, image):
    folder = tmp_path / "out.zarr"
    folder.mkdir()
    tifffile.imwrite(folder / "x.tif", image)
    before = snapshot(folder)
    code, err = predict(capsys, model_file, folder / "x.tif", "-o", folder)
    assert code == 2, err
    assert snapshot(folder) == before


def test_our_own_store_is_replaced(capsys, tmp_path, model_file, image):
    tifffile.imwrite(tmp_path / "in.tif", image)
    out = tmp_path / "labels.zarr"
    for _ in range(2):
        code, err = predict(
            capsys,
            model_file,
            tmp_path / "in.tif",
            "-o",
            out,
            "--probabilities",
            tmp_path / "p.zarr",
        )
        assert code == 0, err
    assert zarr.open_array(str(out / "0"))[:].max() > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_probabilities_store_is_ome_zarr(capsys, tmp_path, model_file, image):
    tifffile.imwrite(
        tmp_path / "in.tif",
        np.stack([image, image]),
        imagej=True,
        metadata={"axes": "TYX", "unit": "um"},
        resolution=(2.0, 2.0),
    )
    code, err = predict(
        capsys,
        model_file,
        tmp_path / "in.tif",
        "-o",
        tmp_path / "l.zarr",
        "--probabilities",
        tmp_path / "p.zarr",
    )
    assert code == 0, err
    group = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    meta = group.attrs["multiscales"][0]
    assert [a["name"] for a in meta["axes"]] == ["t", "c", "y", "x"]  # NGFF: time, channel, space
    assert [a.get("type") for a in meta["axes"]] == ["time", "channel", "space", "space"]
    assert meta["datasets"][0]["coordinateTransformations"][0]["scale"] == [1, 1, 0.5, 0.5]
    probs = group["0"]
    assert probs.shape == (2, 3, 96, 96) and probs.dtype == np.float32
    np.testing.assert_allclose(np.asarray(probs[0]).sum(axis=0), 1.0, atol=1e-4)


@pytest.mark.timeout(20)
def test_a_fifo_is_refused_without_being_opened(capsys, tmp_path, model_file):
    fifo = tmp_path / "x.tif"
    os.mkfifo(fifo)
    for out in (tmp_path / "out.zarr", tmp_path / "out.tif", tmp_path):
        code, err = predict(capsys, model_file, fifo, "-o", out)
        assert code == 2 and "named pipe" in err, err
    from napari_unet._napari.files.reader import get_reader

    assert get_reader(str(fifo)) is None


@pytest.mark.timeout(20)
def test_a_fifo_is_refused_by_train(capsys, tmp_path):
    fifo = tmp_path / "x.tif"
    os.mkfifo(fifo)
    tifffile.imwrite(tmp_path / "x_labels.tif", np.zeros((32, 32), np.uint16))
    code, err = run(
        capsys,
        "train",
        "--image",
        fifo,
        "--labels",
        tmp_path / "x_labels.tif",
        "-o",
        tmp_path / "m.safetensors",
        "--device",
        "cpu",
        "-q",
    )
    assert code == 2 and "named pipe" in err, err


def test_reader_gives_none_for_a_zarr_it_cannot_look_into(tmp_path, monkeypatch):
    from napari_unet._napari.files.reader import get_reader

    store = tmp_path / "locked" / "x.zarr"
    real = Path.is_dir

    def is_dir(self):
        if "locked" in str(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "is_dir", is_dir)
    assert get_reader(str(store)) is None


def test_a_model_that_may_not_be_read_is_reported_as_such(
    capsys, tmp_path, model_file, monkeypatch
):
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, m, **k: False if str(p) == str(model_file) else real(p, m, **k)
    )
    tifffile.imwrite(tmp_path / "in.tif", nuclei_image(32, seed=1))
    code, err = predict(capsys, model_file, tmp_path / "in.tif", "-o", tmp_path / "o.tif")
    assert code == 2 and "permission denied" in err and "does not exist" not in err, err


def test_a_model_behind_a_closed_folder_is_reported_as_such(capsys, tmp_path, monkeypatch):
    locked = tmp_path / "locked" / "m.safetensors"
    real = Path.stat

    def stat(self, **kwargs):
        if "locked" in str(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    tifffile.imwrite(tmp_path / "in.tif", nuclei_image(32, seed=1))
    code, err = predict_cpu(capsys, tmp_path / "in.tif", tmp_path / "o.tif", locked)
    assert code == 2 and "permission denied" in err, err


def test_an_output_that_is_a_link_to_the_input_is_refused(capsys, tmp_path, model_file, image):
    tifffile.imwrite(tmp_path / "in.tif", image)
    (tmp_path / "out.tif").symlink_to(tmp_path / "in.tif")
    before = (tmp_path / "in.tif").read_bytes()
    for extra in ([], ["--blockwise"]):
        code, err = predict(
            capsys, model_file, tmp_path / "in.tif", "-o", tmp_path / "out.tif", *extra
        )
        assert code == 2 and "one of the inputs" in err, err
    assert (tmp_path / "in.tif").read_bytes() == before


def test_a_zarr_output_that_is_a_link_to_a_folder_is_refused(capsys, tmp_path, model_file, image):
    tifffile.imwrite(tmp_path / "in.tif", image)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "data.txt").write_text("keep")
    (tmp_path / "out.zarr").symlink_to(theirs)
    code, err = predict(capsys, model_file, tmp_path / "in.tif", "-o", tmp_path / "out.zarr")
    assert code == 2, err
    assert (theirs / "data.txt").read_text() == "keep"
    assert (tmp_path / "out.zarr").is_symlink()


@pytest.mark.timeout(60)
def test_an_output_store_whose_metadata_is_a_fifo_is_refused_without_blocking(
    capsys, tmp_path, model_file, image
):
    tifffile.imwrite(tmp_path / "in.tif", image)
    (tmp_path / "o.zarr").mkdir()
    os.mkfifo(tmp_path / "o.zarr" / "zarr.json")
    code, err = predict(capsys, model_file, tmp_path / "in.tif", "-o", tmp_path / "o.zarr")
    assert code == 2 and "not a zarr store written by napari-unet" in err, err
    assert (tmp_path / "o.zarr" / "zarr.json").is_fifo()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_package_that_is_a_fifo_or_a_device_is_never_read(capsys, tmp_path, kind):
    pytest.importorskip("bioimageio.spec")
    package = tmp_path / "p.zip"
    if kind == "fifo":
        os.mkfifo(package)
    else:
        package.symlink_to("/dev/zero")
    code, err = run(capsys, "import-model", package)
    assert code == 2 and "not a regular file" in err, err
