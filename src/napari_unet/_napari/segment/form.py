"""The Segment widget's controls (layout only; the behaviour is in :mod:`._segment`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    PushButton,
    SpinBox,
)

from napari_unet.core.config import PRECISIONS

from ..layout import Message, fit_in_dock

#: Value of the model list's last entry, which opens a file dialog.
LOAD_FROM_FILE = "<load from file>"
#: Value of the output list's first entry: results go to a new Labels layer.
NEW_LAYER = "<new layer>"
#: Value of the "Second channel" list's first entry: the image alone is the model's input.
NO_SECOND = "<none>"
THIS_PLANE = "this plane"
WHOLE_STACK = "whole stack"


class SegmentForm(Container):
    """The controls of the Segment widget.

    Args:
        image_choices, model_choices, output_choices, second_choices: callables giving the
            ``(text, value)`` choices of the lists (called again by ``reset_choices()``).
    """

    def __init__(
        self,
        image_choices: Callable[[Any], list[tuple[str, Any]]],
        model_choices: Callable[[Any], list[tuple[str, Any]]],
        output_choices: Callable[[Any], list[tuple[str, Any]]],
        second_choices: Callable[[Any], list[tuple[str, Any]]],
    ) -> None:
        self.image = ComboBox(label="Image", choices=image_choices, nullable=True)
        self.second = ComboBox(
            label="Second channel", choices=second_choices, value=NO_SECOND,
            tooltip="for a two-channel model (e.g. nucleus + cytoplasm): the image layer of the "
            "second channel, of the image's shape; none: the image alone",
        )  # fmt: skip
        self.model = ComboBox(label="Model", choices=model_choices, nullable=True)
        self.pixel_size = FloatSpinBox(
            label="Pixel size (µm)", value=0.0, min=0.0, max=1000.0, step=0.05,
            tooltip="the image's pixel size, from its file; give it for an image without "
            "calibration (0: unknown)",
        )  # fmt: skip
        self.model_info = Message("About")
        self.device_info = Message("Device")
        self.scope = ComboBox(
            label="Scope", choices=[THIS_PLANE, WHOLE_STACK], value=WHOLE_STACK,
            tooltip="for stacks and time-lapses: the plane the viewer shows, or all of them",
        )  # fmt: skip
        self.output = ComboBox(label="Output", choices=output_choices)
        self.interior_threshold = FloatSpinBox(
            label="Seed threshold", value=0.5, min=0.0, max=0.99, step=0.05,
            tooltip="p(interior) above which a pixel seeds an object (higher: fewer splits)",
        )  # fmt: skip
        self.foreground_threshold = FloatSpinBox(
            label="Foreground threshold", value=0.5, min=0.0, max=0.99, step=0.05,
            tooltip="objects grow where 1 - p(background) exceeds this (higher: smaller objects)",
        )  # fmt: skip
        self.min_size = SpinBox(
            label="Min size (px)", value=16, min=0, max=1_000_000,
            tooltip="objects smaller than this many pixels are removed",
        )  # fmt: skip
        self.apply_button = PushButton(text="Apply thresholds")
        self.show_advanced = CheckBox(text="Advanced settings", value=False)
        self.advanced = self._advanced_controls()
        self.run_button = PushButton(text="Run")
        self.status = Message("Status")
        super().__init__(
            widgets=[
                self.image, self.second, self.pixel_size, self.model, self.model_info,
                self.device_info, self.scope, self.output, self.interior_threshold,
                self.foreground_threshold, self.min_size, self.apply_button,
                self.show_advanced, self.advanced, self.run_button, self.status,
            ],
        )  # fmt: skip
        self.advanced.visible = False
        self.show_advanced.changed.connect(self._toggle_advanced)
        fit_in_dock(self, pinned=(self.run_button, self.status))

    def _advanced_controls(self) -> Container:
        """The controls under "Advanced settings": tiles, precision, seeds, blocks, ids."""
        self.tile_size = SpinBox(
            label="Tile size (px)", value=1024, min=32, max=16384, step=32,
            tooltip="side of the part of a tile that is kept; smaller uses less memory",
        )  # fmt: skip
        self.batch_size = SpinBox(
            label="Batch (tiles)", value=1, min=1, max=256,
            tooltip="tiles per forward pass; more is faster on a GPU and uses more memory",
        )  # fmt: skip
        self.precision = ComboBox(
            label="Precision", choices=list(PRECISIONS), value="auto",
            tooltip="auto: bf16 or fp16 on a CUDA GPU, bf16 on CPUs with bfloat16 units, else fp32",
        )  # fmt: skip
        self.min_seed_size = SpinBox(
            label="Min seed size (px)", value=4, min=0, max=100_000,
            tooltip="seeds smaller than this are ignored as noise",
        )  # fmt: skip
        self.seed_sigma = FloatSpinBox(
            label="Seed smoothing (px)", value=0.0, min=0.0, max=20.0, step=0.5,
            tooltip="Gaussian smoothing of p(interior) before seeding",
        )  # fmt: skip
        self.block_pixels = SpinBox(
            label="Block (px)", value=0, min=0, max=65536, step=256,
            tooltip="large and lazy images are predicted block by block: the side of a block; "
            "0: automatic (about 4096 px)",
        )  # fmt: skip
        self.ids = ComboBox(
            label="Time-lapse ids", value="per-frame",
            choices=[("per frame", "per-frame"), ("across frames", "stack")],
            tooltip="per frame: the objects of each time point are numbered 1..N (a time-lapse "
            "stays 16-bit and opens in ImageJ as a hyperstack); across frames: ids unique in "
            "the whole time-lapse",
        )  # fmt: skip
        return Container(
            widgets=[
                self.tile_size, self.batch_size, self.precision, self.min_seed_size,
                self.seed_sigma, self.block_pixels, self.ids,
            ],
        )  # fmt: skip

    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced.visible = bool(shown)

    def threshold_widgets(self) -> list[Any]:
        """The controls whose change re-thresholds the kept probabilities."""
        return [
            self.interior_threshold, self.foreground_threshold, self.min_size,
            self.min_seed_size, self.seed_sigma,
        ]  # fmt: skip
