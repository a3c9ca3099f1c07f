"""A row of offers for layers that napari's own reader opened (Segment and Export show it).

napari preselects its own reader for ``.tif`` files: a label TIFF then becomes an Image layer,
and a channel axis becomes a stack slider. When the viewer holds such a layer, the row says so
and offers one click: "Make it a Labels layer" (:func:`._layer_info.as_labels_layer`) or
"Split into channels" (:func:`._layer_info.split_channels`). It is hidden otherwise.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, PushButton

from ..files.layer_info import as_labels_layer, channel_candidate, looks_like_labels, split_channels
from ..layout import Message


class LayerHints(Container):
    """The offers for the viewer's layers (see the module docstring).

    Args:
        viewer: the viewer whose layers are watched.
        channels: also offer to split a short first axis into channels.
    """

    def __init__(self, viewer: Any, channels: bool = True) -> None:
        self._viewer = viewer
        self._channels = channels
        self.message = Message(value="")
        self.convert_button = PushButton(text="Make it a Labels layer")
        self.split_button = PushButton(text="Split into channels")
        super().__init__(
            widgets=[self.message, self.convert_button, self.split_button], labels=False
        )
        self.margins = (0, 0, 0, 0)
        self.convert_button.changed.connect(self.convert)
        self.split_button.changed.connect(self.split)
        events = viewer.layers.events
        events.inserted.connect(self.refresh)
        events.removed.connect(self.refresh)
        self.refresh()

    def label_image(self) -> Any:
        """The first Image layer that looks like labels, or ``None``."""
        return next((layer for layer in self._viewer.layers if looks_like_labels(layer)), None)

    def channel_image(self) -> Any:
        """The first Image layer whose first axis may be channels, or ``None``."""
        if not self._channels:
            return None
        return next((layer for layer in self._viewer.layers if channel_candidate(layer)), None)

    def refresh(self, *_: Any) -> None:
        """Show the offers that apply to the viewer's layers now."""
        labels, channels = self.label_image(), self.channel_image()
        lines = []
        if labels is not None:
            lines.append(f"'{labels.name}' holds integer labels but is an Image layer.")
        if channels is not None:
            n = channel_candidate(channels)
            lines.append(f"'{channels.name}' has {n} planes on its first axis: channels?")
        self.message.value = " ".join(lines)
        self.convert_button.visible = labels is not None
        self.split_button.visible = channels is not None
        self.visible = bool(lines)

    def convert(self, *_: Any) -> Any:
        """Replace the first label-like Image layer by a Labels layer; returns it (or None)."""
        layer = self.label_image()
        return as_labels_layer(self._viewer, layer) if layer is not None else None

    def split(self, *_: Any) -> list[Any]:
        """Split the first channel candidate into one layer per channel; returns them."""
        layer = self.channel_image()
        return split_channels(self._viewer, layer) if layer is not None else []
