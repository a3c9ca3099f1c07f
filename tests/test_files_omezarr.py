"""The zarr stores we write are OME-Zarr 0.4 that OME-Zarr readers accept (skipped when
ome-zarr-models or ome-zarr is not installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from _blockwise_helpers import nuclei_image, save_nuclei_model
from napari_unet.cli import main

pytestmark = pytest.mark.usefixtures("isolated_models")


@pytest.fixture
def outputs(tmp_path, capsys) -> tuple[Path, Path]:
    model = save_nuclei_model(tmp_path / "m.safetensors")
    stack = np.stack([nuclei_image(64, seed=1), nuclei_image(64, seed=2)])
    tifffile.imwrite(
        tmp_path / "in.tif",
        stack,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "TYX", "unit": "um"},
    )
    code = main(
        [
            str(a)
            for a in (
                "predict",
                tmp_path / "in.tif",
                "-o",
                tmp_path / "l.zarr",
                "--probabilities",
                tmp_path / "p.zarr",
                "-m",
                model,
                "--device",
                "cpu",
                "-q",
            )
        ]
    )
    assert code == 0, capsys.readouterr().err
    return tmp_path / "l.zarr", tmp_path / "p.zarr"


def test_ome_zarr_models_validate_labels_and_probabilities(outputs):
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v04.image import Image
    from ome_zarr_models.v04.image_label import ImageLabel

    labels, probs = outputs
    label = ImageLabel.from_zarr(zarr.open_group(str(labels), mode="r"))
    axes = label.attributes.multiscales[0].axes
    assert [(a.name, a.type, a.unit) for a in axes] == [
        ("t", "time", None),
        ("y", "space", "micrometer"),
        ("x", "space", "micrometer"),
    ]
    image = Image.from_zarr(zarr.open_group(str(probs), mode="r"))
    scale = image.attributes.multiscales[0].datasets[0].coordinateTransformations[0].scale
    assert list(scale) == [1.0, 1.0, 0.5, 0.5]
    assert [c.label for c in image.attributes.omero.channels] == [
        "background",
        "interior",
        "boundary",
    ]


def test_ome_zarr_py_reads_labels_as_labels(outputs):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    labels, _ = outputs
    [node, *_] = Reader(parse_url(str(labels)))()
    assert any(isinstance(spec, Label) for spec in node.specs)
    assert node.data[0].shape == (2, 64, 64)


def test_large_label_stores_get_a_pyramid(tmp_path, monkeypatch):
    from _blockwise_helpers import nuclei_model
    from napari_unet.core.io.lazy import lazy_from_array, open_lazy
    from napari_unet.core.large.blockwise import predict_blockwise
    from napari_unet.core.progress import drain

    monkeypatch.setattr("napari_unet.core.large.block_io.PYRAMID_SIDE", 64)
    image = lazy_from_array(nuclei_image(256, seed=3), "YX", pixel_size=(0.5, 0.5))
    drain(
        predict_blockwise(
            image, nuclei_model(), tmp_path / "l.zarr", block_size=128, overlap=16, device="cpu"
        )
    )
    group = zarr.open_group(str(tmp_path / "l.zarr"), mode="r")
    datasets = group.attrs["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [
        [0.5, 0.5],
        [1.0, 1.0],
        [2.0, 2.0],
    ]
    full = np.asarray(group["0"])
    np.testing.assert_array_equal(np.asarray(group["1"]), full[::2, ::2])
    np.testing.assert_array_equal(np.asarray(group["2"]), full[::4, ::4])
    assert len(open_lazy(tmp_path / "l.zarr").levels) == 3
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v04.image_label import ImageLabel

    ImageLabel.from_zarr(group)
