"""Image files whose headers lie or whose pixels are not what a segmentation can use."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from _blockwise_helpers import nuclei_image
from _cli_helpers import child_env, one_error, predict_argv, predict_cpu, run
from napari_unet.core.errors import ImageReadError
from napari_unet.core.io.lazy import open_lazy
from napari_unet.core.io.reading import read_image
from napari_unet.core.io.writing import write_labels

pytestmark = pytest.mark.usefixtures("isolated_models")


def giant_tiff(path: Path, compression: int = 1) -> Path:
    """A ~200-byte classic TIFF whose one strip claims 100000 x 100000 uint8 pixels."""
    width = height = 100000
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, compression),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, 16),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    data = b"II*\x00" + struct.pack("<I", 8 + 16) + b"\x00" * 16 + ifd
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("compression", [1, 8])
def test_a_tiny_tiff_claiming_ten_gigapixels_allocates_nothing(
    capsys, tmp_path, model_file, compression
):
    import resource

    source = giant_tiff(tmp_path / "giant.tif", compression)
    assert source.stat().st_size < 300
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageReadError, match=r"truncated|corrupt"):
        open_lazy(source)
    for out in (tmp_path / "out.zarr", tmp_path / "out.tif", tmp_path):
        code, err = predict_cpu(capsys, source, out, model_file)
        one_error(code, err, "giant.tif")
    from napari_unet._napari.files.reader import get_reader

    assert get_reader(str(source)) is None
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 1024 * 1024  # far from the 9.3 GiB the header claims


def test_one_bit_tiffs_are_read(capsys, tmp_path, model_file):
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    with tifffile.TiffFile(tmp_path / "mask.tif") as tif:
        assert tif.pages[0].bitspersample == 1
    image = read_image(tmp_path / "mask.tif")
    assert image.data.dtype == np.uint8 and image.data.sum() == mask.sum()
    assert open_lazy(tmp_path / "mask.tif").data.compute().sum() == mask.sum()
    code, err = predict_cpu(capsys, tmp_path / "mask.tif", tmp_path / "l.tif", model_file, "-q")
    assert code == 0, err
    code, err = run(capsys, "evaluate", tmp_path / "mask.tif", tmp_path / "mask.tif")
    assert code == 0, err


def test_complex_pixels_are_refused(capsys, tmp_path, model_file):
    tifffile.imwrite(tmp_path / "c.tif", np.ones((32, 32), np.complex64))
    zarr.create_array(str(tmp_path / "c.zarr"), data=np.ones((32, 32), np.complex64))
    for source in (tmp_path / "c.tif", tmp_path / "c.zarr"):
        code, err = predict_cpu(capsys, source, tmp_path / "o.tif", model_file)
        one_error(code, err, "complex-valued")


def test_bool_zarr_arrays_are_read_as_zero_and_one(capsys, tmp_path, model_file):
    data = np.zeros((64, 64), bool)
    data[10:30, 10:30] = True
    zarr.create_array(str(tmp_path / "b.zarr"), data=data, chunks=(32, 32))
    assert open_lazy(tmp_path / "b.zarr").data.dtype == np.uint8
    code, err = predict_cpu(capsys, tmp_path / "b.zarr", tmp_path / "o.zarr", model_file, "-q")
    assert code == 0, err


def test_corrupt_zarr_chunks_on_the_blockwise_path(capsys, tmp_path, model_file):
    store = tmp_path / "in.zarr"
    zarr.create_array(str(store), data=nuclei_image(128, seed=1), chunks=(64, 64))
    chunks = [p for p in store.rglob("*") if p.is_file() and p.name not in ("zarr.json",)]
    assert chunks
    for chunk in chunks:
        chunk.write_bytes(b"garbage" * 10)
    code, err = predict_cpu(
        capsys, store, tmp_path / "o.zarr", model_file, "--block-size", "64", "-q"
    )
    one_error(code, err, "Cannot read the image's pixels", "corrupt")
    assert not (tmp_path / "o.zarr").exists()


def test_truncated_tiled_tiff_on_the_blockwise_path(capsys, tmp_path, model_file):
    source = tmp_path / "t.tif"
    tifffile.imwrite(source, nuclei_image(256, seed=1), tile=(64, 64), compression="zlib")
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])
    code, err = predict_cpu(
        capsys, source, tmp_path / "o.zarr", model_file, "--block-size", "64", "-q"
    )
    one_error(code, err)


def _png(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * width
    body = zlib.compressobj(9).compress(row * 16) + zlib.compressobj(9).flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


def test_a_png_decompression_bomb_is_refused(capsys, tmp_path, model_file):
    bomb = _png(tmp_path / "bomb.png", 60000, 60000)
    code, err = predict_cpu(capsys, bomb, tmp_path / "o.tif", model_file)
    one_error(code, err, "decompression bomb")


@pytest.mark.parametrize("size", [1e-300, 1e300])
def test_an_extreme_ome_pixel_size_is_ignored_before_predicting(capsys, tmp_path, model_file, size):
    source = tmp_path / "x.ome.tif"
    tifffile.imwrite(
        source,
        nuclei_image(64, seed=1),
        ome=True,
        metadata={"axes": "YX", "PhysicalSizeX": size, "PhysicalSizeY": size},
    )
    assert read_image(source).pixel_size is None
    code, err = predict_cpu(capsys, source, tmp_path / "o.tif", model_file, "-q")
    assert code == 0, err
    assert read_image(tmp_path / "o.tif").pixel_size is None


def test_float_labels_of_1e30_are_called_too_large(capsys, tmp_path):
    labels = np.zeros((32, 32), np.float32)
    labels[:4, :4] = 1e30
    tifffile.imwrite(tmp_path / "l.tif", labels)
    code, err = run(capsys, "evaluate", tmp_path / "l.tif", tmp_path / "l.tif")
    one_error(code, err, "more than a label image holds")
    assert "negative" not in err


@pytest.mark.parametrize("shape", [(), (5,)])
def test_writing_0d_and_1d_labels_is_a_clear_error(tmp_path, shape):
    from napari_unet._napari.files.writer import write_labels as napari_writer
    from napari_unet.core.errors import UserError

    with pytest.raises(UserError, match="at least 2 dimensions"):
        write_labels(tmp_path / "l.tif", np.ones(shape, np.uint16), "YX")
    with pytest.raises(UserError, match="at least 2 dimensions"):
        napari_writer(str(tmp_path / "l.tif"), np.ones(shape, np.uint16), {})
    assert not list(tmp_path.glob("*l.tif*"))


def test_a_float_ome_zarr_marked_as_labels_opens_as_an_image(tmp_path):
    from napari_unet._napari.files.reader import get_reader
    from napari_unet.core.large.block_io import create_label_zarr

    array = create_label_zarr(tmp_path / "f.zarr", (32, 32), "float32", (32, 32), "YX")
    array[:] = 0.5
    [(_, _, kind)] = get_reader(str(tmp_path / "f.zarr"))(str(tmp_path / "f.zarr"))
    assert kind == "image"


def test_probabilities_and_labels_cannot_share_a_file(capsys, tmp_path, model_file):
    tifffile.imwrite(tmp_path / "in.tif", nuclei_image(64, seed=1))
    out = tmp_path / "out.tif"
    code, err = predict_cpu(capsys, tmp_path / "in.tif", out, model_file, "--probabilities", out)
    one_error(code, err, "named twice")
    assert not (tmp_path / "out.tif").exists()


_NOISY = """
import logging, sys, warnings
from napari_unet.core.io import reading
from napari_unet.core.errors import ImageReadError

