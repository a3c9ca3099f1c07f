"""Guards that keep outputs from destroying anything that is not their own, and the sweeping of
leftovers from runs that were killed.

- :func:`require_regular_file` refuses FIFOs, devices and sockets before anything opens them
  (opening a FIFO for reading blocks until a writer comes, which may be never).
- :func:`check_outputs_apart` refuses an output that is an input, lies inside an input (a zarr
  store holding the image) or holds one (``predict out.zarr/x.tif -o out.zarr``).
- :func:`is_own_store` tells a zarr store written by napari-unet (its root attributes carry
  :data:`OWNER_KEY`) from anything else; only such a store is ever replaced.
- Temporary files and folders are named with :func:`temp_tag` (this machine and process), so
  that :func:`sweep_stale` can remove those of dead processes on this machine (or any older
  than :data:`STALE_SECONDS`) and nothing else.
- safetensors writes a model through a temporary file of its own beside it (``.tmpXXXXXX``, no
  tag): :func:`sweep_safetensors_temp` removes those that a killed write left, and only files of
  that name and layout older than :data:`SAFETENSORS_TEMP_AGE`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ImageReadError, UserError

logger = logging.getLogger(__name__)

#: Root attribute of the zarr stores napari-unet writes: ``{"kind": "labels" | "probabilities"}``.
OWNER_KEY = "napari-unet"

#: Leftovers of another machine (a shared file system) are swept only when older than this.
STALE_SECONDS = 7 * 24 * 3600

#: Leftovers of a dead process on this machine are swept when older than this (a process id can
#: be reused, so a young leftover of a "dead" id may still be someone's).
MIN_AGE_SECONDS = 60

WORK_PREFIX = ".napari-unet-work-"

#: safetensors' own temporary files (``.tmp`` and 6 letters or digits, as Rust's ``tempfile``
#: names them) are swept only when older than this: no model write takes that long.
SAFETENSORS_TEMP_AGE = 3600
_SAFETENSORS_TEMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")
_ATTRS_LIMIT = 1 << 20  # bytes of root attributes read to find the owner key
_TAG = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}")


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_tag() -> str:
    """``HOST-PID-RANDOM``: names a temporary file or folder of this process on this machine."""
    return f"{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


# --------------------------------------------------------------------------------------------
# inputs


def require_regular_file(path: Path, what: str = "image") -> None:
    """Refuse a path that exists but is not a regular file or a folder, without opening it.

    Raises:
        ImageReadError: ``path`` is a FIFO, a socket or a device.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing or unreadable: the caller's own check says which
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = (
            "a named pipe (FIFO)"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
        )
        raise ImageReadError(f"Cannot read {what} '{path}': it is {kind}, not a regular file.")


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_outputs_apart(inputs: Iterable[Path | None], outputs: Iterable[Path]) -> None:
    """Refuse an output that is an input, lies inside one, or is a folder holding one.

    Raises:
        UserError: an output and an input overlap.
    """
    sources = [Path(p).expanduser().resolve() for p in inputs if p is not None]
    for output in outputs:
        target = Path(output).expanduser().resolve()
        for source in sources:
            if target == source:
                raise UserError(
                    f"the output {output} is one of the inputs; it would be overwritten"
                )
            if _inside(source, target):
                raise UserError(
                    f"the output {output} holds the input {source}; writing it "
                    "would destroy the input"
                )
            if _inside(target, source):
                raise UserError(f"the output {output} lies inside the input {source}")


# --------------------------------------------------------------------------------------------
# zarr stores


def _read_json(path: Path) -> Any:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > _ATTRS_LIMIT:
            return None  # a FIFO would block the read below forever
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def store_owner(path: Path) -> dict[str, Any] | None:
    """The :data:`OWNER_KEY` attribute of the zarr store at ``path``, or ``None``."""
    attrs = _read_json(path / ".zattrs")
    if not isinstance(attrs, dict):
        meta = _read_json(path / "zarr.json")
        attrs = meta.get("attributes") if isinstance(meta, dict) else None
    owner = attrs.get(OWNER_KEY) if isinstance(attrs, dict) else None
    return owner if isinstance(owner, dict) else None


