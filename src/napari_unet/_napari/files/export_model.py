"""Export a model as a bioimage.io package from napari: the "Export for bioimage.io..." button.

The Fine-tune widget shows it after a run saved a model, the Segment widget under the selected
model's About line. A click asks for the package file (``.zip``) and the author's name (which
bioimage.io requires), then writes the package in a background worker with napari's progress bar
(the export runs ``bioimageio.core``'s test of the package, which takes seconds), and tells the
result in a notification. A package that fails the test is not written.

The last author and folder are remembered in ``export.json`` in napari-unet's user config
folder (``platformdirs.user_config_dir("napari-unet")``). Without the optional extra
``napari-unet[bioimageio]`` a click says how to install it and asks nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, PushButton
from napari.utils.notifications import show_error, show_info, show_warning

from napari_unet.core.errors import UserError

if TYPE_CHECKING:
    from ..jobs.workers import Job

logger = logging.getLogger(__name__)

BUTTON_TEXT = "Export for bioimage.io..."
SETTINGS_NAME = "export.json"


def settings_file() -> Path:
    """The JSON file holding the last export's author and folder."""
    import platformdirs

    return Path(platformdirs.user_config_dir("napari-unet")) / SETTINGS_NAME


def load_settings() -> dict[str, str]:
    """The remembered ``{"author": ..., "folder": ...}`` (empty when none or unreadable)."""
    try:
        data = json.loads(settings_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in ("author", "folder") and isinstance(v, str)}


def save_settings(author: str, folder: Path) -> None:
    """Remember ``author`` and ``folder`` for the next export (a failure is only logged)."""
    path = settings_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"author": author, "folder": str(folder)}), encoding="utf-8")
    except OSError as exc:
        logger.warning("cannot remember the export settings in %s: %s", path, exc)


@dataclass(frozen=True)
class ExportRequest:
    """What the user chose: the package to write and the author's name."""

    output: Path
    author: str


def model_path(value: Any) -> Path:
    """The model file of ``value``: a path, or a model choice of the Segment widget (anything
    with ``path`` and ``error``).

    Raises:
        UserError: no model, or one that cannot be read.
    """
    if isinstance(value, Path) or (isinstance(value, str) and Path(value).is_file()):
        return Path(value)
    path = getattr(value, "path", None)
    if path is None:
        raise UserError("Choose a model to export first.")
    error = getattr(value, "error", None)
    if error:
        raise UserError(f"{getattr(value, 'name', path)} cannot be exported: {error}")
    return Path(path)


def package_stem(path: Path) -> str:
    """The default package name for the model file ``path`` (``rdf`` packages: their folder)."""
    return path.parent.name if path.suffix == ".yaml" else path.stem


def check_request(output: Any, author: Any) -> ExportRequest:
    """The request from the dialog's values: an author is required, ``.zip`` is added.

    Raises:
        UserError: no output file or no author.
    """
    name = str(author or "").strip()
    if not name:
        raise UserError("A bioimage.io package needs an author: give your name.")
    text = str(output or "").strip()
    if not text or text == ".":
        raise UserError("Choose where to write the package (a .zip file).")
    path = Path(text).expanduser()
    if path.suffix.lower() != ".zip":
        path = path.with_name(path.name + ".zip")
    return ExportRequest(path, name)


class ModelExport:
    """The export button and what a click does (see the module docstring).

    Args:
        source: gives the model to export when clicked: a model file, a Segment model choice
            or ``None``; default the model given to :meth:`set_model`.
        parent: the widget whose window the dialog belongs to.
        enabled: whether the button starts enabled.

    Attributes:
        button: the "Export for bioimage.io..." push button.
        job: the running export, else ``None``.
        written: the last package written, else ``None``.
    """

    def __init__(
        self,
        source: Callable[[], Any] | None = None,
        parent: Any = None,
        enabled: bool = True,
    ) -> None:
        self._source = source
        self._model: Path | None = None
        self._parent = parent
        self.job: Job | None = None
        self.written: Path | None = None
        self.button = PushButton(
            text=BUTTON_TEXT,
            enabled=enabled,
            tooltip="Write this model as a bioimage.io package (.zip) for the model zoo, "
            "deepImageJ, QuPath or ilastik (needs napari-unet[bioimageio])",
        )
        self.button.changed.connect(self.export)

    def attach(self, container: Container, after: Any = None) -> ModelExport:
        """Put the button into ``container``, just below ``after`` (else at the end)."""
        widgets = list(container)
        index = widgets.index(after) + 1 if after in widgets else len(widgets)
        container.insert(index, self.button)
        return self

    def set_model(self, path: str | Path) -> None:
        """Export the model file ``path`` from now on, and enable the button."""
        self._model = Path(path)
        self.button.enabled = True

    @property
    def running(self) -> bool:
        """Whether an export is going on."""
        return self.job is not None and self.job.running

    def ask(self, default: ExportRequest) -> ExportRequest | None:
        """Ask for the package file and the author in a dialog (tests replace this method);
        ``None`` when cancelled."""
        from magicgui.widgets import request_values

        values = request_values(
            title="Export for bioimage.io",
            parent=getattr(self._parent, "native", self._parent),
            output={
                "annotation": Path, "value": default.output, "label": "Package (.zip)",
                "options": {"mode": "w", "filter": "*.zip"},
            },
            author={"annotation": str, "value": default.author, "label": "Author"},
        )  # fmt: skip
        if values is None:
            return None
        return check_request(values["output"], values["author"])

    def export(self, *_: Any) -> Job | None:
        """Ask, then export in the background; returns the job, or ``None`` when nothing was
        started (a notification says why)."""
        from napari_unet.core.bioimageio.export_job import missing_extra

        if self.running:
            show_info("An export is already running.")
            return None
        problem = missing_extra()
        if problem:
            show_error(f"Cannot export: {problem} (then restart napari).")
            return None
        try:
            model = self._model if self._source is None else model_path(self._source())
            request = self.ask(self._default(model))
        except UserError as exc:
            show_warning(str(exc))
            return None
        if request is None:
            return None
        save_settings(request.author, request.output.parent)
        return self._start(model, request)

    def _default(self, model: Path | None) -> ExportRequest:
        if model is None:
            raise UserError("There is no model to export yet: train one first.")
        remembered = load_settings()
        folder = Path(remembered.get("folder") or Path.home())
        if not folder.is_dir():
            folder = Path.home()
        return ExportRequest(folder / f"{package_stem(model)}.zip", remembered.get("author", ""))

    def _start(self, model: Path, request: ExportRequest) -> Job:
        from napari_unet.core.bioimageio.export_job import export_job

        from ..jobs.workers import start_job

        def done(path: Path) -> None:
            self.written = path
            show_info(f"Wrote {path} (bioimageio test passed).")

        def failed(exc: BaseException) -> None:
            if not isinstance(exc, UserError):
                logger.error("export failed", exc_info=exc)
            show_error(f"Export failed, nothing was written: {exc}")

        def finished() -> None:
            self.button.enabled = True

        show_info(f"Exporting {model.name} to {request.output.name} (tested first: seconds)...")
        self.button.enabled = False
        self.job = start_job(
            export_job(model, request.output, [request.author]),
            f"Exporting {model.name} for bioimage.io",
            on_result=done, on_error=failed, on_finished=finished,
        )  # fmt: skip
        return self.job
