"""Accuracy against speed of candidate starter architectures (depth and width of the U-Net).

Usage: ``python benchmarks/architecture.py [--minutes M] [--candidates 3x16,4x8,4x16,4x24]
[--images N] [--test-images N] [--threads T] [--rounds R] [--no-update]``

Every candidate (``DEPTHxBASE``: depth of the U-Net and channels of its first level) is trained
from scratch exactly as ``scripts/make_starter.py`` trains the starter (same synthetic generator,
:func:`~napari_unet.core.synthetic.config.random_config`, same training settings), each for the same
budget of ``--minutes`` of this process's CPU time (so that other programs on the machine do not
shorten a run; use ``--threads 1``). It is then scored on held-out synthetic images from the same
generator (seeds no candidate saw) and on the shipped sample (AP at IoU 0.5, pooled), and its tiled
network is timed on a 1024 x 1024 image in fp32 and bf16 (when the CPU has native bfloat16),
interleaved, best of ``--rounds``. The file size is that of the saved model.

A short, equal budget favours small networks (they take more steps per minute); the starter itself
trained for about an hour. The table says which architectures reach the speed goal and how their
accuracy compares at equal training time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import (
    command_line,
    interleaved_best,
    machine_description,
    markdown_table,
    update_section,
)
from napari_unet.core.analysis.metrics import evaluate
from napari_unet.core.config import ModelConfig, NormalizeConfig
from napari_unet.core.inference.predict import predict_labels
from napari_unet.core.inference.tiling import default_tiling, predict_tiled, resolve_halo
from napari_unet.core.io import reading
from napari_unet.core.network.device import Predictor, cpu_supports_bf16
from napari_unet.core.network.model import count_parameters
from napari_unet.core.network.normalize import percentile_normalize
from napari_unet.core.network.registry import builtin_models_dir
from napari_unet.core.network.weights import LoadedModel
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.config import random_config
from napari_unet.core.synthetic.images import make_image
from napari_unet.core.training.data import make_pairs
from napari_unet.core.training.settings import TrainConfig
from napari_unet.core.training.train import train

SECTION = "architecture"
SPEED_GOAL = 2.5  # MP/s on the 2-core CPU
log = logging.getLogger("architecture")


def parse_candidate(text: str) -> ModelConfig:
    """``"4x16"`` -> ``ModelConfig(depth=4, base_channels=16)``."""
    depth, base = (int(part) for part in text.lower().split("x"))
    return ModelConfig(depth=depth, base_channels=base)


def test_set(n: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Held-out synthetic images (seeds 5000+) and the shipped sample, with exact labels."""
    rng = np.random.default_rng(5000)
    found = [make_image(random_config(rng, (size, size)), seed=5000 + i) for i in range(n)]
    samples = builtin_models_dir().parent / "samples"
    found.append(
        (
            reading.read_image(samples / "nuclei.tif").data,
            reading.read_image(samples / "nuclei_labels.tif").data,
        )
    )
    return found


