"""What the screenshot scripts share: where the images go, and waiting on the Qt event loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"


def wait(condition: Callable[[], bool], seconds: float) -> None:
    """Process Qt events until ``condition()`` holds (or ``seconds`` pass)."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()
