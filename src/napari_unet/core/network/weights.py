"""Model files and the registry of models.

A model file is one ``.safetensors`` file. Its tensors are the U-Net's state dict (float32, plus
BatchNorm's int64 ``num_batches_tracked``); its safetensors metadata (a str -> str map) holds one
key, ``"napari_unet"``, whose value is a JSON object::

    {
      "format": "napari-unet", "format_version": 1,
      "name": "nuclei-v2",
      "config": {...ModelConfig...}, "in_channels": 1,
      "task": "instances", "class_names": ["background", "interior", "boundary"],
      "normalize": {"method": "percentile", "low": 1.0, "high": 99.8},
      "tiling": null,   (or {"tile_size": 256, "halo": 32, "batch_size": 4, "exact": false})
      "weights_sha256": "...",
      "provenance": {"parent": null, "data_hashes": [], "settings": {}, "metrics": {},
                     "version": "0.1.0", "created": "2025-01-01T12:00:00+00:00"}
    }

Loading reads the file with safetensors only: no pickle, so no code from a model file ever runs.
Every problem with a file becomes a :class:`~.errors.ModelFileError` that names the file and the
reason.

The registry knows two folders: the built-in models shipped in the package
(:func:`builtin_models_dir`) and the user's models (:func:`user_models_dir`, overridable with the
environment variable ``NAPARI_UNET_MODELS``). A model's name is its file name without
``.safetensors``; a built-in model wins over a user model of the same name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..config import DEFAULT_MODEL, ModelConfig, TilingConfig, from_dict, to_dict
from ..errors import Hint, ModelFileError, ModelNotFoundError, UserError
from ..io.storage import atomic_path
from .limits import check_architecture, finite_problem, normalize_problem, tiling_problem
from .model import UNet

logger = logging.getLogger(__name__)

FORMAT = "napari-unet"
FORMAT_VERSION = 1
METADATA_KEY = "napari_unet"
SUFFIX = ".safetensors"
PACKAGE_SUFFIX = ".zip"  # bioimage.io packages put in the model folder by import-model
MODELS_ENV = "NAPARI_UNET_MODELS"
TASKS = ("instances", "semantic")
INSTANCE_CLASSES = ("background", "interior", "boundary")
DEFAULT_NORMALIZE: dict[str, Any] = {"method": "percentile", "low": 1.0, "high": 99.8}


# --------------------------------------------------------------------------------------------
# metadata


def _package_version() -> str:
    from napari_unet import __version__

    return __version__


def default_class_names(task: str, out_classes: int) -> list[str]:
    """Class names used when none are given: the instance classes, or ``class 1``, ..."""
    if task == "instances" and out_classes == len(INSTANCE_CLASSES):
        return list(INSTANCE_CLASSES)
    return ["background"] + [f"class {i}" for i in range(1, out_classes)]


def _settings_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return to_dict(value)


def new_metadata(
    config: ModelConfig,
    task: str = "instances",
    name: str | None = None,
    class_names: list[str] | None = None,
    normalize: Any = None,
    tiling: TilingConfig | Mapping[str, Any] | None = None,
    parent: str | None = None,
    data_hashes: list[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    pixel_size: Sequence[float] | None = None,
    object_diameter: float | None = None,
) -> dict[str, Any]:
    """Metadata for a new model file (see the module docstring for the layout).

    Args:
        config: the network's architecture.
        task: ``"instances"`` (3 classes: background, interior, boundary) or ``"semantic"``.
        name: a short human-readable name; ``None`` takes the file name when saved.
        class_names: one name per output class; defaults from the task.
        normalize: a ``NormalizeConfig`` or its dict; defaults to percentiles 1 / 99.8.
        tiling: default tiling for inference (a :class:`TilingConfig` or its dict); ``None``
            (stored as JSON null) leaves it to the device's defaults.
        parent: name or hash of the model this one was fine-tuned from.
        data_hashes: hashes of the training images and labels.
        settings: training settings (JSON-ready).
        metrics: validation metrics (JSON-ready).
        pixel_size: pixel size of the training data in µm, ``[y, x]`` (``[z, y, x]`` in 3D),
            stored as ``"pixel_size_um"``; ``None`` when unknown.
        object_diameter: median object diameter in the training data, in its pixels, stored as
            ``"object_diameter_px"``; ``None`` when unknown.

    Returns:
        A JSON-ready dict, validated as :func:`load_model` would.
    """
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "config": to_dict(config),
        "in_channels": config.in_channels,
        "task": task,
        "class_names": list(class_names)
        if class_names is not None
        else default_class_names(task, config.out_classes),
        "normalize": _settings_dict(normalize) or dict(DEFAULT_NORMALIZE),
        "tiling": _settings_dict(tiling) or None,
        "provenance": {
            "parent": parent,
            "data_hashes": list(data_hashes or []),
            "settings": dict(settings or {}),
            "metrics": dict(metrics or {}),
            "version": _package_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    if pixel_size is not None:
        metadata["pixel_size_um"] = [float(v) for v in pixel_size]
    if object_diameter is not None:
        metadata["object_diameter_px"] = float(object_diameter)
    validate_metadata(metadata, "new model")
    return metadata


def validate_metadata(metadata: Any, source: str | Path = "model") -> ModelConfig:
    """Check a metadata dict and return its :class:`ModelConfig`.

    Raises:
        ModelFileError: the metadata is not a valid napari-unet description; the message names
            ``source`` and what is wrong.
    """

    def fail(reason: str) -> ModelFileError:
        return ModelFileError(f"{source}: {reason}")

    if not isinstance(metadata, dict):
        raise fail("the model metadata is not a JSON object")
    if metadata.get("format") != FORMAT:
        raise fail(f"not a napari-unet model (format is {metadata.get('format')!r})")
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise fail(f"invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise fail(
            f"made for model format {version}, this napari-unet reads up to {FORMAT_VERSION}; "
            "upgrade napari-unet"
        )
    raw_config = metadata.get("config")
    if not isinstance(raw_config, dict):
        raise fail("the metadata has no architecture 'config'")
    try:
        check_architecture(raw_config)
        config = from_dict(ModelConfig, raw_config)
    except (TypeError, ValueError) as exc:
        raise fail(f"invalid architecture config ({exc})") from exc
    in_channels = metadata.get("in_channels", config.in_channels)
    if in_channels != config.in_channels:
        raise fail(f"in_channels {in_channels!r} disagrees with the config's {config.in_channels}")
    task = metadata.get("task")
    if task not in TASKS:
        raise fail(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
    if task == "instances" and config.out_classes != len(INSTANCE_CLASSES):
        raise fail(f"an instance model needs 3 output classes, the config has {config.out_classes}")
    names = metadata.get("class_names")
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or len(names) != config.out_classes
    ):
        raise fail(f"'class_names' must be a list of {config.out_classes} strings, got {names!r}")
    for key in ("normalize", "tiling", "provenance"):
        if metadata.get(key) is not None and not isinstance(metadata[key], dict):
            raise fail(f"'{key}' must be a JSON object")
    problem = normalize_problem(metadata.get("normalize"))
    tiling = metadata.get("tiling")
    if problem is None and tiling:
        problem = tiling_problem(
            tiling.get("tile_size", 256), tiling.get("halo"), tiling.get("batch_size", 4)
        )
        problem = problem and f"invalid default tiling: {problem}"
    if problem is not None:
        raise fail(problem)
    return config


def _strict_json(value: Any) -> Any:
    """``value`` with NaN and infinite floats as ``None``: the file's JSON stays strict JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------------------------
