"""The ``napari-unet`` command line: a thin layer over :mod:`napari_unet.core`.

Commands::

    napari-unet predict INPUT... -o OUT [--model NAME|PATH] [--tile-size PX] [--overlap PX]
                        [--batch-size N] [--device auto|cpu|cuda|mps] [--probabilities PATH]
    napari-unet train --image IMG --labels LAB [--mask MASK] [--image ... --labels ...]
                      [--model BASE|scratch] [--epochs N] [--max-minutes M] -o MODEL.safetensors
    napari-unet evaluate PRED GT [--mask MASK]
    napari-unet models [--json]

``predict`` writes one label TIFF per input. ``-o OUT`` is either an existing folder, where each
input ``NAME.tif`` gives ``NAME_labels.tif``, or, with a single input only, a file name ending in
``.tif`` / ``.tiff``. ``--probabilities`` works the same way (``NAME_probabilities.tif``, float32,
class axis first). Labels keep the input's axes (without its channel axis) and pixel size. An
existing output file is replaced. All outputs and the existence of all inputs are checked before
any work starts; inputs then run one after the other, and a problem with one stops the run (the
outputs of the inputs before it are complete and stay).

``train`` fine-tunes a model (default: the starter model; ``--model scratch`` trains a new network)
on one or more image/labels pairs: the k-th ``--image`` goes with the k-th ``--labels``, and a
``--mask`` (annotated pixels, non-zero = annotated) belongs to the pair of the ``--image`` or
``--labels`` given just before it. Every file is read and checked before training starts. One line
per epoch goes to stderr; a summary (model file, validation before and after) to stdout. The best
model so far is kept in the output file during training, so Ctrl-C (exit code 130) leaves it.

Exit codes: 0 success; 2 a problem with the input (one line ``napari-unet: error: ...`` on stderr,
no output file written); 1 an unexpected error (short message; the traceback with ``--debug`` or
the environment variable ``NAPARI_UNET_DEBUG=1``); 130 interrupted.

Heavy modules (torch, the engine) are imported inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from napari_unet import __version__

logger = logging.getLogger("napari_unet.cli")

PROG = "napari-unet"
DEBUG_ENV = "NAPARI_UNET_DEBUG"
LABELS_SUFFIX = "_labels.tif"
PROBABILITIES_SUFFIX = "_probabilities.tif"
TIFF_SUFFIXES = (".tif", ".tiff")
_IMAGE_EXTENSIONS = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpeg", ".jpg")


class _UsageError(Exception):
    """A command-line usage error, reported like any user error (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------------------------
# argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


# --------------------------------------------------------------------------------------------
# the parser


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-unet`` argument parser with its sub-commands."""
    parser = _Parser(
        prog=PROG,
        description="U-Net segmentation of microscopy images (the napari-unet command line).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        help=f"show debug logs and the traceback of unexpected errors (or set {DEBUG_ENV}=1)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log what is done")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_predict(sub, common)
    _add_evaluate(sub, common)
    _add_train(sub, common)
    _add_models(sub, common)
    return parser


def _add_predict(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "predict",
        parents=[common],
        help="segment images and write label TIFFs",
        description=(
            "Segment images with a U-Net and write labels as TIFF (uint16, or uint32 beyond "
            "65535 objects), keeping each input's axes and pixel size."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (TIFF, PNG, JPEG)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help=(
            f"an existing folder (each INPUT NAME.tif gives NAME{LABELS_SUFFIX}) or, with one "
            "INPUT, a file name ending in .tif or .tiff"
        ),
    )
    p.add_argument(
        "-m",
        "--model",
        metavar="NAME|PATH",
        default=None,
        help="a model name (see 'napari-unet models') or a .safetensors file (default: starter)",
    )
    p.add_argument(
        "--tile-size",
        type=_positive_int,
        metavar="PX",
        help="side of a tile in pixels, without the overlap (default: 256 on CPU, 1024 on GPU)",
    )
    p.add_argument(
        "--overlap",
        type=_non_negative_int,
        metavar="PX",
        help="context margin added on each side of a tile (default: derived from the network)",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="use the full receptive field as overlap: tiled output equals a whole-image pass",
    )
    p.add_argument("--batch-size", type=_positive_int, metavar="N", help="tiles per forward pass")
    p.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda", "mps"),
        help="where the network runs (default: auto = cuda, else mps, else cpu)",
    )
    p.add_argument(
        "--probabilities",
        metavar="PATH",
        help=(
            "also write float32 class probabilities (classes first): a folder "
            f"(NAME{PROBABILITIES_SUFFIX}) or, with one INPUT, a .tif file name"
        ),
    )
    p.add_argument(
        "--min-size",
        type=_non_negative_int,
        metavar="PX",
        help="remove objects smaller than this many pixels (instance models; default 16)",
    )
    p.add_argument(
        "--interior-threshold",
        type=_fraction,
        metavar="P",
        help="probability of 'interior' that seeds an object (default 0.5)",
    )
    p.add_argument(
        "--foreground-threshold",
        type=_fraction,
        metavar="P",
        help="probability of foreground within which objects grow (default 0.5)",
    )
    p.set_defaults(func=_cmd_predict)


def _add_evaluate(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="compare predicted labels with ground truth (prints JSON)",
        description=(
            "Match predicted objects to ground-truth objects one to one and print JSON: average "
            "precision TP/(TP+FP+FN) at IoU 0.5 and averaged over 0.5:0.95, precision, recall, "
            "F1, mean matched IoU and object counts."
        ),
    )
    p.add_argument("pred", metavar="PRED", help="predicted label image (TIFF)")
    p.add_argument("gt", metavar="GT", help="ground-truth label image of the same shape")
    p.add_argument("--mask", metavar="MASK", help="only pixels where MASK is non-zero count")
    p.set_defaults(func=_cmd_evaluate)


def _add_models(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "models",
        parents=[common],
        help="list the models that can be loaded",
        description=(
            "List the built-in models and those in the user's model folder "
            "(NAPARI_UNET_MODELS, else the platform's user data folder), with their metadata."
        ),
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)


# --------------------------------------------------------------------------------------------
# progress and logging


def _format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressReporter:
    """Shows :class:`~napari_unet.core.progress.Progress` events on a stream.

    On a terminal: one line, rewritten in place, with a bar, the fraction done and the time left.
    Otherwise (a log file, a pipe): one line at every tenth of each stage and at its end.
    """

    def __init__(self, stream: IO[str], label: str, enabled: bool = True) -> None:
        self.stream = stream
        self.label = label
        self.enabled = enabled
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._stage = ""
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_tenth = -1
        self._width = 0

    def __call__(self, event: Any) -> None:
        if not self.enabled:
            return
        if event.stage != self._stage:
            self._stage = event.stage
            self._start = time.monotonic()
            self._last_tenth = -1
        fraction = event.done / event.total if event.total else 0.0
        if self.tty:
            self._draw(event, fraction)
            return
        tenth = int(fraction * 10)
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            line = (
                f"{PROG}: {self.label}: {event.stage} {event.done}/{event.total} ({fraction:.0%})"
            )
            self.stream.write(f"{line} {event.message}".rstrip() + "\n")
            self.stream.flush()

    def _draw(self, event: Any, fraction: float) -> None:
        now = time.monotonic()
        if now - self._last_draw < 0.1 and event.done < event.total:
            return
        self._last_draw = now
        elapsed = now - self._start
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else 0.0
        bar = "#" * int(fraction * 20)
        text = (
            f"{self.label}: {event.stage} [{bar:<20}] {fraction:4.0%} "
            f"{_format_seconds(elapsed)} elapsed, {_format_seconds(eta)} left"
        )
        self.stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        self.stream.flush()

    def close(self) -> None:
        """End the progress line (on a terminal)."""
        if self.enabled and self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{PROG}: {record.levelname.lower()}: {message}"
        return f"{PROG}: {message}"


def _debug_from_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {_one_line(message)}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# predict


def _image_stem(path: Path) -> str:
    name = path.name
    for extension in _IMAGE_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return path.stem


def output_paths(inputs: Sequence[Path], target: Path, suffix: str, option: str) -> list[Path]:
    """Where each input's result goes, checked before any work starts.

    Args:
        inputs: the input files.
        target: the ``-o`` (or ``--probabilities``) value: an existing folder, or with one input
            a file name ending in ``.tif`` / ``.tiff``.
        suffix: appended to each input's name inside a folder (e.g. ``"_labels.tif"``).
        option: the option's name, for messages.

    Raises:
        UserError: the folder does not exist, a file name was given for several inputs, or two
            inputs would write the same output.
    """
    from napari_unet.core.errors import UserError

    if target.suffix.lower() in TIFF_SUFFIXES and not target.is_dir():
        if len(inputs) > 1:
            raise UserError(
                f"{option} {target} is a file name but {len(inputs)} inputs were given; "
                "give an existing folder"
            )
        folder = target.parent
        if not folder.is_dir():
            raise UserError(f"the output folder {folder} does not exist ({option} {target})")
        return [target]
    if not target.is_dir():
        if target.exists():
            raise UserError(f"{option} {target} is neither a folder nor a .tif file name")
        if target.suffix:
            raise UserError(
                f"{option} {target}: give an existing folder or a file name ending in .tif "
                "(results are written as TIFF)"
            )
        raise UserError(
            f"the output folder {target} does not exist ({option} takes an existing folder "
            "or, with one input, a .tif file name)"
        )
    paths = [target / f"{_image_stem(p)}{suffix}" for p in inputs]
    seen: dict[Path, Path] = {}
    for source, path in zip(inputs, paths, strict=True):
        if path in seen:
            raise UserError(
                f"{seen[path]} and {source} would both be written to {path}; "
                "rename one or run them separately"
            )
        seen[path] = source
    return paths


def _check_inputs(inputs: Sequence[Path], outputs: Sequence[Path]) -> None:
    from napari_unet.core.errors import ImageReadError, UserError

    for path in inputs:
        if not path.exists():
            raise ImageReadError(f"Cannot read image '{path}': the file does not exist.")
        if path.is_dir():
            raise ImageReadError(f"Cannot read image '{path}': it is a folder, not a file.")
        if path.stat().st_size == 0:
            raise ImageReadError(f"Cannot read image '{path}': the file is empty.")
    resolved = {p.resolve() for p in inputs}
    for path in outputs:
        if path.resolve() in resolved:
            raise UserError(f"the output {path} is one of the inputs; it would be overwritten")


def _tiling(args: argparse.Namespace, loaded: Any, device_type: str) -> Any:
    """Tile settings: the options given, else the model file's tile defaults, else the
    device's defaults."""
    from dataclasses import replace

    from napari_unet.core.tiling import default_tiling

    tiling = loaded.tiling or default_tiling(loaded.config, device_type)
    if args.exact:
        tiling = replace(tiling, exact=True)
    if args.tile_size is not None:
        tiling = replace(tiling, tile_size=args.tile_size)
    if args.overlap is not None:
        tiling = replace(tiling, halo=args.overlap)
    if args.batch_size is not None:
        tiling = replace(tiling, batch_size=args.batch_size)
    return tiling


def _postprocess_config(args: argparse.Namespace) -> Any:
    from napari_unet.core.postprocess import PostprocessConfig

    settings = {
        "min_size": args.min_size,
        "interior_threshold": args.interior_threshold,
        "foreground_threshold": args.foreground_threshold,
    }
    return PostprocessConfig(**{k: v for k, v in settings.items() if v is not None})


def _output_axes(axes: str) -> str:
    """The axes of labels for an image with ``axes``: the channel axes (C, S) removed."""
    kept = [a for a in axes.upper() if a not in "CSYX"]
    return "".join(kept) + "YX"


def _cmd_predict(args: argparse.Namespace) -> int:
    inputs = [Path(p).expanduser() for p in args.inputs]
    outputs = output_paths(inputs, Path(args.output).expanduser(), LABELS_SUFFIX, "-o")
    prob_outputs: list[Path | None] = [None] * len(inputs)
    if args.probabilities:
        prob_outputs = list(
            output_paths(
                inputs,
                Path(args.probabilities).expanduser(),
                PROBABILITIES_SUFFIX,
                "--probabilities",
            )
        )
    _check_inputs(inputs, outputs + [p for p in prob_outputs if p is not None])

    from napari_unet.core.device import describe_device, gpu_hint, resolve_device
    from napari_unet.core.weights import get_model

    device = resolve_device(args.device)
    if device.type == "cpu" and args.device == "auto":
        hint = gpu_hint()
        if hint:
            logger.warning(hint)
    loaded = get_model(args.model)
    tiling = _tiling(args, loaded, device.type)
    post = _postprocess_config(args)
    logger.info(
        "model %s (%s) on %s; tile %d px, overlap %s, batch %d",
        loaded.name,
        loaded.path,
        describe_device(device),
        tiling.tile_size,
        "exact" if tiling.exact else ("auto" if tiling.halo is None else f"{tiling.halo} px"),
        tiling.batch_size,
    )
    for index, (source, target, prob_target) in enumerate(
        zip(inputs, outputs, prob_outputs, strict=True), start=1
    ):
        label = source.name if len(inputs) == 1 else f"[{index}/{len(inputs)}] {source.name}"
        _predict_one(args, source, target, prob_target, loaded, tiling, device, post, label)
    return 0


def _predict_one(
    args: argparse.Namespace,
    source: Path,
    target: Path,
    prob_target: Path | None,
    loaded: Any,
    tiling: Any,
    device: Any,
    post: Any,
    label: str,
) -> None:
    """Read one image, predict, post-process and write its labels (and probabilities)."""
    from napari_unet.core import io
    from napari_unet.core.postprocess import postprocess
    from napari_unet.core.predict import predict_probabilities
    from napari_unet.core.progress import drain

    start = time.monotonic()
    image = io.read_image(source)
    axes = _output_axes(image.axes)
    reporter = ProgressReporter(sys.stderr, label, enabled=not args.quiet)
    try:
        probs = drain(
            predict_probabilities(image.data, image.axes, loaded, tiling, device), reporter
        )
        labels = drain(postprocess(probs, loaded.task, post), reporter)
    finally:
        reporter.close()
    if labels.ndim != len(axes):  # should not happen; keep the output readable anyway
        logger.warning("labels of shape %s do not fit axes %s", labels.shape, axes)
        axes = "".join("TZQ"[i] for i in range(labels.ndim - 2)) + "YX"
    written: list[Path] = []
    try:
        if prob_target is not None:
            io.write_probabilities(
                prob_target, probs, "C" + axes, image.pixel_size, image.z_spacing
            )
            written.append(prob_target)
        io.write_labels(target, labels, axes, image.pixel_size, image.z_spacing)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    n_objects = int(labels.max()) if labels.size and loaded.task == "instances" else None
    found = ""
    if n_objects is not None:
        found = f", {n_objects} object{'' if n_objects == 1 else 's'}"
    if not args.quiet:
        sys.stderr.write(f"{PROG}: {label} -> {target}{found} ({time.monotonic() - start:.1f} s)\n")


# --------------------------------------------------------------------------------------------
# evaluate


def _read_labels(path: Path, what: str) -> Any:
    """A label image as an integer array (any shape)."""
    import numpy as np

    from napari_unet.core import io
    from napari_unet.core.errors import InputMismatchError

    image = io.read_image(path, memmap=False)
    data = np.asarray(image.data)
    if "S" in image.axes:
        raise InputMismatchError(f"{what} {path} is an RGB image, not a label image")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise InputMismatchError(f"{what} {path} is not a label image (non-integer values)")
        data = data.astype(np.int64)
    elif data.dtype.kind == "b":
        data = data.astype(np.uint8)
    elif data.dtype.kind not in "iu":
        raise InputMismatchError(f"{what} {path} is not a label image (dtype {data.dtype})")
    if data.size and data.min() < 0:
        raise InputMismatchError(f"{what} {path} has negative labels")
    return data


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_unet.core.errors import InputMismatchError
    from napari_unet.core.metrics import evaluate

    pred_path, gt_path = Path(args.pred).expanduser(), Path(args.gt).expanduser()
    pred = _read_labels(pred_path, "prediction")
    gt = _read_labels(gt_path, "ground truth")
    if pred.shape != gt.shape:
        raise InputMismatchError(
            f"label images have different shapes: {pred_path} is {tuple(pred.shape)}, "
            f"{gt_path} is {tuple(gt.shape)}"
        )
    mask = None
    if args.mask:
        mask_path = Path(args.mask).expanduser()
        mask = _read_labels(mask_path, "mask") != 0
        if mask.shape != gt.shape:
            raise InputMismatchError(
                f"the mask {mask_path} has shape {tuple(mask.shape)}, the label images "
                f"{tuple(gt.shape)}"
            )
    result = evaluate(pred, gt, mask=mask)
    sys.stdout.write(_json_dumps(result) + "\n")
    return 0


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinite floats replaced by ``None`` (strict JSON has neither)."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_dumps(value: Any) -> str:
    return json.dumps(_finite(value), indent=2, default=_json_default, allow_nan=False)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------------------------
# train

SCRATCH = "scratch"
MODEL_SUFFIX = ".safetensors"


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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _add_train(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train",
        parents=[common],
        help="fine-tune a model (or train one from scratch) on annotated images",
        description=(
            "Fine-tune a U-Net on images and their labels (0 = background, one id per object) "
            "with elastic-deformation augmentation and the U-Net border-weighted loss, and "
            "write the best model by validation score. Give --image IMG --labels LAB for each "
            "image; a --mask (non-zero = annotated) after a pair restricts training to the "
            "reviewed pixels of that pair. In a stack without a mask, planes without any label "
            "are not annotated."
        ),
    )
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
    p.add_argument(
        "-m",
        "--model",
        metavar="BASE",
        default=None,
        help=(
            "the model to fine-tune: a name (see 'napari-unet models') or a .safetensors file "
            f"(default: starter), or '{SCRATCH}' for a new network"
        ),
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        metavar="N",
        help="epochs at most (default 40, or no limit with --max-minutes)",
    )
    p.add_argument(
        "--max-minutes",
        type=_positive_float,
        metavar="M",
        help="wall-clock budget in minutes (training stops at whichever limit comes first)",
    )
    p.add_argument("--name", help="the new model's name (default: the output file's name)")
    p.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda", "mps"),
        help="where training runs (default: auto = cuda, else mps, else cpu)",
    )
    p.add_argument("--seed", type=_non_negative_int, metavar="N", help="random seed (default 0)")
    p.add_argument(
        "--batch-size", type=_positive_int, metavar="N", help="patches per step (default 4)"
    )
    p.add_argument(
        "--patch-size", type=_positive_int, metavar="PX", help="side of a patch (default 192)"
    )
    p.add_argument(
        "--steps-per-epoch",
        type=_positive_int,
        metavar="N",
        help="steps between validations (default 25)",
    )
    p.add_argument(
        "--learning-rate",
        type=_positive_float,
        metavar="LR",
        help="peak learning rate (default 0.001)",
    )
    p.add_argument(
        "--validation-fraction",
        type=_fraction,
        metavar="F",
        help="share of the annotated pixels held out for validation (default 0.15; 0: none)",
    )
    p.add_argument(
        "--patience",
        type=_non_negative_int,
        metavar="N",
        help="stop after N epochs without a better validation score (0: never; default 10)",
    )
    p.add_argument(
        "--no-elastic", action="store_true", help="no elastic deformation in the augmentation"
    )
    p.add_argument(
        "--no-weight-map",
        action="store_true",
        help="plain class-balanced loss, without the border weight map",
    )
    scratch = p.add_argument_group(f"architecture of a new network (with --model {SCRATCH})")
    scratch.add_argument(
        "--depth", type=_positive_int, metavar="N", help="down-sampling steps (default 4)"
    )
    scratch.add_argument(
        "--base-channels", type=_positive_int, metavar="N", help="channels at full resolution"
    )
    p.set_defaults(func=_cmd_train, data_items=None)


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


