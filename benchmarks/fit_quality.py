"""Fit the per-object quality regression (:mod:`napari_unet.core.analysis.quality`) and measure its
AUROC.

Usage: ``python benchmarks/fit_quality.py [--fit-images N] [--test-images N] [--size PX]
[--write] [--no-update]``

**Data.** Synthetic images from :func:`shifted_config`: the starter's own training distribution
(:func:`~napari_unet.core.synthetic.config.random_config`) pushed out of it (a fifth to a half of
the
photons, more clumping and overlap, more debris and defocus), so that the starter makes errors of
every kind (merges, splits, fragments, debris taken for nuclei, missed dim nuclei). The fit images
and the held-out images are drawn from different seeds.

**Labels.** A predicted object is *right* when it matches a true object one-to-one at IoU 0.5,
*wrong* otherwise. The regression is fitted by Newton's method with a small L2 penalty on
standardised features, once without and once with the test-time-augmentation agreement (three
copies: flipped in Y, flipped in X, turned by 90 degrees).

**Measured.** AUROC of the quality (the chance that a right object scores above a wrong one) on
the held-out synthetic images, on the rod-shaped domain of ``benchmarks/finetune.py`` (never seen
by the fit), and on the shipped sample ``samples/nuclei.tif`` with its labels; the calibration
(mean quality against the share of right objects, in bins). ``--write`` stores the coefficients
in ``src/napari_unet/core/analysis/quality.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_unet.core.analysis.objects import FEATURE_NAMES, object_features
from napari_unet.core.analysis.quality import (
    AGREEMENT,
    PLAIN,
    WITH_TTA,
    QualityModel,
    auroc,
    merged_objects,
    right_objects,
    tta_agreement,
)
from napari_unet.core.inference.predict import predict_labels
from napari_unet.core.network.registry import get_model
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.config import SyntheticConfig, random_config
from napari_unet.core.synthetic.images import make_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROD_DOMAIN, command_line, machine_description, markdown_table, update_section

QUALITY_FILE = Path(__file__).resolve().parent.parent / "src/napari_unet/core/analysis/quality.py"
SAMPLES = Path(__file__).resolve().parent.parent / "src/napari_unet/samples"


def shifted_config(rng: np.random.Generator, size: int) -> SyntheticConfig:
    """A configuration of the starter's training distribution, pushed out of it."""
    base = random_config(rng, (size, size), cells_fraction=0.15)
    return dataclasses.replace(
        base,
        photons=base.photons * rng.uniform(0.2, 0.5),
        clustered=min(1.0, base.clustered + 0.3),
        overlap=min(1.0, base.overlap + 0.1) if base.kind == "nuclei" else 0.0,
        debris=base.debris + 0.5,
        defocus=min(1.0, base.defocus + 0.15),
    )


def collect(
    model, images, tta: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Features (N, F), agreement (N,) or None, right (N,) and merged (N,) of every predicted
    object (merged: it holds half or more of two or more true objects)."""
    feats, agrees, rights, merges = [], [], [], []
    for image, truth in images:
        probs, pred = drain(predict_labels(image, "YX", model, device="cpu"))
        features = object_features(probs, pred)
        feats.append(features.matrix)
        rights.append(right_objects(pred, truth, features.ids))
        merges.append(merged_objects(pred, truth, features.ids))
        if tta:
            agrees.append(drain(tta_agreement(image, "YX", model, pred, device="cpu")))
    agreement = np.concatenate(agrees) if tta else None
    return np.concatenate(feats), agreement, np.concatenate(rights), np.concatenate(merges)


def fit_logistic(
    x: np.ndarray, y: np.ndarray, names: tuple[str, ...], l2: float = 1e-2
) -> QualityModel:
    """Logistic regression by Newton's method on standardised ``x`` (N, F), ``y`` bool (N,)."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.column_stack([np.ones(len(x)), (x - mean) / scale])
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2 * len(x))
    penalty[0] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        gradient = z.T @ (p - y) + penalty * w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break

    def rounded(values: np.ndarray) -> tuple[float, ...]:
        return tuple(round(float(v), 5) for v in values)

    return QualityModel(names, rounded(mean), rounded(scale), rounded(w[1:]), round(float(w[0]), 5))


def calibration(q: np.ndarray, right: np.ndarray, bins: int = 5) -> list[list[object]]:
    """Rows (bin, objects, mean quality, share right)."""
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for lo, hi in itertools.pairwise(edges):
        inside = (q >= lo) & ((q < hi) if hi < 1 else (q <= hi))
        if inside.any():
            rows.append(
                [
                    f"{lo:.1f}-{hi:.1f}",
                    int(inside.sum()),
                    f"{q[inside].mean():.2f}",
                    f"{right[inside].mean():.2f}",
                ]
            )
    return rows


def _literal(name: str, model: QualityModel) -> str:
    features = "FEATURE_NAMES" if model.features == FEATURE_NAMES else "(*FEATURE_NAMES, AGREEMENT)"
    return (
        f"{name} = QualityModel(\n    features={features},\n    mean={model.mean},\n"
        f"    scale={model.scale},\n    coef={model.coef},\n"
        f"    intercept={model.intercept},\n)\n"
    )


