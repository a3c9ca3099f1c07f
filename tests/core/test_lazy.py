"""Opening TIFF, zarr and OME-Zarr images lazily: axes, pixel size, and no pixel read up front."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_unet.core.errors import ImageReadError
from napari_unet.core.io.lazy import LazyImage, is_zarr_path, lazy_from_array, open_lazy


def _stack(shape=(3, 300, 260), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape, dtype=np.uint16)


def test_tiff_opens_as_dask_with_axes_and_pixel_size(tmp_path):
    data = _stack()
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"},
    )
    image = open_lazy(path)
    assert isinstance(image, LazyImage)
    assert isinstance(image.data, da.Array)
    assert (image.axes, image.shape, image.data.dtype) == ("ZYX", data.shape, np.uint16)
    assert image.pixel_size == pytest.approx((0.5, 0.5))
    assert image.z_spacing == pytest.approx(1.5)
    assert image.unit == "um" and image.path == path and not image.is_memmap
    np.testing.assert_array_equal(image.data[1, 20:90, 200:].compute(), data[1, 20:90, 200:])


def test_tiff_pixels_are_read_only_where_sliced(tmp_path):
    """A tile whose compressed bytes are garbage breaks reading it, and nothing else: opening
    and reading elsewhere never touch it."""
    data = _stack((512, 512))
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, data, tile=(128, 128), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[-1]  # the bottom-right tile
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * 64)
    image = open_lazy(path)
    np.testing.assert_array_equal(image.data[:128, :256].compute(), data[:128, :256])
    with pytest.raises(Exception):  # noqa: B017 - whatever the codec raises
        image.data[-128:, -128:].compute()


def test_rgb_tiff_has_samples_last(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    image = open_lazy(tmp_path / "rgb.tif")
    assert image.axes == "YXS"
    np.testing.assert_array_equal(image.data.compute(), rgb)


def _ngff_04(path, data):
    """An OME-Zarr 0.4 (zarr v2) image with two levels, axes c, z, y, x; x in nanometres."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=data[None], chunks=(1, 1, 128, 128))
    group.create_array("1", data=data[None, :, ::2, ::2], chunks=(1, 1, 128, 128))
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "nanometer"},
    ]
    datasets = [
        {
            "path": "0",
            "coordinateTransformations": [{"type": "scale", "scale": [1, 2.0, 0.25, 250.0]}],
        },
        {
            "path": "1",
            "coordinateTransformations": [{"type": "scale", "scale": [1, 2.0, 0.5, 500.0]}],
        },
    ]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]


def test_ome_zarr_04_takes_the_full_resolution_level(tmp_path):
    data = _stack()
    path = tmp_path / "image.ome.zarr"
    _ngff_04(path, data)
    assert is_zarr_path(path)
    image = open_lazy(path)
    assert isinstance(image.data, da.Array)
    assert image.axes == "ZYX"  # the length-1 channel axis is dropped
    assert image.shape == data.shape and image.dataset == "0"
    assert image.pixel_size == pytest.approx((0.25, 0.25))  # 250 nm
    assert image.z_spacing == pytest.approx(2.0)
    assert [level.shape for level in image.levels] == [data.shape, (3, 150, 130)]
    np.testing.assert_array_equal(image.data[2, 100:200, 7:9].compute(), data[2, 100:200, 7:9])


def test_ome_zarr_05_with_channels_and_time(tmp_path):
    data = _stack((2, 2, 96, 80))  # t, c, y, x
    path = tmp_path / "image.zarr"
    group = zarr.open_group(str(path), mode="w")  # zarr v3
    group.create_array("s0", data=data, chunks=(1, 1, 64, 64), dimension_names=["t", "c", "y", "x"])
    axes = [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    scale = [{"type": "scale", "scale": [30.0, 1.0, 0.65, 0.65]}]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {"axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": scale}]}
        ],
    }
    image = open_lazy(path)
    assert (image.axes, image.dataset, image.z_spacing) == ("TCYX", "s0", None)
    assert image.pixel_size == pytest.approx((0.65, 0.65))
    np.testing.assert_array_equal(image.data.compute(), data)


def test_plain_zarr_array_axes_from_names_or_shape(tmp_path):
    named = zarr.create_array(
        str(tmp_path / "named.zarr"), data=_stack((2, 50, 40)), dimension_names=["t", "y", "x"]
    )
    assert open_lazy(tmp_path / "named.zarr").axes == "TYX"
    assert named.shape == (2, 50, 40)
    zarr.create_array(str(tmp_path / "plain.zarr"), data=_stack((3, 50, 40)))
    image = open_lazy(tmp_path / "plain.zarr")
    assert image.axes == "ZYX" and image.pixel_size is None and image.unit == "pixel"


def test_bad_inputs_are_image_read_errors(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ImageReadError, match="not a TIFF file or a zarr store"):
        open_lazy(tmp_path / "folder")
    with pytest.raises(ImageReadError, match="does not exist"):
        open_lazy(tmp_path / "missing.tif")
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    group.create_array("a", shape=(4, 4), dtype="u1")
    group.create_array("b", shape=(4, 4), dtype="u1")
    with pytest.raises(ImageReadError, match="several arrays"):
        open_lazy(tmp_path / "two.zarr")
    (tmp_path / "text.tif").write_text("not a tiff")
    with pytest.raises(ImageReadError, match="Cannot read image"):
        open_lazy(tmp_path / "text.tif")


def test_lazy_from_array_wraps_an_array_at_hand():
    data = _stack((2, 40, 30))
    image = lazy_from_array(data, "tyx", pixel_size=(0.3, 0.3))
    assert isinstance(image.data, da.Array) and image.axes == "TYX" and image.unit == "um"
    assert image.nbytes == data.nbytes and image.levels[0] is image.data
    np.testing.assert_array_equal(image.data.compute(), data)
