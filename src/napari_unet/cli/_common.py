"""What every command shares: the program name, argument types, device choice and JSON output.

Only the standard library is imported here, so building the parser stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, NoReturn, TypeVar

logger = logging.getLogger("napari_unet.cli")

PROG = "napari-unet"
DEBUG_ENV = "NAPARI_UNET_DEBUG"
DEVICES = ("auto", "cpu", "cuda", "mps")

_Number = TypeVar("_Number", int, float)


class UsageError(Exception):
    """A command-line usage error, reported like any user error (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------------------------
# argument types


def _number(text: str, convert: Callable[[str], _Number], expected: str) -> _Number:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise argparse.ArgumentTypeError(message)


def positive_int(text: str) -> int:
    """A whole number >= 1 (an argparse type)."""
    value = _number(text, int, "a whole number")
    _require(value >= 1, f"must be positive, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (an argparse type)."""
    value = _number(text, int, "a whole number")
    _require(value >= 0, f"must be zero or positive, got {value}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1) (an argparse type)."""
    value = _number(text, float, "a number")
    _require(0.0 <= value < 1.0, f"must be in [0, 1), got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (an argparse type)."""
    value = _number(text, float, "a number")
    _require(0 <= value < float("inf"), f"must be zero or a positive number, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (an argparse type)."""
    value = _number(text, float, "a number")
    _require(value > 0 and value != float("inf"), f"must be a positive number, got {text}")
    return value


# --------------------------------------------------------------------------------------------
# options and steps shared by several commands


def add_command(
    sub: Any, common: argparse.ArgumentParser, name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """A sub-command's parser with the ``common`` options; ``summary`` is its line in
    ``napari-unet --help``, ``description`` opens its own ``--help``."""
    return sub.add_parser(name, parents=[common], help=summary, description=description)


def add_model_option(parser: argparse.ArgumentParser, metavar: str, help_text: str) -> None:
    """``-m/--model``: a model name or file (``None``: the default model)."""
    parser.add_argument("-m", "--model", metavar=metavar, default=None, help=help_text)


def add_device_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--device auto|cpu|cuda|mps``; ``what`` completes "where ... runs"."""
    parser.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help=f"where {what} runs (default: auto = cuda, else mps, else cpu)",
    )


def chosen_device(name: str) -> Any:
    """The ``torch.device`` for ``--device name``; warns when "auto" falls back to the CPU
    on a machine with an unused GPU."""
    from napari_unet.core.network.device import gpu_hint, resolve_device

    device = resolve_device(name)
    if device.type == "cpu" and name == "auto":
        hint = gpu_hint()
        if hint:
            logger.warning(hint)
    return device


def given(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without the options that were not given (``None``)."""
    return {k: v for k, v in settings.items() if v is not None}


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is an interactive terminal."""
    return bool(getattr(stream, "isatty", lambda: False)())


# --------------------------------------------------------------------------------------------
# messages and output


def one_line(text: str) -> str:
    """``text`` with all runs of white space (newlines included) made one space."""
    return " ".join(str(text).split())


def error(message: str) -> None:
    """Write ``napari-unet: error: MESSAGE`` (one line) to stderr."""
    sys.stderr.write(f"{PROG}: error: {one_line(message)}\n")
    sys.stderr.flush()


def format_metrics(metrics: dict[str, Any]) -> str:
    """``"AP50 0.812, pixel IoU 0.900"`` for the scores present in ``metrics``."""
    parts = []
    if isinstance(metrics.get("ap_50"), int | float):
        parts.append(f"AP50 {metrics['ap_50']:.3f}")
    if isinstance(metrics.get("pixel_iou"), int | float):
        parts.append(f"pixel IoU {metrics['pixel_iou']:.3f}")
    return ", ".join(parts)


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


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def json_dumps(value: Any) -> str:
    """Strict, indented JSON (NaN and infinity as ``null``, numpy values as numbers)."""
    return json.dumps(_finite(value), indent=2, default=_json_default, allow_nan=False)


# --------------------------------------------------------------------------------------------
# signals, library noise and system errors


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every clean-up on the way out runs."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (in the main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def quiet_libraries(enabled: bool) -> Iterator[None]:
    """Within the block, when ``enabled``, Python warnings and the log records of other
    libraries (tifffile, zarr, ...) are not printed: the one error line stands alone."""
    import warnings

    if not enabled:
        yield
        return
    root = logging.getLogger()
    sink = logging.NullHandler()
    root.addHandler(sink)  # with a handler on the root, logging's last resort prints nothing
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeHandler(sink)


def _os_error(exc: BaseException | None) -> OSError | None:
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def system_error_line(exc: BaseException) -> str | None:
    """A user's message for a full disk, a denied permission or a read-only file system found in
    ``exc`` (or what caused it), else ``None``."""
    import errno

    found = _os_error(exc)
    if found is None:
        return None
    where = f" ({found.filename})" if found.filename else ""
    if found.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return (
            f"disk full: no space left on the device{where}; nothing unfinished was kept. "
            "Free some space or write elsewhere"
        )
    if found.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}"
    if found.errno == errno.EROFS:
        return f"the file system is read-only{where}"
    if found.errno == errno.ENAMETOOLONG:
        return f"a file name is too long for the file system{where}: choose a shorter name"
    return None
