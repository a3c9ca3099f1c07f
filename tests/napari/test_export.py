"""The Export widget, opened through the manifest in a real viewer, writing real TIFF files."""

import numpy as np
import pytest
import tifffile

from napari_unet._napari.files.export import (
    ExportWidget,
    clean_stem,
    label_dtype,
    planes,
    safe_name,
)
from napari_unet.core.errors import UserError
from napari_unet.core.io import reading
from napari_unet.core.io import writing as writer

RNG = np.random.default_rng(1)


def _labels(shape, high=50):
    return RNG.integers(0, high, shape).astype(np.uint16)


@pytest.fixture
def export(make_napari_viewer, tmp_path):
    """(viewer, Export widget docked from the manifest, output folder)."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Export")
    assert isinstance(widget, ExportWidget)
    out = tmp_path / "out"
    out.mkdir()
    widget.folder.value = out
    return viewer, widget, out


def test_exports_one_layer_readable_by_tifffile(export):
    viewer, widget, out = export
    labels = _labels((3, 20, 24))
    viewer.add_labels(labels, name="my cells", scale=(2.0, 0.25, 0.25), metadata={"axes": "ZYX"})
    assert widget.labels_layer.value.name == "my cells"
    assert widget.file_name.value == "my_cells.tif"
    widget.file_name.value = "corrected"
    written = widget.export()
    assert written == [out / "corrected.tif"]
    with tifffile.TiffFile(written[0]) as tif:
        assert tif.is_imagej and tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        np.testing.assert_array_equal(tif.asarray(), labels)
        assert tif.asarray().dtype == np.uint16
    read = reading.read_image(written[0])
    assert read.axes == "ZYX" and read.pixel_size == pytest.approx((0.25, 0.25))
    assert read.z_spacing == pytest.approx(2.0)
    assert "Exported 1 file" in widget.status.value


def test_all_layers_uint32_and_image_beside_them(export):
    viewer, widget, out = export
    image = RNG.integers(0, 255, (20, 24)).astype(np.uint8)
    viewer.add_image(image, name="raw", scale=(0.5, 0.5))
    first, second = _labels((20, 24)), _labels((20, 24))
    viewer.add_labels(first, name="a", scale=(0.5, 0.5))
    viewer.add_labels(second, name="b", scale=(0.5, 0.5))
    widget.all_layers.value = True
    widget.dtype.value = "uint32"
    widget.with_image.value = True
    widget.image_layer.value = viewer.layers["raw"]
    written = widget.export()
    assert sorted(p.name for p in written) == ["a.tif", "b.tif", "raw.tif"]
    for name, expected in [("a", first), ("b", second)]:
        data = tifffile.imread(out / f"{name}.tif")
        assert data.dtype == np.uint32
        np.testing.assert_array_equal(data, expected)
    raw = reading.read_image(out / "raw.tif")
    np.testing.assert_array_equal(raw.data, image)
    assert raw.pixel_size == pytest.approx((0.5, 0.5))


def test_one_file_per_plane_with_image_planes(export):
    viewer, widget, out = export
    image = RNG.integers(0, 999, (12, 16, 20)).astype(np.uint16)
    labels = _labels((12, 16, 20))
    viewer.add_image(image, name="movie", metadata={"axes": "TYX"})
    viewer.add_labels(labels, name="movie ground truth", metadata={"axes": "TYX"})
    widget.per_plane.value = True
    widget.with_image.value = True
    assert widget.image_layer.value.name == "movie"  # picked because the shapes match
    written = widget.export()
    names = sorted(p.name for p in written)
    assert names[:2] == ["movie_ground_truth_t000.tif", "movie_ground_truth_t001.tif"]
    assert "movie_t011.tif" in names and len(written) == 24
    np.testing.assert_array_equal(tifffile.imread(out / "movie_ground_truth_t007.tif"), labels[7])
    np.testing.assert_array_equal(tifffile.imread(out / "movie_t007.tif"), image[7])


def test_refuses_to_overwrite_until_asked(export):
    viewer, widget, out = export
    viewer.add_labels(_labels((10, 10)), name="cells")
    existing = out / "cells.tif"
    existing.write_bytes(b"precious")
    assert widget.export() == []
    assert existing.read_bytes() == b"precious"
    assert "cells.tif" in widget.status.value and "Overwrite" in widget.status.value
    widget.overwrite.value = True
    assert widget.export() == [existing]
    assert tifffile.imread(existing).shape == (10, 10)


def test_refuses_uint16_when_ids_do_not_fit(export):
    viewer, widget, out = export
    labels = np.zeros((8, 8), np.uint32)
    labels[0, 0] = 70_000
    viewer.add_labels(labels, name="many")
    widget.dtype.value = "uint16"
    assert widget.export() == []
    assert "70000" in widget.status.value and "uint16" in widget.status.value
    assert list(out.iterdir()) == []
    widget.dtype.value = "auto"
    [written] = widget.export()
    assert tifffile.imread(written).dtype == np.uint32


def test_nothing_to_export_and_missing_folder(export, tmp_path):
    viewer, widget, _ = export
    assert widget.export() == []
    assert "no Labels layer" in widget.status.value
    viewer.add_labels(_labels((6, 6)), name="x")
    widget.folder.value = tmp_path / "does-not-exist"
    assert widget.export() == []
    assert "does not exist" in widget.status.value


def test_button_exports_in_the_background(export, qtbot):
    viewer, widget, out = export
    labels = _labels((4, 16, 16))
    viewer.add_labels(labels, name="bg")
    widget.export_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.running, timeout=60000)
    np.testing.assert_array_equal(tifffile.imread(out / "bg.tif"), labels)
    assert widget.export_button.enabled
    assert "Exported 1 file" in widget.status.value


def test_plane_names_and_label_dtype():
    suffixes = [suffix for _, suffix in planes((2, 1200), "TZ")]
    assert suffixes[0] == "_t000_z0000" and suffixes[-1] == "_t001_z1199"
    assert label_dtype("x", np.array([0, 65535]), None) == "uint16"
    assert label_dtype("x", np.array([0, 65536]), None) == "uint32"
    with pytest.raises(UserError, match="negative"):
        label_dtype("x", np.array([-1, 3]), None)
    with pytest.raises(UserError, match="not integer"):
        label_dtype("x", np.array([0.5]), None)


def test_painting_during_a_background_export_does_not_reach_the_file(export, qtbot, monkeypatch):
    """The labels are taken when Export is pressed: a stroke painted while the file is being
    written changes the layer, not the file."""
    import threading

    viewer, widget, out = export
    labels = _labels((16, 16))
    layer = viewer.add_labels(labels.copy(), name="live")
    writing, painted = threading.Event(), threading.Event()
    real_write = writer.write_labels

    def slow_write(*args, **kwargs):
        writing.set()
        painted.wait(30)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(writer, "write_labels", slow_write)
    widget.export_button.clicked.emit()
    assert writing.wait(30)
    layer.data[:4, :4] = 99  # a stroke while the worker is about to write
    painted.set()
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.running, timeout=60000)
    np.testing.assert_array_equal(tifffile.imread(out / "live.tif"), labels)


def test_the_selected_labels_layer_is_the_one_offered(export):
    viewer, widget, _ = export
    first = viewer.add_labels(_labels((8, 8)), name="first")
    second = viewer.add_labels(_labels((8, 8)), name="corrected")
    assert widget.labels_layer.value is second  # the newest layer is the active one
    viewer.layers.selection.active = first
    assert widget.labels_layer.value is first and widget.file_name.value == "first.tif"


def _raw_file(folder, name="img2d.tif"):
    """A real image TIFF on disk (what a user opens), and its bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    writer.write_image(path, RNG.integers(0, 999, (20, 24)).astype(np.uint16), "YX", (0.5, 0.5))
    return path, path.read_bytes()


