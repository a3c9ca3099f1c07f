"""Model files: one ``.safetensors`` file per model, written and read back.

A model file's tensors are the U-Net's state dict (float32, plus BatchNorm's int64
``num_batches_tracked``); its metadata is described in :mod:`.metadata`.

Loading reads the file with safetensors only: no pickle, so no code from a model file ever runs.
Every problem with a file becomes a :class:`~.errors.ModelFileError` that names the file and the
reason. Finding a model by name, and bioimage.io packages, are :mod:`.registry`'s part.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..config import ModelConfig, NormalizeConfig, TilingConfig, from_dict, to_dict
from ..errors import ModelFileError, ModelNotFoundError, UserError
from ..io.storage import atomic_path
from .limits import finite_problem
from .metadata import (
    DEFAULT_NORMALIZE,
    FORMAT,
    METADATA_KEY,
    default_class_names,
    format_version_for,
    new_metadata,
    validate_metadata,
)
from .model import UNet

logger = logging.getLogger(__name__)

SUFFIX = ".safetensors"


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
    def normalize(self) -> NormalizeConfig:
        """The intensity normalisation."""
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
    def spatial_dims(self) -> int:
        """2 for a network of planes, 3 for a native 3D network."""
        return self.config.spatial_dims

    @property
    def voxel_size(self) -> tuple[float, float, float] | None:
        """The training voxel size (z, y, x) in µm of a 3D model, else ``None``."""
        size = self.pixel_size
        if self.config.spatial_dims != 3 or size is None or len(size) != 3:
            return None
        return (size[0], size[1], size[2])

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
    :func:`load_model_file` would, so a file that is written can be read back. ``.safetensors`` is
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
    meta["format_version"] = format_version_for(model.config)
    tensors = _tensors_for_file(model)
    bad = finite_problem(tensors)
    if bad is not None:
        raise UserError(f"not saving {path}: {bad} holds NaN or infinite values")
    meta["weights_sha256"] = weights_hash(tensors)
    validate_metadata(meta, path)
    text = json.dumps(_strict_json(meta), default=_json_default, allow_nan=False)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={METADATA_KEY: text})
        except SafetensorError as exc:
            raise _as_os_error(exc, Path(path)) from exc
    logger.info("saved model %r to %s", meta.get("name"), path)
    return path


def _as_os_error(exc: SafetensorError, path: Path) -> Exception:
    """safetensors reports a failed write as ``... I/O error: No space left on device (os error
    28)``: the ``OSError`` it stands for (a full disk is then reported as such), else ``exc``."""
    import os
    import re

    found = re.search(r"\(os error (\d+)\)", str(exc))
    if found is None:
        return exc
    number = int(found.group(1))
    return OSError(number, os.strerror(number), str(path))


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
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ModelFileError(f"{path}: the model metadata cannot be read ({exc})") from exc
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


def load_model_file(path: str | Path) -> LoadedModel:
    """Read a ``.safetensors`` model file (nothing is unpickled).

    Returns:
        The model in eval mode on the CPU, with its config and metadata.

    Raises:
        ModelNotFoundError: the file does not exist.
        ModelFileError: the file is not a safetensors file, is truncated or corrupt, has no valid
            napari-unet metadata, or its tensors do not match its architecture.
    """
    path = Path(path).expanduser()
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
