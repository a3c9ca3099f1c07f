"""The correct-and-fine-tune loop with a simulated user: the review queue against random order.

Usage: ``python benchmarks/loop.py [--k 5,10,20,40] [--rounds 3] [--minutes M] [--pool N]
[--test N] [--size PX] [--seeds S,..] [--jobs N] [--keep-base W] [--plot PATH] [--no-update]``

**Data.** Synthetic images of one domain the starter model was not trained on (:data:`DOMAIN`:
dim, noisy, clumped nuclei with overlaps, debris and out-of-focus cells). ``--pool`` images are
what the user works on; ``--test`` other images are held out and only scored.

**A round.** The current model predicts the pool. The simulated user reviews ``k`` items not
reviewed before: either the first ``k`` of the product's review queue over the pool
(``core.analysis.review.build_queue``: predicted objects by ``quality`` and likely misses, worst
first), or ``k`` predicted objects at random. Each is corrected perfectly: the item and every true
object it touches are repainted, and the labels there become the truth (a false positive becomes
background, a merge is split, a fragment completed, a missed nucleus painted); a likely miss with
no nucleus under it is only marked seen, as in the Review widget, and an item already
repainted while correcting an earlier one of the round (the second fragment of a split
nucleus) is skipped, as the widget's Next does. What counts as annotated is
what the product counts for reviewed objects (``core.training.annotated.reviewed_mask``: the
repainted pixels, the true objects touched, and an 8-pixel background margin that never enters an
object not reviewed).
The model is then fine-tuned from the current one for ``--minutes`` minutes of this process's
CPU time as the Fine-tune widget does it (``core.training.train.train`` on the
``training_pairs`` of everything corrected so far, the default ``TrainConfig`` but for patch
size 128 and the budget, its validation split, ``require_improvement=True``; one torch thread),
and scored on the test images. A run that does not beat its base on the held-out crops writes
nothing and the user keeps the base ("kept base"); with too little annotation to hold crops
out, the product cannot measure the new model and the simulated user takes it ("unmeasured");
the last column of the table says which, per seed. Three rounds; the corrections add up. When
everything corrected so far is background (only false positives deleted), training refuses, as
the product does, and the model stays as it was for that round ("refused"). ``--keep-base W``
sets ``TrainConfig.keep_base_weight`` (default: the product's), for paired comparisons.

**Reference.** "Everything corrected": the same number of rounds and minutes with the pool's full
ground truth. The goal of the issue is that the queue reaches its AP50 with at most half the
corrections that random order needs.

**Reported.** AP50 pooled over the test images after each round against the number of items
reviewed and against the number of true objects annotated (an item's correction repaints every
true object it touches, so one item can annotate several objects), the AUROC of ``quality`` on
the pool at each round (right = matched at IoU 0.5), a plot.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from napari_unet.core.analysis.metrics import match
from napari_unet.core.analysis.objects import likely_misses
from napari_unet.core.analysis.quality import auroc, object_quality, right_objects
from napari_unet.core.analysis.review import OBJECT, build_queue
from napari_unet.core.errors import UserError
from napari_unet.core.inference.predict import predict_labels
from napari_unet.core.network.registry import get_model
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.config import SyntheticConfig
from napari_unet.core.synthetic.images import make_image
from napari_unet.core.training.annotated import reviewed_mask
from napari_unet.core.training.data import AnnotatedImage, training_pairs
from napari_unet.core.training.settings import TrainConfig
from napari_unet.core.training.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, machine_description, markdown_table, update_section

DOMAIN = SyntheticConfig(
    radius=(7.0, 12.0),
    elongation=0.5,
    coverage=0.35,
    clustered=0.7,
    overlap=0.15,
    texture=0.5,
    photons=25.0,
    blur=1.5,
    defocus=0.2,
    debris=1.0,
    gradient=0.5,
)
COLUMNS = [
    "order",
    "k per round",
    "round",
    "items reviewed (objects, misses)",
    "true objects annotated",
    "AP50 held-out",
    "AUROC quality",
    "the round's model",
]
ORDERS = ("queue", "random")
PLOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "loop.png"
Pair = tuple[np.ndarray, np.ndarray]


@dataclass
class Annotation:
    """What the simulated user corrected in one pool image (``mask``, the annotated pixels) and
    the likely misses looked at that held no object (``seen``): bool (H, W) each."""

    mask: np.ndarray
    seen: np.ndarray


def correct(region: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """What counts as annotated once the user reviewed ``region`` (a predicted object or a likely
    miss): bool (H, W).

    The user repaints the region and every true object it touches (the edited pixels), and the
    product's rule for reviewed objects (:func:`~napari_unet.core.training.annotated.
    reviewed_mask`: those objects, the edited pixels and an 8-pixel background margin that
    never enters an object not reviewed) makes the mask; a false positive's pixels become
    annotated background.
    """
    touched = np.unique(truth[region])
    touched = touched[touched > 0]
    region = region | np.isin(truth, touched)
    return reviewed_mask(truth, {0: region}, touched.tolist(), [])


def objects_annotated(pool: list[Pair], notes: list[Annotation]) -> int:
    """How many true objects of the pool lie wholly in the annotated pixels: the objects whose
    labels the simulated user has made right (an item's neighbours included)."""
    count = 0
    for (_, truth), note in zip(pool, notes, strict=True):
        inside = np.unique(truth[note.mask & (truth > 0)])
        outside = np.unique(truth[~note.mask & (truth > 0)])
        count += int(np.setdiff1d(inside, outside).size)
    return count


def ap50(model, images: list[Pair]) -> float:
    """AP at IoU 0.5 pooled over ``images``: TP / (TP + FP + FN)."""
    tp = fp = fn = 0
    for image, truth in images:
        _, pred = drain(predict_labels(image, "YX", model, device="cpu"))
        m = match(pred, truth, 0.5)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    return tp / max(tp + fp + fn, 1)


def _queue_candidates(
    image_index: int, probs: np.ndarray, pred: np.ndarray, result, note: Annotation
) -> list[tuple[float, int, str, np.ndarray]]:
    """The product's review queue for one pool image (``build_queue``: predicted objects and
    likely misses, worst first) without what was reviewed already: (quality, image index,
    kind, region) per item."""
    misses = likely_misses(probs, pred)
    reviewed = note.mask | note.seen
    out = []
    for item in build_queue(pred, result, misses).items:
        region = (pred == item.ident) if item.kind == OBJECT else (misses.labels == item.ident)
        if reviewed[region].mean() < 0.5:  # not reviewed yet
            out.append((item.quality, image_index, item.kind, region))
    return out


def pick(
    model, pool: list[Pair], notes: list[Annotation], k: int, order: str, rng: np.random.Generator
) -> tuple[int, float]:
    """Review ``k`` new items of the pool; returns (items reviewed, AUROC of quality).

    ``"queue"`` takes the ``k`` first items of the product's review queue over all pool images
    (objects and likely misses, worst first); ``"random"`` takes ``k`` predicted objects at random
    (a user clicking through objects never lands on a miss)."""
    candidates, all_q, all_right = [], [], []
    for index, ((image, truth), note) in enumerate(zip(pool, notes, strict=True)):
        probs, pred = drain(predict_labels(image, "YX", model, device="cpu"))
        result = object_quality(probs, pred)
        all_right.append(right_objects(pred, truth, result.ids))
        all_q.append(result.quality)
        if order == "queue":
            candidates += _queue_candidates(index, probs, pred, result, note)
        else:
            regions = (pred == obj for obj in result.ids)
            candidates += [
                (0.0, index, OBJECT, region)
                for region in regions
                if note.mask[region].mean() < 0.5  # not corrected yet
            ]
    score = auroc(np.concatenate(all_q), np.concatenate(all_right))
    if order == "queue":
        ranked = np.argsort([c[0] for c in candidates], kind="stable")
    else:
        ranked = rng.permutation(len(candidates))
    taken = 0
    for c in ranked:
        if taken == k:
            break
        _, index, kind, region = candidates[c]
        if notes[index].mask[region].mean() >= 0.5:  # repainted with an earlier item: skipped
            continue
        taken += 1
        if kind == OBJECT or pool[index][1][region].any():  # a miss over a nucleus: painted
            notes[index].mask |= correct(region, pool[index][1])
        else:  # a likely miss with nothing there is only marked seen, as in the Review widget
            notes[index].seen |= region
    return taken, score


def fine_tune(
    model,
    pool: list[Pair],
    notes: list[Annotation] | None,
    minutes: float,
    seed: int,
    folder: Path,
    name: str,
    overrides: dict | None = None,
) -> tuple[object, str]:
    """Fine-tune ``model`` on the corrected parts of the pool (everything when notes is None)
    as the Fine-tune widget does (its validation split, ``require_improvement``); returns the
    model the user goes on with and what happened: ``"better"`` (beat its base on the
    held-out crops), ``"kept base"`` (did not: nothing saved, the base stays),
    ``"unmeasured"`` (too little annotation to hold out crops: the user takes the new model),
    ``"refused"`` (nothing to train on). ``overrides``: other :class:`TrainConfig` values."""
    annotated = [
        AnnotatedImage(image, truth, "YX", None if note is None else note.mask)
        for (image, truth), note in zip(pool, notes or [None] * len(pool), strict=True)
        if note is None or note.mask.any()  # images with no correction are not training data
    ]
    config = TrainConfig(
        epochs=10_000,
        max_minutes=minutes,
        patch_size=128,
        batch_size=4,
        seed=seed,
        **(overrides or {}),
    )
    try:
        pairs = training_pairs(annotated, model, target_config=config.targets)
    except UserError as exc:  # e.g. only false positives deleted: the product refuses too
        logging.warning("%s: training refused (%s); the model stays as it was", name, exc)
        return model, "refused"
    gen = train(
        pairs,
        folder / f"{name}.safetensors",
        base=model,
        config=config,
        device="cpu",
        clock=time.process_time,
        require_improvement=True,
    )
    crops = 0
    try:
        while True:
            crops = next(gen).payload.validation_crops
    except StopIteration as end:
        result = end.value
    if result is None:
        return model, "kept base"
    return result, "better" if crops else "unmeasured"


def run(order: str, k: int, args, seed: int, pool, test, starter, folder) -> list[dict]:
    rng = np.random.default_rng(seed)
    notes = [Annotation(np.zeros(t.shape, bool), np.zeros(t.shape, bool)) for _, t in pool]
    model, corrected, rows = starter, 0, []
    for r in range(1, args.rounds + 1):
        if order == "all":
            n, score = sum(int(t.max()) for _, t in pool), float("nan")
            corrected = objects = n
        else:
            n, score = pick(model, pool, notes, k, order, rng)
            corrected += n
            objects = objects_annotated(pool, notes)
        model, outcome = fine_tune(
            model,
            pool,
            None if order == "all" else notes,
            args.minutes,
            seed + r,
            folder,
            f"{order}-{k}-{r}",
            {} if args.keep_base is None else {"keep_base_weight": args.keep_base},
        )
        ap = ap50(model, test)
        rows.append(
            {
                "order": order,
                "k": k,
                "round": r,
                "corrected": corrected,
                "objects": objects,
                "ap50": ap,
                "auroc": score,
                "seed": seed,
                "outcome": outcome,
            }
        )
        logging.warning(
            "seed %d %s k=%d round %d: %d corrected (%d objects), AP50 %.3f, AUROC %.3f (%s)",
            seed,
            order,
            k,
            r,
            corrected,
            objects,
            ap,
            score,
            outcome,
        )
    return rows


def plot(rows: list[dict], starter_ap: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.2), dpi=110, sharey=True)
    colours = {"queue": "tab:blue", "random": "tab:orange"}
    full = [r for r in rows if r["order"] == "all"]
    for ax, key, xlabel in zip(
        axes,
        ("corrected", "objects"),
        ("items reviewed (cumulative)", "true objects annotated (cumulative)"),
        strict=True,
    ):
        for order in ORDERS:
            for k in sorted({r["k"] for r in rows if r["order"] == order}):
                pts = [r for r in rows if r["order"] == order and r["k"] == k]
                ax.plot(
                    [0] + [p[key] for p in pts],
                    [starter_ap] + [p["ap50"] for p in pts],
                    "o-",
                    color=colours[order],
                    alpha=0.4 + 0.15 * np.log2(k / 5 + 1),
                    label=f"{order}, k={k}",
                    ms=3,
                )
        if full:
            ax.axhline(
                full[-1]["ap50"],
                color="k",
                ls="--",
                lw=1,
                label=f"everything corrected ({full[-1]['objects']} objects)",
            )
        ax.axhline(starter_ap, color="grey", ls=":", lw=1, label="starter (no correction)")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AP50 on held-out images")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def needed(rows: list[dict], order: str, target: float, key: str = "corrected") -> int | None:
    """Fewest corrections (``key``: items reviewed, ``"corrected"``, or true objects annotated,
    ``"objects"``) with which ``order`` reached ``target`` AP50 (None: never)."""
    hits = [r[key] for r in rows if r["order"] == order and r["ap50"] >= target]
    return min(hits) if hits else None


def one_seed(seed: int, args) -> tuple[list[dict], float, int]:
    """Every run of one seed (its own pool; the test images are the same for all seeds)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    config = replace(DOMAIN, shape=(args.size, args.size))
    rng = np.random.default_rng((seed, 7))
    pool = [make_image(config, rng) for _ in range(args.pool)]
    test_rng = np.random.default_rng((1000, 9))
    test = [make_image(config, test_rng) for _ in range(args.test)]
    starter = get_model(None)
    starter_ap = ap50(starter, test)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows += run("all", 0, args, seed, pool, test, starter, folder)
        for k in [int(v) for v in args.k.split(",")]:
            for order in ORDERS:
                rows += run(order, k, args, seed, pool, test, starter, folder)
    return rows, starter_ap, sum(int(t.max()) for _, t in pool)


def average(rows: list[dict]) -> list[dict]:
    """Mean over seeds of each (order, k, round); ``ap50_seeds`` keeps the seeds' values."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["order"], row["k"], row["round"]), []).append(row)
    out = []
    for (order, k, r), group in groups.items():
        aurocs = [g["auroc"] for g in group if not np.isnan(g["auroc"])]
        out.append({
            "order": order, "k": k, "round": r,
            "corrected": round(float(np.mean([g["corrected"] for g in group]))),
            "objects": round(float(np.mean([g["objects"] for g in group]))),
            "ap50": float(np.mean([g["ap50"] for g in group])),
            "ap50_seeds": [g["ap50"] for g in group],
            "outcomes": [g["outcome"] for g in group],
            "auroc": float(np.mean(aurocs)) if aurocs else float("nan"),
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="5,10,20,40")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=0.4, help="CPU minutes per round")
    parser.add_argument("--pool", type=int, default=3)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (own pool each)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument(
        "--keep-base",
        type=float,
        default=None,
        help="TrainConfig.keep_base_weight (default: the product's default)",
    )
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--no-update", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    seeds = [int(v) for v in args.seeds.split(",")]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(one_seed, seeds, [args] * len(seeds)))
    starter_ap = float(results[0][1])
    per_seed = [row for rows, *_ in results for row in rows]
    rows = average(per_seed)
    n_pool = int(np.mean([n for *_, n in results]))
    plot(rows, starter_ap, args.plot)
    table = markdown_table(
        COLUMNS,
        [
            [
                r["order"] if r["order"] != "all" else "everything",
                r["k"] or "-",
                r["round"],
                r["corrected"],
                r["objects"],
                f"{r['ap50']:.3f}"
                + (
                    " (" + ", ".join(f"{v:.3f}" for v in r["ap50_seeds"]) + ")"
                    if len(r["ap50_seeds"]) > 1
                    else ""
                ),
                "-" if np.isnan(r["auroc"]) else f"{r['auroc']:.3f}",
                ", ".join(r["outcomes"]),
            ]
            for r in rows
        ],
    )
    full_ap = [r for r in rows if r["order"] == "all"][-1]["ap50"]
    targets = []
    for tol in (0.0, 0.02, 0.05):
        row = [f"{full_ap - tol:.3f} (everything - {tol:.2f})"]
        for key in ("corrected", "objects"):
            row += [needed(rows, order, full_ap - tol, key) or "not reached" for order in ORDERS]
        targets.append(row)
    reach = markdown_table(
        [
            "AP50 target",
            "queue needs (items)",
            "random needs (items)",
            "queue needs (true objects)",
            "random needs (true objects)",
        ],
        targets,
    )
    minutes = (time.perf_counter() - started) / 60
    print(table, "\n\n", reach, f"\n\nstarter AP50 {starter_ap:.3f}; {minutes:.1f} min")
    if not args.no_update:
        body = (
            "## The review loop (simulated user)\n\n"
            f"`benchmarks/loop.py`: {args.pool} pool images and {args.test} held-out images of "
            f"{args.size} px from one shifted synthetic domain (about {n_pool} true objects in "
            "a pool; each seed draws its own pool); starter AP50 on the held-out images "
            f"{starter_ap:.3f}. Each round the user "
            "reviews and corrects k items (the first k of the review queue: objects and likely "
            "misses, worst first; or k predicted objects at random), then the "
            f"model is fine-tuned for {args.minutes:g} CPU minutes (1 thread) from the previous "
            f"round's model; {args.rounds} rounds. \"Everything\" fine-tunes on the whole pool's "
            "ground truth for the same rounds and minutes. AUROC is that of `quality` on the "
            "pool's predictions before the round's corrections.\n\n"
            f"![AP50 against corrected objects](images/{args.plot.name})\n\n{table}\n\n"
            'Corrections needed to reach the AP50 of "everything corrected", counted as items '
            "reviewed and as true objects annotated (each item's correction repaints every true "
            f"object it touches):\n\n{reach}\n\n"
            f"AP50 is the mean over seeds {args.seeds} (each seed's value in brackets); "
            f"whole run {minutes:.0f} min. Machine: "
            f"{machine_description()}. Command: `{command_line()}`.\n"
        )
        update_section("loop", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
