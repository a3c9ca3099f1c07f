"""Native 3D U-Net against ortho fusion at an equal CPU budget, on synthetic anisotropic volumes.

    python benchmarks/native3d.py [--minutes 3] [--threads 1] [--train-shape 24 96 96]
                                  [--test-shape 32 128 128] [--no-update]

Training volumes (seeds 300, 301) and held-out volumes (seeds 100, 101) come from
:func:`napari_unet.core.synthetic.volumes.make_volume` (Z step twice the XY pixel, axial blur and
out-of-focus haze, touching clusters, exact 3D labels). Three ways to label the held-out volumes:

- *ortho, zero-shot*: the shipped starter, XY, XZ and YZ planes fused, 3D watershed (the default);
- *ortho, fine-tuned*: the starter fine-tuned for ``--minutes`` of CPU time on the training
  volumes' planes cut in XY, XZ and YZ (:mod:`napari_unet.core.training.data3d`, the path of
  ``napari-unet train`` on a stack), then ortho fusion;
- *native 3D*: a 3D U-Net (depth 3, 8 base channels, the first level pooling Y and X only)
  trained from scratch for the same ``--minutes`` of CPU time on the same volumes with 3D
  targets, 3D patches and 3D augmentation (:mod:`napari_unet.core.training.patches3d`, the path
  of ``napari-unet train --dims 3``), then exact-halo 3D tiles and the same 3D watershed.

Training: ``time.process_time`` budget, torch on ``--threads`` threads, the default
``TrainConfig`` otherwise (bf16 autocast where the CPU has it) with no validation split (the
last weights are kept). Scoring: 3D AP at IoU 0.5 pooled over all held-out nuclei; megavoxels per
CPU second of inference and post-processing (fp32); peak memory: the rise of the high-water mark
of a child process that labels one volume, over that process before it started (imports, model
and volume loaded). Rewrites the ``native3d`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, machine_description, markdown_table, update_section

TRAIN_SEEDS = (300, 301)
TEST_SEEDS = (100, 101)
NATIVE = {"depth": 3, "base_channels": 8, "spatial_dims": 3}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(model_path: str, seed: int, shape: tuple[int, int, int], threads: int) -> dict:
    from napari_unet.core.inference.stack3d import predict_stack
    from napari_unet.core.network.registry import get_model
    from napari_unet.core.progress import drain
    from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume

    torch.set_num_threads(threads)
    config = Synthetic3DConfig(shape=shape)
    image, _ = make_volume(config, seed, dtype=np.uint16)
    model = get_model(None if model_path == "starter" else model_path)
    before = _peak_mb()
    start = time.process_time()
    _, labels = drain(predict_stack(image, "ZYX", model, "ortho", config.voxel_size,
                                    device="cpu", precision="fp32"))  # fmt: skip
    seconds = time.process_time() - start
    np.save(sys.argv[-1], labels)
    return {"seconds": seconds, "peak_mb": _peak_mb() - before}


def _label(model: str, seed: int, shape: tuple[int, ...], threads: int, tmp: Path) -> dict:
    out = tmp / f"labels_{seed}.npy"
    cmd = [sys.executable, __file__, "--worker", model, str(seed), *map(str, shape),
           str(threads), str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    info["labels"] = np.load(out)
    return info


def _train(native: bool, minutes: float, shape: tuple[int, ...], out: Path) -> tuple[Path, int]:
    """Train for ``minutes`` of CPU time; returns the model file and the optimiser steps."""
    from napari_unet.core.config import ModelConfig, xy_only_levels_for
    from napari_unet.core.network.registry import get_model
    from napari_unet.core.progress import drain
    from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume
    from napari_unet.core.training import data3d, patches3d
    from napari_unet.core.training.settings import TrainConfig
    from napari_unet.core.training.train import train

    config = Synthetic3DConfig(shape=shape)
    items = [data3d.AnnotatedVolume(*make_volume(config, s, dtype=np.uint16), config.voxel_size,
                                    name=f"seed {s}") for s in TRAIN_SEEDS]  # fmt: skip
    settings = TrainConfig(max_minutes=minutes, epochs=1_000_000, val_fraction=0.0, seed=0)
    if native:
        anisotropy = config.voxel_size[0] / config.voxel_size[1]
        net = ModelConfig(**NATIVE, xy_only_levels=xy_only_levels_for(anisotropy, 3))
        pairs = patches3d.volume_training_pairs(items, None, net, settings.targets)
        settings = replace(settings, patch_size=64, batch_size=2)
        gen = train(pairs, out, config=settings, device="cpu", model_config=net,
                    clock=time.process_time, pixel_size=config.voxel_size)  # fmt: skip
    else:
        base = get_model(None)
        pairs = data3d.annotated_training_pairs(items, base, None, settings.targets)
        gen = train(pairs, out, base=base, config=settings, device="cpu",
                    clock=time.process_time)  # fmt: skip
    model = drain(gen)
    return Path(model.path), int(model.metadata["provenance"]["settings"]["steps"])


def _pooled_ap(preds: list[np.ndarray], truths: list[np.ndarray]) -> tuple[float, int, int]:
    from napari_unet.core.analysis.metrics import match

    def stacked(parts: list[np.ndarray]) -> np.ndarray:
        out = np.stack(parts).astype(np.int64)
        offset = 0
        for i, part in enumerate(parts):
            out[i][out[i] > 0] += offset
            offset += int(part.max())
        return out

    result = match(stacked(preds), stacked(truths), 0.5)
    return result.ap, result.n_pred, result.n_true


def _rows(args: argparse.Namespace, tmp: Path) -> list[list[object]]:
    from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume

    test_shape = tuple(args.test_shape)
    truths = [make_volume(Synthetic3DConfig(shape=test_shape), s)[1] for s in TEST_SEEDS]
    methods: list[tuple[str, str, float, object]] = [("ortho, zero-shot (starter)", "starter",
                                                      0.0, "-")]  # fmt: skip
    for name, native in (("ortho, fine-tuned starter", False), ("native 3D U-Net", True)):
        start = time.process_time()
        path, steps = _train(native, args.minutes, tuple(args.train_shape),
                             tmp / f"{'native' if native else 'ortho'}.safetensors")  # fmt: skip
        methods.append((name, str(path), (time.process_time() - start) / 60, steps))
    rows = []
    for name, model, spent, steps in methods:
        runs = [_label(model, s, test_shape, args.threads, tmp) for s in TEST_SEEDS]
        ap, n_pred, n_true = _pooled_ap([r["labels"] for r in runs], truths)
        speed = float(np.prod(test_shape)) * len(TEST_SEEDS) / sum(r["seconds"] for r in runs)
        rows.append([name, f"{spent:.1f}" if spent else "0", steps, f"{ap:.2f}",
                     f"{n_pred} / {n_true}", f"{speed / 1e6:.3f}",
                     f"{max(r['peak_mb'] for r in runs):.0f}"])  # fmt: skip
        sys.stdout.write(" | ".join(map(str, rows[-1])) + "\n")
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        shape = (int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        info = _worker(sys.argv[2], int(sys.argv[3]), shape, int(sys.argv[7]))
        sys.stdout.write(json.dumps(info) + "\n")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-shape", type=int, nargs=3, default=(24, 96, 96))
    parser.add_argument("--test-shape", type=int, nargs=3, default=(32, 128, 128))
    parser.add_argument("--no-update", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_description()
    with tempfile.TemporaryDirectory() as tmp:
        rows = _rows(args, Path(tmp))
    headers = ["method", "training CPU min", "steps", "3D AP50", "objects found / true",
               "MVox per CPU s", "peak memory over baseline (MB)"]  # fmt: skip
    table = markdown_table(headers, rows)
    sys.stdout.write(table + "\n")
    if args.no_update:
        return
    tr, te = args.train_shape, args.test_shape
    body = f"""## Native 3D U-Net against ortho fusion (`benchmarks/native3d.py`)

Equal CPU budget: {args.minutes:g} CPU minutes of training ({args.threads} torch thread(s)) on
the same {len(TRAIN_SEEDS)} synthetic nuclei volumes of {tr[0]} x {tr[1]} x {tr[2]} voxels (Z
step twice the XY pixel), scored on {len(TEST_SEEDS)} held-out volumes of {te[0]} x {te[1]} x
{te[2]} voxels (3D AP at IoU 0.5 pooled over all nuclei). The fine-tuned starter learns from
the volumes' XY, XZ and YZ planes; the native 3D U-Net (depth 3, 8 base channels, first level
pooling Y and X only) is trained from scratch with 3D targets, patches (32 x 64 x 64 voxels)
and augmentation. Speed in megavoxels per CPU second of inference and 3D watershed at fp32;
peak memory is the rise of a child process's high-water mark while it labels one
volume (0: ortho fusion stayed below the mark that making the volume had set). The
budget is short: it says which way is ahead after minutes on a small CPU, not where
each ends up.

{table}

Machine: {machine}.{"  "}
Command: `{command_line()}`
"""
    update_section("native3d", body)


if __name__ == "__main__":
    main()
