"""A light live plot of a training run: the loss per step and the validation score per epoch.

Drawn with ``QPainter`` (no plotting library), redrawn at most every :data:`REDRAW_MS`
milliseconds however fast points arrive, and with at most one point per pixel column, so it costs
the viewer well under a millisecond per redraw.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

#: Shortest time between two redraws, in milliseconds.
REDRAW_MS = 250
LOSS_COLOR = QColor(70, 150, 255)
SCORE_COLOR = QColor(255, 160, 40)
_MARGIN = (44, 10, 40, 22)  # left, top, right, bottom, in pixels


def _fmt(value: float) -> str:
    return f"{value:.3g}"


class TrainingPlot(QWidget):
    """Loss (left axis) and validation score (right axis, 0 to 1) against the optimiser step.

    Attributes:
        losses: ``(step, loss)`` points.
        scores: ``(step, score)`` points.
        redraws: how many times the plot was painted (for tests and benchmarks).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.losses: list[tuple[int, float]] = []
        self.scores: list[tuple[int, float]] = []
        self.redraws = 0
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip(
            "Training loss (blue, left axis) and validation score (orange, right "
            "axis) against the training step"
        )
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self.update)

    def add_loss(self, step: int, loss: float) -> None:
        """Add a training-loss point (ignored when not finite)."""
        if math.isfinite(loss):
            self.losses.append((int(step), float(loss)))
            self._schedule()

    def add_score(self, step: int, score: float) -> None:
        """Add a validation-score point (ignored when not finite)."""
        if math.isfinite(score):
            self.scores.append((int(step), float(score)))
            self._schedule()

    def clear(self) -> None:
        """Remove every point."""
        self.losses.clear()
        self.scores.clear()
        self.update()

    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def _area(self) -> QRectF:
        left, top, right, bottom = _MARGIN
        return QRectF(
            left, top, max(self.width() - left - right, 1), max(self.height() - top - bottom, 1)
        )

    def paintEvent(self, event: object) -> None:  # Qt's name
        """Draw the axes, the loss curve and the score points."""
        self.redraws += 1
        painter = QPainter(self)
        try:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            self._draw(painter)
        finally:
            painter.end()

    def _draw(self, painter: QPainter) -> None:
        area = self._area()
        text = self.palette().windowText().color()
        painter.setPen(QPen(text, 1))
        painter.drawRect(area)
        if not self.losses and not self.scores:
            painter.drawText(area, Qt.AlignmentFlag.AlignCenter, "loss and validation score")
            return
        last = max(p[0] for p in (self.losses[-1:] + self.scores[-1:]))
        x_max = max(last, 1)

        def x_of(step: float) -> float:
            return area.left() + area.width() * step / x_max

        flags = Qt.AlignmentFlag
        painter.drawText(
            QRectF(area.left(), area.bottom() + 2, area.width(), 18),
            flags.AlignRight | flags.AlignTop,
            f"step {last}",
        )
        if self.losses:
            self._draw_losses(painter, area, x_of)
        if self.scores:
            self._draw_scores(painter, area, x_of)

    def _draw_losses(self, painter: QPainter, area: QRectF, x_of) -> None:
        values = [v for _, v in self.losses]
        low, high = min(values), max(values)
        span = high - low or 1.0
        stride = max(1, len(self.losses) // max(int(area.width()), 1))
        points = self.losses[::stride] + ([self.losses[-1]] if stride > 1 else [])
        polygon = QPolygonF(
            [QPointF(x_of(s), area.bottom() - area.height() * (v - low) / span) for s, v in points]
        )
        painter.setPen(QPen(LOSS_COLOR, 1.5))
        painter.drawPolyline(polygon)
        flags = Qt.AlignmentFlag
        label = QRectF(0, area.top() - 2, area.left() - 4, 16)
        painter.drawText(label, flags.AlignRight | flags.AlignTop, _fmt(high))
        label.moveBottom(area.bottom() + 2)
        painter.drawText(label, flags.AlignRight | flags.AlignBottom, _fmt(low))
        painter.drawText(
            QRectF(area.left() + 4, area.top() + 2, 120, 16),
            flags.AlignLeft,
            f"loss {_fmt(values[-1])}",
        )

    def _draw_scores(self, painter: QPainter, area: QRectF, x_of) -> None:
        def y_of(score: float) -> float:
            return area.bottom() - area.height() * min(max(score, 0.0), 1.0)

        points = [QPointF(x_of(s), y_of(v)) for s, v in self.scores]
        painter.setPen(QPen(SCORE_COLOR, 1.5))
        painter.drawPolyline(QPolygonF(points))
        painter.setBrush(SCORE_COLOR)
        for point in points:
            painter.drawEllipse(point, 2.5, 2.5)
        flags = Qt.AlignmentFlag
        right = QRectF(area.right() + 4, area.top() - 2, _MARGIN[2] - 4, 16)
        painter.drawText(right, flags.AlignLeft | flags.AlignTop, "1")
        right.moveBottom(area.bottom() + 2)
        painter.drawText(right, flags.AlignLeft | flags.AlignBottom, "0")
        painter.drawText(
            QRectF(area.right() - 124, area.top() + 2, 120, 16),
            flags.AlignRight,
            f"validation {_fmt(self.scores[-1][1])}",
        )
