"""Inference precision on the CPU: does bf16 change the segmentation, and how much faster is it?

Usage: ``python benchmarks/precision.py [--images N] [--size PX] [--rounds R] [--no-update]``

Runs the built-in starter model through :func:`~napari_unet.core.inference.predict.predict_labels`
in fp32
and in bf16 on the shipped sample (with its exact labels) and on ``--images`` synthetic images from
the starter's own generator (:func:`~napari_unet.core.synthetic.config.random_config`, seeds the
starter
never saw), and scores both against the ground truth (AP at IoU 0.5 and AP at IoU 0.5:0.95). Then
times the tiled network alone on one 1024 x 1024 image in both precisions, interleaved, best of
``--rounds``. This is the evidence behind ``precision="auto"`` choosing bf16 on CPUs with native
bfloat16 instructions. On a CPU without them the script says so and measures fp32 only.
"""

from __future__ import annotations

import argparse
import sys

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
from napari_unet.core.inference.predict import predict_labels
from napari_unet.core.inference.tiling import default_tiling, predict_tiled, resolve_halo
from napari_unet.core.io import reading
from napari_unet.core.network.device import Predictor, cpu_supports_bf16
from napari_unet.core.network.normalize import percentile_normalize
from napari_unet.core.network.registry import builtin_models_dir, get_model
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.config import random_config
from napari_unet.core.synthetic.images import make_image

SECTION = "precision"


def cases(n_images: int, size: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image (H, W), labels (H, W)): the shipped sample, then synthetic images."""
    samples = builtin_models_dir().parent / "samples"
    found = [
        (
            "shipped sample",
            reading.read_image(samples / "nuclei.tif").data,
            reading.read_image(samples / "nuclei_labels.tif").data,
        )
    ]
    rng = np.random.default_rng(123)
    for i in range(n_images):
        image, labels = make_image(random_config(rng, (size, size)), seed=1000 + i)
        found.append((f"synthetic {i + 1} ({size} px)", image, labels))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="synthetic images (4)")
    parser.add_argument("--size", type=int, default=384, help="synthetic image side (384)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (3)")
    parser.add_argument("--no-update", action="store_true", help="do not touch the docs")
    args = parser.parse_args(argv)
    machine = machine_description()
    model = get_model(None)
    precisions = ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]
    rows, totals = [], {p: [0, 0, 0] for p in precisions}  # tp, fp, fn pooled
    for name, image, truth in cases(args.images, args.size):
        row = [name, str(int(np.asarray(truth).max()))]
        for precision in precisions:
            _, labels = drain(
                predict_labels(np.asarray(image), "YX", model, device="cpu", precision=precision)
            )
            score = evaluate(labels, np.asarray(truth))
            for i, key in enumerate(("tp", "fp", "fn")):
                totals[precision][i] += score[key]
            row.append(f"{score['ap_50']:.3f} / {score['ap_50_95']:.3f}")
        rows.append(row)
        sys.stdout.write(" | ".join(row) + "\n")
    pooled = ["all, pooled AP50", ""]
    for precision in precisions:
        tp, fp, fn = totals[precision]
        pooled.append(f"{tp / (tp + fp + fn):.3f}")
    rows.append(pooled)
    table = markdown_table(
        ["image", "objects", *(f"{p}: AP50 / AP50:95" for p in precisions)], rows
    )

    image = percentile_normalize(
        make_image(random_config(np.random.default_rng(7), (1024, 1024)), seed=7)[0]
    )
    plane = np.ascontiguousarray(image[None], np.float32)
    config = model.config
    tiling = default_tiling(config, "cpu")
    halo = resolve_halo(tiling, config)
    predictors = {p: Predictor(model.model, torch.device("cpu"), p) for p in precisions}
    jobs = {
        p: (
            lambda pred=pred: drain(
                predict_tiled(pred, plane, config.out_classes, tiling, halo, stride=config.stride)
            )
        )
        for p, pred in predictors.items()
    }
    best = interleaved_best(jobs, args.rounds)
    megapixels = image.size / 1e6
    speed = [f"{p}: {megapixels / best[p]:.2f} MP/s" for p in precisions]
    if "bf16" in best:
        speed.append(f"bf16 / fp32 speed: {best['fp32'] / best['bf16']:.2f}x")
    else:
        speed.append("this CPU has no native bfloat16: `auto` stays fp32")
    text = f"{table}\n\nTiled network on a 1024 x 1024 image: " + ", ".join(speed) + "."
    sys.stdout.write(text + "\n")
    if not args.no_update:
        update_section(
            SECTION,
            (
                "## Inference precision on the CPU (`benchmarks/precision.py`)\n\n"
                "The starter model through the whole prediction path (normalise, tiles, "
                "watershed) in fp32 and bf16, scored against exact labels (AP at IoU 0.5 / "
                "averaged over IoU 0.5:0.95). The synthetic images come from the starter's own "
                'generator with seeds it never saw. `precision="auto"` picks bf16 on CPUs with '
                "native bfloat16 instructions "
                f"because of this table.\n\n{text}\n\nMachine: {machine}.  \n"
                f"Command: `{command_line()}`"
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
