"""TIFF reading and writing: axes, pixel size, dtypes, memory mapping, errors, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.core.errors import ImageReadError, UserError
from napari_unet.core.io import writing
from napari_unet.core.io.reading import ImageData, read_image
from napari_unet.core.io.storage import atomic_path
from napari_unet.core.io.writing import write_labels, write_probabilities

RNG = np.random.default_rng(42)


def random_image(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return RNG.random(shape).astype(dtype)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_2d_round_trip_keeps_data_dtype_and_pixel_size(tmp_path, dtype):
    image = random_image((37, 53), dtype)
    path = tmp_path / "plane.tif"
    tifffile.imwrite(
        path, image, imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "um"}
    )

    result = read_image(path)

    assert isinstance(result, ImageData)
    assert result.axes == "YX"
    assert result.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(result.data, image)
    assert result.pixel_size == pytest.approx((0.65, 0.65))
    assert result.z_spacing is None
    assert result.unit == "um"
    assert result.path == path


def test_multipage_stack_without_metadata_reads_as_z(tmp_path):
    stack = random_image((4, 16, 24), "uint16")
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for plane in stack:
            tif.write(plane, contiguous=False, metadata=None, photometric="minisblack")

    result = read_image(path)

    assert result.axes == "ZYX"
    np.testing.assert_array_equal(result.data, stack)
    assert result.pixel_size is None
    assert result.unit == "pixel"


def test_two_unnamed_axes_become_t_and_z(tmp_path):
    data = random_image((2, 3, 8, 9), "uint8")
    path = tmp_path / "shaped.tif"
    tifffile.imwrite(path, data, photometric="minisblack")  # axes "QQYX" in the file

    result = read_image(path)

    assert result.axes == "TZYX"
    np.testing.assert_array_equal(result.data, data)


def test_imagej_zstack_keeps_spacing(tmp_path):
    stack = random_image((5, 12, 10), "uint16")
    path = tmp_path / "zstack.tif"
    tifffile.imwrite(
        path,
        stack,
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.3),
        metadata={"axes": "ZYX", "spacing": 1.5, "unit": "micron"},
    )

    result = read_image(path)

    assert result.axes == "ZYX"
    np.testing.assert_array_equal(result.data, stack)
    assert result.pixel_size == pytest.approx((0.3, 0.2))  # (y, x)
    assert result.z_spacing == pytest.approx(1.5)


def test_imagej_hyperstack_tzcyx(tmp_path):
    data = random_image((2, 3, 2, 8, 9), "uint16")
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 250.0, 1 / 250.0),
        metadata={"axes": "TZCYX", "spacing": 500.0, "unit": "nm"},
    )

    result = read_image(path)

    assert result.axes == "TZCYX"
    assert result.data.shape == (2, 3, 2, 8, 9)
    np.testing.assert_array_equal(result.data, data)
    assert result.pixel_size == pytest.approx((0.25, 0.25))  # nm -> µm
    assert result.z_spacing == pytest.approx(0.5)


def test_length_one_axes_are_squeezed(tmp_path):
    data = random_image((1, 3, 1, 8, 9), "uint8")
    path = tmp_path / "single.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX"})

    result = read_image(path)

    assert result.axes == "ZYX"
    np.testing.assert_array_equal(result.data, data[0, :, 0])


@pytest.mark.parametrize(
    ("unit", "expected"),
    [("\\u00B5m", (0.5, 0.5)), ("micron", (0.5, 0.5)), ("mm", (500.0, 500.0)), ("pixel", None)],
)
def test_imagej_units(tmp_path, unit, expected):
    path = tmp_path / "unit.tif"
    tifffile.imwrite(
        path,
        np.zeros((4, 5), np.uint8),
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"unit": unit},
    )

    result = read_image(path)

    if expected is None:
        assert result.pixel_size is None
        assert result.unit == "pixel"
    else:
        assert result.pixel_size == pytest.approx(expected)
        assert result.unit == "um"


def test_ome_tiff_axes_and_physical_sizes_in_micrometres(tmp_path):
    data = random_image((3, 2, 8, 9), "uint16")
    path = tmp_path / "image.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        compression="zlib",
        metadata={
            "axes": "ZCYX",
            "PhysicalSizeX": 120.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 130.0,
            "PhysicalSizeYUnit": "nm",
            "PhysicalSizeZ": 0.002,
            "PhysicalSizeZUnit": "mm",
        },
    )

    result = read_image(path)

    assert result.axes == "ZCYX"
    np.testing.assert_array_equal(result.data, data)
    assert result.pixel_size == pytest.approx((0.13, 0.12))
    assert result.z_spacing == pytest.approx(2.0)
    assert result.unit == "um"


def test_resolution_tags_in_inches_give_micrometres(tmp_path):
    path = tmp_path / "scan.tif"
    tifffile.imwrite(
        path,
        np.zeros((4, 5), np.uint8),
        resolution=(25400 / 0.5, 25400 / 0.25),
        resolutionunit="INCH",
    )

    assert read_image(path).pixel_size == pytest.approx((0.25, 0.5))


@pytest.mark.parametrize("planar", [False, True])
def test_rgb_reads_with_samples_last(tmp_path, planar):
    rgb = random_image((10, 12, 3), "uint8")
    path = tmp_path / "rgb.tif"
    if planar:
        tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    else:
        tifffile.imwrite(path, rgb, photometric="rgb")

    result = read_image(path)

    assert result.axes == "YXS"
    np.testing.assert_array_equal(result.data, rgb)


def test_three_gray_planes_are_not_rgb(tmp_path):
    data = random_image((3, 10, 12), "uint8")
    path = tmp_path / "gray.tif"
    tifffile.imwrite(path, data, photometric="minisblack")

    assert read_image(path).axes == "ZYX"


def test_png_reads_as_2d(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    gray = random_image((9, 11), "uint8")
    rgb = random_image((9, 11, 3), "uint8")
    iio.imwrite(tmp_path / "gray.png", gray)
    iio.imwrite(tmp_path / "rgb.png", rgb)

    gray_read = read_image(tmp_path / "gray.png")
    rgb_read = read_image(tmp_path / "rgb.png")

    assert gray_read.axes == "YX"
    np.testing.assert_array_equal(gray_read.data, gray)
    assert rgb_read.axes == "YXS"
    np.testing.assert_array_equal(rgb_read.data, rgb)


# ----------------------------------------------------------------------------------------------
# Memory mapping
# ----------------------------------------------------------------------------------------------


def test_uncompressed_file_is_memory_mapped_read_only(tmp_path):
    stack = random_image((3, 16, 16), "uint16")
    path = tmp_path / "raw.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})

    result = read_image(path)

    assert isinstance(result.data, np.memmap)
    assert result.is_memmap
    np.testing.assert_array_equal(result.data, stack)
    with pytest.raises(ValueError):
        result.data[0, 0, 0] = 1


def test_planar_rgb_stays_memory_mapped(tmp_path):
    rgb = random_image((8, 9, 3), "uint8")
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")

    result = read_image(path)

    assert isinstance(result.data, np.memmap)
    np.testing.assert_array_equal(result.data, rgb)


def test_compressed_or_unmapped_reads_into_memory(tmp_path):
    image = random_image((16, 16), "uint16")
    tifffile.imwrite(tmp_path / "zip.tif", image, compression="zlib")
    tifffile.imwrite(tmp_path / "raw.tif", image)

    compressed = read_image(tmp_path / "zip.tif")
    unmapped = read_image(tmp_path / "raw.tif", memmap=False)

    for result in (compressed, unmapped):
        assert not isinstance(result.data, np.memmap)
        np.testing.assert_array_equal(result.data, image)


# ----------------------------------------------------------------------------------------------
# Read errors
# ----------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nothing.tif"
    with pytest.raises(ImageReadError, match=r"nothing\.tif.*does not exist"):
        read_image(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.tif.*empty"):
        read_image(path)


def test_folder(tmp_path):
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def test_text_file_with_tif_extension(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match=r"notes\.tif.*not a TIFF"):
        read_image(path)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("memmap", [True, False])
def test_truncated_tiff(tmp_path, compression, memmap):
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, random_image((64, 64), "uint16"), compression=compression)
    data = full.read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ImageReadError, match=r"cut\.tif.*(truncated|corrupt)"):
        read_image(path, memmap=memmap)


@pytest.mark.parametrize("keep", [4, 8, 20])
def test_tiff_cut_inside_its_header(tmp_path, keep):
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, random_image((8, 8), "uint8"))
    path = tmp_path / "cut.tif"
    path.write_bytes(full.read_bytes()[:keep])

    with pytest.raises(ImageReadError, match=r"cut\.tif"):
        read_image(path)


def test_header_claiming_huge_image_is_refused_before_reading(tmp_path):
    path = tmp_path / "liar.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint16), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags["ImageLength"]
        offset, dtype = tag.valueoffset, tif.byteorder + ("H" if tag.dtype == 3 else "I")
    raw = bytearray(path.read_bytes())
    raw[offset : offset + np.dtype(dtype).itemsize] = np.array(60000, dtype).tobytes()
    path.write_bytes(bytes(raw))  # 8 x 60000 uint16 cannot come from a few hundred bytes

    with pytest.raises(ImageReadError, match=r"liar\.tif.*corrupt"):
        read_image(path)


def test_corrupted_bytes_give_image_read_error_or_an_image(tmp_path):
    """Random damage to a real file never escapes as anything but ImageReadError."""
    good = tmp_path / "good.tif"
    tifffile.imwrite(
        good,
        random_image((3, 16, 16), "uint16"),
        imagej=True,
        compression="zlib",
        metadata={"axes": "ZYX"},
    )
    original = good.read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "damaged.tif"
    for _ in range(40):
        damaged = bytearray(original)
        for index in rng.integers(0, len(damaged), 4):
            damaged[index] = int(rng.integers(0, 256))
        path.write_bytes(bytes(damaged))
        try:
            result = read_image(path)
        except ImageReadError as exc:
            assert "damaged.tif" in str(exc)
        else:
            assert result.axes.endswith("YX")


# ----------------------------------------------------------------------------------------------
# Writing labels
# ----------------------------------------------------------------------------------------------


def make_labels(shape: tuple[int, ...], max_id: int) -> np.ndarray:
    labels = np.zeros(shape, np.int64)
    labels[..., 2:6, 3:9] = 1
    labels[..., 10:14, 1:5] = max_id
    labels[..., 7, 7] = 2
    return labels


def test_labels_uint16_imagej_round_trip_with_pixel_size(tmp_path):
    labels = make_labels((3, 16, 20), 300)
    path = tmp_path / "labels.tif"

    returned = write_labels(path, labels, "ZYX", pixel_size=(0.4, 0.5), z_spacing=2.0)

    assert returned == path
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["unit"] == "um"
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    result = read_image(path)
    assert result.data.dtype == np.uint16
    assert result.axes == "ZYX"
    np.testing.assert_array_equal(result.data, labels)
    assert result.pixel_size == pytest.approx((0.4, 0.5))
    assert result.z_spacing == pytest.approx(2.0)


def test_labels_above_uint16_written_as_uint32(tmp_path):
    labels = make_labels((2, 16, 20), 70000)
    path = tmp_path / "many.tif"

    write_labels(path, labels, "TYX", pixel_size=(0.25, 0.25))

    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    result = read_image(path)
    assert result.data.dtype == np.uint32
    assert result.axes == "TYX"
    np.testing.assert_array_equal(result.data, labels)
    assert result.pixel_size == pytest.approx((0.25, 0.25))


def test_labels_2d_without_pixel_size(tmp_path):
    labels = make_labels((16, 20), 5).astype(np.int32)
    path = write_labels(tmp_path / "plane.tif", labels)

    result = read_image(path)

    assert result.axes == "YX"
    assert result.data.dtype == np.uint16
    np.testing.assert_array_equal(result.data, labels)
    assert result.pixel_size is None


def test_labels_are_compressed(tmp_path):
    labels = make_labels((4, 64, 64), 3)
    path = write_labels(tmp_path / "small.tif", labels, "ZYX")

    assert path.stat().st_size < labels.size * 2 / 5


def test_labels_axes_are_put_in_imagej_order(tmp_path):
    labels = make_labels((3, 2, 16, 20), 4)
    labels[1, 0, 0, 0] = 3  # tell the planes apart
    path = write_labels(tmp_path / "zt.tif", labels, "ZTYX")

    result = read_image(path)

    assert result.axes == "TZYX"
    np.testing.assert_array_equal(result.data, labels.transpose(1, 0, 2, 3))


def test_bool_and_whole_float_labels_are_accepted(tmp_path):
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    floats = make_labels((16, 20), 7).astype(np.float64)

    mask_read = read_image(write_labels(tmp_path / "mask.tif", mask)).data
    float_read = read_image(write_labels(tmp_path / "float.tif", floats)).data

    np.testing.assert_array_equal(mask_read, mask.astype(np.uint16))
    assert float_read.dtype == np.uint16
    np.testing.assert_array_equal(float_read, floats)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([[0, -1], [2, 3]]), "negative"),
        (np.array([[0.0, 1.5], [2.0, 3.0]]), "whole numbers"),
        (np.array([[0.0, np.nan], [2.0, 3.0]]), "whole numbers"),
        (np.array([[0, 2**33], [2, 3]]), "too large"),
    ],
)
def test_invalid_labels_are_rejected_and_nothing_written(tmp_path, labels, message):
    with pytest.raises(UserError, match=message):
        write_labels(tmp_path / "bad.tif", labels)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("axes", ["ZYX", "XY", "YS"])
def test_label_axes_must_fit(tmp_path, axes):
    with pytest.raises(UserError, match="axes"):
        write_labels(tmp_path / "bad.tif", np.zeros((4, 5), np.uint16), axes)


def test_bad_pixel_size_is_rejected(tmp_path):
    with pytest.raises(UserError, match="Pixel size"):
        write_labels(tmp_path / "bad.tif", np.zeros((4, 5), np.uint16), pixel_size=(0.0, 1.0))


def test_missing_output_folder(tmp_path):
    path = tmp_path / "no" / "such" / "labels.tif"
    with pytest.raises(UserError, match="does not exist"):
        write_labels(path, np.zeros((4, 5), np.uint16))
    assert not (tmp_path / "no").exists()


def test_output_path_that_is_a_folder(tmp_path):
    (tmp_path / "out.tif").mkdir()
    with pytest.raises(UserError, match="folder"):
        write_labels(tmp_path / "out.tif", np.zeros((4, 5), np.uint16))


# ----------------------------------------------------------------------------------------------
# Writing probabilities
# ----------------------------------------------------------------------------------------------


def test_probabilities_round_trip_class_axis_first(tmp_path):
    probs = RNG.random((3, 2, 10, 12))
    path = tmp_path / "probs.tif"

    write_probabilities(path, probs, "CZYX", pixel_size=(0.3, 0.3), z_spacing=1.25)

    result = read_image(path)
    assert result.axes == "ZCYX"  # an ImageJ hyperstack: the classes are its channels
    assert result.data.dtype == np.float32
    np.testing.assert_array_equal(result.data, probs.astype(np.float32).transpose(1, 0, 2, 3))
    assert result.pixel_size == pytest.approx((0.3, 0.3))
    assert result.z_spacing == pytest.approx(1.25)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_probabilities_axes_without_class_letter(tmp_path):
    probs = RNG.random((3, 10, 12)).astype(np.float32)

    result = read_image(write_probabilities(tmp_path / "p.tif", probs, "YX"))

    assert result.axes == "CYX"
    np.testing.assert_array_equal(result.data, probs)


# ----------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_imwrite(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"II*\x00partial")
        raise OSError("disk full")

    monkeypatch.setattr(writing.tifffile, "imwrite", broken_imwrite)

    with pytest.raises(OSError, match="disk full"):
        write_labels(tmp_path / "labels.tif", np.ones((4, 5), np.uint16))
    with pytest.raises(OSError, match="disk full"):
        write_probabilities(tmp_path / "probs.tif", np.ones((2, 4, 5)), "CYX")
    assert listing(tmp_path) == []


def test_failed_write_keeps_the_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "labels.tif"
    old = make_labels((16, 20), 3)
    write_labels(path, old)

    def interrupted_imwrite(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"II*\x00")
        raise KeyboardInterrupt

    monkeypatch.setattr(writing.tifffile, "imwrite", interrupted_imwrite)
    with pytest.raises(KeyboardInterrupt):
        write_labels(path, np.zeros((16, 20), np.uint16))

    assert listing(tmp_path) == ["labels.tif"]
    np.testing.assert_array_equal(read_image(path).data, old)


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "model.safetensors"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.endswith(".safetensors")
        assert not target.exists()
        tmp.write_bytes(b"content")
    assert listing(tmp_path) == ["model.safetensors"]
    assert target.read_bytes() == b"content"


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """A writer that creates its file private (0600) still leaves a file others can read, as
    open() would; replacing a file keeps that file's permissions."""
    import os

    umask = os.umask(0o022)
    try:
        target = tmp_path / "labels.bin"
        with atomic_path(target) as tmp:
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        assert target.stat().st_mode & 0o777 == 0o644
        target.chmod(0o640)
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
        assert target.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)


def test_atomic_path_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"), atomic_path(tmp_path / "x" / "f.bin"):
        pass