def noisy_read(path, memmap=True):
    warnings.warn("a library's warning", UserWarning, stacklevel=1)
    logging.getLogger("tifffile").warning("a library's log record")
    raise ImageReadError(f"Cannot read image '{path}': broken.")

reading.read_image = noisy_read
from napari_unet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_library_warnings_do_not_surround_the_error_line(tmp_path, model_file):
    import subprocess
    import sys

    tifffile.imwrite(tmp_path / "in.tif", nuclei_image(32, seed=1))
    argv = predict_argv(tmp_path / "in.tif", tmp_path / "o.tif", model_file, "-q")
    env = child_env()
    done = subprocess.run(
        [sys.executable, "-c", _NOISY, *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    one_error(done.returncode, done.stderr, "broken")


def test_deeply_nested_ome_xml_is_one_clear_line(capsys, tmp_path, model_file):
    source = tmp_path / "x.ome.tif"
    xml = (
        '<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        + "<a>" * 100000
        + "</a>" * 100000
        + "</OME>"
    )
    tifffile.imwrite(source, nuclei_image(32, seed=1), description=xml, metadata=None)
    code, err = predict_cpu(capsys, source, tmp_path / "o.tif", model_file, "-q")
    assert code in (0, 2), err
    if code == 2:
        one_error(code, err)


def test_an_implausible_imagej_spacing_is_ignored(tmp_path):
    source = tmp_path / "x.tif"
    tifffile.imwrite(
        source,
        np.zeros((3, 16, 16), np.uint8),
        imagej=True,
        metadata={"axes": "ZYX", "spacing": 1e300, "unit": "um"},
    )
    assert read_image(source).z_spacing is None


def test_one_bit_pngs_are_read(capsys, tmp_path, model_file):
    from PIL import Image

    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert Image.open(tmp_path / "mask.png").mode == "1"
    image = read_image(tmp_path / "mask.png")
    assert image.data.dtype == np.uint8 and image.data.sum() == mask.sum()
    code, err = predict_cpu(capsys, tmp_path / "mask.png", tmp_path / "l.tif", model_file, "-q")
    assert code == 0, err


_OME = (
    '<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
    '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" SizeX="999999" '
    'SizeY="999999" SizeC="1" SizeZ="1" SizeT="1" Type="uint16"><TiffData/></Pixels></Image></OME>'
)


def test_ome_xml_claiming_a_terapixel_allocates_nothing(capsys, tmp_path, model_file):
    """tifffile built a list of 244 million planes (3.9 GB) for an 8 kB file."""
    import resource

    source = tmp_path / "x.ome.tif"
    image = nuclei_image(64, seed=2)
    tifffile.imwrite(source, image, description=_OME, metadata=None)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert np.array_equal(read_image(source).data, image)
    assert np.array_equal(open_lazy(source).data.compute(), image)
    code, err = predict_cpu(capsys, source, tmp_path / "l.tif", model_file)
    assert code == 0, err
    assert "OME metadata claims 244140136 planes but the file holds 1" in err
    from napari_unet._napari.files.reader import get_reader

    assert get_reader(str(source)) is not None
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 512 * 1024
