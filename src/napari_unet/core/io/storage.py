"""Files and memory: atomic writes (a file appears complete or not at all), whether a file was
(re)written since an earlier look, and how much memory is available for reading one."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from napari_unet.core.errors import UserError

logger = logging.getLogger(__name__)


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` can be written: its folder exists and it is not a folder itself.

    Raises:
        UserError: the output folder does not exist, is not writable, or ``path`` is a folder.
    """
    path = Path(path).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"Cannot write '{path}': the output folder '{parent}' does not exist.")
    if path.is_dir():
        raise UserError(f"Cannot write '{path}': it is a folder, not a file name.")
    if not os.access(parent, os.W_OK):
        raise UserError(f"Cannot write '{path}': the output folder '{parent}' is not writable.")
    return path


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else the usual 0o022."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _new_file_mode(path: Path) -> int:
    """Permissions for a file written to ``path``: those of the file it replaces, else what
    ``open()`` would give a new file (some writers create their files private)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    The temporary file is hidden (its name starts with a dot) and keeps the suffixes of ``path``
    (``.ome.tif``, ``.safetensors``), so writers that look at the extension behave the same. When
    the block raises (including ``KeyboardInterrupt`` and cancellation), the temporary file is
    removed and ``path`` is left as it was.

    Raises:
        UserError: the output folder does not exist or ``path`` is a folder.
    """
    from .safe_paths import sweep_beside, temp_tag

    path = check_output_path(path)
    sweep_beside(path)
    tmp = path.with_name(f".{path.name}.{temp_tag()}.tmp{''.join(path.suffixes)}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file '{tmp}'")
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.debug("wrote %s", path)


def file_state(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(inode, modification time in ns) of ``path``, or ``None`` when it does not exist: tells
    whether a file was (re)written since an earlier look."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def available_memory() -> int | None:
    """Bytes of memory available now (Linux: MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _gib(nbytes: float) -> str:
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GiB"
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.1f} MiB"
    return f"{int(nbytes)} bytes"
