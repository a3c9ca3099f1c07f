"""Runs that are killed, and the leftovers of runs killed earlier; full disks."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from _blockwise_helpers import nuclei_image
from _cli_helpers import child_env, predict_argv, predict_cpu, run, train_argv
from napari_unet.core.io.safe_paths import WORK_PREFIX, _host, is_stale, sweep_stale, temp_tag

pytestmark = pytest.mark.usefixtures("isolated_models")


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_only_stale_leftovers_of_ours_are_swept(tmp_path):
    dead = f"{_host()}-{dead_pid()}-0123abcd"
    stale_dir = tmp_path / f"{WORK_PREFIX}{dead}-x1"
    stale_dir.mkdir()
    (stale_dir / "local.zarr").mkdir()
    stale_dir = aged(stale_dir, 600)
    young = tmp_path / f"{WORK_PREFIX}{_host()}-{dead_pid()}-0123abce-x2"
    young.mkdir()  # just made: its process id may be reused already, keep it
    live = tmp_path / f"{WORK_PREFIX}{temp_tag()}-x3"
    live.mkdir()
    aged(live, 600)
    other_host = tmp_path / f"{WORK_PREFIX}ffffffff-{dead_pid()}-0123abcf-x4"
    other_host.mkdir()
    aged(other_host, 600)  # another machine on a shared disk: only after a week
    unrelated = tmp_path / f"{WORK_PREFIX}mine"
    unrelated.mkdir()
    aged(unrelated, 10**7)
    assert is_stale(stale_dir) and not is_stale(live)
    assert sweep_stale(tmp_path) == 1
    assert not stale_dir.exists()
    assert young.exists() and live.exists() and other_host.exists() and unrelated.exists()
    aged(other_host, 8 * 24 * 3600)
    assert sweep_stale(tmp_path) == 1 and not other_host.exists()


def test_predict_sweeps_what_killed_runs_left(capsys, tmp_path, model_file):
    tifffile.imwrite(tmp_path / "in.tif", nuclei_image(64, seed=1))
    dead = f"{_host()}-{dead_pid()}-0123abcd"
    leftovers = [
        tmp_path / f".out.tif.{dead}.tmp.tif",
        tmp_path / f".labels.zarr.{dead}.tmp",
        tmp_path / f"{WORK_PREFIX}{dead}-zz",
    ]
    leftovers[0].write_bytes(b"partial")
    leftovers[1].mkdir()
    leftovers[2].mkdir()
    for path in leftovers:
        aged(path, 600)
    someone_elses = tmp_path / ".out.tif.notes"
    someone_elses.write_text("keep")
    aged(someone_elses, 10**7)
    code, err = predict_cpu(capsys, tmp_path / "in.tif", tmp_path / "out.tif", model_file, "-q")
    assert code == 0, err
    code, err = predict_cpu(capsys, tmp_path / "in.tif", tmp_path / "labels.zarr", model_file, "-q")
    assert code == 0, err
    assert not any(p.exists() for p in leftovers)
    assert someone_elses.read_text() == "keep"


_SLOW = """
import sys, time
import napari_unet.core.large.block_read as block_read
real = block_read.compute_pixels

def slow(block, where, scheduler="synchronous"):
    if where.startswith("at rows"):
        sys.stderr.write("READING\\n"); sys.stderr.flush()
        time.sleep(0.5)
    return real(block, where, scheduler)

block_read.compute_pixels = slow
from napari_unet.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("output", ["out.zarr", "out.tif"])
def test_sigterm_cleans_up_like_ctrl_c(tmp_path, model_file, output):
    tifffile.imwrite(tmp_path / "in.tif", nuclei_image(256, seed=1))
    argv = predict_argv(
        tmp_path / "in.tif", tmp_path / output, model_file, "--block-size", "64", "-q"
    )
    if output.endswith(".zarr"):
        argv += ["--probabilities", tmp_path / "p.zarr"]
    env = child_env()
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW, *map(str, argv)], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stderr.readline().strip() == "READING"
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 143, err
    assert "terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "registry"]


def training_pair(folder: Path) -> tuple[Path, Path]:
    """A 64 x 64 nuclei image and labels with one square object, written to ``folder``."""
    labels = np.zeros((64, 64), np.uint16)
    labels[10:30, 10:30] = 1
    tifffile.imwrite(folder / "img.tif", nuclei_image(64, seed=1))
    tifffile.imwrite(folder / "img_labels.tif", labels)
    return folder / "img.tif", folder / "img_labels.tif"


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "somewhere")


def test_a_full_disk_is_reported_as_such_for_tiff(capsys, tmp_path, model_file, monkeypatch):
    tifffile.imwrite(tmp_path / "in.tif", nuclei_image(64, seed=1))

    def write_some_then_fail(path, *args, **kwargs):
        Path(path).write_bytes(b"II*\x00partial")
        _disk_full()

    monkeypatch.setattr(tifffile, "imwrite", write_some_then_fail)
    code, err = predict_cpu(capsys, tmp_path / "in.tif", tmp_path / "out.tif", model_file, "-q")
    assert code == 2 and "disk full" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "registry"]


def test_a_full_disk_is_reported_as_such_for_zarr(capsys, tmp_path, model_file, monkeypatch):
    from zarr.storage import _local

    tifffile.imwrite(tmp_path / "in.tif", nuclei_image(64, seed=1))
    real = _local._put

    def put(path, value, exclusive=False):
        if Path(path).name.isdigit() or "/0/" in str(path):
            _disk_full()
        return real(path, value, exclusive)

    monkeypatch.setattr(_local, "_put", put)
    code, err = predict_cpu(capsys, tmp_path / "in.tif", tmp_path / "out.zarr", model_file, "-q")
    assert code == 2 and "disk full" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "registry"]


def test_a_full_disk_during_training_keeps_no_partial_model(
    capsys, tmp_path, model_file, monkeypatch
):
    import napari_unet.core.network.weights as weights

    image, labels = training_pair(tmp_path)

    def save_file(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        _disk_full()

    monkeypatch.setattr(weights, "save_file", save_file)
    code, err = run(
        capsys,
        *train_argv(image, labels, tmp_path / "m.safetensors", model_file),
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--patch-size",
        "32",
        "--batch-size",
        "1",
    )
    assert code == 2 and "disk full" in err, err
    assert not [p for p in tmp_path.iterdir() if "m.safetensors" in p.name]


def test_sigterm_during_training_keeps_the_best_model(tmp_path, model_file):
    from napari_unet.core.network.registry import load_model

    image, labels = training_pair(tmp_path)
    out = tmp_path / "m.safetensors"
    argv = [
        "-m",
        "napari_unet",
        *train_argv(image, labels, out, model_file),
        "--epochs",
        "100000",
        "--steps-per-epoch",
        "1",
        "--patch-size",
        "32",
        "--batch-size",
        "1",
        "--validation-fraction",
        "0",
    ]
    env = child_env()
    child = subprocess.Popen(
        [sys.executable, *map(str, argv)], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.1)
        time.sleep(0.5)
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 143, err
    assert "terminated" in err
    load_model(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.safetensors")]