def _train_output(text: str) -> Path:
    """The model file to write (``.safetensors`` appended when missing), checked."""
    from napari_unet.core.errors import UserError

    path = Path(text).expanduser()
    if path.suffix != MODEL_SUFFIX:
        path = path.with_name(path.name + MODEL_SUFFIX)
    if path.is_dir():
        raise UserError(f"-o {path} is a folder; give a model file name ending in {MODEL_SUFFIX}")
    if not path.parent.is_dir():
        raise UserError(f"the output folder {path.parent} does not exist (-o {text})")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"the output folder {path.parent} is not writable (-o {text})")
    return path


def _read_mask(path: Path) -> Any:
    """A mask file as a bool array: True where non-zero (RGB: any sample non-zero)."""
    import numpy as np

    from napari_unet.core import io
    from napari_unet.core.errors import UserError

    image = io.read_image(path, memmap=False)
    data = np.asarray(image.data)
    if data.dtype.kind not in "uifb":
        raise UserError(f"the mask {path} is not a numeric image (dtype {data.dtype})")
    mask = np.nan_to_num(data) != 0
    if image.axes.endswith("S"):
        mask = mask.any(axis=-1)
    if not mask.any():
        raise UserError(f"the mask {path} marks no pixel as annotated (it is all zero)")
    return mask


