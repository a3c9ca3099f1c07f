"""Throughput of the training augmentation against the ``elasticdeform`` package, and its share of
one training step of the default U-Net.

Usage: ``python benchmarks/augment.py [--repeats N] [--batch B] [--size PX] [--no-train]``

Work per sample, for every candidate: one 256x256 image (float32) and three per-pixel maps
(classes uint8, weights float32, mask bool) deformed by the same random transform; the image with
linear (or cubic) interpolation, the maps with nearest. ``elasticdeform`` (a C implementation, one
sample at a time, numpy) gets the same elastic grid (3x3 points, 10 px standard deviation) with its
own rotation and zoom, and flips. ``augment_batch`` also adds the intensity changes and the
out-of-patch mask, which ``elasticdeform`` does not do.

The training step is ``build_model(ModelConfig())`` on a batch of 256x256 patches: forward, the
weighted masked cross-entropy, backward and an AdamW step. Candidates run interleaved in one
process and each keeps its best time over the repeats, so a shared, busy machine slows all alike.

``elasticdeform`` is a benchmark-only peer: the package never imports it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, interleaved_best, machine_description, update_section
from napari_unet.core.config import ModelConfig
from napari_unet.core.network.model import build_model
from napari_unet.core.training.augment import AugmentConfig, augment_batch


def make_batch(batch: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images (B, 1, S, S) float32, classes (B, S, S) uint8, weights float32, mask bool."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "images": torch.rand((batch, 1, size, size), generator=gen),
        "classes": torch.randint(0, 3, (batch, size, size), generator=gen, dtype=torch.uint8),
        "weights": torch.rand((batch, size, size), generator=gen) * 10,
        "mask": torch.rand((batch, size, size), generator=gen) > 0.1,
    }


def ours(data: dict[str, torch.Tensor], config: AugmentConfig) -> Callable[[], None]:
    generator = torch.Generator().manual_seed(1)

    def run() -> None:
        augment_batch(**data, config=config, generator=generator)

    return run


def peer(data: dict[str, torch.Tensor], order: int) -> Callable[[], None]:
    import elasticdeform

    arrays = [data[k].numpy() for k in ("images", "classes", "weights", "mask")]
    arrays[0] = arrays[0][:, 0]
    arrays[3] = arrays[3].astype(np.uint8)
    rng = np.random.default_rng(1)

    def run() -> None:
        for i in range(arrays[0].shape[0]):
            sample = [a[i] for a in arrays]
            if rng.random() < 0.5:
                sample = [a[:, ::-1] for a in sample]
            elasticdeform.deform_random_grid(
                [np.ascontiguousarray(a) for a in sample],
                sigma=10.0,
                points=3,
                order=[order, 0, 0, 0],
                mode="mirror",
                rotate=float(rng.uniform(-15, 15)),
                zoom=float(np.exp(rng.uniform(np.log(0.85), np.log(1.15)))),
            )

    return run


def train_step(batch: int, size: int) -> Callable[[], None]:
    """One optimisation step of the default U-Net on a batch (B, 1, S, S)."""
    model = build_model(ModelConfig(), seed=0).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = make_batch(batch, size, seed=2)
    classes = data["classes"].long()
    weights = data["weights"] * data["mask"]

    def run() -> None:
        optimiser.zero_grad(set_to_none=True)
        logits = model(data["images"])
        loss = (F.cross_entropy(logits, classes, reduction="none") * weights).sum()
        loss = loss / weights.sum().clamp_min(1.0)
        loss.backward()
        optimiser.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--no-update", action="store_true", help="do not touch the docs")
    args = parser.parse_args()
    machine = machine_description()
    lines: list[str] = []

    def out(text: str = "") -> None:
        print(text)
        lines.extend(text.split("\n"))

    data = make_batch(args.batch, args.size)
    threads = torch.get_num_threads()
    geometric = AugmentConfig(gain=0, offset=0, gamma=0, noise_std=0)
    candidates: dict[str, Callable[[], None]] = {
        "augment_batch, default": ours(data, AugmentConfig()),
        "augment_batch, geometric only": ours(data, geometric),
        "augment_batch, no elastic": ours(data, AugmentConfig(elastic=False)),
    }
    try:
        candidates["elasticdeform, image linear"] = peer(data, order=1)
        candidates["elasticdeform, image cubic (its default)"] = peer(data, order=3)
    except ImportError as exc:
        out(f"elasticdeform not importable ({exc}); comparing against nothing")

    out(
        f"\nbatch {args.batch} x {args.size}x{args.size}, image + classes + weights + mask, "
        f"best of {args.repeats}, torch {torch.__version__}; elasticdeform is single-threaded\n"
    )
    out("| method | torch threads | ms / sample | elasticdeform (linear) / this |")
    out("|---|---:|---:|---:|")
    # One phase per thread count (changing it between calls costs a thread-pool restart).
    for n_threads in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n_threads)
        best = interleaved_best(candidates, args.repeats)
        reference = best.get("elasticdeform, image linear")
        for name, seconds in best.items():
            per_sample = seconds / args.batch * 1e3
            ratio = f"{reference / seconds:.1f}x" if reference else "-"
            shown = "-" if name.startswith("elasticdeform") else n_threads
            out(f"| {name} | {shown} | {per_sample:.2f} | {ratio} |")
    torch.set_num_threads(threads)

    if not args.no_train:
        share_of_training_step(args, candidates, threads, out)
    if not args.no_update:
        update_section(
            "augment",
            "## Augmentation (`benchmarks/augment.py`)\n\n"
            + "\n".join(lines).strip()
            + f"\n\nMachine: {machine}.  \n"
            f"Command: `{command_line()}`",
        )


def share_of_training_step(
    args: argparse.Namespace,
    candidates: dict[str, Callable[[], None]],
    threads: int,
    out: Callable[[str], None],
) -> None:
    """Time the default augmentation against one training step of the default U-Net."""
    ours_default = "augment_batch, default"
    step_fns = {
        ours_default: candidates[ours_default],
        "train step": train_step(args.batch, args.size),
    }
    step = interleaved_best(step_fns, args.train_repeats)
    aug, train = step[ours_default], step["train step"]
    out(
        f"\ndefault U-Net ({ModelConfig()}), batch {args.batch}, forward + backward + AdamW, "
        f"{threads} threads, best of {args.train_repeats}\n"
    )
    out("| part | ms / batch | share of (augmentation + step) |")
    out("|---|---:|---:|")
    out(f"| augmentation | {aug * 1e3:.1f} | {aug / (aug + train):.1%} |")
    out(f"| training step | {train * 1e3:.1f} | {train / (aug + train):.1%} |")


if __name__ == "__main__":
    main()
