"""Time-lapse ids: per time point by default (uint16, ImageJ hyperstacks), ``--ids stack``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tifffile

from _cli_helpers import run
from napari_unet.core.io.reading import read_image
from napari_unet.core.io.writing import write_image
from napari_unet.core.labels import ids_per_time_point
from napari_unet.core.synthetic.images import SAMPLE_CONFIG, make_stack

pytestmark = pytest.mark.usefixtures("isolated_models")  # see conftest.py


@pytest.fixture(scope="module")
def time_lapse():
    stack, _ = make_stack(replace(SAMPLE_CONFIG, shape=(80, 80)), 4, 0, dtype=np.uint16)
    return stack


def _frame_ids(labels: np.ndarray) -> list[set[int]]:
    return [set(np.unique(frame).tolist()) - {0} for frame in labels]


def _imagej_dims(path) -> tuple[str, tuple[int, ...], str]:
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        series = tif.series[0]
        return series.axes, series.shape, str(series.dtype)


def test_time_lapse_ids_restart_per_frame_by_default(tmp_path, capsys, time_lapse):
    src = write_image(tmp_path / "movie.tif", time_lapse, "TYX", pixel_size=(0.5, 0.5))
    code, err = run(capsys, "predict", src, "-o", tmp_path / "per_frame.tif", "--device", "cpu")
    assert code == 0, err
    labels = read_image(tmp_path / "per_frame.tif", memmap=False)
    assert labels.axes == "TYX" and labels.data.shape == time_lapse.shape
    assert labels.data.dtype == np.uint16
    frames = _frame_ids(labels.data)
    assert all(ids == set(range(1, len(ids) + 1)) for ids in frames)  # 1..N_t in each frame
    assert all(len(ids) > 3 for ids in frames)
    assert _imagej_dims(tmp_path / "per_frame.tif") == ("TYX", (4, 80, 80), "uint16")

    code, err = run(capsys, "predict", src, "-o", tmp_path / "stack.tif", "--device", "cpu",
                    "--ids", "stack")  # fmt: skip
    assert code == 0, err
    unique = read_image(tmp_path / "stack.tif", memmap=False)
    assert unique.axes == "TYX" and unique.data.dtype == np.uint16
    across = _frame_ids(unique.data)
    assert all(not (a & b) for i, a in enumerate(across) for b in across[i + 1 :])
    assert int(unique.data.max()) == sum(len(ids) for ids in frames)
    # the same objects, numbered differently
    assert np.array_equal(unique.data > 0, labels.data > 0)
    assert np.array_equal(ids_per_time_point(unique.data, "TYX"), labels.data)
    assert _imagej_dims(tmp_path / "stack.tif") == ("TYX", (4, 80, 80), "uint16")


def test_ids_option_is_checked(capsys, tmp_path):
    code, err = run(capsys, "predict", tmp_path / "x.tif", "-o", tmp_path / "y.tif",
                    "--ids", "frames")  # fmt: skip
    assert code == 2 and "--ids" in err


def test_ids_per_time_point_keeps_3d_objects_and_leaves_z_stacks_alone():
    labels = np.zeros((2, 3, 4, 4), np.uint32)
    labels[0, :, :2, :2] = 70000  # one 3D object across the planes of volume 0
    labels[0, 1, 2:, 2:] = 70001
    labels[1, 0, 2:, :2] = 70002
    out = ids_per_time_point(labels, "TZYX")
    assert out.dtype == np.uint16
    assert (out[0, :, :2, :2] == 1).all() and (out[0, 1, 2:, 2:] == 2).all()
    assert (out[1, 0, 2:, :2] == 1).all() and np.array_equal(out > 0, labels > 0)
    # the T axis need not come first; frames without background start at 1
    full = np.stack([np.full((2, 2), 7), np.full((2, 2), 9)], axis=1)  # (Y, T, X)
    assert np.array_equal(ids_per_time_point(full, "YTX"), np.ones((2, 2, 2)))
    zstack = labels[0]
    assert ids_per_time_point(zstack, "ZYX") is zstack
    with pytest.raises(ValueError, match="axes"):
        ids_per_time_point(zstack, "TZYX")