# the loaded model


@dataclass
class LoadedModel:
    """A model read from a file.

    Attributes:
        model: the U-Net in eval mode, on the CPU.
        config: its architecture.
        metadata: the file's metadata dict (see the module docstring).
        path: the file it came from (``None`` for a model built in memory).
    """

    model: UNet
    config: ModelConfig
    metadata: dict[str, Any]
    path: Path | None = None

    @property
    def name(self) -> str:
        """The model's name from its metadata (else the file stem)."""
        default = self.path.stem if self.path is not None else "unnamed"
        return str(self.metadata.get("name") or default)

    @property
    def task(self) -> str:
        """``"instances"`` or ``"semantic"``."""
        return str(self.metadata.get("task", "instances"))

    @property
    def class_names(self) -> list[str]:
        """One name per output class."""
        names = self.metadata.get("class_names")
        return list(names) if names else default_class_names(self.task, self.config.out_classes)

    @property
    def normalize(self) -> Any:
        """The intensity normalisation (a ``NormalizeConfig``)."""
        from .normalize import NormalizeConfig

        return from_dict(NormalizeConfig, self.metadata.get("normalize") or DEFAULT_NORMALIZE)

    @property
    def tiling(self) -> TilingConfig | None:
        """The model's default tiling for inference, or ``None`` (use the device's defaults)."""
        raw = self.metadata.get("tiling")
        if not raw:
            return None
        try:
            return from_dict(TilingConfig, raw)
        except (TypeError, ValueError):
            logger.warning("%s: invalid default tiling %r, ignored", self.name, raw)
            return None

    @property
    def pixel_size(self) -> tuple[float, ...] | None:
        """Pixel size of the training data in µm, ``(y, x)`` (``(z, y, x)`` for 3D models), or
        ``None`` when the model does not record it."""
        raw = self.metadata.get("pixel_size_um")
        if raw is None:
            return None
        try:
            values = tuple(float(v) for v in raw)
        except (TypeError, ValueError):
            values = ()
        if len(values) not in (2, 3) or not all(np.isfinite(v) and v > 0 for v in values):
            logger.warning("%s: invalid pixel_size_um %r, ignored", self.name, raw)
            return None
        return values

    @property
    def object_diameter(self) -> float | None:
        """Median object diameter of the training data in its pixels, or ``None``."""
        raw = self.metadata.get("object_diameter_px")
        if isinstance(raw, int | float) and not isinstance(raw, bool) and np.isfinite(raw):
            return float(raw) if raw > 0 else None
        return None

    @classmethod
    def from_model(cls, model: UNet, **metadata_kwargs: Any) -> LoadedModel:
        """Wrap an in-memory U-Net with fresh metadata (see :func:`new_metadata`)."""
        metadata = new_metadata(model.config, **metadata_kwargs)
        return cls(model=model.eval(), config=model.config, metadata=metadata, path=None)


