"""``napari-unet demo``: open napari with the sample image and the three widgets docked."""

from __future__ import annotations

import argparse
from typing import Any

from napari_unet.cli._common import add_command
from napari_unet.core.errors import UserError

_DESCRIPTION = (
    "Open napari with the shipped sample image (synthetic nuclei) and the Segment, Fine-tune "
    "and Export widgets docked: press Run in Segment. Needs napari with a Qt binding "
    "(pip install 'napari-unet[all]')."
)


def add_demo(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``demo`` sub-command to ``sub`` and return its parser."""
    return add_command(sub, common, "demo", "open napari with the sample and the widgets",
                       _DESCRIPTION)  # fmt: skip


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo until the napari window is closed."""
    try:
        from napari_unet._napari.demo import run_demo
    except ImportError as exc:
        raise UserError(
            f"The demo needs napari with a Qt binding ({exc.name or exc} is missing): "
            "pip install 'napari-unet[all]'."
        ) from exc
    return run_demo()
