"""The engine must stay usable without a screen: importing core pulls in neither Qt nor napari."""

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import napari_unet.core as core
names = [m.name for m in pkgutil.walk_packages(core.__path__, "napari_unet.core.")]
for name in names:
    importlib.import_module(name)
gui = {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy"}
bad = sorted(m for m in sys.modules if m.split(".")[0] in gui)
sys.exit("imported: " + ", ".join(bad) if bad else 0 if len(names) >= 40 else "too few modules")
"""


def test_core_imports_without_qt_or_napari() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or result.stdout


def test_package_import_is_light() -> None:
    code = "import sys, napari_unet; sys.exit('torch imported' if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or result.stdout
