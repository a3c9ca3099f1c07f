"""``napari-unet export-model``: write a model as a bioimage.io package."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_unet.cli._common import PROG, add_command

_DESCRIPTION = (
    "Write a model as a bioimage.io model package (.zip) with PyTorch state-dict and "
    "TorchScript weights (ONNX on request), test tensors, a cover image and a README, for the "
    "bioimage.io model zoo, deepImageJ, QuPath, ilastik and napari-unet itself. The package is "
    "checked with bioimageio.core's test first; one that fails is not written. Needs the "
    "bioimageio extra (pip install 'napari-unet[bioimageio]')."
)


def add_export_model(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``export-model`` sub-command to ``sub`` and return its parser."""
    p = add_command(sub, common, "export-model", "write a model as a bioimage.io package",
                    _DESCRIPTION)  # fmt: skip
    p.add_argument("model", metavar="MODEL",
                   help="a model name (see 'napari-unet models') or a model file")  # fmt: skip
    p.add_argument("-o", "--output", required=True, metavar="NAME.zip",
                   help="the package to write (an existing file is replaced)")  # fmt: skip
    p.add_argument(
        "--author",
        action="append",
        dest="authors",
        metavar="NAME",
        help="an author of the model (repeat for several; default: the model file's authors)",
    )
    p.add_argument(
        "--license",
        default=None,
        metavar="SPDX",
        help="the model's license as an SPDX identifier (default: BSD-3-Clause)",
    )
    p.add_argument("--description", metavar="TEXT", help="one paragraph on the model")
    p.add_argument(
        "--test-image",
        metavar="IMAGE",
        help="an image whose centre becomes the test input (default: synthetic nuclei)",
    )
    p.add_argument("--onnx", action="store_true",
                   help="also write ONNX weights (opset 17; needs the onnx package)")  # fmt: skip
    return p


def _test_image(path: str | None, in_channels: int) -> Any:
    if path is None:
        return None
    import numpy as np

    from napari_unet.core.io.reading import read_image
    from napari_unet.core.network.normalize import as_planes

    image = read_image(Path(path).expanduser())
    planes, _, _ = as_planes(image.data, image.axes, in_channels)
    plane = np.asarray(planes[len(planes) // 2])
    top, left = max(0, plane.shape[-2] // 2 - 128), max(0, plane.shape[-1] // 2 - 128)
    return plane[:, top : top + 256, left : left + 256]


def cmd_export_model(args: argparse.Namespace) -> int:
    """Run ``napari-unet export-model``; returns the exit code."""
    from napari_unet.core.bioimageio.export import DEFAULT_LICENSE, export_model
    from napari_unet.core.bioimageio.export_job import check_exportable, model_authors
    from napari_unet.core.errors import UserError
    from napari_unet.core.network.registry import get_model

    loaded = get_model(args.model)
    check_exportable(loaded, args.model)
    authors = [a.strip() for a in args.authors or [] if a.strip()] or model_authors(loaded)
    if not authors:
        raise UserError("a bioimage.io package needs its authors: give --author NAME")
    path = export_model(
        loaded, args.output, authors, args.license or DEFAULT_LICENSE, args.description,
        _test_image(args.test_image, loaded.config.in_channels), onnx=args.onnx,
    )  # fmt: skip
    if not args.quiet:
        sys.stderr.write(f"{PROG}: wrote {path} (bioimageio test passed)\n")
    return 0
