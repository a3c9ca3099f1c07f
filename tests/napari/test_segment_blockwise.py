"""Large and lazy images in napari: the reader opens zarr and big TIFFs as dask arrays, and the
Segment widget predicts them block by block into a zarr-backed Labels layer."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from _blockwise_helpers import nuclei_image, nuclei_model, save_nuclei_model
from napari_unet._napari.files import reader as _reader
from napari_unet._napari.files.reader import get_reader, opens_lazily
from napari_unet._napari.segment.blockwise import NO_RETHRESHOLD
from napari_unet._napari.segment.widget import SegmentWidget
from napari_unet.core.analysis.metrics import match
from napari_unet.core.inference.events import BlockDone
from napari_unet.core.inference.predict import predict_labels
from napari_unet.core.large.block_io import create_label_zarr
from napari_unet.core.network.device import Predictor
from napari_unet.core.progress import drain

BLOCK = 64  # 300 px planes: 5 x 5 blocks each
TIMEOUT = 60_000


@pytest.fixture
def segment(make_napari_viewer, isolated_models, qtbot, tmp_path, monkeypatch):
    """(viewer, Segment widget) with the nuclei test model selected and small blocks; label
    stores go under ``tmp_path``."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    save_nuclei_model(isolated_models / "nuclei-test.safetensors")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert isinstance(widget, SegmentWidget)
    widget.refresh_models(select="nuclei-test")
    assert widget.model.value.name == "nuclei-test"
    widget.block_size = BLOCK
    widget.precision.value = "fp32"
    yield viewer, widget
    if widget.job is not None:
        widget.cancel()
        qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def stack():
    """(2, 300, 300) uint16 nuclei."""
    return np.stack([nuclei_image(300, seed=3), nuclei_image(300, seed=5)])


def _layer_for(viewer, image_name):
    return [layer for layer in viewer.layers if layer.name.startswith(f"{image_name} labels")]


def test_lazy_stack_is_segmented_blockwise_into_a_zarr_layer(segment, qtbot, stack, tmp_path):
    viewer, widget = segment
    lazy = da.from_array(stack, chunks=(1, 128, 128))
    viewer.add_image(lazy, name="big", metadata={"axes": "TYX"}, scale=(1, 0.5, 0.5))
    assert not widget.apply_button.enabled and widget.apply_button.tooltip == NO_RETHRESHOLD
    job = widget.run()
    assert job is not None
    events = []
    job.worker.yielded.connect(events.append)
    [layer] = _layer_for(viewer, "big")  # made before the first block
    assert isinstance(layer.data, zarr.Array) and layer.data.dtype == np.uint32
    assert layer.data.shape == stack.shape and not layer.editable
    refreshed, refresh = [], layer.refresh

    def counting(*args, **kwargs):
        refreshed.append(layer.editable)  # not editable until the result is in
        refresh(*args, **kwargs)

    layer.refresh = counting
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
    assert layer.editable and "objects" in widget.status.value
    assert False in refreshed  # redrawn while the blocks were written
    assert layer._slice.image.raw.max() > 0  # what is shown is the labels
    np.testing.assert_allclose(layer.scale, (1, 0.5, 0.5))
    store = Path(layer.metadata["labels_store"])
    assert store.is_dir() and store.parent.name.startswith("napari-unet-")
    assert store.parent.parent == tmp_path
    ome = dict(zarr.open_group(str(store), mode="r").attrs)  # an OME-Zarr label image
    assert "image-label" in ome
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["t", "y", "x"]
    assert ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][1:] == [
        0.5,
        0.5,
    ]
    final = [e.payload for e in events if isinstance(e.payload, BlockDone) and e.payload.final]
    assert len(final) == 2 * 25
    assert {r.index for r in final} == {(0,), (1,)}
    labels = np.asarray(layer.data[...])
    _, expected = drain(
        predict_labels(
            stack,
            "TYX",
            nuclei_model(),
            device="cpu",
            precision="fp32",
            postprocess=widget._settings("instances"),
        )
    )
    for plane in range(2):
        assert match(labels[plane], expected[plane], 0.5).ap >= 0.99
    ids = [set(np.unique(labels[p])) - {0} for p in range(2)]
    assert not ids[0] & ids[1]  # unique in the stack
    assert len(ids[0]) > 10 and len(ids[1]) > 10
    # an object crossing a block border carries one id: it is one connected component
    from scipy import ndimage as ndi

    for object_id in _crossing(labels[0], BLOCK):
        _, n = ndi.label(labels[0] == object_id)
        assert n == 1


def _crossing(labels: np.ndarray, block: int) -> list[int]:
    """Ids on both sides of a block border (rows or columns at multiples of ``block``)."""
    ids = set()
    for border in range(block, labels.shape[0], block):
        above, below = labels[border - 1], labels[border]
        ids |= set(above[(above > 0) & (above == below)].tolist())
        left, right = labels[:, border - 1], labels[:, border]
        ids |= set(left[(left > 0) & (left == right)].tolist())
    return sorted(ids)


