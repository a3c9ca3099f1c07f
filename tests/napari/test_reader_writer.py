"""The TIFF reader and the Labels writer: real files, real layers, a real viewer."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet._napari.files.reader import get_reader
from napari_unet._napari.files.writer import write_labels
from napari_unet.core.errors import UserError
from napari_unet.core.io import reading, writing

RNG = np.random.default_rng(0)


def _read(path):
    reader = get_reader(str(path))
    assert reader is not None, f"the reader refused {path}"
    return reader(str(path))


def _labels(shape, high=40, dtype=np.uint16):
    return RNG.integers(0, high, shape).astype(dtype)


def test_2d_image_with_pixel_size(tmp_path):
    data = RNG.integers(0, 4000, (30, 40)).astype(np.uint16)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(
        path, data, imagej=True, resolution=(1 / 0.25, 1 / 0.2), metadata={"unit": "um"}
    )
    [(layer, kwargs, kind)] = _read(path)
    assert kind == "image"
    np.testing.assert_array_equal(layer, data)
    assert kwargs["name"] == "cells"
    np.testing.assert_allclose(kwargs["scale"], [0.2, 0.25])
    meta = kwargs["metadata"]
    assert meta["axes"] == "YX"
    np.testing.assert_allclose(meta["pixel_size"], (0.2, 0.25))
    assert meta["z_spacing"] is None
    assert meta["source_path"] == str(path)


def test_zyx_stack_is_memory_mapped_with_z_spacing(tmp_path):
    data = RNG.integers(0, 255, (4, 20, 24)).astype(np.uint8)
    path = tmp_path / "stack.tiff"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"},
    )
    [(layer, kwargs, kind)] = _read(path)
    assert kind == "image" and isinstance(layer, np.memmap)
    np.testing.assert_array_equal(layer, data)
    np.testing.assert_allclose(kwargs["scale"], [1.5, 0.5, 0.5])
    assert kwargs["metadata"]["axes"] == "ZYX"
    assert kwargs["metadata"]["z_spacing"] == pytest.approx(1.5)


def test_imagej_hyperstack_channels_become_layers(tmp_path):
    data = RNG.integers(0, 1000, (2, 3, 2, 16, 18)).astype(np.uint16)  # T Z C Y X
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(4.0, 4.0),
        metadata={"axes": "TZCYX", "spacing": 2.0, "unit": "um"},
    )
    [(layer, kwargs, kind)] = _read(path)
    assert kind == "image"
    assert kwargs["channel_axis"] == 2
    assert kwargs["name"] == ["hyper [ch0]", "hyper [ch1]"]
    assert all(m["axes"] == "TZYX" for m in kwargs["metadata"])
    np.testing.assert_allclose(kwargs["scale"][0], [1.0, 2.0, 0.25, 0.25])
    np.testing.assert_array_equal(layer, data)


def test_ome_axes(tmp_path):
    data = RNG.random((3, 2, 12, 14)).astype(np.float32)  # Z C Y X
    path = tmp_path / "sample.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={"axes": "ZCYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1.2},
    )
    [(layer, kwargs, kind)] = _read(path)
    assert kind == "image" and kwargs["channel_axis"] == 1
    assert kwargs["name"][0] == "sample [ch0]"
    np.testing.assert_allclose(kwargs["scale"][1], [1.2, 0.3, 0.3])
    assert kwargs["metadata"][0]["axes"] == "ZYX"
    np.testing.assert_array_equal(layer, data)


def test_rgb(tmp_path):
    data = RNG.integers(0, 255, (10, 12, 3)).astype(np.uint8)
    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, data, photometric="rgb")
    [(layer, kwargs, kind)] = _read(path)
    assert kind == "image" and kwargs["rgb"] is True
    assert "channel_axis" not in kwargs
    assert kwargs["metadata"]["axes"] == "YXS"
    assert list(kwargs["scale"]) == [1.0, 1.0]
    np.testing.assert_array_equal(layer, data)


def test_label_files_open_as_labels(tmp_path):
    labels = _labels((20, 20))
    named = tmp_path / "cells_masks.tif"
    tifffile.imwrite(named, labels)  # a plain file, recognised by its name
    ours = tmp_path / "result.tif"
    writing.write_labels(ours, labels)  # recognised by what our writer puts in the file
    plain = tmp_path / "masked.tif"
    tifffile.imwrite(plain, labels)  # "masked" is not a label word
    floats = tmp_path / "float_labels.tif"
    tifffile.imwrite(floats, labels.astype(np.float32))
    assert _read(named)[0][2] == "labels"
    assert _read(ours)[0][2] == "labels"
    assert _read(plain)[0][2] == "image"
    assert _read(floats)[0][2] == "image"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not an image at all",
        b"II*\x00\x08\x00\x00\x00\xff\xff garbage",
        b"MM\x00*" + bytes(4),
    ],
)
def test_unreadable_files_give_none(tmp_path, content):
    path = tmp_path / "broken.tif"
    path.write_bytes(content)
    assert get_reader(str(path)) is None


def test_truncated_tiff_and_wrong_suffix_give_none(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, RNG.integers(0, 255, (64, 64)).astype(np.uint8))
    path.write_bytes(path.read_bytes()[:600])
    assert get_reader(str(path)) is None
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert get_reader(str(png)) is None
    assert get_reader(str(tmp_path / "missing.tif")) is None
    assert get_reader(str(tmp_path)) is None
    assert get_reader([]) is None


def test_list_of_paths(tmp_path):
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"im{i}.tif"))
        tifffile.imwrite(paths[-1], np.full((8, 8), i, np.uint8))
    layers = get_reader(paths)(paths)
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["im0", "im1"]
    assert get_reader([*paths, str(tmp_path / "nope.txt")]) is None


@pytest.mark.parametrize(("high", "dtype"), [(300, np.uint16), (70_000, np.uint32)])
def test_writer_round_trip(tmp_path, high, dtype):
    labels = _labels((3, 16, 20), high=high, dtype=np.int32)
    labels[0, 0, 0] = high
    meta = {"scale": (2.5, 0.4, 0.4), "metadata": {"axes": "ZYX"}, "name": "seg"}
    [written] = write_labels(str(tmp_path / "seg"), labels, meta)
    assert written == str(tmp_path / "seg.tif")
    [(data, kwargs, kind)] = _read(written)
    assert kind == "labels"
    assert data.dtype == dtype
    np.testing.assert_array_equal(data, labels)
    np.testing.assert_allclose(kwargs["scale"], [2.5, 0.4, 0.4])
    with tifffile.TiffFile(written) as tif:
        assert tif.is_imagej  # uint32 too: ImageJ opens it as a 32-bit stack
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.5)
        np.testing.assert_array_equal(tif.asarray(), labels)


def test_writer_uses_metadata_pixel_size_when_scale_is_one(tmp_path):
    labels = _labels((10, 10))
    meta = {"scale": (1.0, 1.0), "metadata": {"pixel_size": (0.5, 0.5)}}
    [written] = write_labels(str(tmp_path / "a.TIFF"), labels, meta)
    assert written.endswith("a.TIFF")
    assert reading.read_image(written).pixel_size == pytest.approx((0.5, 0.5))
    [written] = write_labels(str(tmp_path / "b.tif"), labels, {"scale": (1.0, 1.0)})
    assert reading.read_image(written).pixel_size is None


def test_writer_errors_are_clear_and_leave_nothing(tmp_path):
    with pytest.raises(UserError, match="negative"):
        write_labels(str(tmp_path / "neg.tif"), np.full((5, 5), -1, np.int32), {})
    with pytest.raises(UserError, match="does not exist"):
        write_labels(str(tmp_path / "nofolder" / "x.tif"), _labels((5, 5)), {})
    assert list(tmp_path.iterdir()) == []


def test_open_in_viewer_and_save_layers(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    image = RNG.integers(0, 255, (3, 2, 16, 16)).astype(np.uint8)  # Z C Y X
    path = tmp_path / "two_channels.tif"
    meta = {"axes": "ZCYX", "unit": "um"}
    tifffile.imwrite(path, image, imagej=True, resolution=(2.0, 2.0), metadata=meta)
    layers = viewer.open(str(path), plugin="napari-unet")
    assert [layer.name for layer in layers] == ["two_channels [ch0]", "two_channels [ch1]"]
    assert layers[1].metadata["axes"] == "ZYX"
    assert isinstance(layers[1].data, np.memmap)  # channels are views of the memory map
    np.testing.assert_array_equal(layers[1].data, image[:, 1])
    np.testing.assert_allclose(layers[0].scale, [1.0, 0.5, 0.5])

    labels = _labels((3, 16, 16))
    layer = viewer.add_labels(
        labels, name="nuclei", scale=(1.0, 0.5, 0.5), metadata={"axes": "ZYX"}
    )
    viewer.layers.selection = {layer}
    saved = viewer.layers.save(str(tmp_path / "saved.tif"), selected=True, plugin="napari-unet")
    assert [Path(p).name for p in saved] == ["saved.tif"]
    with tifffile.TiffFile(saved[0]) as tif:
        assert tif.is_imagej
        np.testing.assert_array_equal(tif.asarray(), labels)
    [reopened] = viewer.open(saved[0], plugin="napari-unet")
    assert reopened._type_string == "labels"
    np.testing.assert_allclose(reopened.scale, [1.0, 0.5, 0.5])


def test_uncompressed_labels_can_be_painted(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    path = tmp_path / "nuclei_labels.tif"
    tifffile.imwrite(path, np.zeros((2, 12, 12), np.uint16))  # uncompressed: memory-mappable
    [layer] = viewer.open(str(path), plugin="napari-unet")
    assert layer._type_string == "labels"
    layer.selected_label = 7
    layer.paint((1, 5, 5), 7, refresh=True)
    assert layer.data[1, 5, 5] == 7
    assert tifffile.imread(path).max() == 0  # the file itself is untouched


def test_stack_sliders_are_labelled_with_the_file_axes(make_napari_viewer, tmp_path):
    """A hyperstack's sliders say T and Z (napari's default would be "-4", "-3")."""
    viewer = make_napari_viewer()
    data = RNG.integers(0, 1000, (2, 3, 2, 16, 18)).astype(np.uint16)  # T Z C Y X
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX"})
    layers = viewer.open(str(path), plugin="napari-unet")
    assert all(layer.axis_labels == ("T", "Z", "Y", "X") for layer in layers)
    assert tuple(viewer.dims.axis_labels) == ("T", "Z", "Y", "X")
    movie = tmp_path / "movie.tif"
    tifffile.imwrite(movie, data[:, 0, 0], imagej=True, metadata={"axes": "TYX"})
    other = make_napari_viewer()
    other.open(str(movie), plugin="napari-unet")
    assert tuple(other.dims.axis_labels) == ("T", "Y", "X")
