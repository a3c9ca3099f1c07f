"""Fine-tuning the starter model on a few annotated crops of an unfamiliar sample, against the
zero-shot starter and a classical scikit-image pipeline; ablations that decide the training
defaults.

Usage: ``python benchmarks/finetune.py [--seeds N] [--minutes M] [--checkpoints 1,2,5]
[--configs default,no-elastic,no-weight-map] [--threads N] [--device cpu] [--plot PATH] [--quick]
[--no-update] [-v]``

**Data.** A synthetic sample that looks unlike the starter's training data
(:data:`DOMAIN`: strongly elongated, rod-like nuclei with heavy chromatin texture and bright spots,
clumped, at a moderate signal-to-noise ratio; the starter was trained on
:func:`~napari_unet.core.synthetic.config.random_config`, whose elongation stops at 0.6 and texture
at
0.6). For each seed, ``--crops`` fully annotated crops of ``--crop-size`` px are the training data
(new crops for every seed: which cells a user annotates matters as much as the optimiser's
randomness); ``--test-images`` held-out images of ``--test-size`` px, the same for every seed, are
the test set.

**Methods**, all scored by AP at IoU 0.5 pooled over the test images (TP / (TP + FP + FN) over all
objects):

- *classical*: Gaussian smoothing (sigma 1 px), Otsu threshold, holes filled, objects under 16 px
  removed, then a watershed of the negated distance transform from ``peak_local_max`` seeds. Its
  ``min_distance`` is tuned once, on the first seed's annotated training crops, and used for all;
- *zero-shot*: the built-in starter model through
  :func:`~napari_unet.core.inference.predict.predict_labels`;
- *fine-tuned*: :func:`~napari_unet.core.training.train.train` from the starter with the product's
  default
  :class:`~napari_unet.core.training.settings.TrainConfig` (validation split, early stopping, frozen
  BatchNorm
  statistics) and a wall-clock budget of ``--minutes``. One run per seed and configuration; at each
  checkpoint time the model file that training keeps (the best by validation so far) is copied,
  which is exactly what stopping the run at that moment leaves to the user. The last checkpoint is
  the run's result. (A run with a shorter budget would decay its learning rate sooner and validate
  at its end, so the early checkpoints are, if anything, pessimistic.)

**Configurations (ablations)**: ``default`` (elastic deformation and border weight map on),
``no-elastic`` (elastic deformation off, the rigid, scaling and intensity augmentations kept),
``no-weight-map`` (the border term off, ``TargetConfig(w0=0)``; the class balance stays), ``fp32``
(no bfloat16 autocast on the CPU: fewer steps per minute, more precise gradients; the default uses
bf16 where the CPU has native bfloat16 instructions), ``previous`` (the training defaults before
smoothed early stopping that waits for half the budget, and smaller validation blocks),
``ema`` (the defaults plus a moving average of the weights).

**Clock.** ``--clock wall`` (default) measures the budget and the checkpoint marks in wall-clock
time. ``--clock cpu`` measures them in this process's CPU time (``time.process_time``), so other
programs on a busy machine do not shorten the runs; use it with ``--threads 1``, where a minute of
CPU time is a minute of one core.

Prints a markdown table (mean and range over seeds) and writes a plot of AP against minutes
(``docs/images/finetune.png``); replaces this script's section of ``docs/benchmarks.md`` unless
``--no-update`` is given (``--quick`` is a smoke run: tiny budget, one seed, small images).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from _common import (
    DOCS,
    ROD_DOMAIN,
    command_line,
    machine_description,
    markdown_table,
    update_section,
)
from napari_unet.core.analysis.metrics import evaluate
from napari_unet.core.inference.predict import predict_labels
from napari_unet.core.network.normalize import percentile_normalize
from napari_unet.core.network.registry import get_model, load_model
from napari_unet.core.network.weights import LoadedModel
from napari_unet.core.synthetic.images import make_image
from napari_unet.core.training.augment import AugmentConfig
from napari_unet.core.training.data import TrainingPair, make_pairs
from napari_unet.core.training.settings import TrainConfig
from napari_unet.core.training.targets import TargetConfig
from napari_unet.core.training.train import train

SECTION = "finetune"
PLOT = DOCS.parent / "images" / "finetune.png"
log = logging.getLogger("finetune")

#: The unfamiliar sample (see :data:`_common.ROD_DOMAIN`).
DOMAIN = ROD_DOMAIN
#: Configurations: name -> changes to the default TrainConfig.
CONFIGS: dict[str, dict[str, object]] = {
    "default": {},
    "no-elastic": {"augment": AugmentConfig(elastic=False)},
    "no-weight-map": {"targets": TargetConfig(w0=0.0)},
    "fp32": {"cpu_bf16": False},
    "previous": {
        "ema_decay": 0.0,
        "smooth_validations": 1,
        "stop_after": 0.0,
        "validation_block": 192,
        "val_fraction": 0.15,
    },
    "ema": {"ema_decay": 0.99},
    "early-stop": {"patience": 10},
    "latest": {"keep": "latest"},
}
LABELS = {
    "default": "fine-tuned, defaults (elastic on, weight map on, bf16 where the CPU has it)",
    "no-elastic": "fine-tuned, elastic deformation off",
    "no-weight-map": "fine-tuned, border weight map off (class balance kept)",
    "fp32": "fine-tuned, float32 on the CPU (bf16 off)",
    "previous": "fine-tuned, the previous defaults (raw weights, early stopping on single "
    "validations from the start, one 192 px block per 15% held out)",
    "ema": "fine-tuned, a moving average of the weights (decay 0.99)",
    "early-stop": "fine-tuned, early stopping after 10 validations without improvement (the "
    "previous default)",
    "latest": "fine-tuned, the latest weights kept instead of the best-scoring checkpoint",
}
MIN_DISTANCES = (2, 3, 4, 5, 6, 8, 10, 12)
Pair = tuple[np.ndarray, np.ndarray]  # image (H, W) float32, labels (H, W) uint16


# --- data ------------------------------------------------------------------------------------


def _images(n: int, size: int, entropy: Sequence[int]) -> list[Pair]:
    """``n`` images of the sample, (size, size) float32 camera values, with their labels."""
    rng = np.random.default_rng(list(entropy))
    config = dataclasses.replace(DOMAIN, shape=(size, size))
    return [make_image(config, rng) for _ in range(n)]


def training_crops(seed: int, n: int, size: int) -> list[Pair]:
    """The annotated crops of seed ``seed``."""
    return _images(n, size, (seed, 1))


def test_images(n: int, size: int) -> list[Pair]:
    """The held-out test set (the same for every seed)."""
    return _images(n, size, (2024, 2))


# --- scoring ---------------------------------------------------------------------------------


def pooled_ap(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """AP at IoU 0.5 with TP, FP and FN summed over all images."""
    tp = fp = fn = 0
    for pred, true in zip(predictions, truths, strict=True):
        result = evaluate(pred, true, thresholds=(0.5,))
        tp, fp, fn = tp + result["tp"], fp + result["fp"], fn + result["fn"]
    return tp / (tp + fp + fn) if tp + fp + fn else 1.0


def classical(
    image: np.ndarray, min_distance: int, sigma: float = 1.0, min_size: int = 16
) -> np.ndarray:
    """Otsu threshold + distance-transform watershed: image (H, W) -> labels (H, W) int32."""
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    smooth = ndimage.gaussian_filter(percentile_normalize(image, channel_axis=None), sigma)
    foreground = ndimage.binary_fill_holes(smooth > threshold_otsu(smooth))
    components, n = ndimage.label(foreground)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    foreground &= (sizes >= min_size)[components] & (components > 0)
    distance = ndimage.distance_transform_edt(foreground)
    components, _ = ndimage.label(foreground)
    peaks = peak_local_max(
        distance, min_distance=min_distance, labels=components, exclude_border=False
    )
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground)


def tune_classical(pairs: Sequence[Pair]) -> tuple[int, dict[int, float]]:
    """The ``min_distance`` with the best AP on ``pairs``, and the AP of each candidate."""
    scores = {
        md: pooled_ap([classical(im, md) for im, _ in pairs], [lab for _, lab in pairs])
        for md in MIN_DISTANCES
    }
    return max(scores, key=lambda md: scores[md]), scores


def model_ap(model: LoadedModel, test: Sequence[Pair], device: str) -> float:
    """Pooled AP of ``model`` on ``test`` through the product's inference path."""
    from napari_unet.core.progress import drain

    predictions = [drain(predict_labels(image, "YX", model, device=device))[1] for image, _ in test]
    return pooled_ap(predictions, [labels for _, labels in test])


