"""``napari-unet evaluate``: compare predicted labels with ground truth, print JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_unet.cli._common import add_command, json_dumps
from napari_unet.cli._readers import read_labels

_DESCRIPTION = (
    "Match predicted objects to ground-truth objects one to one and print JSON: average "
    "precision TP/(TP+FP+FN) at IoU 0.5 and averaged over 0.5:0.95, precision, recall, "
    "F1, mean matched IoU and object counts."
)


def add_evaluate(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command to ``sub`` and return its parser."""
    summary = "compare predicted labels with ground truth (prints JSON)"
    p = add_command(sub, common, "evaluate", summary, _DESCRIPTION)
    p.add_argument("pred", metavar="PRED", help="predicted label image (TIFF)")
    p.add_argument("gt", metavar="GT", help="ground-truth label image of the same shape")
    p.add_argument("--mask", metavar="MASK", help="only pixels where MASK is non-zero count")
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run ``napari-unet evaluate``; returns the exit code."""
    from napari_unet.core.analysis.metrics import evaluate
    from napari_unet.core.errors import InputMismatchError

    pred_path, gt_path = Path(args.pred).expanduser(), Path(args.gt).expanduser()
    pred = read_labels(pred_path, "prediction")
    gt = read_labels(gt_path, "ground truth")
    if pred.shape != gt.shape:
        raise InputMismatchError(
            f"label images have different shapes: {pred_path} is {tuple(pred.shape)}, "
            f"{gt_path} is {tuple(gt.shape)}"
        )
    mask = None
    if args.mask:
        mask_path = Path(args.mask).expanduser()
        mask = read_labels(mask_path, "mask") != 0
        if mask.shape != gt.shape:
            raise InputMismatchError(
                f"the mask {mask_path} has shape {tuple(mask.shape)}, the label images "
                f"{tuple(gt.shape)}"
            )
    result = evaluate(pred, gt, mask=mask)
    sys.stdout.write(json_dumps(result) + "\n")
    return 0
