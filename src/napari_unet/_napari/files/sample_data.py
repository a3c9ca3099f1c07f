"""Sample data: synthetic nuclei images with their exact ground-truth labels.

The files ship in ``napari_unet/samples/`` (made by :mod:`napari_unet.core.synthetic.images`); they
are
read with :func:`napari_unet.core.io.reading.read_image`, so they open with their pixel size (0.5
µm).
"""

from __future__ import annotations

from importlib.resources import as_file, files

from napari_unet._napari.files.layer_info import LayerData, layer_data
from napari_unet.core.io.reading import read_image


def sample_nuclei() -> list[LayerData]:
    """A 2D image of nuclei, (512, 512) uint16, and its ground-truth labels (512, 512) uint16."""
    return _sample("nuclei", "nuclei")


def sample_stack() -> list[LayerData]:
    """A small time-lapse of nuclei, (T=5, 256, 256) uint16, and its labels, same shape."""
    return _sample("nuclei_stack", "nuclei stack")


def _sample(stem: str, name: str) -> list[LayerData]:
    folder = files("napari_unet") / "samples"
    # read into memory: a packaged file may be a temporary copy that disappears after `as_file`
    with as_file(folder / f"{stem}.tif") as path:
        image = read_image(path, memmap=False)
    with as_file(folder / f"{stem}_labels.tif") as path:
        labels = read_image(path, memmap=False)
    # not the user's files: no source path, so nothing offers to save into the package folder
    image.path = labels.path = None
    return [
        layer_data(image, name, "image"),
        layer_data(labels, f"{name} ground truth", "labels"),
    ]
