"""The options of ``napari-unet train``: the parser, the training pairs given and the settings."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_unet.cli._common import (
    add_command,
    add_device_option,
    add_model_option,
    fraction,
    given,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from napari_unet.cli._stacks import add_voxel_size_option

SCRATCH = "scratch"


_DESCRIPTION = (
    "Fine-tune a U-Net on images and their labels (0 = background, one id per object) "
    "with elastic-deformation augmentation and the U-Net border-weighted loss, and "
    "write the best model by validation score. Give --image IMG --labels LAB for each "
    "image; a --mask (non-zero = annotated) after a pair restricts training to the "
    "reviewed pixels of that pair. In a stack without a mask, planes without any label "
    "are not annotated."
)


class _DataAction(argparse.Action):
    """Records ``--image``, ``--labels`` and ``--mask`` in command-line order (see
    :func:`training_inputs`)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = list(getattr(namespace, self.dest) or [])
        items.append((self.const, values))
        setattr(namespace, self.dest, items)


def add_train(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to ``sub`` and return its parser."""
    summary = "fine-tune a model (or train one from scratch) on annotated images"
    p = add_command(sub, common, "train", summary, _DESCRIPTION)
    data = p.add_argument_group("training data (repeat for several images)")
    for flag, kind, metavar, text in (
        ("--image", "image", "IMG", "an image (TIFF, PNG, JPEG)"),
        ("--labels", "labels", "LAB", "its labels, the image's shape without channels"),
        ("--mask", "mask", "MASK", "optional: annotated pixels of the pair given just before"),
    ):
        data.add_argument(
            flag, action=_DataAction, dest="data_items", const=kind, metavar=metavar, help=text
        )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="MODEL.safetensors",
        help="the model file to write (its folder must exist; an existing file is replaced)",
    )
    add_model_option(
        p,
        "BASE",
        "the model to fine-tune: a name (see 'napari-unet models') or a .safetensors file "
        f"(default: starter), or '{SCRATCH}' for a new network",
    )
    _add_budget_options(p)
    p.add_argument("--name", help="the new model's name (default: the output file's name)")
    add_device_option(p, "training")
    add_voxel_size_option(p)
    _add_optimisation_options(p)
    scratch = p.add_argument_group(f"architecture of a new network (with --model {SCRATCH})")
    scratch.add_argument(
        "--depth", type=positive_int, metavar="N", help="down-sampling steps (default 4)"
    )
    scratch.add_argument(
        "--base-channels",
        type=positive_int,
        metavar="N",
        help="channels at full resolution (default 8)",
    )
    scratch.add_argument(
        "--dims",
        type=int,
        choices=(2, 3),
        help=(
            "2 (default): a 2D U-Net (Z-stacks are cut into XY, XZ and YZ planes); 3: a native "
            "3D U-Net trained on whole Z-stacks (ZYX images and 3D labels) with 3D patches "
            "(--patch-size px in Y and X, default 64, about as deep in µm), pooling Y and X "
            "only while Z is coarser; its file records the voxel size, and 'predict' then "
            "labels stacks with it natively (default depth 3)"
        ),
    )
    p.set_defaults(data_items=None)
    return p


def _add_budget_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--epochs",
        type=positive_int,
        metavar="N",
        help="epochs at most (default 40, or no limit with --max-minutes)",
    )
    p.add_argument(
        "--max-minutes",
        type=positive_float,
        metavar="M",
        help="wall-clock budget in minutes (training stops at whichever limit comes first)",
    )


def _add_optimisation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=non_negative_int, metavar="N", help="random seed (default 0)")
    p.add_argument(
        "--batch-size", type=positive_int, metavar="N", help="patches per step (default 4)"
    )
    p.add_argument(
        "--patch-size", type=positive_int, metavar="PX", help="side of a patch (default 192)"
    )
    p.add_argument(
        "--steps-per-epoch",
        type=positive_int,
        metavar="N",
        help="steps between validations (default 25)",
    )
    p.add_argument(
        "--learning-rate",
        type=positive_float,
        metavar="LR",
        help="peak learning rate (default 0.001)",
    )
    p.add_argument(
        "--validation-fraction",
        type=fraction,
        metavar="F",
        help="share of the annotated pixels held out for validation (default 0.2; 0: none)",
    )
    p.add_argument(
        "--patience",
        type=non_negative_int,
        metavar="N",
        help="stop after N epochs without a better validation score (default 0: never; "
        "the whole budget is used)",
    )
    p.add_argument(
        "--keep",
        choices=("best", "latest"),
        help="the weights written: 'best' (default: the checkpoint with the best validation "
        "score) or 'latest' (the end of the learning-rate schedule)",
    )
    p.add_argument(
        "--keep-base",
        type=non_negative_float,
        metavar="W",
        help="when fine-tuning on a partial annotation: weight of the term that trains the "
        "unannotated pixels toward the base model's own confident predictions, so that what "
        "it did well is kept (0: off; default 3)",
    )
    p.add_argument(
        "--no-elastic", action="store_true", help="no elastic deformation in the augmentation"
    )
    p.add_argument(
        "--no-weight-map",
        action="store_true",
        help="plain class-balanced loss, without the border weight map",
    )


@dataclass(frozen=True)
class TrainingInput:
    """The files of one training pair given on the command line."""

    image: Path
    labels: Path
    mask: Path | None = None


def training_inputs(items: Sequence[tuple[str, str]] | None) -> list[TrainingInput]:
    """Group ``--image``, ``--labels`` and ``--mask`` values, given in command-line order.

    The k-th image goes with the k-th labels; a mask belongs to the pair of the ``--image`` or
    ``--labels`` given just before it.

    Raises:
        UserError: no image, an image without labels (or labels without an image), a mask before
            any image or labels, or two masks for one pair.
    """
    from napari_unet.core.errors import UserError

    images: list[Path] = []
    labels: list[Path] = []
    masks: dict[int, Path] = {}
    last: int | None = None
    for kind, value in items or []:
        path = Path(value).expanduser()
        if kind == "image":
            images.append(path)
            last = len(images) - 1
        elif kind == "labels":
            labels.append(path)
            last = len(labels) - 1
        elif last is None:
            raise UserError(f"--mask {path} comes before any --image: give it after its pair")
        elif last in masks:
            raise UserError(
                f"two masks ({masks[last]} and {path}) for training pair {last + 1}; "
                "give one --mask after each --image/--labels pair"
            )
        else:
            masks[last] = path
    if not images:
        raise UserError("no training data: give --image IMG --labels LAB (repeat for more images)")
    if len(labels) < len(images):
        raise UserError(
            f"the image {images[len(labels)]} has no labels: give one --labels after each --image"
        )
    if len(labels) > len(images):
        raise UserError(
            f"the labels {labels[len(images)]} have no image: give one --image for each --labels"
        )
    if max(masks, default=-1) >= len(images):
        raise UserError("a --mask has no image/labels pair: give it after its pair")
    return [
        TrainingInput(image, label, masks.get(i))
        for i, (image, label) in enumerate(zip(images, labels, strict=True))
    ]


def train_config(args: argparse.Namespace) -> Any:
    """The ``TrainConfig`` for the parsed options: the defaults with the options given."""
    from dataclasses import replace

    from napari_unet.core.training.settings import TrainConfig

    defaults = TrainConfig()
    settings: dict[str, Any] = given(
        {
            "epochs": args.epochs,
            "max_minutes": args.max_minutes,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "patch_size": args.patch_size,
            "steps_per_epoch": args.steps_per_epoch,
            "learning_rate": args.learning_rate,
            "val_fraction": args.validation_fraction,
            "patience": args.patience,
            "keep": args.keep,
            "keep_base_weight": args.keep_base,
        }
    )
    if args.max_minutes is not None and args.epochs is None:
        settings["epochs"] = 1_000_000  # the time budget decides
    if args.no_weight_map:  # class balance stays; only the border term goes
        settings["targets"] = replace(defaults.targets, w0=0.0)
    if args.no_elastic:
        settings["augment"] = replace(defaults.augment, elastic=False)
    return replace(defaults, **settings)
