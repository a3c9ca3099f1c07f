"""The npe2 manifest: valid, discovered as "napari-unet", with everything it promises."""

import subprocess
import sys
from importlib import import_module
from pathlib import Path

import npe2
import pytest

import napari_unet

MANIFEST = Path(napari_unet.__file__).parent / "napari.yaml"


def test_npe2_validate_accepts_the_manifest():
    npe2.PluginManifest.from_file(MANIFEST)  # raises on an invalid manifest
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", str(MANIFEST)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_plugin_is_discovered_with_its_contributions():
    manager = npe2.PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("napari-unet")
    contributions = manifest.contributions
    assert [w.display_name for w in contributions.widgets] == [
        "Segment",
        "Fine-tune",
        "Export",
        "Review",
    ]
    [reader] = contributions.readers
    assert {"*.tif", "*.tiff"} <= set(reader.filename_patterns)
    [writer] = contributions.writers
    assert writer.layer_types == ["labels"]
    assert {".tif", ".tiff"} <= set(writer.filename_extensions)
    assert [s.key for s in contributions.sample_data] == ["nuclei", "nuclei_stack"]
    menu = manifest.contributions.menus["napari/layers/segment"]
    assert len(menu) == 4


@pytest.mark.parametrize(
    "command", [c.id for c in npe2.PluginManifest.from_file(MANIFEST).contributions.commands]
)
def test_every_command_imports(command):
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    [entry] = [c for c in manifest.contributions.commands if c.id == command]
    module, name = entry.python_name.split(":")
    assert callable(getattr(import_module(module), name))