def test_cancel_removes_the_layer_being_filled(segment, qtbot, stack, monkeypatch):
    viewer, widget = segment
    original = Predictor.__call__

    def slow(self, batch):
        time.sleep(0.1)
        return original(self, batch)

    monkeypatch.setattr(Predictor, "__call__", slow)
    other = viewer.add_labels(np.ones((8, 8), np.uint16), name="mine")
    viewer.add_image(zarr.array(stack[0], chunks=(100, 100)), name="big")
    job = widget.run()
    events = []
    job.worker.yielded.connect(events.append)
    [layer] = _layer_for(viewer, "big")
    store = Path(layer.metadata["labels_store"])
    qtbot.waitUntil(lambda: any(e.stage == "predict" for e in events), timeout=TIMEOUT)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
    assert _layer_for(viewer, "big") == [] and not store.parent.exists()
    assert [la.name for la in viewer.layers] == ["mine", "big"]
    np.testing.assert_array_equal(other.data, 1)
    assert widget.status.value == "Cancelled."


def test_small_in_memory_images_keep_the_in_memory_path(segment, stack):
    viewer, widget = segment
    viewer.add_image(stack[0], name="small")
    assert widget.apply_button.enabled and not widget._blockwise()


def _ome_zarr(path, data):
    """An OME-Zarr 0.4 image (zarr v2), axes z, y, x in micrometres, two levels."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=data, chunks=(1, 64, 64))
    group.create_array("1", data=data[:, ::2, ::2], chunks=(1, 64, 64))
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    datasets = [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1.0, 1.0]}]},
    ]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]


def test_reader_opens_ome_zarr_lazily_in_the_viewer(make_napari_viewer, tmp_path, stack):
    path = tmp_path / "scan.ome.zarr"
    _ome_zarr(path, stack)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-unet")
    assert layer.name == "scan" and type(layer).__name__ == "Image"
    assert layer.multiscale and len(layer.data) == 2  # both levels of the store
    assert isinstance(layer.data[0], da.Array) and layer.data[0].shape == stack.shape
    np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.5))
    assert [str(u) for u in layer.units] == ["micrometer"] * 3
    assert layer.metadata["axes"] == "ZYX" and layer.metadata["z_spacing"] == pytest.approx(2.0)
    np.testing.assert_array_equal(layer.data[0][1, 10:20].compute(), stack[1, 10:20])


def test_reader_opens_zarr_labels_and_plain_arrays(tmp_path, stack):
    labels = create_label_zarr(
        tmp_path / "out.zarr", (300, 300), "uint16", (64, 64), "YX", (0.5, 0.5)
    )
    labels[:10, :10] = 7
    [(data, kwargs, kind)] = get_reader(str(tmp_path / "out.zarr"))(str(tmp_path / "out.zarr"))
    assert kind == "labels" and isinstance(data, da.Array)
    np.testing.assert_allclose(kwargs["scale"], (0.5, 0.5))
    zarr.create_array(str(tmp_path / "plain.zarr"), data=stack, chunks=(1, 100, 100))
    [(data, kwargs, kind)] = get_reader(str(tmp_path / "plain.zarr"))(str(tmp_path / "plain.zarr"))
    assert kind == "image" and isinstance(data, da.Array) and kwargs["metadata"]["axes"] == "ZYX"
    (tmp_path / "empty.zarr").mkdir()
    assert get_reader(str(tmp_path / "empty.zarr")) is None  # never raises
    (tmp_path / "folder").mkdir()
    assert get_reader(str(tmp_path / "folder")) is None


def test_large_tiffs_open_lazily(tmp_path, stack, monkeypatch):
    plain, packed = tmp_path / "plain.tif", tmp_path / "packed.tif"
    tifffile.imwrite(plain, stack, imagej=True, metadata={"axes": "TYX"})
    tifffile.imwrite(packed, stack, compression="zlib", tile=(64, 64))
    size = stack.nbytes
    assert not opens_lazily(plain, available=100 * size)
    assert opens_lazily(plain, available=2 * size)  # more than a quarter of the memory
    assert not opens_lazily(packed, available=100 * size)
    monkeypatch.setattr(_reader, "LAZY_COMPRESSED_BYTES", size // 2)
    assert opens_lazily(packed, available=100 * size)
    assert not opens_lazily(plain, available=100 * size)  # memory-mapped instead
    [(data, kwargs, kind)] = get_reader(str(packed))(str(packed))
    assert isinstance(data, da.Array) and kind == "image"
    np.testing.assert_array_equal(data.compute(), stack)
    [(data, _, _)] = get_reader(str(plain))(str(plain))
    assert isinstance(data, np.memmap)
    assert kwargs["metadata"]["source_path"] == str(packed)


def test_block_size_is_a_setting_in_the_advanced_section(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert widget.block_size is None  # automatic by default
    widget.block_pixels.value = 1024
    assert widget.block_size == 1024
    widget.block_size = None
    assert widget.block_pixels.value == 0 and widget.block_pixels in list(widget.advanced)
