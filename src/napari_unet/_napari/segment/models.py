"""The models the Segment widget offers: built-in, the user's folder, and files picked by hand.

No Qt here: :class:`ModelList` lists, finds and loads models; the widget shows them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_unet.core.config import DEFAULT_MODEL
from napari_unet.core.errors import ModelFileError, UserError

if TYPE_CHECKING:
    from napari_unet.core.config import TilingConfig
    from napari_unet.core.network.weights import LoadedModel

logger = logging.getLogger(__name__)

#: The model selected when nothing else is.


@dataclass(frozen=True)
class ModelChoice:
    """A model the widget offers: a registered one or a file the user picked.

    Attributes:
        name: the registered name (file stem) or, for a picked file, its stem.
        path: the model file.
        source: ``"built-in"``, ``"user"`` or ``"file"``.
        metadata: the file's metadata (``None`` when it cannot be read).
        error: why the file cannot be read, else ``None``.
    """

    name: str
    path: Path
    source: str
    metadata: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    error: str | None = field(default=None, compare=False, hash=False)

    @property
    def label(self) -> str:
        """The text shown in the model list."""
        suffix = {"built-in": " (built-in)", "file": " (file)"}.get(self.source, "")
        if self.error:
            suffix += " - cannot be read"
        return self.name + suffix

    @property
    def task(self) -> str:
        """``"instances"`` or ``"semantic"``."""
        return str((self.metadata or {}).get("task", "instances"))

    @property
    def in_channels(self) -> int | None:
        """Input channels the model expects (``None`` when unknown)."""
        value = (self.metadata or {}).get("in_channels")
        return int(value) if isinstance(value, int) else None

    def key(self) -> tuple[str, int]:
        """Identifies this version of the file: (path, modification time in ns)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            mtime = -1
        return str(self.path), mtime


def model_summary(choice: ModelChoice | None) -> str:
    """One line about a model: name, task, channels, parent and validation numbers."""
    if choice is None:
        return "No model."
    if choice.error or choice.metadata is None:
        return f"{choice.name}: {choice.error or 'cannot be read'}"
    meta = choice.metadata
    parts = [str(meta.get("name") or choice.name), choice.task]
    channels = choice.in_channels
    if channels is not None:
        parts.append(f"{channels} channel{'s' if channels != 1 else ''}")
    provenance = meta.get("provenance") or {}
    parent = provenance.get("parent")
    if parent and parent != meta.get("name"):
        parts.append(f"from {parent}")
    metrics = provenance.get("metrics") or {}
    scores = []
    for key, text in (("ap_50", "AP50"), ("pixel_iou", "IoU")):
        value = metrics.get(key)
        if isinstance(value, int | float):
            scores.append(f"{text} {value:.2f}")
    if scores:  # and where the scores come from (models differ: they are not comparable)
        where = metrics.get("scored_on")
        scores[-1] += (
            f" on {where}"
            if isinstance(where, str)
            else " on held-out blocks of its own training data"
        )
    return " · ".join(parts + scores)


def model_tiling(choice: ModelChoice, device_type: str) -> TilingConfig:
    """The tiling a run with no tile settings gets: the model's default tiling (from its file's
    metadata, read without loading the network), else the device's defaults."""
    from napari_unet.core.config import ModelConfig, TilingConfig, from_dict
    from napari_unet.core.inference.engine import choose_tiling

    meta = choice.metadata or {}
    raw = meta.get("tiling")
    model_default = None
    if isinstance(raw, dict):
        try:
            model_default = from_dict(TilingConfig, raw)
        except (TypeError, ValueError):
            pass
    config = from_dict(ModelConfig, meta.get("config") or {})
    return choose_tiling(None, model_default, config, device_type)


class ModelList:
    """The models on offer and the networks loaded last.

    Args:
        cache: loaded networks kept in memory (the most recently used).
    """

    def __init__(self, cache: int = 2) -> None:
        self.choices: list[ModelChoice] = []
        self._files: dict[str, ModelChoice] = {}
        self._loaded: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._cache = cache

    def refresh(self) -> list[ModelChoice]:
        """List the models again: built-in, then the user's folder, then files loaded by hand
        (unless they are in one of those folders)."""
        from napari_unet.core.network.registry import list_models

        registered = [
            ModelChoice(e.name, e.path, "built-in" if e.builtin else "user", e.metadata, e.error)
            for e in list_models()
        ]
        paths = {str(c.path.resolve()) for c in registered}
        self.choices = registered + [c for p, c in self._files.items() if p not in paths]
        return self.choices

    def find(self, name_or_path: str | None) -> ModelChoice | None:
        """The listed model with this file path, else the first with this name, else ``None``."""
        if not name_or_path:
            return None
        for choice in self.choices:
            if str(choice.path) == str(name_or_path):
                return choice
        return next((c for c in self.choices if c.name == name_or_path), None)

    def default(self) -> ModelChoice | None:
        """The starter model when it is listed, else the first model, else ``None``."""
        return self.find(DEFAULT_MODEL) or next(iter(self.choices), None)

    def load_file(self, path: str | Path) -> ModelChoice:
        """Load a model file and add it to the list (call :meth:`refresh` to see it).

        Raises:
            UserError: the file is missing, not a napari-unet model, or corrupt; the message
                names the file and the reason.
        """
        from napari_unet.core.network.registry import load_model

        try:
            loaded = load_model(path)
        except UserError:
            raise
        except Exception as exc:  # any unreadable file is the user's problem to hear about
            logger.error("could not load model %s", path, exc_info=exc)
            raise ModelFileError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
        resolved = Path(loaded.path or path).resolve()
        choice = ModelChoice(resolved.stem, resolved, "file", loaded.metadata)
        self._files[str(resolved)] = choice
        self.remember(choice, loaded)
        return choice

    def loaded(self, choice: ModelChoice) -> LoadedModel | None:
        """The network of ``choice`` if it was loaded and its file has not changed since."""
        return self._loaded.get(choice.key())

    def remember(self, choice: ModelChoice, loaded: LoadedModel) -> None:
        """Keep a loaded network for the next run."""
        key = choice.key()
        self._loaded.pop(key, None)
        self._loaded[key] = loaded
        while len(self._loaded) > self._cache:
            self._loaded.popitem(last=False)
