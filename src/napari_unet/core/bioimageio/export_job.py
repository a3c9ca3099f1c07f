"""Export as a progress job: what the napari widgets run in a background worker, and the checks
that the command line shares (which models can be exported, whose authors are recorded)."""

from __future__ import annotations

import importlib.util
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError
from ..progress import Progress
from . import EXTRA_HINT
from .export import DEFAULT_LICENSE, export_model

if TYPE_CHECKING:
    from ..network.weights import LoadedModel


def missing_extra() -> str | None:
    """Why a package cannot be exported here (``bioimageio.core`` or ``bioimageio.spec`` is not
    installed), else ``None``. Cheap: nothing is imported."""
    missing = []
    for name in ("bioimageio.spec", "bioimageio.core"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent missing, or a module blocked in sys.modules
            found = False
        if not found:
            missing.append(name)
    if not missing:
        return None
    return f"exporting a bioimage.io package needs {' and '.join(missing)}: {EXTRA_HINT}"


def model_authors(loaded: LoadedModel) -> list[str]:
    """The authors recorded in ``loaded``'s metadata (``["napari-unet developers"]`` for the
    shipped starter model); empty when none are recorded."""
    from ..config import DEFAULT_MODEL

    recorded = loaded.metadata.get("authors")
    if isinstance(recorded, list) and recorded:
        return [str(a) for a in recorded]
    if loaded.path is not None and loaded.metadata.get("name") == DEFAULT_MODEL:
        return ["napari-unet developers"]
    return []


def check_exportable(loaded: LoadedModel, what: str) -> None:
    """Raise :class:`UserError` unless ``loaded`` is one of napari-unet's own networks (a
    package of another architecture cannot be written again as napari-unet's)."""
    if not loaded.metadata.get("trainable", True) or not hasattr(loaded.model, "encoders"):
        raise UserError(f"{what}: only napari-unet's own networks can be exported")


def export_job(
    model: str | Path,
    output: str | Path,
    authors: Sequence[str] | None = None,
    license: str = DEFAULT_LICENSE,
    description: str | None = None,
    test_image: np.ndarray | None = None,
    onnx: bool = False,
) -> Generator[Progress, None, Path]:
    """Load ``model`` (a name or a file) and export it with :func:`export_model`, as a progress
    generator (loading, then writing and testing: seconds) that returns the package written.

    ``authors``: default the model file's own (see :func:`model_authors`).

    Raises:
        UserError: the model cannot be read or exported, no author, the extra is missing, or
            the package fails bioimageio's test (then nothing is written).
    """
    from ..network.registry import get_model

    yield Progress("export", 0, 2, f"Loading {Path(str(model)).name}...")
    problem = missing_extra()  # a clear message when the extra is missing, before any work
    if problem:
        raise UserError(problem)
    loaded = get_model(model)
    check_exportable(loaded, str(model))
    names = [a.strip() for a in (authors or []) if a.strip()] or model_authors(loaded)
    if not names:
        raise UserError("a bioimage.io package needs its authors: give an author's name")
    yield Progress("export", 1, 2, "Writing the package and running bioimageio's test...")
    path = export_model(loaded, output, names, license, description, test_image, onnx=onnx)
    yield Progress("export", 2, 2, f"Wrote {path.name}")
    return path
