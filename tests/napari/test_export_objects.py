"""Export's "Also write the objects table": one CSV per Labels layer, read back."""

import csv

import numpy as np

from _object_columns import COLUMNS_2D
from napari_unet._napari.files.export import ExportWidget
from napari_unet._napari.review.widget import QUALITY_KEY


def _read(path):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_export_writes_the_objects_table_with_quality_and_units(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((30, 40), np.uint16)
    labels[2:6, 3:9], labels[20:28, 10:30] = 3, 5
    image = np.where(labels > 0, 200, 10).astype(np.uint16)
    viewer.add_image(image, name="raw", scale=(0.5, 0.5))
    layer = viewer.add_labels(labels, name="cells", scale=(0.5, 0.5))
    layer.metadata[QUALITY_KEY] = {"ids": [3], "quality": [0.25]}  # as Review leaves it
    widget = ExportWidget(viewer)
    widget.folder.value = tmp_path
    widget.labels_layer.value = layer
    widget.objects.value = True
    written = widget.export()
    assert tmp_path / "cells_objects.csv" in written and tmp_path / "cells.tif" in written
    names, rows = _read(tmp_path / "cells_objects.csv")
    assert names[:10] == COLUMNS_2D
    assert "area_um2" in names and "centroid-1_um" in names
    assert [r["label"] for r in rows] == ["3", "5"]
    assert rows[0]["quality"] == "0.25" and rows[1]["quality"] == ""  # 5 was never ranked
    assert float(rows[1]["area_um2"]) == 160 * 0.25
    assert float(rows[0]["intensity_mean"]) == 200
    # a second export refuses to replace the table unless asked
    widget.export()
    assert "already exist" in widget.status.value


def test_export_without_the_option_writes_no_table(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_labels(np.ones((8, 8), np.uint16), name="cells")
    widget = ExportWidget(viewer)
    widget.folder.value = tmp_path
    assert widget.export() == [tmp_path / "cells.tif"]
    assert not (tmp_path / "cells_objects.csv").exists()
