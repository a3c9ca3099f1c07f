"""Z-stacks: 3D instance labels by per-plane labelling, linking, ortho fusion and a classical
baseline, on synthetic nuclei volumes.

    python benchmarks/stacks3d.py [--volumes 3] [--shape 32 128 128] [--threads 1] [--no-update]

Each volume comes from :func:`napari_unet.core.synthetic.volumes.make_volume` (z step twice the XY
pixel, axial blur and out-of-focus haze, touching clusters), seeds 100, 101, ... Methods:

- *planes*: each plane labelled on its own by the starter model (``--stack planes``);
- *link*: the same per-plane labels linked across Z by overlap (``--stack link``);
- *ortho*: XY, XZ and YZ predictions of the starter fused, then a 3D watershed (``--stack
  ortho``, the default for Z-stacks); zero-shot, not fine-tuned on these volumes;
- *classical*: Gaussian smoothing, Otsu threshold and a 3D distance-transform watershed
  (scikit-image), with the voxel size.

3D AP at IoU 0.5 with :func:`napari_unet.core.analysis.metrics.match` on the whole volumes (pooled
over
all objects of all volumes); megavoxels per CPU second (``time.process_time``, torch on
``--threads`` threads, the starter at fp32); peak memory: the high-water mark of a child process
that runs one method on one volume, minus that of the same process before the method ran
(imports, model and volume loaded). Rewrites the ``stacks3d`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, machine_description, markdown_table, update_section

METHODS = ("planes", "link", "ortho", "classical")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def classical(
    image: np.ndarray, voxel_size: tuple[float, float, float], radius_um: float
) -> np.ndarray:
    """Otsu + 3D distance-transform watershed: labels (Z, Y, X) int32."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    sigma = [0.5 * voxel_size[1] / v for v in voxel_size]
    smooth = ndi.gaussian_filter(image.astype(np.float32), sigma)
    mask = smooth > threshold_otsu(smooth)
    dist = ndi.distance_transform_edt(mask, sampling=voxel_size)
    footprint_px = [max(1, round(radius_um / v)) for v in voxel_size]
    footprint = np.ones([2 * r + 1 for r in footprint_px], bool)
    peaks = peak_local_max(
        dist, footprint=footprint, labels=ndi.label(mask)[0], exclude_border=False
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=mask)


def _worker(method: str, seed: int, shape: tuple[int, int, int], threads: int) -> dict:
    import torch

    from napari_unet.core.inference.stack3d import predict_stack
    from napari_unet.core.network.registry import get_model
    from napari_unet.core.progress import drain
    from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume

    torch.set_num_threads(threads)
    config = Synthetic3DConfig(shape=shape)
    image, _ = make_volume(config, seed, dtype=np.uint16)
    model = get_model(None)
    before = _peak_mb()
    start = time.process_time()
    if method == "classical":
        labels = classical(image, config.voxel_size, 0.5 * config.radius[0] * config.pixel_size)
    else:
        _, labels = drain(
            predict_stack(
                image, "ZYX", model, method, config.voxel_size, device="cpu", precision="fp32"
            )
        )
    seconds = time.process_time() - start
    np.save(sys.argv[-1], labels)
    return {"seconds": seconds, "peak_mb": _peak_mb() - before, "base_mb": before}


def _run(method: str, seed: int, shape: tuple[int, ...], threads: int, tmp: Path) -> dict:
    out = tmp / f"{method}_{seed}.npy"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        method,
        str(seed),
        *map(str, shape),
        str(threads),
        str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    info["labels"] = np.load(out)
    return info


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        method, seed = sys.argv[2], int(sys.argv[3])
        shape = (int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        sys.stdout.write(json.dumps(_worker(method, seed, shape, int(sys.argv[7]))) + "\n")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 128, 128))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-update", action="store_true")
    args = parser.parse_args()

    import tempfile

    from napari_unet.core.analysis.metrics import match
    from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume

    machine = machine_description()
    shape = tuple(args.shape)
    seeds = [100 + i for i in range(args.volumes)]
    truths = [make_volume(Synthetic3DConfig(shape=shape), s, dtype=np.uint16)[1] for s in seeds]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            runs = [_run(method, s, shape, args.threads, Path(tmp)) for s in seeds]
            pred = np.stack([r["labels"] for r in runs]).astype(np.int64)
            offsets = np.cumsum([0] + [int(r["labels"].max()) for r in runs[:-1]])
            for i, off in enumerate(offsets):
                pred[i][pred[i] > 0] += off
            gt = np.stack(truths).astype(np.int64)
            goffsets = np.cumsum([0] + [int(t.max()) for t in truths[:-1]])
            for i, off in enumerate(goffsets):
                gt[i][gt[i] > 0] += off
            result = match(pred, gt, 0.5)
            voxels = float(np.prod(shape)) * len(seeds)
            seconds = sum(r["seconds"] for r in runs)
            rows.append(
                [
                    method,
                    f"{result.ap:.2f}",
                    f"{result.precision:.2f}",
                    f"{result.recall:.2f}",
                    f"{result.n_pred} / {result.n_true}",
                    f"{voxels / seconds / 1e6:.3f}",
                    f"{max(r['peak_mb'] for r in runs):.0f}",
                ]
            )
            sys.stdout.write(" | ".join(rows[-1]) + "\n")
    headers = [
        "method",
        "3D AP50",
        "precision",
        "recall",
        "objects found / true",
        "MVox per CPU s",
        "peak memory over baseline (MB)",
    ]
    table = markdown_table(headers, rows)
    sys.stdout.write(table + "\n")
    if args.no_update:
        return
    body = f"""## Z-stacks as volumes (`benchmarks/stacks3d.py`)

{args.volumes} synthetic nuclei volumes of {shape[0]} x {shape[1]} x {shape[2]} voxels (Z step
twice the XY pixel, axial blur and out-of-focus haze, touching clusters; ground truth exact),
the shipped starter model at fp32 on the CPU ({args.threads} torch thread(s)), zero-shot: not
fine-tuned on these volumes. 3D AP at IoU 0.5 pooled over all nuclei; speed in megavoxels per CPU
second of the method alone; peak memory is the rise of the process's high-water mark during the
method (Python, torch, the model and the volume already loaded; 0 when the method stays below
that mark).

{table}

Machine: {machine}.{"  "}
Command: `{command_line()}`
"""
    update_section("stacks3d", body)


if __name__ == "__main__":
    main()
