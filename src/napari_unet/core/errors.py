"""Errors that describe a problem with the user's input, not a bug.

Every error meant for the user derives from :class:`UserError`; the command line turns it into one
line on stderr and exit code 2, the napari widgets into a notification.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hint:
    """What the user can change to get past an error, without the words of any one interface:
    the command line says ``use --device cpu``, a widget names its own field.

    Attributes:
        setting: the setting to change: ``"device"`` or ``"model"``.
        value: the value to choose (``"cpu"``), or ``""`` when the user must supply one (a file).
    """

    setting: str
    value: str = ""


class UserError(Exception):
    """A problem with the user's input (file, setting, model) with a message fit to show as is.

    Attributes:
        hint: what to change, for the interface to word (``None`` when the message says it all).
    """

    def __init__(self, *args: object, hint: Hint | None = None) -> None:
        super().__init__(*args)
        self.hint = hint


class ImageReadError(UserError):
    """An image file is missing, empty, corrupt or not an image."""


class ModelFileError(UserError):
    """A model file cannot be read or is not a napari-unet model."""


class ModelNotFoundError(UserError):
    """No model of that name is installed, or the path does not exist."""


class InputMismatchError(UserError):
    """Inputs that must agree do not (channels, shapes, axes)."""
