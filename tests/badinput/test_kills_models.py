"""Model writes that were killed: safetensors' own temporary files beside the model file are
swept by the next write there, and nothing else is."""

from __future__ import annotations

import os
import time
from pathlib import Path

from napari_unet.core.config import ModelConfig
from napari_unet.core.io.safe_paths import SAFETENSORS_TEMP_AGE, sweep_safetensors_temp
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.model import build_model
from napari_unet.core.network.registry import load_model
from napari_unet.core.network.weights import save_model

TINY = ModelConfig(depth=2, base_channels=4)


def aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def _partial_model(path: Path, source: Path, fraction: float = 0.5) -> Path:
    """What a write killed part-way leaves: the first part of a real model file."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def test_the_next_model_write_sweeps_safetensors_temp_files_of_killed_writes(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    first = save_model(folder / "a.safetensors", build_model(TINY, seed=0), new_metadata(TINY))
    old = SAFETENSORS_TEMP_AGE + 60
    stale = [
        aged(_partial_model(folder / ".tmpAb3dE9", first), old),
        aged(_partial_model(folder / ".tmp000000", first, 0.001), old),  # the header only
        aged(_partial_model(folder / ".tmpzzzzzz", first, 0.0), old),  # killed before a byte
    ]
    header = first.read_bytes()[:64]
    kept = [
        _partial_model(folder / ".tmpYoung1", first),  # a write that may still be going on
        aged(_write(folder / ".tmpnotsft", b"someone's notes"), old),  # not a safetensors layout
        aged(_write(folder / ".tmpabc", header), old),  # not the temp pattern
        aged(_write(folder / ".tmpabcdefg", header), old),
        aged(_write(folder / "tmpAb3dE9", header), old),
        aged(_write(folder / "notes.safetensors", header), old),
    ]
    folder_named = folder / ".tmpDir123"
    folder_named.mkdir()
    aged(folder_named, old)
    link = folder / ".tmpLink12"
    link.symlink_to(first)
    aged(link, old)
    beside = tmp_path / ".tmpOther1"  # another folder: not beside the model being written
    aged(_partial_model(beside, first), old)

    second = save_model(folder / "b.safetensors", build_model(TINY, seed=1), new_metadata(TINY))
    assert load_model(second).config == TINY
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert folder_named.is_dir() and link.is_symlink() and first.exists() and beside.exists()
    assert sweep_safetensors_temp(folder) == 0  # nothing more to sweep
    # a young leftover is swept once it is old enough
    aged(kept[0], old)
    assert sweep_safetensors_temp(folder) == 1 and not kept[0].exists()


def test_the_sweep_never_raises_on_a_missing_folder(tmp_path):
    assert sweep_safetensors_temp(tmp_path / "missing") == 0
    assert sweep_safetensors_temp(_write(tmp_path / "a file", b"x")) == 0


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
