"""Blockwise prediction: peak memory and throughput against image size, against in-memory
prediction, and on a dask cluster with one and two workers.

    python benchmarks/blockwise.py [--sizes 1024 4096 16384 20000] [--in-memory-max 4096]
                                   [--dask-size 8192] [--dask-block-size PX] [--block-size PX]
                                   [--input zarr|tiff] [--quick] [--no-update]

For each size, a synthetic uint16 fluorescence image of nuclei (a 1024 px synthetic sample,
flipped and rotated from chunk to chunk) is written to disk first, as an OME-Zarr store or a tiled
BigTIFF, one chunk at a time. Each measurement then runs in a child process of its own, which
reports its wall time and its peak resident memory (``ru_maxrss``, the high-water mark of the
whole process, torch included):

- *in memory* (sizes up to ``--in-memory-max``): the whole image read into memory, then
  ``predict_labels`` (probabilities and labels held whole);
- *blockwise*: ``predict_blockwise`` from the lazily opened file into a zarr store, default block
  size unless ``--block-size``;
- at ``--dask-size``: blockwise here, then on a ``LocalCluster`` with one worker (all cores) and
  with two workers (the cores shared out), the same block size for all three; cluster start-up
  is not timed, and the memory reported is the largest of the client's and the workers' peaks.

The network is the built-in starter model on the CPU, precision "auto" (bf16 on CPUs with native
bfloat16, else fp32), the same for every run. Prints a table, writes
docs/images/blockwise.png and rewrites the ``blockwise`` section of docs/benchmarks.md.
``--quick`` runs 1024, 2048 and 4096 px only (dask at 2048 px with 1024 px blocks).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, machine_description, markdown_table, update_section

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
CHUNK = 1024


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------------------
# the synthetic image


def _base_tile(seed: int = 0) -> np.ndarray:
    import dataclasses

    from napari_unet.core.synthetic.config import SAMPLE_CONFIG
    from napari_unet.core.synthetic.images import make_image

    config = dataclasses.replace(SAMPLE_CONFIG, shape=(CHUNK, CHUNK))
    image, _ = make_image(config, seed, dtype=np.uint16)
    return image


def _chunk(base: np.ndarray, y: int, x: int, shape: tuple[int, int]) -> np.ndarray:
    k = (y // CHUNK * 7 + x // CHUNK * 3) % 8
    tile = np.rot90(base, k % 4)
    tile = tile[::-1] if k >= 4 else tile
    return np.ascontiguousarray(tile[: shape[0], : shape[1]])


def write_image(path: Path, size: int, kind: str, base: np.ndarray) -> Path:
    """A size x size uint16 image at ``path`` (OME-Zarr or tiled BigTIFF), chunk by chunk."""
    if kind == "tiff":
        import tifffile

        def tiles():
            for y in range(0, size, CHUNK):
                for x in range(0, size, CHUNK):
                    yield _chunk(base, y, x, (min(CHUNK, size - y), min(CHUNK, size - x)))

        tifffile.imwrite(
            path,
            tiles(),
            shape=(size, size),
            dtype=np.uint16,
            tile=(CHUNK, CHUNK),
            compression="zlib",
            bigtiff=True,
            resolution=(2.0, 2.0),
            resolutionunit="MICROMETER",
        )
        return path
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    array = group.create_array(
        "0",
        shape=(size, size),
        chunks=(CHUNK, CHUNK),
        dtype=np.uint16,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    for y in range(0, size, CHUNK):
        for x in range(0, size, CHUNK):
            part = _chunk(base, y, x, (min(CHUNK, size - y), min(CHUNK, size - x)))
            array[y : y + part.shape[0], x : x + part.shape[1]] = part
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    datasets = [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]}
    ]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    return path


# --------------------------------------------------------------------------------------------
# one measurement (a child process)


def _child(args: argparse.Namespace) -> dict[str, Any]:
    from napari_unet.core.io.lazy import open_lazy
    from napari_unet.core.large.blockwise import predict_blockwise
    from napari_unet.core.network.registry import get_model
    from napari_unet.core.progress import drain

    model = get_model(None)
    base_mb = _peak_mb()
    image = open_lazy(args.image)
    out = Path(args.out)
    result: dict[str, Any] = {"base_mb": base_mb}
    if args.child == "memory":
        from napari_unet.core.inference.predict import predict_labels

        start, cpu = time.perf_counter(), _cpu_seconds()
        data = np.asarray(image.data.compute())
        _, labels = drain(predict_labels(data, image.axes, model, device="cpu"))
        result.update(
            seconds=time.perf_counter() - start,
            cpu=_cpu_seconds() - cpu,
            objects=int(labels.max()),
            blocks=0,
        )
        result["peak_mb"] = _peak_mb()
        return result
    client = cluster = None
    if args.child == "dask":
        import distributed

        cores = len(os.sched_getaffinity(0))
        cluster = distributed.LocalCluster(
            n_workers=args.workers,
            threads_per_worker=max(1, cores // args.workers),
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        client = distributed.Client(cluster)
        client.run(lambda: __import__("napari_unet.core.large.block_jobs"))  # warm the workers
        worker_cpu = sum(client.run(_cpu_seconds).values())
    start, cpu = time.perf_counter(), _cpu_seconds()
    done = drain(
        predict_blockwise(
            image,
            model,
            out / "labels.zarr",
            block_size=args.block_size,
            device="cpu",
            client=client,
        )
    )
    result.update(
        seconds=time.perf_counter() - start,
        cpu=_cpu_seconds() - cpu,
        objects=done.n_objects,
        blocks=done.n_blocks,
        block_size=done.block_size,
    )
    result["peak_mb"] = _peak_mb()
    if client is not None:
        peaks = client.run(_peak_mb)
        result["worker_peak_mb"] = max(peaks.values())
        result["cpu"] += sum(client.run(_cpu_seconds).values()) - worker_cpu
        client.close()
        cluster.close()
    return result


def measure(
    mode: str, image: Path, workers: int = 1, block_size: int | None = None
) -> dict[str, Any]:
    """Run one measurement in a child process and return what it reported."""
    with tempfile.TemporaryDirectory(prefix="napari-unet-bench-") as out:
        command = [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--image",
            str(image),
            "--out",
            out,
            "--workers",
            str(workers),
        ]
        if block_size:
            command += ["--block-size", str(block_size)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} on {image} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# report


def _row(size: int, name: str, r: dict[str, Any], reference: dict[str, Any] | None) -> list[str]:
    peak = max(r["peak_mb"], r.get("worker_peak_mb", 0.0))
    ratio = "-"
    if reference:
        ratio = f"{r['seconds'] / reference['seconds']:.2f}x / {r['cpu'] / reference['cpu']:.2f}x"
    return [
        f"{size} x {size}",
        name,
        str(r.get("blocks") or "-"),
        f"{r['seconds']:.1f}",
        f"{r['cpu']:.1f}",
        f"{size * size / r['seconds'] / 1e6:.2f}",
        ratio,
        f"{peak:.0f}",
    ]


def _plot(points: dict[str, list[tuple[int, dict[str, Any]]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, speed) = plt.subplots(1, 2, figsize=(10, 4))
    for name, series in points.items():
        sizes = [s * s / 1e6 for s, _ in series]
        peaks = [max(r["peak_mb"], r.get("worker_peak_mb", 0.0)) for _, r in series]
        rates = [s * s / r["seconds"] / 1e6 for s, r in series]
        mem.plot(sizes, peaks, "o-", label=name)
        speed.plot(sizes, rates, "o-", label=name)
    mem.axhline(2048, color="grey", ls="--", lw=1, label="2 GB goal")
    for ax, label in ((mem, "peak resident memory (MB)"), (speed, "throughput (MP/s)")):
        ax.set_xscale("log")
        ax.set_xlabel("image size (megapixels)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    mem.set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, 20000])
    parser.add_argument(
        "--in-memory-max", type=int, default=4096, help="largest size also run in memory"
    )
    parser.add_argument("--dask-size", type=int, default=8192, help="0: no dask runs")
    parser.add_argument("--dask-block-size", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--input", choices=("zarr", "tiff"), default="zarr")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1024, 2048 and 4096 px; dask at 2048 px with 1024 px blocks",
    )
    parser.add_argument("--no-update", action="store_true", help="do not touch the docs")
    parser.add_argument("--child", choices=("memory", "blockwise", "dask"), help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.stdout.write(json.dumps(_child(args)) + "\n")
        return 0
    if args.quick:
        args.sizes, args.dask_size, args.dask_block_size = [1024, 2048, 4096], 2048, 1024
    load = machine_description()
    precision = _precision()
    rows: list[list[str]] = []
    points: dict[str, list[tuple[int, dict[str, Any]]]] = {"in memory": [], "blockwise": []}
    with tempfile.TemporaryDirectory(prefix="napari-unet-bench-images-") as folder:
        base = _base_tile()
        suffix = ".zarr" if args.input == "zarr" else ".tif"

        def image_of(size: int) -> Path:
            path = Path(folder) / f"image{size}{suffix}"
            return path if path.exists() else write_image(path, size, args.input, base)

        for size in args.sizes:
            path = image_of(size)
            reference = None
            if size <= args.in_memory_max:
                r = reference = measure("memory", path)
                points["in memory"].append((size, r))
                rows.append(_row(size, "in memory", r, reference))
                sys.stdout.write(" | ".join(rows[-1]) + "\n")
            r = measure("blockwise", path, block_size=args.block_size)
            points["blockwise"].append((size, r))
            rows.append(_row(size, "blockwise", r, reference))
            sys.stdout.write(" | ".join(rows[-1]) + "\n")
            sys.stdout.flush()
        dask_rows = (
            _dask_rows(image_of(args.dask_size), args.dask_size, args.dask_block_size)
            if args.dask_size > 0
            else []
        )
    headers = [
        "image",
        "run",
        "blocks",
        "wall s",
        "CPU s",
        "MP/s (wall)",
        "vs in memory (wall / CPU)",
        "peak memory (MB)",
    ]
    table = markdown_table(headers, rows)
    headers[-2] = "vs one process (wall / CPU)"
    dask_table = markdown_table(headers, dask_rows)
    sys.stdout.write(f"\n{table}\n\n{dask_table if dask_rows else ''}\n")
    if not args.no_update:
        plot = _plot(points, IMAGES / "blockwise.png")
        body = (
            "## Blockwise prediction of large images (`benchmarks/blockwise.py`)\n\n"
            "Synthetic uint16 images of nuclei written to disk first "
            f"({'OME-Zarr' if args.input == 'zarr' else 'tiled BigTIFF'}, 1024 px chunks), the "
            f"built-in starter model on the CPU ({precision}). Each run is a process of its "
            "own; its peak memory is the high-water mark of the whole process (about "
            f"{points['blockwise'][0][1]['base_mb']:.0f} MB of it is Python, torch and the model "
            "before any pixel is read). In memory: the image read whole, then `predict_labels`. "
            "Blockwise: `predict_blockwise` from the lazily opened file into an OME-Zarr label "
            "image (read, predict, label, stitch and write included). Wall and CPU seconds of "
            "the run (CPU: user + system time of every process of the run, less sensitive to "
            "other load on a shared machine).\n\n"
            f"{table}\n\n"
        )
        if dask_rows:
            blocks = f"{args.dask_block_size} px" if args.dask_block_size else "default"
            body += (
                f"On a dask `LocalCluster` ({blocks} blocks; start-up not timed; peak memory: the "
                "largest of the client's and the workers'), against the same blockwise run in one "
                "process, where torch spreads each block over all cores; a worker runs one block "
                "per thread, each on one core (one worker with a thread per core, or one "
                f"single-thread worker per core):\n\n{dask_table}\n\n"
            )
        body += (
            f"![Peak memory and throughput against image size](images/{plot.name})\n\n"
            f"Machine: {load}.  \nCommand: `{command_line()}`"
        )
        update_section("blockwise", body)
    return 0


def _precision() -> str:
    import torch

    from napari_unet.core.network.device import resolve_precision

    return f"precision auto: {resolve_precision('auto', torch.device('cpu'))}"


def _dask_rows(path: Path, size: int, block_size: int | None) -> list[list[str]]:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return [
            [
                f"{size} x {size}",
                "dask not installed (pip install distributed)",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
            ]
        ]
    local = measure("blockwise", path, block_size=block_size)
    rows = [_row(size, "blockwise, one process", local, local)]
    for workers in (1, 2):
        r = measure("dask", path, workers=workers, block_size=block_size)
        rows.append(_row(size, f"dask, {workers} worker{'s' if workers > 1 else ''}", r, local))
        sys.stdout.write(" | ".join(rows[-1]) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(main())
