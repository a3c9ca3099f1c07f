"""Write the sample images that ship in the package (``src/napari_unet/samples/``).

    python scripts/make_samples.py

``nuclei.tif``: a synthetic 512x512 uint16 fluorescence image of nuclei (pixel size 0.5 um) and
``nuclei_labels.tif``: its exact instance labels; ``nuclei_stack.tif`` and its labels:
a (5, 256, 256) time-lapse. They come from :mod:`napari_unet.core.synthetic.images` with fixed
seeds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tifffile

from napari_unet.core.io.storage import atomic_path
from napari_unet.core.io.writing import write_labels
from napari_unet.core.synthetic.images import sample_nuclei, sample_stack

PIXEL_SIZE_UM = 0.5
FOLDER = Path(__file__).resolve().parents[1] / "src" / "napari_unet" / "samples"


def _write_image(path: Path, image, axes: str) -> None:
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            image,
            imagej=True,
            compression="zlib",
            resolution=(1 / PIXEL_SIZE_UM, 1 / PIXEL_SIZE_UM),
            metadata={"axes": axes, "unit": "um"},
        )


def main() -> int:
    FOLDER.mkdir(parents=True, exist_ok=True)
    image, labels = sample_nuclei(0)
    _write_image(FOLDER / "nuclei.tif", image, "YX")
    write_labels(FOLDER / "nuclei_labels.tif", labels, "YX", (PIXEL_SIZE_UM, PIXEL_SIZE_UM))
    stack, stack_labels = sample_stack(0)
    _write_image(FOLDER / "nuclei_stack.tif", stack, "TYX")
    write_labels(
        FOLDER / "nuclei_stack_labels.tif", stack_labels, "TYX", (PIXEL_SIZE_UM, PIXEL_SIZE_UM)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