@pytest.mark.parametrize("plugin", ["napari-unet", "napari"])
def test_never_writes_over_the_file_a_layer_was_read_from(make_napari_viewer, tmp_path, plugin):
    """Even with "Also export the image" and "Overwrite existing files" ticked, exporting into
    the image's own folder keeps the original: the image goes beside it under another name,
    and a labels file named like it is refused."""
    raw, original = _raw_file(tmp_path / "data")
    viewer = make_napari_viewer()
    [image] = viewer.open(raw, plugin=plugin)
    viewer.add_labels(_labels((20, 24)), name="img2d labels [starter]")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Export")
    assert widget.folder.value == raw.parent
    widget.with_image.value = True
    widget.image_layer.value = image
    widget.overwrite.value = True
    written = widget.export()
    assert sorted(p.name for p in written) == ["img2d_image.tif", "img2d_labels.tif"]
    assert raw.read_bytes() == original
    np.testing.assert_array_equal(tifffile.imread(raw.parent / "img2d_image.tif"), image.data)
    widget.with_image.value = False
    widget.file_name.value = "img2d.tif"
    assert widget.export() == []
    assert "read from" in widget.status.value and "never written over" in widget.status.value
    assert raw.read_bytes() == original


def test_default_folder_and_names_come_from_the_image(make_napari_viewer, tmp_path):
    """Labels made by Segment have no file: the folder is the image's, the name a clean one."""
    raw, _ = _raw_file(tmp_path / "my data")
    viewer = make_napari_viewer()
    viewer.open(raw, plugin="napari-unet")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Export")
    viewer.add_labels(_labels((20, 24)), name="img2d labels [starter]")
    assert widget.folder.value == raw.parent
    assert widget.file_name.value == "img2d_labels.tif"
    viewer.add_labels(_labels((20, 24)), name="img2d labels [tuned] (2)")
    assert widget.file_name.value == "img2d_labels.tif"
    widget.all_layers.value = True
    names = sorted(p.name for p in widget.export())
    # the short names would collide: each keeps its model's name
    assert names == ["img2d_labels_starter.tif", "img2d_labels_tuned_2.tif"]


def test_clean_names():
    assert clean_stem("img2d labels [starter]") == "img2d_labels"
    assert clean_stem("img2d labels [starter] (2)") == "img2d_labels"
    assert clean_stem("[x]") == "x"
    assert safe_name("a  b/c:d [m]") == "a_b_c_d_m"
    assert safe_name("...") == "labels"