def is_own_store(path: Path) -> bool:
    """Whether ``path`` is a folder holding a zarr store that napari-unet wrote."""
    return path.is_dir() and not path.is_symlink() and store_owner(path) is not None


def check_replaceable(path: Path, option: str = "") -> None:
    """Refuse to write a zarr store at ``path`` when something that is not a store written by
    napari-unet is there (a folder, a file, someone else's zarr store).

    Raises:
        UserError: ``path`` exists and is not a napari-unet store.
    """
    if not (path.exists() or path.is_symlink()) or is_own_store(path):
        return
    where = f"{option} {path}" if option else f"'{path}'"
    if path.is_dir():
        what = "a folder that is not a zarr store written by napari-unet"
    else:
        what = "a file, not a zarr store"
    raise UserError(
        f"Cannot write {where}: it exists and is {what}; napari-unet replaces only "
        "stores it wrote itself. Remove it or choose another name."
    )


# --------------------------------------------------------------------------------------------
# leftovers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether a leftover named with :func:`temp_tag` belongs to no running process."""
    match = _TAG.search(path.name)
    if match is None:
        return False
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except OSError:
        return False
    if age > STALE_SECONDS:
        return True
    if match["host"] != _host() or age < MIN_AGE_SECONDS:
        return False
    return not _alive(int(match["pid"]))


def sweep_stale(folder: Path, prefixes: tuple[str, ...] = (WORK_PREFIX,)) -> int:
    """Remove the stale leftovers in ``folder`` whose names start with one of ``prefixes`` (and
    carry a :func:`temp_tag`); returns how many were removed. Never raises."""
    removed = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(prefixes) or not is_stale(entry):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:
            logger.debug("could not remove %s: %s", entry, exc)
            continue
        logger.info("removed %s, left by a run that was stopped", entry)
        removed += 1
    return removed


def sweep_beside(path: Path) -> int:
    """Remove stale temporary files and folders of earlier writes of ``path`` (and stale
    blockwise scratch folders) in its folder; beside a ``.safetensors`` file, also the stale
    temporary files of safetensors itself (:func:`sweep_safetensors_temp`)."""
    parent = path.parent if str(path.parent) else Path(".")
    removed = sweep_stale(parent, (f".{path.name}.", WORK_PREFIX))
    if path.suffix.lower() == ".safetensors":
        removed += sweep_safetensors_temp(parent)
    return removed


def _looks_like_safetensors(path: Path) -> bool:
    """Whether a file is empty or starts as a safetensors file does (an 8-byte header length,
    then the JSON header's ``{``): what a write killed at any point leaves."""
    with path.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 0 or (len(head) == 9 and head[8:9] == b"{")


def sweep_safetensors_temp(folder: Path, now: float | None = None) -> int:
    """Remove the temporary files that safetensors leaves beside a model file when its write
    is killed: regular files named ``.tmp`` + 6 letters or digits, empty or with a safetensors
    header, last changed more than :data:`SAFETENSORS_TEMP_AGE` ago. Nothing else is touched
    (folders, links, other names, younger files, other contents). Returns how many were
    removed; never raises."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = [e for e in folder.iterdir() if _SAFETENSORS_TEMP.fullmatch(e.name)]
    except OSError:
        return 0
    for entry in entries:
        try:
            info = entry.lstat()
            if not stat.S_ISREG(info.st_mode) or now - info.st_mtime <= SAFETENSORS_TEMP_AGE:
                continue
            if not _looks_like_safetensors(entry):
                continue
            entry.unlink()
        except OSError as exc:
            logger.debug("could not remove %s: %s", entry, exc)
            continue
        logger.info("removed %s, left by a model write that was stopped", entry)
        removed += 1
    return removed
