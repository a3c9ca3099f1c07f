"""Closing the Fine-tune panel while it trains: noticed, so that the widget can ask first.

napari closes a dock widget by taking the widget out of its dock (``setParent(None)``), without
destroying it. :class:`CloseGuard` watches for that and, while a run is going on, hands over to
:meth:`._finetune.FinetuneWidget.closed_while_training` once the close has finished.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, QObject, QTimer


class CloseGuard(QObject):
    """An event filter on the widget's Qt widget that notices it leaving its dock."""

    def __init__(self, widget: Any) -> None:
        super().__init__(widget.native)
        self._widget = widget
        widget.native.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if (
            event.type() == QEvent.Type.ParentChange
            and watched.parent() is None
            and self._widget.running
        ):
            QTimer.singleShot(0, self._widget.closed_while_training)
        return False