def write_constants(plain: QualityModel, tta: QualityModel) -> None:
    text = QUALITY_FILE.read_text(encoding="utf-8")
    block = _literal("PLAIN", plain) + _literal("WITH_TTA", tta)
    pattern = re.compile(
        r"PLAIN = QualityModel\(.*?\n\)\nWITH_TTA = QualityModel\(.*?\n\)\n", re.DOTALL
    )
    if not pattern.search(text):
        raise SystemExit("could not find the constants in quality.py")
    QUALITY_FILE.write_text(pattern.sub(lambda _: block, text, count=1), encoding="utf-8")


def _sample() -> list[tuple[np.ndarray, np.ndarray]]:
    import tifffile

    image = tifffile.imread(SAMPLES / "nuclei.tif")
    return [(image, tifffile.imread(SAMPLES / "nuclei_labels.tif"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit-images", type=int, default=60)
    parser.add_argument("--test-images", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--write", action="store_true", help="store the coefficients")
    parser.add_argument(
        "--shipped",
        action="store_true",
        help="measure the coefficients in quality.py (with today's starter) instead of a new fit",
    )
    parser.add_argument("--no-update", action="store_true", help="leave docs/benchmarks.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    started = time.perf_counter()
    model = get_model(None)

    def draw(seed: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(seed)
        return [make_image(shifted_config(rng, args.size), rng) for _ in range(n)]

    if args.shipped:
        plain, with_tta = PLAIN, WITH_TTA
    else:
        x, agree, y, _ = collect(model, draw(101, args.fit_images), tta=True)
        plain = fit_logistic(x, y, FEATURE_NAMES)
        with_tta = fit_logistic(np.column_stack([x, agree]), y, (*FEATURE_NAMES, AGREEMENT))
    if args.write and not args.shipped:
        write_constants(plain, with_tta)
    rng = np.random.default_rng(202)
    rods = [
        make_image(dataclasses.replace(ROD_DOMAIN, shape=(args.size, args.size)), rng)
        for _ in range(max(4, args.test_images // 3))
    ]
    sets = {
        "held-out shifted synthetic": draw(303, args.test_images),
        "rod-shaped nuclei (finetune.py domain)": rods,
        "samples/nuclei.tif": _sample(),
    }
    rows, calib = [], []
    for name, images in sets.items():
        tx, ta, ty, tm = collect(model, images, tta=True)
        q_plain = plain.predict(tx)
        worst = np.argsort(q_plain, kind="stable")[:20]
        right_or_merge = ty | tm
        q_tta = with_tta.predict(np.column_stack([tx, ta]))
        best = max(FEATURE_NAMES, key=lambda f: auroc(tx[:, FEATURE_NAMES.index(f)], ty))
        rows.append(
            [
                name,
                len(ty),
                int((~ty).sum()),
                f"{auroc(q_plain, ty):.3f}",
                f"{auroc(q_tta, ty):.3f}",
                f"{auroc(ta, ty):.3f}",
                int(tm.sum()),
                f"{auroc(q_plain[right_or_merge], ty[right_or_merge]):.3f}",
                int(tm[worst].sum()),
                f"{best} {auroc(tx[:, FEATURE_NAMES.index(best)], ty):.3f}",
            ]
        )
        if name.startswith("held-out"):
            calib = calibration(q_plain, ty)
    table = markdown_table(
        [
            "images",
            "objects",
            "wrong",
            "AUROC quality",
            "AUROC with TTA",
            "AUROC TTA agreement alone",
            "merges",
            "AUROC right vs merges",
            "merges in worst 20",
            "best single feature",
        ],
        rows,
    )
    ctable = markdown_table(["quality", "objects", "mean quality", "share right"], calib)
    print(table)
    print()
    print(ctable)
    print(f"\n{time.perf_counter() - started:.0f} s")
    if not args.no_update:
        fitted = (
            "The coefficients in `quality.py` (fitted on 60 shifted synthetic images of 256 px "
            "with the previous starter, a 4 x 16 network) applied to today's starter, measured"
            if args.shipped
            else f"The regression was fitted on {args.fit_images} shifted synthetic images "
            f"({args.size} px) and measured"
        )
        body = (
            "## Per-object quality\n\n"
            "How well `quality` (the chance that an object is right, "
            "`core/analysis/quality.py`) tells right objects (matched at IoU 0.5) from wrong ones, "
            "for the starter model. AUROC "
            f"0.5 is chance, 1.0 a perfect ranking. {fitted} on "
            "images it never saw; *with TTA* adds the agreement with three flipped/rotated "
            "copies (3 more network passes). A *merge* is a predicted object that holds half or "
            "more of each of two or more true objects; *AUROC right vs merges* ranks right "
            "objects against merges only, and *merges in worst 20* counts the merges among the "
            "20 objects of lowest quality over all the images of a row.\n\n"
            f"{table}\n\nCalibration on the held-out shifted images (without TTA):\n\n{ctable}\n\n"
            f"Machine: {machine_description()}. Command: `{command_line()}`.\n"
        )
        update_section("quality", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
