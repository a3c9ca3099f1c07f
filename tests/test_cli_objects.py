"""``napari-unet predict --objects``: the per-object table, read back from the CSV file."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from _cli_helpers import run
from _object_columns import COLUMNS_2D
from napari_unet.core.io.reading import read_image
from napari_unet.core.io.writing import write_image
from napari_unet.core.synthetic.config import SAMPLE_CONFIG
from napari_unet.core.synthetic.images import make_image, make_stack

pytestmark = pytest.mark.usefixtures("isolated_models")  # see conftest.py


def read_csv(path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def sample(shape=(128, 128), seed=0) -> np.ndarray:
    from dataclasses import replace

    image, _ = make_image(replace(SAMPLE_CONFIG, shape=shape), seed, dtype=np.uint16)
    return image


def test_objects_table_of_a_2d_image_with_pixel_size(tmp_path, capsys):
    source = write_image(tmp_path / "cells.tif", sample(), "YX", pixel_size=(0.5, 0.5))
    out, table = tmp_path / "cells_labels.tif", tmp_path / "cells.csv"
    code, err = run(capsys, "predict", source, "-o", out, "--objects", table, "--device", "cpu")
    assert code == 0, err
    names, rows = read_csv(table)
    expected = [*COLUMNS_2D, "area_um2", "centroid-0_um", "centroid-1_um"]
    assert names == expected
    labels = read_image(out).data
    assert len(rows) == len(np.unique(labels)) - 1 > 5
    first = rows[0]
    ident = int(first["label"])
    assert int(first["area"]) == (labels == ident).sum()
    assert float(first["area_um2"]) == pytest.approx(int(first["area"]) * 0.25)
    assert all(0.0 <= float(r["quality"]) <= 1.0 for r in rows)
    ys, _xs = np.nonzero(labels == ident)
    assert float(first["centroid-0"]) == pytest.approx(ys.mean(), abs=1e-3)
    assert int(first["bbox-2"]) == ys.max() + 1


def test_objects_tables_in_a_folder_for_a_stack(tmp_path, capsys):
    from dataclasses import replace

    stack, _ = make_stack(replace(SAMPLE_CONFIG, shape=(96, 96)), 2, 0, dtype=np.uint16)
    first = write_image(tmp_path / "a.tif", stack, "TYX")
    second = write_image(tmp_path / "b.tif", sample((96, 96), 1), "YX")
    out = tmp_path / "out"
    out.mkdir()
    code, err = run(
        capsys, "predict", first, second, "-o", out, "--objects", out, "--device", "cpu"
    )
    assert code == 0, err
    names, rows = read_csv(out / "a_objects.csv")
    assert names[:3] == ["t", "label", "area"] and "area_um2" not in names
    assert {r["t"] for r in rows} == {"0", "1"}
    names, _ = read_csv(out / "b_objects.csv")
    assert names[0] == "label"


def test_objects_option_errors_are_one_line(tmp_path, capsys):
    a = write_image(tmp_path / "a.tif", sample((64, 64)), "YX")
    b = write_image(tmp_path / "b.tif", sample((64, 64), 2), "YX")
    out = tmp_path / "out"
    out.mkdir()
    code, err = run(capsys, "predict", a, b, "-o", out, "--objects", tmp_path / "t.csv")
    assert code == 2 and "--objects" in err and "Traceback" not in err
    code, err = run(capsys, "predict", a, "-o", out, "--objects", tmp_path / "missing" / "t.csv")
    assert code == 2 and "does not exist" in err
    assert not list(out.iterdir())  # nothing ran