# --- fine-tuning -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The kept model file at a checkpoint time.

    Attributes:
        path: copy of the model file.
        seconds: seconds (on the run's clock) since training started when it was taken.
        step: optimiser steps done by then.
    """

    path: Path
    seconds: float
    step: int


def finetune(
    pairs: Sequence[TrainingPair],
    base: LoadedModel,
    config: TrainConfig,
    marks: Sequence[float],
    folder: Path,
    device: str,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[float, Snapshot]:
    """Fine-tune ``base`` for ``config.max_minutes`` and copy the kept model at each mark
    (minutes); the last mark (the budget) is the run's result."""
    output = folder / "model.safetensors"
    pending = sorted(m for m in marks if m < config.max_minutes)
    snapshots: dict[float, Snapshot] = {}
    step = 0
    started = clock()
    gen = train(pairs, output, base=base, config=config, device=device, clock=clock)
    while True:
        try:
            event = next(gen)
        except StopIteration:
            break
        step = event.payload.step
        elapsed = clock() - started
        while pending and elapsed >= 60 * pending[0] and output.exists():
            path = folder / f"at-{pending[0]:g}min.safetensors"
            shutil.copyfile(output, path)
            snapshots[pending.pop(0)] = Snapshot(path, elapsed, step)
    elapsed = clock() - started
    for mark in [*pending, config.max_minutes]:  # early stop before a mark: the final model
        snapshots[mark] = Snapshot(output, elapsed, step)
    return snapshots


# --- report ----------------------------------------------------------------------------------


def _summary(values: Sequence[float]) -> str:
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def _paired(results: dict[str, dict[float, list[float]]], name: str, mark: float) -> str:
    """Paired difference (config - default) at ``mark``, mean over seeds and seeds in favour."""
    diffs = np.array(results[name][mark]) - np.array(results["default"][mark])
    better = int((diffs > 0).sum())
    return (
        f"{LABELS[name]}: {np.mean(diffs):+.3f} AP against the defaults at {mark:g} min "
        f"(paired by seed; better in {better} of {len(diffs)} seeds)"
    )


def plot(
    path: Path,
    marks: Sequence[float],
    results: dict[str, dict[float, list[float]]],
    zero_shot: float,
    classic: float,
) -> Path:
    """AP against minutes: mean and range over seeds for each configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    xs = [0.0, *marks]
    for name, by_mark in results.items():
        per_seed = np.array([[zero_shot] * len(by_mark[marks[0]])] + [by_mark[m] for m in marks])
        (line,) = ax.plot(xs, per_seed.mean(axis=1), marker="o", label=LABELS[name])
        ax.fill_between(
            xs, per_seed.min(axis=1), per_seed.max(axis=1), alpha=0.15, color=line.get_color()
        )
    ax.axhline(classic, color="grey", linestyle="--", label="classical (Otsu + watershed)")
    ax.axhline(zero_shot, color="black", linestyle=":", label="starter, zero-shot")
    ax.set_xlabel("minutes of fine-tuning")
    ax.set_ylabel("AP at IoU 0.5 (held-out images)")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max(xs) * 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _parse_marks(text: str) -> list[float]:
    return sorted({float(part) for part in text.split(",") if part.strip()})


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration (3)")
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training budget per run in minutes (5; --quick 0.2)",
    )
    parser.add_argument(
        "--checkpoints",
        default=None,
        help="comma-separated minutes to score (1,2,5; --quick 0.05,0.1,0.2); "
        "the budget is always one",
    )
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated configurations among {', '.join(CONFIGS)}",
    )
    parser.add_argument("--crops", type=int, default=3, help="annotated training crops (3)")
    parser.add_argument("--crop-size", type=int, default=None, help="crop side (256; --quick 192)")
    parser.add_argument("--test-images", type=int, default=None, help="test images (4; --quick 2)")
    parser.add_argument(
        "--test-size", type=int, default=None, help="test image side (512; --quick 256)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (torch's default)")
    parser.add_argument("--device", default="cpu", help="training and inference device (cpu)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="budget in wall-clock time (default) or this process's CPU time",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="plot file (default docs/images/finetune.png; with "
        "--no-update a file in the temporary folder)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.2 min, 1 seed, small")
    parser.add_argument("--no-update", action="store_true", help="do not touch the docs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the training events")
    args = parser.parse_args(argv)
    quick = args.quick
    args.minutes = args.minutes or (0.2 if quick else 5.0)
    args.checkpoints = args.checkpoints or ("0.05,0.1,0.2" if quick else "1,2,5")
    args.crop_size = args.crop_size or (192 if quick else 256)
    args.test_images = args.test_images or (2 if quick else 4)
    args.test_size = args.test_size or (256 if quick else 512)
    if quick:
        args.seeds = 1
    marks = [m for m in _parse_marks(args.checkpoints) if m < args.minutes]
    args.marks = [*marks, args.minutes]
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or not args.configs or "default" not in args.configs:
        parser.error(f"--configs must include 'default' and only names among {list(CONFIGS)}")
    if args.seeds < 1 or args.minutes <= 0:
        parser.error("--seeds must be at least 1 and --minutes positive")
    return args


def _train_config(args: argparse.Namespace, name: str, seed: int) -> TrainConfig:
    changes = dict(CONFIGS[name])
    if args.quick:
        changes["steps_per_epoch"] = 5  # a few validations within the tiny budget
    # epochs high enough that the wall-clock budget decides (early stopping stays on)
    return dataclasses.replace(
        TrainConfig(epochs=100_000, max_minutes=args.minutes, seed=seed), **changes
    )


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_description()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    started = time.perf_counter()
    base = get_model(None)
    test = test_images(args.test_images, args.test_size)
    n_test_objects = sum(int(labels.max()) for _, labels in test)
    crops = {seed: training_crops(seed, args.crops, args.crop_size) for seed in range(args.seeds)}

    min_distance, tuning = tune_classical(crops[0])
    classic = pooled_ap([classical(im, min_distance) for im, _ in test], [lab for _, lab in test])
    zero_shot = model_ap(base, test, args.device)
    log.info(
        "classical (min_distance %d): AP %.3f; zero-shot starter: AP %.3f",
        min_distance,
        classic,
        zero_shot,
    )

    results: dict[str, dict[float, list[float]]] = {
        name: {m: [] for m in args.marks} for name in args.configs
    }
    steps: dict[str, list[int]] = {name: [] for name in args.configs}
    lateness = 0.0
    with tempfile.TemporaryDirectory(prefix="napari-unet-finetune-") as tmp:
        for seed in range(args.seeds):
            for name in args.configs:
                config = _train_config(args, name, seed)
                pairs = []
                for i, (image, labels) in enumerate(crops[seed]):
                    pairs += make_pairs(
                        image,
                        labels,
                        "YX",
                        base.config.in_channels,
                        base.normalize,
                        target_config=config.targets,
                        name=f"crop {i + 1}",
                    )
                folder = Path(tmp) / f"{name}-{seed}"
                folder.mkdir()
                snaps = finetune(pairs, base, config, args.marks, folder, args.device, clock)
                for mark in args.marks:
                    results[name][mark].append(
                        model_ap(load_model(snaps[mark].path), test, args.device)
                    )
                    if mark < args.minutes:
                        lateness = max(lateness, snaps[mark].seconds - 60 * mark)
                steps[name].append(snaps[args.minutes].step)
                log.info(
                    "seed %d, %s: AP %s after %s min, %d steps",
                    seed,
                    name,
                    " / ".join(f"{results[name][m][-1]:.3f}" for m in args.marks),
                    " / ".join(f"{m:g}" for m in args.marks),
                    steps[name][-1],
                )

    headers = ["method", *(f"AP50 at {m:g} min" for m in args.marks), "steps in the run"]
    rows = [
        [
            f"classical: Otsu + distance watershed (min_distance {min_distance})",
            *(f"{classic:.3f}" for _ in args.marks),
            "-",
        ],
        ["starter, zero-shot", *(f"{zero_shot:.3f}" for _ in args.marks), "-"],
    ]
    for name in args.configs:
        n_steps = steps[name]
        rows.append(
            [
                LABELS[name],
                *(_summary(results[name][m]) for m in args.marks),
                f"{np.mean(n_steps):.0f}"
                + (f" ({min(n_steps)}-{max(n_steps)})" if len(n_steps) > 1 else ""),
            ]
        )
    table = markdown_table(headers, rows)
    final = args.minutes
    best_default = float(np.mean(results["default"][final]))
    notes = [
        f"defaults after {final:g} min: {best_default - classic:+.3f} AP against the classical "
        f"pipeline (goal: at least +0.2), {best_default - zero_shot:+.3f} against zero-shot",
        *(_paired(results, name, final) for name in args.configs if name != "default"),
    ]
    total = time.perf_counter() - started
    plot_path = args.plot or (
        PLOT if not args.no_update else Path(tempfile.gettempdir()) / "napari-unet-finetune.png"
    )
    plot(plot_path, args.marks, results, zero_shot, classic)
    tuning_text = ", ".join(f"{md}: {ap:.3f}" for md, ap in tuning.items())
    sys.stdout.write(
        f"{table}\n\n"
        + "".join(f"- {note}\n" for note in notes)
        + f"\nclassical min_distance on the training crops: {tuning_text}\n"
        f"test set: {len(test)} images of {args.test_size} px, {n_test_objects} "
        f"objects; snapshots at most {lateness:.1f} s after their mark; "
        f"total {total / 60:.1f} min\nplot: {plot_path}\n"
    )
    if not args.no_update:
        image_link = Path(plot_path).resolve()
        try:
            image_link = image_link.relative_to(DOCS.parent)
        except ValueError:
            pass
        body = _docs_body(
            args,
            table,
            notes,
            min_distance,
            tuning_text,
            len(test),
            n_test_objects,
            lateness,
            machine,
            total,
            image_link,
        )
        update_section(SECTION, body)
    return 0


def _docs_body(
    args: argparse.Namespace,
    table: str,
    notes: Sequence[str],
    min_distance: int,
    tuning_text: str,
    n_test: int,
    n_objects: int,
    lateness: float,
    machine: str,
    total: float,
    image: Path,
) -> str:
    domain = ", ".join(
        f"{f.name}={getattr(DOMAIN, f.name)}"
        for f in dataclasses.fields(DOMAIN)
        if getattr(DOMAIN, f.name) != f.default
    )
    return (
        f"## Fine-tuning on a few annotated crops (`benchmarks/finetune.py`)\n\n"
        f"An unfamiliar sample: `SyntheticConfig({domain})`, elongated, heavily textured, "
        f"clumped nuclei (the starter's training data stops at elongation 0.6 and texture 0.6). "
        f"Training data: {args.crops} fully annotated crops of {args.crop_size} px, new crops "
        f"for each of {args.seeds} seed(s); test: {n_test} held-out images of {args.test_size} px "
        f"({n_objects} objects), the same for all. AP at IoU 0.5 pooled over the test images; "
        f"mean (range) over seeds. Fine-tuning: `train()` from the starter with the default "
        f"`TrainConfig` and a {args.minutes:g} min budget "
        f"({'CPU time of the process' if args.clock == 'cpu' else 'wall-clock'}, "
        f"{args.threads or torch.get_num_threads()} torch thread(s)) on `{args.device}`, one run "
        f"per seed "
        f"and configuration; at each earlier mark the kept model file (best by validation so "
        f"far, what stopping there leaves) was copied (at most {lateness:.1f} s after the "
        f"mark); a run with that shorter budget would decay its learning rate sooner. The "
        f"classical pipeline (Gaussian sigma 1, Otsu, holes filled, distance-transform "
        f"watershed from `peak_local_max` seeds) had its `min_distance` tuned once on the first "
        f"seed's training crops ({tuning_text}; chose {min_distance}).\n\n"
        f"{table}\n\n"
        + "".join(f"- {note}\n" for note in notes)
        + f"\n![AP at IoU 0.5 against minutes of fine-tuning]({image.as_posix()})\n\n"
        f"Machine: {machine}. Total {total / 60:.0f} min.  \n"
        f"Command: `{command_line()}`"
    )


if __name__ == "__main__":
    sys.exit(main())
