"""The parser, the dispatch to the commands and the mapping of errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from napari_unet import __version__
from napari_unet.cli._common import (
    DEBUG_ENV,
    PROG,
    Parser,
    Terminated,
    UsageError,
    error,
    one_line,
    quiet_libraries,
    sigterm_as_interrupt,
    system_error_line,
)
from napari_unet.cli._demo import add_demo, cmd_demo
from napari_unet.cli._evaluate import add_evaluate, cmd_evaluate
from napari_unet.cli._export_model import add_export_model, cmd_export_model
from napari_unet.cli._import_model import add_import_model, cmd_import_model
from napari_unet.cli._models import add_models, cmd_models
from napari_unet.cli._predict import add_predict, cmd_predict
from napari_unet.cli._train import cmd_train
from napari_unet.cli._train_options import add_train


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-unet`` argument parser with its sub-commands."""
    parser = Parser(
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    add_predict(sub, common).set_defaults(func=cmd_predict)
    add_evaluate(sub, common).set_defaults(func=cmd_evaluate)
    add_train(sub, common).set_defaults(func=cmd_train)
    add_models(sub, common).set_defaults(func=cmd_models)
    add_export_model(sub, common).set_defaults(func=cmd_export_model)
    add_import_model(sub, common).set_defaults(func=cmd_import_model)
    add_demo(sub, common).set_defaults(func=cmd_demo)
    return parser


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{PROG}: {record.levelname.lower()}: {message}"
        return f"{PROG}: {message}"


def _debug_from_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        error(cli_message(exc))
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
        with sigterm_as_interrupt(), quiet_libraries(not (debug or args.verbose)):
            return _run(args, debug)
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(old_level)


#: How the command line words a :class:`~napari_unet.core.errors.Hint`, by setting.
_CLI_HINTS = {"device": "use --device {value}", "model": "pass a model file with --model PATH"}


def cli_message(exc: Exception) -> str:
    """A user error's message with its hint in command-line words (``...; use --device cpu``)."""
    message = str(exc).rstrip(".")
    hint = getattr(exc, "hint", None)
    wording = _CLI_HINTS.get(hint.setting) if hint is not None else None
    if wording is None:
        return str(exc)
    return f"{message}; {wording.format(value=hint.value)}"


def _run(args: argparse.Namespace, debug: bool) -> int:
    from napari_unet.core.errors import UserError

    try:
        return int(args.func(args))
    except UserError as exc:
        if debug:
            traceback.print_exc()
        error(cli_message(exc))
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        sys.stderr.write(f"\n{PROG}: {'terminated' if terminated else 'interrupted'}\n")
        return 143 if terminated else 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        line = system_error_line(exc)
        if line is not None:
            error(line)
            return 2
        hint = "" if debug else f" (run with --debug or {DEBUG_ENV}=1 for the traceback)"
        sys.stderr.write(
            f"{PROG}: internal error: {type(exc).__name__}: {one_line(str(exc))}{hint}\n"
        )
        return 1
