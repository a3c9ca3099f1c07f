"""Zarr stores whose metadata has the wrong types or whose files are not regular files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from _blockwise_helpers import nuclei_image
from _cli_helpers import one_error, predict_cpu
from napari_unet._napari.files.reader import get_reader

pytestmark = pytest.mark.usefixtures("isolated_models")

_AXES = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
_SCALE = [{"type": "scale", "scale": [0.5, 0.5]}]


def _store(path: Path, attrs: dict, levels: int = 1) -> Path:
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", data=nuclei_image(64, seed=1), chunks=(32, 32))
    if levels > 1:
        group.create_array("1", data=np.zeros((4, 32, 32), np.uint16), chunks=(4, 32, 32))
    group.attrs.update(attrs)
    return path


def _multiscale(**changes) -> dict:
    meta = {"version": "0.4", "axes": _AXES, "datasets": [{"path": "0"}]}
    meta["datasets"][0]["coordinateTransformations"] = _SCALE
    return {"multiscales": [{**meta, **changes}]}


@pytest.mark.parametrize(
    ("attrs", "words"),
    [
        ({"multiscales": "hello"}, ["'multiscales' metadata is not a list of objects"]),
        ({"multiscales": ["a"]}, ["'multiscales' metadata is not a list of objects"]),
        ({"multiscales": {"a": 1}}, ["'multiscales' metadata is not a list of objects"]),
        ({"ome": {"multiscales": 5}}, ["'multiscales' metadata is not a list of objects"]),
        (_multiscale(datasets=[{"path": None}]), ["lists no dataset with a path"]),
        (_multiscale(datasets="0"), ["lists no dataset with a path"]),
        (_multiscale(datasets=[{"path": "nope"}]), ["dataset 'nope' that is not an array"]),
        (_multiscale(axes=[{"name": 1}, {"name": 2}]), ["x.zarr", "have no y and x"]),
    ],
)
def test_ome_zarr_metadata_of_the_wrong_type_is_one_clear_line(
    capsys, tmp_path, model_file, attrs, words
):
    source = _store(tmp_path / "x.zarr", attrs)
    code, err = predict_cpu(capsys, source, tmp_path / "o.tif", model_file)
    one_error(code, err, "Cannot read zarr image", *words)
    assert "object" not in err.replace("list of objects", "")  # no raw Python exception text
    assert get_reader(str(source)) is None


def test_levels_of_different_dimensions_are_refused(capsys, tmp_path, model_file):
    datasets = [{"path": "0", "coordinateTransformations": _SCALE}]
    datasets.append({"path": "1", "coordinateTransformations": _SCALE})
    source = _store(tmp_path / "x.zarr", _multiscale(datasets=datasets), levels=2)
    code, err = predict_cpu(capsys, source, tmp_path / "o.tif", model_file)
    one_error(code, err, "resolution levels have different numbers of dimensions")


def test_deeply_nested_zarr_attributes_are_one_clear_line(capsys, tmp_path, model_file):
    source = tmp_path / "x.zarr"
    zarr.open_group(str(source), mode="w")
    depth = 50000
    nested = '{"a":' * depth + "1" + "}" * depth
    (source / "zarr.json").write_text(
        '{"zarr_format": 3, "node_type": "group", "attributes": ' + nested + "}"
    )
    code, err = predict_cpu(capsys, source, tmp_path / "o.tif", model_file)
    one_error(code, err, "nested too deeply")


def test_invalid_json_metadata_and_an_empty_folder_are_named_as_such(capsys, tmp_path, model_file):
    garbage = tmp_path / "g.zarr"
    zarr.create_array(str(garbage), data=np.zeros((8, 8), np.uint8))
    (garbage / "zarr.json").write_text("{not json")
    code, err = predict_cpu(capsys, garbage, tmp_path / "o.tif", model_file)
    one_error(code, err, "metadata is not valid JSON")
    (tmp_path / "e.zarr").mkdir()
    code, err = predict_cpu(capsys, tmp_path / "e.zarr", tmp_path / "o.tif", model_file)
    one_error(code, err, "holds no zarr metadata")


def _chunk(store: Path) -> Path:
    return next(p for p in sorted(store.rglob("*")) if p.is_file() and p.name != "zarr.json")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("which", ["metadata", "chunk"])
def test_a_fifo_or_device_inside_a_store_is_never_read(capsys, tmp_path, model_file, kind, which):
    """A FIFO blocked forever, a link to /dev/zero filled the memory."""
    source = tmp_path / "x.zarr"
    zarr.create_array(str(source), data=nuclei_image(64, seed=1), chunks=(32, 32))
    target = source / "zarr.json" if which == "metadata" else _chunk(source)
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    for output in (tmp_path / "o.tif", tmp_path / "o.zarr"):
        code, err = predict_cpu(capsys, source, output, model_file, "-q")
        one_error(code, err, "is not a regular file")
        assert not output.exists()
    if which == "metadata":
        assert get_reader(str(source)) is None


def test_the_reader_opens_a_store_with_a_fifo_chunk_without_blocking(tmp_path):
    source = tmp_path / "x.zarr"
    zarr.create_array(str(source), data=nuclei_image(64, seed=1), chunks=(32, 32))
    chunk = _chunk(source)
    chunk.unlink()
    os.mkfifo(chunk)
    reader = get_reader(str(source))
    assert reader is not None
    data = reader(str(source))[0][0]
    with pytest.raises(OSError, match="not a regular file"):
        np.asarray(data)  # what napari draws: an error, not a viewer frozen for ever
    assert json.loads((source / "zarr.json").read_text())["shape"] == [64, 64]
