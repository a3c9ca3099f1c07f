"""Blocks and files on a dask.distributed cluster (two worker processes on loopback) give the
results of a local run."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import tifffile

from _blockwise_helpers import nuclei_image, nuclei_model, save_nuclei_model
from napari_unet.cli import main
from napari_unet.core.analysis.metrics import match
from napari_unet.core.inference.postprocess import labels_from_probabilities
from napari_unet.core.inference.predict import predict_probabilities
from napari_unet.core.io.lazy import open_lazy
from napari_unet.core.io.reading import read_image
from napari_unet.core.large.blockwise import predict_blockwise
from napari_unet.core.large.distributed import FileJob, connect, predict_files
from napari_unet.core.progress import drain

distributed = pytest.importorskip("distributed")

# starting two worker processes takes a few seconds: one cluster for the module
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def model():
    return nuclei_model()


@pytest.fixture
def stack_file(tmp_path):
    stack = np.stack([nuclei_image(160, seed=s) for s in (4, 5)])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TYX"})
    return path


def _run(path, model, output, client):
    return drain(
        predict_blockwise(
            open_lazy(path), model, output, block_size=64, overlap=32, device="cpu", client=client
        )
    )


def test_cluster_blocks_equal_local_blocks(client, model, stack_file, tmp_path):
    local = _run(stack_file, model, tmp_path / "local.zarr", None)
    remote = _run(stack_file, model, tmp_path / "remote.zarr", client)
    assert remote.n_blocks == local.n_blocks == 18
    assert remote.n_objects == local.n_objects > 10
    np.testing.assert_array_equal(np.asarray(remote.labels[...]), np.asarray(local.labels[...]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.zarr", "remote.zarr", "stack.tif"]


def test_cluster_files_equal_local_files(client, model, tmp_path):
    jobs = []
    for seed in (6, 7):
        source = tmp_path / f"image{seed}.tif"
        tifffile.imwrite(source, nuclei_image(96, seed=seed))
        jobs.append(FileJob(source, tmp_path / f"labels{seed}.tif"))
    done = dict(predict_files(client, jobs, model, device="cpu"))
    assert set(done) == set(jobs)
    for job in jobs:
        image = read_image(job.source)
        probs = drain(predict_probabilities(image.data, "YX", model, device="cpu"))
        expected = labels_from_probabilities(probs, "instances")
        np.testing.assert_array_equal(read_image(job.target).data, expected)
        assert done[job] == int(expected.max())


def test_connect_follows_dask_configuration(client):
    assert connect(None) is None  # no address anywhere: run locally
    with dask.config.set({"scheduler-address": client.scheduler.address}):
        configured = connect(None)
    try:
        assert configured.scheduler.address == client.scheduler.address
    finally:
        configured.close()


@pytest.mark.usefixtures("isolated_models")
def test_command_line_scheduler_runs_files_and_blocks(client, tmp_path, capsys):
    model_file = save_nuclei_model(tmp_path / "nuclei.safetensors")
    for seed in (8, 9):
        tifffile.imwrite(tmp_path / f"cell{seed}.tif", nuclei_image(96, seed=seed))
    (tmp_path / "here").mkdir()
    (tmp_path / "there").mkdir()
    common = ["-m", model_file, "--device", "cpu", "--precision", "fp32"]
    sources = [tmp_path / "cell8.tif", tmp_path / "cell9.tif"]
    assert (
        main(["predict", *map(str, sources), "-o", str(tmp_path / "here"), *map(str, common)]) == 0
    )
    address = client.scheduler.address
    assert (
        main(
            [
                "predict",
                *map(str, sources),
                "-o",
                str(tmp_path / "there"),
                "--scheduler",
                address,
                *map(str, common),
            ]
        )
        == 0
    )
    for name in ("cell8_labels.tif", "cell9_labels.tif"):
        np.testing.assert_array_equal(
            read_image(tmp_path / "there" / name).data, read_image(tmp_path / "here" / name).data
        )
    assert (
        main(
            [
                "predict",
                str(sources[0]),
                "-o",
                str(tmp_path / "blocks.zarr"),
                "--scheduler",
                address,
                "--block-size",
                "32",
                *map(str, common),
            ]
        )
        == 0
    )
    assert "blocks.zarr" in capsys.readouterr().err
    blocks = open_lazy(tmp_path / "blocks.zarr").data.compute()
    expected = read_image(tmp_path / "here" / "cell8_labels.tif").data
    assert match(blocks, expected, 0.5).ap >= 0.99
