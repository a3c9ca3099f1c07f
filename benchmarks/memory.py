"""Peak memory of the in-memory path: ``napari-unet predict`` and the Segment widget's job.

    python benchmarks/memory.py [--size 4096] [--before-src DIR] [--no-update]

A synthetic size x size uint16 image of nuclei (the 1024 px sample, flipped and rotated from
chunk to chunk, as in ``blockwise.py``) is written as a TIFF first. Each measurement then runs in
a child process of its own, and its peak resident memory is the child's high-water mark
(``ru_maxrss`` from ``os.wait4``, the whole process: Python, torch and the model included):

- *floor*: Python, torch and the starter model loaded, no pixel read;
- *predict*: ``python -m napari_unet predict IMAGE -o LABELS.tif --device cpu``;
- *predict --probabilities*: the same, also writing the float32 probabilities;
- *Segment job*: the Segment widget's core generator (``segment_job``, no viewer) on the image
  as a numpy array, then one re-thresholding (``rethreshold_job``) from what it keeps; the child
  reports the bytes of the probabilities kept for re-thresholding.

``--before-src DIR`` measures the same with the package from another source tree (e.g. an
earlier commit unpacked with ``git archive COMMIT src | tar -x -C DIR``) for a before/after
table (``--before-name`` says what it is, in the docs). Prints the table and rewrites the
``memory`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, machine_description, markdown_table, update_section

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 1024
RUNS = ("floor", "predict", "predict --probabilities", "Segment job")


def write_image(path: Path, size: int) -> Path:
    """A size x size uint16 TIFF of synthetic nuclei at ``path``."""
    import tifffile

    from blockwise import _base_tile, _chunk

    base = _base_tile()
    image = np.empty((size, size), np.uint16)
    for y in range(0, size, CHUNK):
        for x in range(0, size, CHUNK):
            part = _chunk(base, y, x, (min(CHUNK, size - y), min(CHUNK, size - x)))
            image[y : y + part.shape[0], x : x + part.shape[1]] = part
    tifffile.imwrite(path, image)
    return path


def _child(kind: str, image_path: str) -> dict[str, Any]:
    """Run in a child process: the floor or the Segment job; returns what it reports."""
    from napari_unet.core.network.registry import get_model, resolve_model

    model_path = resolve_model(None)
    model = get_model(None)
    if kind == "floor":
        import torch

        torch.zeros(1)
        return {}
    import tifffile

    from napari_unet._napari.segment.job import SegmentRequest, rethreshold_job, segment_job
    from napari_unet.core.inference.postprocess import PostprocessConfig
    from napari_unet.core.progress import drain

    image = tifffile.imread(image_path)
    request = SegmentRequest(image, "YX", Path(model_path), model, None, PostprocessConfig(),
                             device="cpu")  # fmt: skip
    result = drain(segment_job(request))
    kept = result.probabilities
    labels = drain(rethreshold_job(kept, "instances", PostprocessConfig(interior_threshold=0.6)))
    return {
        "kept_bytes": int(kept.nbytes),
        "kept_dtype": str(kept.dtype),
        "objects": int(result.labels.max()),
        "objects_rethresholded": int(labels.max()),
    }


def measure(kind: str, image: Path, src: Path, out: Path) -> dict[str, Any]:
    """Run one measurement in a child with ``src`` on its path; its peak memory and report."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    if kind.startswith("predict"):
        command = [sys.executable, "-m", "napari_unet", "predict", str(image), "-o",
                   str(out / "labels.tif"), "--device", "cpu", "-q"]  # fmt: skip
        if kind.endswith("--probabilities"):
            command += ["--probabilities", str(out / "probabilities.tif")]
    else:
        child = "floor" if kind == "floor" else "segment"
        command = [sys.executable, __file__, "--child", child, "--image", str(image)]
    start = time.perf_counter()
    with open(out / "stdout", "w+b") as stdout, open(out / "stderr", "w+b") as stderr:
        proc = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own high-water mark
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        text, errors = stdout.read().decode(), stderr.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{errors[-3000:]}")
    report = json.loads(text.strip().splitlines()[-1]) if kind in ("floor", "Segment job") else {}
    report["peak_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    report["seconds"] = seconds
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--before-src", type=Path, help="the package of an earlier source tree")
    parser.add_argument(
        "--before-name", default="an earlier source tree", help="what --before-src is, for the docs"
    )
    parser.add_argument("--no-update", action="store_true", help="do not touch the docs")
    parser.add_argument("--child", choices=("floor", "segment"), help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.stdout.write(json.dumps(_child(args.child, args.image)) + "\n")
        return 0
    load = machine_description()
    trees = [("now", ROOT / "src")]
    if args.before_src is not None:
        trees.insert(0, ("before", args.before_src.resolve()))
    pixels = args.size * args.size
    results: dict[tuple[str, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="napari-unet-bench-memory-") as folder:
        image = write_image(Path(folder) / "image.tif", args.size)
        for kind in RUNS:  # the trees interleaved, so that other load affects them alike
            for tree, src in trees:
                with tempfile.TemporaryDirectory(dir=folder) as out:
                    r = results[tree, kind] = measure(kind, image, src, Path(out))
                sys.stdout.write(f"{tree:6} {kind:26} {r['peak_mb']:7.0f} MB  {r}\n")
                sys.stdout.flush()
    rows = []
    for kind in RUNS:
        for tree, _ in trees:
            r = results[tree, kind]
            floor = results[tree, "floor"]["peak_mb"]
            above = (r["peak_mb"] - floor) * 1024**2 / pixels
            kept = "-"
            if "kept_bytes" in r:
                per_pixel = r["kept_bytes"] / pixels
                kept = f"{r['kept_bytes'] / 1e6:.0f} MB {r['kept_dtype']} ({per_pixel:.0f} B/px)"
            rows.append([kind, tree if len(trees) > 1 else "-", f"{r['peak_mb']:.0f}",
                         "-" if kind == "floor" else f"{above:.1f}", kept,
                         f"{r['seconds']:.1f}"])  # fmt: skip
    headers = ["run", "code", "peak memory (MB)", "above the floor (bytes per pixel)",
               "kept for re-thresholding", "wall s"]  # fmt: skip
    table = markdown_table(headers, rows)
    sys.stdout.write(f"\n{table}\n")
    if not args.no_update:
        body = (
            "## Memory of the in-memory path (`benchmarks/memory.py`)\n\n"
            f"One synthetic {args.size} x {args.size} uint16 image (a TIFF of "
            f"{pixels * 2 / 1e6:.0f} MB), the built-in starter model on the CPU (3 classes, "
            "default tiling and precision). Each run is a child process of its own; peak memory "
            "is its high-water mark (`ru_maxrss`, the whole process), *floor* the same for "
            "Python, torch and the model loaded before any pixel is read. *predict*: "
            "`napari-unet predict IMAGE -o LABELS.tif`; *Segment job*: the Segment widget's job "
            "(`segment_job`, without a viewer) and one re-thresholding from the probabilities "
            "it keeps."
            + (f" *before*: {args.before_name} (`--before-src`)." if len(trees) > 1 else "")
            + f"\n\n{table}\n\n"
            f"Machine: {load}.  \nCommand: `{command_line()}`"
        )
        update_section("memory", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
