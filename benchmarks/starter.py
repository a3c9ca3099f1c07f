"""Candidate starter models against the shipped one: 2D and 3D accuracy and network speed.

Usage: ``python benchmarks/starter.py MODEL.safetensors [MODEL ...] [--volumes N]
[--test-images N] [--rounds R] [--no-update]``

Each model file (``scripts/make_starter.py`` writes them) and the shipped ``starter`` are scored
the same way, in one process:

- **sample**: AP at IoU 0.5 on the shipped 2D sample (``nuclei.tif``, 169 nuclei), fp32;
- **synthetic 2D**: AP50 pooled over held-out synthetic images of the starter's generator (seeds
  no model was trained on, 384 px);
- **3D ortho**: 3D AP50 pooled over synthetic nuclei volumes (32 x 128 x 128, z step twice the
  XY pixel: the volumes of ``benchmarks/stacks3d.py``) labelled by ortho fusion, the default for
  Z-stacks;
- **speed**: megapixels per second of the tiled network on a 1024 x 1024 image with 2 threads in
  fp32 (and bf16 where the CPU has native bfloat16), all models interleaved, best of
  ``--rounds``.

The training budget and steps come from each file's provenance. Rewrites the ``starter`` section
of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import command_line, machine_description, markdown_table, update_section
from architecture import SPEED_GOAL, pooled_ap, speeds, test_set
from napari_unet.core.analysis.metrics import match
from napari_unet.core.inference.stack3d import predict_stack
from napari_unet.core.network.device import cpu_supports_bf16
from napari_unet.core.network.model import count_parameters
from napari_unet.core.network.registry import builtin_models_dir, load_model
from napari_unet.core.network.weights import LoadedModel
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume

SECTION = "starter"
SECTION_TEXT = """## Starter candidates (`benchmarks/starter.py`)

Candidate starters made by `scripts/make_starter.py` and the shipped one, scored in one process:
AP at IoU 0.5 on the shipped sample (169 nuclei), pooled over {n_synthetic} held-out synthetic
384 px images of the training generator, and 3D AP50 of ortho fusion pooled over {n_volumes}
synthetic volumes of 32 x 128 x 128 voxels (z step twice the pixel; those of `stacks3d.py`), all
at fp32 on {threads} thread(s); speed of the tiled network on a 1024 x 1024 image with 2 threads,
all models interleaved, best of {rounds} rounds.

{table}

Machine: {machine}. Total {minutes:.0f} min.

Command: `{command}`
"""
log = logging.getLogger("starter")


def volumes(n: int) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """The volumes of ``benchmarks/stacks3d.py`` (seeds 100+): uint16 image, labels, voxel."""
    config = Synthetic3DConfig(shape=(32, 128, 128))
    return [(*make_volume(config, 100 + i, dtype=np.uint16), config.voxel_size) for i in range(n)]


def ortho_ap(model: LoadedModel, test: list) -> float:
    """3D AP50 pooled over the volumes, each labelled by ortho fusion at fp32."""
    tp = fp = fn = 0
    for image, truth, voxel in test:
        _, labels = drain(
            predict_stack(image, "ZYX", model, "ortho", voxel, device="cpu", precision="fp32")
        )
        result = match(labels, truth, 0.5)
        tp, fp = tp + result.tp, fp + result.fp
        fn += result.fn
    return tp / max(tp + fp + fn, 1)


def budget(model: LoadedModel) -> str:
    """The training budget recorded in the file's recipe, else ``"-"``."""
    settings = model.metadata["provenance"]["settings"]
    recipe = settings.get("recipe", "")
    return recipe.replace("python scripts/make_starter.py", "").strip() or "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="candidate model files")
    parser.add_argument("--volumes", type=int, default=3, help="synthetic volumes (3)")
    parser.add_argument("--test-images", type=int, default=8, help="held-out 2D images (8)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for scoring (1)")
    parser.add_argument("--no-update", action="store_true", help="do not touch the docs")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    machine = machine_description()
    started = time.perf_counter()
    files = {"shipped starter": builtin_models_dir() / "starter.safetensors"}
    files.update({Path(m).stem: Path(m) for m in args.models})
    models = {name: load_model(path) for name, path in files.items()}
    test_2d = test_set(args.test_images, 384)
    sample, synthetic = test_2d[-1:], test_2d[:-1]
    test_3d = volumes(args.volumes)
    torch.set_num_threads(args.threads)
    scores = {}
    for name, model in models.items():
        scores[name] = (
            pooled_ap(model, sample),
            pooled_ap(model, synthetic),
            ortho_ap(model, test_3d),
        )
        log.info("%s: sample %.3f, synthetic %.3f, 3D %.3f", name, *scores[name])
    torch.set_num_threads(2)
    precisions = ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]
    mps = speeds(models, precisions, args.rounds)
    rows = []
    for name, model in models.items():
        config = model.config
        rows.append(
            [
                name,
                f"{config.depth}x{config.base_channels}",
                f"{count_parameters(model.model) / 1e6:.2f} M",
                budget(model),
                str(model.metadata["provenance"]["settings"].get("steps", "-")),
                *(f"{s:.3f}" for s in scores[name]),
                *(f"{mps[name, p]:.2f}" for p in precisions),
                "yes" if mps[name, "fp32"] >= SPEED_GOAL else "no",
            ]
        )
    headers = [
        "model",
        "depth x base",
        "parameters",
        "training (make_starter.py options)",
        "steps (best)",
        "sample AP50",
        f"synthetic 2D AP50 ({len(synthetic)} images)",
        f"3D AP50, ortho ({args.volumes} volumes)",
        *(f"{p} MP/s" for p in precisions),
        f"fp32 >= {SPEED_GOAL} MP/s",
    ]
    table = markdown_table(headers, rows)
    sys.stdout.write(table + "\n")
    if args.no_update:
        return 0
    minutes = (time.perf_counter() - started) / 60
    text = SECTION_TEXT.format(
        n_synthetic=len(synthetic), n_volumes=args.volumes, threads=args.threads,
        rounds=args.rounds, table=table, machine=machine, minutes=minutes, command=command_line(),
    )  # fmt: skip
    update_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