def _scratch_channels(image: Any) -> int:
    """Input channels of a new network for ``image`` (an ``ImageData``)."""
    if "C" in image.axes:
        return int(image.data.shape[image.axes.index("C")])
    if image.axes.endswith("S"):
        return 3
    return 1


def _base_model(args: argparse.Namespace, first_image: Path) -> tuple[Any, Any]:
    """``(base LoadedModel or None, ModelConfig of a new network or None)``; a new network
    takes its input channels from ``first_image``."""
    from napari_unet.core.config import ModelConfig
    from napari_unet.core.errors import UserError
    from napari_unet.core.io import read_image
    from napari_unet.core.weights import get_model

    architecture = {"depth": args.depth, "base_channels": args.base_channels}
    given = {k: v for k, v in architecture.items() if v is not None}
    if (args.model or "").strip().lower() != SCRATCH:
        if given:
            raise UserError(
                "--depth and --base-channels set the architecture of a new network; they need "
                f"--model {SCRATCH} (a fine-tuned model keeps its architecture)"
            )
        return get_model(args.model), None
    if given.get("depth", 0) > 8:
        raise UserError(f"--depth must be at most 8, got {given['depth']}")
    return None, ModelConfig(in_channels=_scratch_channels(read_image(first_image)), **given)


def _train_config(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from napari_unet.core.train import TrainConfig

    defaults = TrainConfig()
    settings: dict[str, Any] = {
        "epochs": args.epochs,
        "max_minutes": args.max_minutes,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "patch_size": args.patch_size,
        "steps_per_epoch": args.steps_per_epoch,
        "learning_rate": args.learning_rate,
        "val_fraction": args.validation_fraction,
        "patience": args.patience,
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    if args.max_minutes is not None and args.epochs is None:
        settings["epochs"] = 1_000_000  # the time budget decides
    if args.no_weight_map:
        settings["use_weight_map"] = False
    if args.no_elastic:
        settings["augment"] = replace(defaults.augment, elastic=False)
    return replace(defaults, **settings)


def _read_training_data(inputs: Sequence[TrainingInput], base: Any, model_config: Any) -> list:
    """Read every file and build the training pairs (all checks happen here)."""
    from napari_unet.core import io
    from napari_unet.core.data import make_pairs
    from napari_unet.core.errors import UserError
    from napari_unet.core.normalize import NormalizeConfig

    if base is not None:
        in_channels, task = base.config.in_channels, base.task
        n_classes, normalize = base.config.out_classes, base.normalize
    else:
        in_channels, task = model_config.in_channels, "instances"
        n_classes, normalize = model_config.out_classes, NormalizeConfig()
    pairs: list = []
    for item in inputs:
        image = io.read_image(item.image)
        labels = _read_labels(item.labels, "labels")
        mask = _read_mask(item.mask) if item.mask is not None else None
        pairs += make_pairs(
            image.data,
            labels,
            image.axes,
            in_channels,
            normalize,
            task=task,
            n_classes=n_classes,
            mask=mask,
            name=str(item.image),
        )
    if task == "instances" and not any(p.labels[p.targets.mask].any() for p in pairs):
        raise UserError(
            "none of the annotated pixels belongs to an object (the labels are 0 wherever the "
            "masks are set); paint some objects"
        )
    return pairs


def _format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    if isinstance(metrics.get("ap_50"), int | float):
        parts.append(f"AP50 {metrics['ap_50']:.3f}")
    if isinstance(metrics.get("pixel_iou"), int | float):
        parts.append(f"pixel IoU {metrics['pixel_iou']:.3f}")
    return ", ".join(parts)


class TrainReporter:
    """Shows training progress events: one line per epoch (on a terminal, also a step line)."""

    def __init__(self, stream: IO[str], epochs: int | None, enabled: bool = True) -> None:
        self.stream = stream
        self.epochs = epochs
        self.enabled = enabled
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.last: Any = None  # the latest training status
        self._width = 0

    def _left(self, seconds: float) -> str:
        if seconds != seconds or seconds == float("inf"):
            return ""
        return f", {_format_seconds(seconds)} left"

    def _epoch(self, epoch: int) -> str:
        return f"epoch {epoch}/{self.epochs}" if self.epochs else f"epoch {epoch}"

    def _write(self, line: str) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(f"{PROG}: {line}\n")
        self.stream.flush()

    def __call__(self, event: Any) -> None:
        status = event.payload
        if status is not None:
            self.last = status
        if not self.enabled or status is None:
            return
        if status.kind == "step":
            if self.tty:
                text = (
                    f"{self._epoch(status.epoch + 1)}, step {status.step}: loss "
                    f"{status.loss:.4f}{self._left(status.seconds_left)}"
                )
                self.stream.write("\r" + text.ljust(self._width))
                self._width = len(text)
                self.stream.flush()
            return
        if status.kind != "validation":
            return
        scores = _format_metrics(status.metrics)
        if status.epoch == 0:
            self._write(f"before training: validation {scores}")
            return
        line = f"{self._epoch(status.epoch)}: loss {status.loss:.4f}"
        if scores:
            best = not status.best or status.metrics["score"] > status.best.get("score", -1e300)
            line += f", validation {scores}" + (" (best)" if best else "")
        self._write(line + self._left(status.seconds_left))

    def close(self) -> None:
        """End a step line left on a terminal."""
        if self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


def _file_state(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _summary(result: Any, base: Any, seconds: float, last: Any) -> str:
    """The closing report: the model file, what was trained, validation before and after."""
    provenance = result.metadata.get("provenance") or {}
    settings = provenance.get("settings") or {}
    metrics = dict(provenance.get("metrics") or {})
    baseline = metrics.pop("baseline", None) or {}
    origin = f"fine-tuned from {base.name}" if base is not None else "trained from scratch"
    epochs = last.epoch if last is not None else settings.get("epochs_done")
    steps = last.step if last is not None else settings.get("steps")
    kept = settings.get("epochs_done")
    kept_text = "the starting model (no epoch improved on it)" if kept == 0 else f"epoch {kept}"
    lines = [
        f"model: {Path(result.path).resolve()}",
        f"name: {result.name} ({origin})",
        f"training: {epochs} epochs, {steps} steps of {settings.get('batch_size')} patches on "
        f"{settings.get('training_pixels')} annotated pixels in {seconds:.1f} s; kept {kept_text}",
    ]
    if baseline:
        lines.append(f"validation before: {_format_metrics(baseline)}")
        lines.append(f"validation after:  {_format_metrics(metrics)}")
    else:
        loss = metrics.get("loss")
        loss_text = f"; training loss {loss:.4f}" if isinstance(loss, int | float) else ""
        lines.append(
            "validation: none (too little annotation to hold out blocks, or "
            f"--validation-fraction 0){loss_text}"
        )
    return "\n".join(lines) + "\n"


def _cmd_train(args: argparse.Namespace) -> int:
    from napari_unet.core.device import describe_device, gpu_hint, resolve_device
    from napari_unet.core.errors import UserError
    from napari_unet.core.train import train

    inputs = training_inputs(args.data_items)
    output = _train_output(args.output)
    config = _train_config(args)
    for item in inputs:
        for path in (item.image, item.labels, item.mask):
            if path is not None and path.exists() and path.resolve() == output.resolve():
                raise UserError(
                    f"the output {output} is one of the inputs; it would be overwritten"
                )
    device = resolve_device(args.device)
    if device.type == "cpu" and args.device == "auto":
        hint = gpu_hint()
        if hint:
            logger.warning(hint)
    base, model_config = _base_model(args, inputs[0].image)
    if base is not None and base.path is not None and base.path.resolve() == output.resolve():
        raise UserError(
            f"-o {output} is the model being fine-tuned; write the new model to another file"
        )
    pairs = _read_training_data(inputs, base, model_config)
    logger.info(
        "training on %s: %d annotated plane(s), %d pixels",
        describe_device(device),
        len(pairs),
        sum(p.annotated_pixels for p in pairs),
    )
    before = _file_state(output)
    time_only = args.max_minutes is not None and args.epochs is None
    reporter = TrainReporter(sys.stderr, None if time_only else config.epochs, not args.quiet)
    start = time.monotonic()
    gen = train(
        pairs,
        output,
        base=base,
        config=config,
        device=device,
        name=args.name,
        model_config=model_config,
    )
    try:
        result = _drain_training(gen, reporter)
    except KeyboardInterrupt:
        gen.close()
        reporter.close()
        saved = _file_state(output)
        if saved is not None and saved != before:
            sys.stderr.write(f"\n{PROG}: interrupted; the best model so far is in {output}\n")
        else:
            sys.stderr.write(f"\n{PROG}: interrupted before a model was saved\n")
        return 130
    reporter.close()
    sys.stdout.write(_summary(result, base, time.monotonic() - start, reporter.last))
    return 0


def _drain_training(gen: Any, reporter: TrainReporter) -> Any:
    """Run the training generator, showing its events; returns its result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        reporter(event)


# --------------------------------------------------------------------------------------------
# models


def _describe_entry(entry: Any) -> str:
    summary = entry.summary()
    where = "built-in" if entry.builtin else "user"
    if entry.error is not None:
        return f"  {entry.name}  [{where}]  cannot be read: {_one_line(entry.error)}"
    arch = summary.get("architecture") or {}
    classes = ", ".join(summary.get("class_names") or [])
    parts = [
        f"  {entry.name}  [{where}]",
        f"{summary.get('task')} ({classes})",
        f"{summary.get('in_channels')} input channel(s)",
        f"depth {arch.get('depth')}, {arch.get('base_channels')} base channels, "
        f"{arch.get('norm')} norm",
    ]
    metrics = summary.get("metrics") or {}
    if isinstance(metrics.get("ap_50"), int | float):
        parts.append(f"AP50 {metrics['ap_50']:.3f}")
    if summary.get("parent"):
        parts.append(f"from {summary['parent']}")
    if summary.get("created"):
        parts.append(f"created {summary['created']}")
    lines = ["  ".join(parts), f"      {entry.path}"]
    return "\n".join(lines)


def _cmd_models(args: argparse.Namespace) -> int:
    from napari_unet.core.weights import (
        DEFAULT_MODEL,
        builtin_models_dir,
        list_models,
        user_models_dir,
    )

    entries = list_models()
    default_installed = any(e.name == DEFAULT_MODEL and e.error is None for e in entries)
    if args.json:
        report = {
            "builtin_dir": str(builtin_models_dir()),
            "user_dir": str(user_models_dir()),
            "default": DEFAULT_MODEL,
            "default_installed": default_installed,
            "models": [entry.summary() for entry in entries],
        }
        sys.stdout.write(_json_dumps(report) + "\n")
        return 0
    lines = []
    for builtin, title, folder in (
        (True, "Built-in models", builtin_models_dir()),
        (False, "User models", user_models_dir()),
    ):
        group = [e for e in entries if e.builtin == builtin]
        lines.append(f"{title} ({folder}):" + ("" if group else " none"))
        lines.extend(_describe_entry(e) for e in group)
    if not default_installed:
        lines.append(
            f"The default model '{DEFAULT_MODEL}' is not installed in this version; "
            "pass --model PATH to predict."
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


# --------------------------------------------------------------------------------------------
# entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        _error(str(exc))
        return 2
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    debug = args.debug or _debug_from_env()
    package_logger = logging.getLogger("napari_unet")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    old_level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(
        logging.DEBUG if debug else logging.INFO if args.verbose else logging.WARNING
    )
    try:
        return _run(args, debug)
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(old_level)


def _run(args: argparse.Namespace, debug: bool) -> int:
    from napari_unet.core.errors import UserError

    try:
        return int(args.func(args))
    except UserError as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted\n")
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        hint = "" if debug else f" (run with --debug or {DEBUG_ENV}=1 for the traceback)"
        sys.stderr.write(
            f"{PROG}: internal error: {type(exc).__name__}: {_one_line(str(exc))}{hint}\n"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