# --------------------------------------------------------------------------------------------
# saving and loading


def _tensors_for_file(model: UNet) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.to(torch.float32)
        tensors[key] = value.contiguous().clone()
    return tensors


def weights_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_model(path: str | Path, model: UNet, metadata: Mapping[str, Any]) -> Path:
    """Write ``model`` and ``metadata`` to one ``.safetensors`` file, atomically.

    The architecture in the metadata is taken from ``model.config``; the rest is validated as
    :func:`load_model` would, so a file that is written can be read back. ``.safetensors`` is
    appended to the name when missing.

    Returns:
        The path written.
    """
    path = Path(path).expanduser()
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    if not path.parent.is_dir():
        raise UserError(f"cannot save {path}: the folder {path.parent} does not exist")
    meta = dict(metadata)
    meta["name"] = meta.get("name") or path.name[: -len(SUFFIX)]
    meta["config"] = to_dict(model.config)
    meta["in_channels"] = model.config.in_channels
    meta.setdefault("format", FORMAT)
    meta.setdefault("format_version", FORMAT_VERSION)
    tensors = _tensors_for_file(model)
    bad = finite_problem(tensors)
    if bad is not None:
        raise UserError(f"not saving {path}: {bad} holds NaN or infinite values")
    meta["weights_sha256"] = weights_hash(tensors)
    validate_metadata(meta, path)
    text = json.dumps(_strict_json(meta), default=_json_default, allow_nan=False)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: text})
    logger.info("saved model %r to %s", meta.get("name"), path)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a model file, read from its header only (fast, no tensors).

    Raises:
        ModelNotFoundError: the file does not exist.
        ModelFileError: not a safetensors file, truncated, or no valid napari-unet metadata.
    """
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"model file {path} does not exist")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: the model file is empty")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata()
    except SafetensorError as exc:
        raise ModelFileError(
            f"{path}: not a valid .safetensors model file (corrupt or truncated: {exc})"
        ) from exc
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not raw or METADATA_KEY not in raw:
        raise ModelFileError(
            f"{path}: not a napari-unet model (a safetensors file without its metadata)"
        )
    try:
        metadata = json.loads(raw[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: the model metadata is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ModelFileError(f"{path}: the model metadata is nested too deeply") from exc
    validate_metadata(metadata, path)
    return metadata


def _check_tensors(path: Path, tensors: Mapping[str, torch.Tensor], model: UNet) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    if missing:
        raise ModelFileError(
            f"{path}: weights do not match the architecture: missing {some(missing)}"
        )
    if unexpected:
        raise ModelFileError(
            f"{path}: weights do not match the architecture: unexpected {some(unexpected)}"
        )
    for key, ref in expected.items():
        if tuple(tensors[key].shape) != tuple(ref.shape):
            raise ModelFileError(
                f"{path}: weights do not match the architecture: {key} has shape "
                f"{tuple(tensors[key].shape)}, expected {tuple(ref.shape)}"
            )
        if ref.is_floating_point() and not tensors[key].is_floating_point():
            raise ModelFileError(f"{path}: weight {key} has dtype {tensors[key].dtype}, not float")


def load_model(path: str | Path) -> LoadedModel:
    """Read a model file (safetensors only: nothing is unpickled).

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
    metadata = read_metadata(path)
    config = validate_metadata(metadata, path)
    try:
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise ModelFileError(f"{path}: the weights cannot be read (corrupt file: {exc})") from exc
    expected_hash = metadata.get("weights_sha256")
    if expected_hash is not None and weights_hash(tensors) != expected_hash:
        raise ModelFileError(f"{path}: the weights are corrupt (checksum mismatch)")
    model = UNet(config)
    _check_tensors(path, tensors, model)
    bad = finite_problem(tensors)  # weights and batch-norm statistics alike
    if bad is not None:
        raise ModelFileError(f"{path}: {bad} holds NaN or infinite values (a diverged training?)")
    model.load_state_dict(tensors, strict=True)
    model.eval()
    logger.info("loaded model %r from %s", metadata.get("name"), path)
    return LoadedModel(model=model, config=config, metadata=metadata, path=path)


# --------------------------------------------------------------------------------------------
# the registry


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
