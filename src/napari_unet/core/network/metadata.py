"""The metadata of a model file: what it holds and how it is checked.

A model file's safetensors metadata (a str -> str map) holds one key, ``"napari_unet"``
(:data:`METADATA_KEY`), whose value is a JSON object::

    {
      "format": "napari-unet", "format_version": 1,
      "name": "nuclei-v2",
      "config": {...ModelConfig...}, "in_channels": 1,
      "task": "instances", "class_names": ["background", "interior", "boundary"],
      "normalize": {"method": "percentile", "low": 1.0, "high": 99.8},
      "tiling": null,   (or {"tile_size": 256, "halo": 32, "batch_size": 4, "exact": false})
      "pixel_size_um": [0.5, 0.5],   (optional; [z, y, x], the voxel size, for a 3D network)
      "weights_sha256": "...",
      "provenance": {"parent": null, "data_hashes": [], "settings": {}, "metrics": {},
                     "version": "0.1.0", "created": "2025-01-01T12:00:00+00:00"}
    }

:func:`new_metadata` builds it for a new model, :func:`validate_metadata` checks one read from a
file (every problem is a :class:`~.errors.ModelFileError` that names the file and the reason).

A 3D network (``"config": {..., "spatial_dims": 3, "xy_only_levels": 1}``) is written with
``"format_version": 2``, so that versions of napari-unet that know only 2D networks refuse it
with "upgrade napari-unet" instead of misreading it; 2D models keep version 1, and a config
without ``spatial_dims`` is 2D. A 3D model records its training voxel size as
``"pixel_size_um": [z, y, x]``.
"""

from __future__ import annotations

import datetime as _dt
import reprlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import ModelConfig, TilingConfig, from_dict, to_dict
from ..errors import ModelFileError
from .limits import check_architecture, normalize_problem, tiling_problem

FORMAT = "napari-unet"
FORMAT_VERSION = 2
#: The format version written for a 2D network (readable by every version of napari-unet).
FORMAT_VERSION_2D = 1
METADATA_KEY = "napari_unet"
TASKS = ("instances", "semantic")
INSTANCE_CLASSES = ("background", "interior", "boundary")
DEFAULT_NORMALIZE: dict[str, Any] = {"method": "percentile", "low": 1.0, "high": 99.8}


def _package_version() -> str:
    from napari_unet import __version__

    return __version__


def format_version_for(config: ModelConfig) -> int:
    """The format version a model file of ``config`` is written with: 2 for a 3D network, else 1."""
    return FORMAT_VERSION if config.spatial_dims == 3 else FORMAT_VERSION_2D


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
        A JSON-ready dict, validated as :func:`~.weights.load_model_file` would.
    """
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "format_version": format_version_for(config),
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
        if config.spatial_dims == 3 and len(pixel_size) != 3:
            raise ValueError(f"a 3D model records its voxel size (z, y, x), got {list(pixel_size)}")
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
        got = reprlib.repr(names)
        raise fail(f"'class_names' must be a list of {config.out_classes} strings, got {got}")
    for key in ("normalize", "tiling", "provenance"):
        if metadata.get(key) is not None and not isinstance(metadata[key], dict):
            raise fail(f"'{key}' must be a JSON object")
    provenance = metadata.get("provenance") or {}
    for key, kind, what in (("settings", dict, "a JSON object"), ("metrics", dict, "a JSON object"),
                            ("data_hashes", list, "a list")):  # fmt: skip
        if provenance.get(key) is not None and not isinstance(provenance[key], kind):
            raise fail(f"'provenance.{key}' must be {what}")
    rounds = (provenance.get("metrics") or {}).get("rounds")
    if rounds is not None and not isinstance(rounds, list):
        raise fail("'provenance.metrics.rounds' must be a list")
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
