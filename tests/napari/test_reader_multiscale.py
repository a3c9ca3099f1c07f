"""Multiscale OME-Zarr stores open as multiscale layers (every level, placed by the metadata's
scale), and Segment runs on their full-resolution level."""

from __future__ import annotations

import tempfile

import dask.array as da
import numpy as np
import pytest
import zarr

from _blockwise_helpers import nuclei_image, save_nuclei_model
from napari_unet._napari.files.reader import get_reader
from napari_unet.core.large.block_io import add_pyramid, create_label_zarr

TIMEOUT = 60_000


def _ome_zarr_py_image(path, data: np.ndarray) -> None:
    """A 3-level OME-Zarr 0.5 image written by ome-zarr-py, 0.5 µm pixels."""
    pytest.importorskip("ome_zarr")
    from ome_zarr.writer import write_image

    group = zarr.open_group(str(path), mode="w")
    write_image(data, group, scale_factors=(2, 4), axes="yx", scale={"y": 0.5, "x": 0.5},
                axes_units={"y": "micrometer", "x": "micrometer"})  # fmt: skip


def test_a_multiscale_ome_zarr_opens_as_a_multiscale_layer_and_segments_level_0(
    make_napari_viewer, qtbot, tmp_path, isolated_models, monkeypatch
):
    image = nuclei_image(256, seed=4)
    path = tmp_path / "scan.ome.zarr"
    _ome_zarr_py_image(path, image)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-unet")
    assert type(layer).__name__ == "Image" and layer.multiscale
    assert [tuple(level.shape) for level in layer.data] == [(256, 256), (128, 128), (64, 64)]
    assert all(isinstance(level, da.Array) for level in layer.data)
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    np.testing.assert_array_equal(np.asarray(layer.data[0][:8, :8]), image[:8, :8])
    # the lower levels cover the same world extent as level 0
    np.testing.assert_allclose(layer.extent.world[1], (127.75, 127.75), atol=0.6)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the labels store goes here
    save_nuclei_model(isolated_models / "nuclei-test.safetensors")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    qtbot.waitUntil(lambda: widget.ready, timeout=TIMEOUT)
    widget.refresh_models(select="nuclei-test")
    widget.precision.value = "fp32"
    widget.select_image(layer)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
    [labels] = [la for la in viewer.layers if la.name.startswith("scan labels")]
    assert tuple(labels.data.shape) == image.shape  # level 0, the full resolution
    np.testing.assert_allclose(labels.scale, (0.5, 0.5))
    assert int(np.asarray(labels.data[...]).max()) > 5


def test_our_label_pyramid_opens_as_multiscale_labels(tmp_path):
    store = tmp_path / "labels.zarr"
    labels = create_label_zarr(store, (300, 300), "uint16", (64, 64), "YX", (0.5, 0.5))
    labels[:40, :40] = 7
    assert add_pyramid(store, min_side=64) == 3
    [(data, kwargs, kind)] = get_reader(str(store))(str(store))
    assert kind == "labels" and kwargs["multiscale"] is True
    assert [tuple(level.shape) for level in data] == [(300, 300), (150, 150), (75, 75), (38, 38)]
    np.testing.assert_allclose(kwargs["scale"], (0.5, 0.5))
    assert int(data[1][10, 10].compute()) == 7

    plain = tmp_path / "one.zarr"  # a single level stays a plain array
    create_label_zarr(plain, (100, 100), "uint16", (64, 64), "YX", (0.5, 0.5))
    [(data, kwargs, _)] = get_reader(str(plain))(str(plain))
    assert isinstance(data, da.Array) and "multiscale" not in kwargs