def pooled_ap(model: LoadedModel, test: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """AP at IoU 0.5 pooled over the test images (fp32 inference)."""
    tp = fp = fn = 0
    for image, truth in test:
        _, labels = drain(
            predict_labels(np.asarray(image), "YX", model, device="cpu", precision="fp32")
        )
        score = evaluate(labels, np.asarray(truth))
        tp, fp, fn = tp + score["tp"], fp + score["fp"], fn + score["fn"]
    return tp / max(tp + fp + fn, 1)


def speeds(
    models: dict[str, LoadedModel], precisions: list[str], rounds: int
) -> dict[tuple[str, str], float]:
    """Megapixels per second of each model's tiled network on a 1024 x 1024 image, per
    precision, all timed interleaved so that load from other programs affects them alike."""
    image = percentile_normalize(
        make_image(random_config(np.random.default_rng(7), (1024, 1024)), seed=7)[0]
    )
    plane = np.ascontiguousarray(image[None], np.float32)
    jobs = {}
    for name, model in models.items():
        config = model.config
        tiling = default_tiling(config, "cpu")
        halo = resolve_halo(tiling, config)
        for precision in precisions:
            predictor = Predictor(model.model, torch.device("cpu"), precision)
            jobs[name, precision] = lambda p=predictor, c=config, t=tiling, h=halo: drain(
                predict_tiled(p, plane, c.out_classes, t, h, stride=c.stride)
            )
    best = interleaved_best(jobs, rounds)
    return {key: image.size / 1e6 / seconds for key, seconds in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes", type=float, default=6.0, help="CPU minutes of training per candidate (6)"
    )
    parser.add_argument("--candidates", default="3x16,4x8,4x16,4x24")
    parser.add_argument("--images", type=int, default=24, help="synthetic training images (24)")
    parser.add_argument("--test-images", type=int, default=4, help="held-out images (4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (1)")
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds (2)")
    parser.add_argument("--no-update", action="store_true", help="do not touch the docs")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    candidates = [parse_candidate(c) for c in args.candidates.split(",") if c.strip()]
    machine = machine_description()
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(args.images):
        image, labels = make_image(random_config(rng, (320, 320)), rng)
        pairs += make_pairs(image, labels, "YX", 1, NormalizeConfig(), name=f"synthetic {i}")
    test = test_set(args.test_images, 384)
    precisions = ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]
    results = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="napari-unet-arch-") as tmp:
        for config in candidates:
            name = f"{config.depth}x{config.base_channels}"
            torch.set_num_threads(args.threads)
            train_config = TrainConfig(
                epochs=100_000,
                max_minutes=args.minutes,
                steps_per_epoch=50,
                batch_size=8,
                patch_size=192,
                learning_rate=2e-3,
                patience=0,
                val_fraction=0.1,
                freeze_batchnorm=False,
            )
            output = Path(tmp) / f"{name}.safetensors"
            model = drain(
                train(
                    pairs,
                    output,
                    config=train_config,
                    device="cpu",
                    model_config=config,
                    clock=time.process_time,
                )
            )
            results[name] = (model, pooled_ap(model, test), output.stat().st_size / 1e6)
            log.info("%s: AP50 %.3f", name, results[name][1])
    torch.set_num_threads(2)
    mps = speeds({name: model for name, (model, _, _) in results.items()}, precisions, args.rounds)
    rows = []
    for name, (model, ap, size_mb) in results.items():
        steps = model.metadata["provenance"]["settings"]["steps"]
        fastest = max(mps[name, p] for p in precisions)
        rows.append(
            [
                name,
                f"{count_parameters(model.model) / 1e6:.2f} M",
                f"{size_mb:.1f} MB",
                str(steps),
                f"{ap:.3f}",
                *(f"{mps[name, p]:.2f}" for p in precisions),
                "yes" if fastest >= SPEED_GOAL else "no",
            ]
        )
    headers = [
        "depth x base",
        "parameters",
        "file",
        "steps (best checkpoint)",
        "AP50 (pooled)",
        *(f"{p} MP/s" for p in precisions),
        f">= {SPEED_GOAL} MP/s",
    ]
    table = markdown_table(headers, rows)
    sys.stdout.write(table + "\n")
    if not args.no_update:
        update_section(
            SECTION,
            (
                "## Starter architecture: accuracy against speed (`benchmarks/architecture.py`)\n\n"
                f"Each candidate trained from scratch like the starter for {args.minutes:g} min of "
                f"CPU time on {args.threads} thread(s) ({args.images} synthetic 320 px images), "
                f"scored on {args.test_images} held-out synthetic 384 px images plus the shipped "
                "sample (AP at IoU 0.5 pooled over all objects, fp32); speed of the tiled network "
                "on a 1024 x 1024 image with 2 threads, best of "
                f"{args.rounds} rounds, all candidates interleaved. An equal short budget favours "
                "small networks.\n\n"
                f"{table}\n\nMachine: {machine}. Total "
                f"{(time.perf_counter() - started) / 60:.0f} min.  \nCommand: `{command_line()}`"
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
