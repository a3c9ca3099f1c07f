"""Finding and opening models: by name or by path, model files and bioimage.io packages.

The registry knows two folders: the built-in models shipped in the package
(:func:`builtin_models_dir`) and the user's models (:func:`user_models_dir`, overridable with the
environment variable ``NAPARI_UNET_MODELS``). A model's name is its file name without
``.safetensors`` (or ``.zip`` for a bioimage.io package that ``import-model`` put there); a
built-in model wins over a user model of the same name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MODEL
from ..errors import Hint, ModelFileError, ModelNotFoundError, UserError
from .weights import SUFFIX, LoadedModel, load_model_file, read_metadata

logger = logging.getLogger(__name__)

PACKAGE_SUFFIX = ".zip"  # bioimage.io packages put in the model folder by import-model
MODELS_ENV = "NAPARI_UNET_MODELS"


def load_model(path: str | Path) -> LoadedModel:
    """Read a model file (safetensors only: nothing is unpickled) or a bioimage.io package.

    Returns:
        The model in eval mode on the CPU, with its config and metadata.

    Raises:
        ModelNotFoundError: the file does not exist.
        ModelFileError: the file is not a safetensors file, is truncated or corrupt, has no valid
            napari-unet metadata, or its tensors do not match its architecture.
    """
    path = Path(path).expanduser()
    from ..bioimageio import is_package

    if is_package(path):  # a bioimage.io package (.zip or rdf.yaml)
        from ..bioimageio.load import load_package

        return load_package(path)
    return load_model_file(path)


def user_models_dir(create: bool = False) -> Path:
    """The user's model folder: ``$NAPARI_UNET_MODELS`` if set, else the platform's user data
    folder for napari-unet plus ``models``. Created when ``create`` is true."""
    env = os.environ.get(MODELS_ENV)
    if env:
        folder = Path(env).expanduser()
    else:
        import platformdirs

        folder = Path(platformdirs.user_data_dir("napari-unet")) / "models"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def builtin_models_dir() -> Path:
    """The folder of models shipped inside the package (``napari_unet/models``)."""
    return Path(__file__).resolve().parents[2] / "models"


@dataclass(frozen=True)
class ModelEntry:
    """One model file found by :func:`list_models`.

    Attributes:
        name: the file name without ``.safetensors`` (what ``--model NAME`` takes).
        path: the file.
        builtin: shipped with the package (else from the user's model folder).
        metadata: the file's metadata, or ``None`` when it cannot be read.
        error: why the file cannot be read, or ``None``.
    """

    name: str
    path: Path
    builtin: bool
    metadata: dict[str, Any] | None = field(default=None, compare=False)
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        """A short JSON-ready description: task, classes, channels, architecture, provenance."""
        out: dict[str, Any] = {
            "name": self.name,
            "path": str(self.path),
            "builtin": self.builtin,
        }
        if self.error is not None or self.metadata is None:
            out["error"] = self.error
            return out
        meta = self.metadata
        config = meta.get("config", {})
        prov = meta.get("provenance") or {}
        out.update(
            {
                "title": meta.get("name"),
                "task": meta.get("task"),
                "class_names": meta.get("class_names"),
                "in_channels": config.get("in_channels"),
                "architecture": {
                    k: config.get(k) for k in ("depth", "base_channels", "norm", "upsampling")
                },
                "normalize": meta.get("normalize"),
                "tiling": meta.get("tiling"),
                "pixel_size_um": meta.get("pixel_size_um"),
                "parent": prov.get("parent"),
                "metrics": prov.get("metrics"),
                "version": prov.get("version"),
                "created": prov.get("created"),
            }
        )
        return out


def _entries(folder: Path, builtin: bool) -> list[ModelEntry]:
    if not folder.is_dir():
        return []
    entries = []
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        if path.name.startswith("."):  # temporary files of an unfinished save
            continue
        try:
            entries.append(ModelEntry(path.stem, path, builtin, read_metadata(path)))
        except (ModelFileError, ModelNotFoundError, OSError) as exc:
            entries.append(ModelEntry(path.stem, path, builtin, None, str(exc)))
    for path in sorted(folder.glob(f"[!.]*{PACKAGE_SUFFIX}")):
        from ..bioimageio.load import package_summary

        try:
            entries.append(ModelEntry(path.stem, path, builtin, package_summary(path)))
        except (UserError, OSError) as exc:
            entries.append(ModelEntry(path.stem, path, builtin, None, str(exc)))
    return entries


def list_models() -> list[ModelEntry]:
    """Every model file in the built-in folder, then in the user's model folder.

    Files that cannot be read are listed with their ``error`` rather than skipped.
    """
    return _entries(builtin_models_dir(), True) + _entries(user_models_dir(), False)


def _looks_like_path(text: str) -> bool:
    suffixes = (SUFFIX, PACKAGE_SUFFIX, ".yaml")
    return text.endswith(suffixes) or "/" in text or os.sep in text or text.startswith((".", "~"))


def _check_access(path: Path) -> None:
    """Raise ModelFileError when ``path`` exists but may not be read (not "does not exist")."""
    try:
        path.stat()
    except PermissionError as exc:
        raise ModelFileError(f"{path}: permission denied ({exc.strerror or exc})") from exc
    except OSError:
        return
    if path.is_file() and not os.access(path, os.R_OK):
        raise ModelFileError(f"{path}: permission denied (the file may not be read)")


def resolve_model(name_or_path: str | Path | None) -> Path:
    """The file of a model given by registered name or by path.

    Args:
        name_or_path: a name (file stem in the built-in or the user's model folder), a path to a
            ``.safetensors`` file, or ``None`` / ``""`` for :data:`DEFAULT_MODEL`.

    Raises:
        ModelNotFoundError: no such file or name; the message lists the names available, or says
            that the default model is not installed.
    """
    if isinstance(name_or_path, Path):
        text = str(name_or_path)
    else:
        text = (name_or_path or "").strip() or DEFAULT_MODEL
    candidate = Path(text).expanduser()
    _check_access(candidate)
    if candidate.is_file():
        return candidate
    if isinstance(name_or_path, Path) or _looks_like_path(text):
        if candidate.is_dir():
            raise ModelNotFoundError(f"{candidate} is a folder, not a model file")
        if candidate.exists():  # a FIFO, a socket or a device: never opened
            raise ModelFileError(f"{candidate} is not a regular file (a FIFO or a device)")
        raise ModelNotFoundError(f"model file {candidate} does not exist")
    for folder in (builtin_models_dir(), user_models_dir()):
        for suffix in (SUFFIX, PACKAGE_SUFFIX):  # a model file, else an imported package
            path = folder / f"{text}{suffix}"
            if path.is_file():
                return path
    if text == DEFAULT_MODEL:
        raise ModelNotFoundError(
            f"the built-in '{DEFAULT_MODEL}' model is not installed in this version of napari-unet",
            hint=Hint("model"),
        )
    names = sorted({entry.name for entry in list_models()})
    available = ", ".join(names) if names else "none"
    raise ModelNotFoundError(
        f"no model named {text!r} (available: {available}; user model folder: {user_models_dir()})"
    )


def get_model(name_or_path: str | Path | None) -> LoadedModel:
    """Resolve a model by name or path (see :func:`resolve_model`) and load it."""
    return load_model(resolve_model(name_or_path))
