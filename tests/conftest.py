"""Shared test settings."""

import io
import os

import pytest

# never let a test touch the user's real model folder
os.environ.setdefault("NAPARI_UNET_MODELS", os.path.join(os.path.dirname(__file__), "_no_models"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny networks run fastest on one thread (and CI machines are small)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def isolated_models(tmp_path, monkeypatch):
    """An empty user model folder, so the user's own models never leak into a test; debug
    output off."""
    folder = tmp_path / "registry"
    folder.mkdir()
    monkeypatch.setenv("NAPARI_UNET_MODELS", str(folder))
    monkeypatch.delenv("NAPARI_UNET_DEBUG", raising=False)
    return folder


@pytest.fixture
def no_builtin_models(tmp_path, monkeypatch):
    """Hide the models that ship in the package (as if none were installed)."""
    monkeypatch.setattr(
        "napari_unet.core.network.registry.builtin_models_dir", lambda: tmp_path / "none"
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal() -> io.StringIO:
    """A text stream that says it is an interactive terminal (what it got: ``getvalue()``)."""
    return _Terminal()


def pytest_collection_modifyitems(config, items):
    """Tests under ``tests/napari`` open a real viewer: mark them ``gui`` (``-m "not gui"``
    runs everything that needs no screen). The slowest tests (several seconds each: 3D
    fusion, bioimage.io packaging, dask clusters) carry ``slow``: ``-m "not slow"`` is the quick
    run, and the default run takes everything."""
    for item in items:
        if "napari" in item.path.parts[-2:-1]:
            item.add_marker(pytest.mark.gui)
