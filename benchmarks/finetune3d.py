"""Fine-tuning from 3D labels: train on one half of a synthetic Z-stack, score the other half.

    python benchmarks/finetune3d.py [--minutes 3] [--shape 32 128 128] [--seeds 200 201]
                                    [--threads 2] [--no-update]

For each seed, a synthetic nuclei volume (:func:`napari_unet.core.synthetic.volumes.make_volume`, Z
step twice the XY pixel) is split along X: the left half is annotated (a 3D mask), the right
half is held out. The starter model is fine-tuned from the left half's planes in the XY, XZ and
YZ orientations (:mod:`napari_unet.core.training.data3d`, the path of ``napari-unet train`` for a
ZYX
input with ``--mask``) for ``--minutes`` of CPU time (``time.process_time``), then the right half
is labelled by ortho fusion and scored (3D AP at IoU 0.5) against its exact labels, before
(zero-shot starter) and after. Rewrites the ``finetune3d`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, machine_description, markdown_table, update_section
from napari_unet.core.analysis.metrics import match
from napari_unet.core.inference.stack3d import predict_stack
from napari_unet.core.network.registry import get_model
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume
from napari_unet.core.training.data3d import AnnotatedVolume, annotated_training_pairs
from napari_unet.core.training.settings import TrainConfig
from napari_unet.core.training.train import train


def _score(model, image, truth, voxel) -> tuple[float, int, int]:
    _, labels = drain(predict_stack(image, "ZYX", model, "ortho", voxel, device="cpu",
                                    precision="fp32"))  # fmt: skip
    result = match(labels, truth, 0.5)
    return result.ap, result.n_pred, result.n_true


def run(seed: int, shape: tuple[int, int, int], minutes: float, folder: Path) -> list:
    config = Synthetic3DConfig(shape=shape)
    image, labels = make_volume(config, seed, dtype=np.uint16)
    half = shape[2] // 2
    mask = np.zeros(labels.shape, bool)
    mask[:, :, :half] = True
    test_image = np.ascontiguousarray(image[:, :, half:])
    test_truth = np.ascontiguousarray(labels[:, :, half:])
    base = get_model(None)
    before = _score(base, test_image, test_truth, config.voxel_size)
    item = AnnotatedVolume(image, labels, config.voxel_size, mask, name=f"seed {seed}")
    train_cfg = TrainConfig(max_minutes=minutes, epochs=1000, seed=seed)
    pairs = annotated_training_pairs([item], base, None, train_cfg.targets)
    start = time.process_time()
    tuned = drain(train(pairs, folder / f"tuned_{seed}.safetensors", base=base, config=train_cfg,
                        device="cpu", clock=time.process_time))  # fmt: skip
    spent = time.process_time() - start
    after = _score(tuned, test_image, test_truth, config.voxel_size)
    steps = tuned.metadata["provenance"]["settings"].get("steps")
    return [seed, len(pairs), f"{spent / 60:.1f}", steps, f"{before[0]:.2f}", f"{after[0]:.2f}",
            f"{before[1]} / {after[1]} / {before[2]}"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 128, 128))
    parser.add_argument("--seeds", type=int, nargs="+", default=(200, 201))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-update", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_description()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows.append(run(seed, tuple(args.shape), args.minutes, Path(tmp)))
            sys.stdout.write(" | ".join(map(str, rows[-1])) + "\n")
    headers = ["seed", "training planes", "CPU min", "steps (best kept)", "3D AP50 before",
               "3D AP50 after", "objects before / after / true"]  # fmt: skip
    table = markdown_table(headers, rows)
    sys.stdout.write(table + "\n")
    if args.no_update:
        return
    shape = args.shape
    body = f"""## Fine-tuning from 3D labels (`benchmarks/finetune3d.py`)

A synthetic nuclei volume of {shape[0]} x {shape[1]} x {shape[2]} voxels per seed (Z step twice
the XY pixel), split along X: the starter fine-tuned for {args.minutes:g} CPU minutes on the
left half (a 3D mask; planes cut in XY, XZ and YZ, Z resampled to isotropic), then the right
half labelled by ortho fusion and scored against its exact labels (3D AP at IoU 0.5), before
(the zero-shot starter) and after. Training and scoring at fp32 on {args.threads} torch
thread(s).

{table}

Machine: {machine}.{"  "}
Command: `{command_line()}`
"""
    update_section("finetune3d", body)


if __name__ == "__main__":
    main()
