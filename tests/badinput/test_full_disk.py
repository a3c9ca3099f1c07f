"""A real full disk (a 1 MiB tmpfs, where the tests may mount one) for every writer."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from _blockwise_helpers import nuclei_image
from _cli_helpers import one_error, predict_cpu, run, train_argv

pytestmark = pytest.mark.usefixtures("isolated_models")

_SMALL_TRAINING = ("--epochs", "1", "--steps-per-epoch", "1", "--patch-size", "32")


@pytest.fixture
def full_disk(tmp_path) -> Path:
    """A 1 MiB file system, mostly filled; skipped where a tmpfs cannot be mounted (not root)."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        (where / "pad").write_bytes(b"\0" * (1024 * 1024 - 4 * 1024))
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def _ours(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "pad")


def test_a_full_disk_while_saving_a_model_is_reported_as_such(
    capsys, tmp_path, full_disk, model_file
):
    """safetensors reports ENOSPC as its own SafetensorError: it was an internal error."""
    image = nuclei_image(64, seed=4)
    labels = np.zeros((64, 64), np.uint16)
    labels[10:20, 10:20] = 1
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    out = full_disk / "m.safetensors"
    argv = train_argv(tmp_path / "img.tif", tmp_path / "lab.tif", out, model_file)
    code, err = run(capsys, *argv, *_SMALL_TRAINING, "--batch-size", "1")
    one_error(code, err, "disk full", str(out))
    assert ".tmp" not in err and _ours(full_disk) == []


@pytest.mark.parametrize("output", ["o.tif", "o.zarr"])
def test_a_full_disk_while_writing_labels_is_reported_as_such(
    capsys, tmp_path, full_disk, model_file, output
):
    tifffile.imwrite(tmp_path / "in.tif", nuclei_image(512, seed=1))
    extra = ("--blockwise", "--block-size", "256") if output.endswith(".zarr") else ()
    code, err = predict_cpu(
        capsys, tmp_path / "in.tif", full_disk / output, model_file, "-q", *extra
    )
    one_error(code, err, "disk full")
    assert _ours(full_disk) == []


def test_a_file_name_too_long_for_the_file_system_is_one_clear_line(capsys, tmp_path, model_file):
    tifffile.imwrite(tmp_path / "in.tif", nuclei_image(64, seed=1))
    for name in ("n" * 300 + ".tif", "n" * 300 + ".zarr"):
        code, err = predict_cpu(capsys, tmp_path / "in.tif", tmp_path / name, model_file, "-q")
        one_error(code, err, "file name is too long")
    long_input = tmp_path / ("n" * 250 + ".tif")  # NAME_labels.tif passes 255 bytes
    tifffile.imwrite(long_input, nuclei_image(64, seed=1))
    code, err = predict_cpu(capsys, long_input, tmp_path, model_file, "-q")
    one_error(code, err, "file name is too long")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["in.tif", long_input.name, "registry"]
    )
