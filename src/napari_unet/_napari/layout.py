"""Make the napari-unet widgets fit a laptop screen (1366 x 768) side by side with the canvas.

:func:`fit_in_dock` is called once at the end of each widget's ``__init__``:

- its controls move into a vertical scroll area, so a dock can be shorter than its controls
  (the three docks share the window's height) and never makes the window taller;
- the dock asks for :data:`DOCK_WIDTH` pixels of width, and no control can force it wider: lists
  show at least :data:`COMBO_CHARS` characters of a long layer name (the whole name in the
  drop-down), message lines wrap;
- the main button and the status line can stay in view below the scroll area (``pinned``);
- once docked, the docks of the same side of the window share its height in proportion to
  what their controls need (napari would otherwise shrink the first docks to their minimum).

:func:`wrap` makes one message label wrap; :class:`Message` is a label for status lines that
also breaks long file paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from magicgui.widgets import Container, Label, Widget
from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFrame,
    QLabel,
    QMainWindow,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

#: Width (px) a dock asks for: 1366 - napari's layer list (about 340) - half the window (683).
DOCK_WIDTH = 328
#: Narrowest a dock can be made before a horizontal scroll bar appears.
MIN_WIDTH = 220
#: A dock keeps at least this much height (or its whole content, when that is less).
MIN_HEIGHT = 150
#: Characters of a layer or model name that a drop-down list shows.
COMBO_CHARS = 5

_ZWSP = "\u200b"  # zero-width space: a place where a long path may break
_FITTED = "_napari_unet_fitted"


def wrap(label: Label) -> Label:
    """Make ``label`` wrap its text to the dock's width instead of widening the dock; returns
    ``label``. The text stays selectable (to copy a path or an error)."""
    native: QLabel = label.native
    native.setWordWrap(True)
    native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    policy = QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    policy.setHeightForWidth(True)
    native.setSizePolicy(policy)
    native.setMinimumWidth(0)
    return label


def breakable(text: str) -> str:
    """``text`` with zero-width spaces after path separators and underscores, where a wrapped
    line may break (a long path is one word otherwise)."""
    for sep in ("/", "\\", "_"):
        text = text.replace(sep, sep + _ZWSP)
    return text


class Message(Label):
    """A status line: wraps (:func:`wrap`), and long paths in it break at their separators.

    ``value`` reads back exactly the text that was set.
    """

    def __init__(self, label: str = "", value: str = "", **kwargs: Any) -> None:
        super().__init__(label=label, value="", **kwargs)
        wrap(self)
        self.value = value

    @property
    def value(self) -> str:
        """The text shown."""
        return str(Label.value.fget(self)).replace(_ZWSP, "")

    @value.setter
    def value(self, text: Any) -> None:
        Label.value.fset(self, breakable(str(text)))


class _Scroll(QScrollArea):
    """A vertical scroll area whose size hint is the content's, capped to a dock's width."""

    def __init__(self, content: QWidget, width: int) -> None:
        super().__init__()
        self._width = width
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.setWidget(content)

    def _bar(self) -> int:
        # the bar's size hint can be narrower than the bar as styled: take the wider, plus the
        # frame, so that a horizontal bar never appears at the asked-for width
        bar = self.verticalScrollBar()
        return max(bar.sizeHint().width(), bar.width() if bar.isVisible() else 0, 16) + 2

    def sizeHint(self) -> QSize:
        hint = self.widget().sizeHint()
        # Qt can give the content a size hint narrower than its minimum: ask for the larger
        content = max(hint.width(), self.widget().minimumSizeHint().width())
        return QSize(min(content + self._bar(), self._width), hint.height())

    def minimumSizeHint(self) -> QSize:
        hint = self.widget().minimumSizeHint()
        width = min(hint.width() + self._bar(), MIN_WIDTH)
        return QSize(width, min(self.widget().sizeHint().height(), MIN_HEIGHT))


class _Watcher(QObject):
    """Keeps the fitted widget's lists narrow as controls are added, and shares the dock area's
    height once the widget is docked."""

    def __init__(self, outer: QWidget, content: QWidget) -> None:
        super().__init__(outer)
        self._outer = outer
        self._content = content
        outer.installEventFilter(self)
        content.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        # while a viewer closes, Qt can still deliver events after Python has cleared this
        # object's attributes: then there is nothing left to do
        content, outer = getattr(self, "_content", None), getattr(self, "_outer", None)
        if content is None or outer is None:
            return False
        kind = event.type()
        if obj is content and kind == QEvent.Type.LayoutRequest:
            narrow_lists(content)
        elif obj is outer and kind == QEvent.Type.ParentChange:
            QTimer.singleShot(0, self.share_height)
        return False

    def share_height(self) -> None:
        """Share the height of the dock area holding this widget among its docks, in
        proportion to their size hints (Qt keeps each above its minimum)."""
        dock = _dock_of(self._outer)
        if dock is None or dock.isFloating():
            return
        window = dock.parentWidget()
        if not isinstance(window, QMainWindow):
            return
        area = window.dockWidgetArea(dock)
        docks = [d for d in window.findChildren(QDockWidget)
                 if window.dockWidgetArea(d) == area and not d.isFloating()
                 and not d.isHidden()]  # fmt: skip
        if not docks:
            return
        vertical = area in (Qt.DockWidgetArea.LeftDockWidgetArea,
                            Qt.DockWidgetArea.RightDockWidgetArea)  # fmt: skip
        if vertical:
            heights = [max(d.sizeHint().height(), 1) for d in docks]
            window.resizeDocks(docks, heights, Qt.Orientation.Vertical)
            window.resizeDocks([dock], [dock.sizeHint().width()], Qt.Orientation.Horizontal)


def _dock_of(widget: QWidget) -> QDockWidget | None:
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def narrow_lists(widget: QWidget) -> None:
    """Make every drop-down list under ``widget`` as narrow as :data:`COMBO_CHARS`
    characters allow (a long layer name no longer widens the dock; the open list shows it)."""
    for combo in widget.findChildren(QComboBox):
        if combo.property(_FITTED):
            continue
        combo.setProperty(_FITTED, True)
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(COMBO_CHARS)
        combo.view().setTextElideMode(Qt.TextElideMode.ElideNone)
        combo.setSizePolicy(QSizePolicy.Policy.Expanding, combo.sizePolicy().verticalPolicy())


def fit_in_dock(
    container: Container, width: int = DOCK_WIDTH, pinned: Sequence[Widget] = ()
) -> Container:
    """Put ``container``'s controls in a vertical scroll area (see the module docstring);
    returns ``container``. Call it once, after the controls were added; widgets appended later
    go into the scroll area as well. Every :class:`~magicgui.widgets.Label` whose text is a
    message (not a row title) wraps.

    Args:
        container: the widget.
        width: the width the dock asks for.
        pinned: controls of ``container`` (the main button, the status line) kept below the
            scroll area, in this order, so that they are always in view.
    """
    outer: QWidget = container.native
    if outer.property(_FITTED):
        return container
    outer.setProperty(_FITTED, True)
    content = QWidget()
    content.setLayout(outer.layout())  # Qt moves the layout and its widgets to `content`
    margins = content.layout().contentsMargins()  # narrower sides: more room for the controls
    content.layout().setContentsMargins(4, margins.top(), 4, margins.bottom())
    layout = QVBoxLayout()
    layout.setContentsMargins(0, 0, 0, 0)
    outer.setLayout(layout)
    layout.addWidget(_Scroll(content, width))
    for widget in pinned:
        row = _row_of(widget.native, content)
        if row is not None:
            layout.addWidget(row)
    for label in _message_labels(container):
        wrap(label)
    narrow_lists(content)
    watcher = _Watcher(outer, content)
    container._dock_watcher = watcher  # type: ignore[attr-defined]  # lives as long as the widget
    QTimer.singleShot(0, watcher.share_height)
    return container


def _row_of(native: QWidget, content: QWidget) -> QWidget | None:
    """The child of ``content`` that holds ``native`` (its labelled row), or ``None``."""
    while native is not None and native.parentWidget() is not content:
        native = native.parentWidget()
    return native


def _message_labels(container: Container) -> list[Label]:
    found = []
    for widget in container:
        if isinstance(widget, Label):
            found.append(widget)
        elif isinstance(widget, Container):
            found += _message_labels(widget)
    return found
