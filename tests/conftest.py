"""Shared test settings."""

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
