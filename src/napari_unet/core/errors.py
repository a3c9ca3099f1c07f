"""Errors that describe a problem with the user's input, not a bug.

Every error meant for the user derives from :class:`UserError`; the command line turns it into one
line on stderr and exit code 2, the napari widgets into a notification.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (file, setting, model) with a message fit to show as is."""


class ImageReadError(UserError):
    """An image file is missing, empty, corrupt or not an image."""


class ModelFileError(UserError):
    """A model file cannot be read or is not a napari-unet model."""


class ModelNotFoundError(UserError):
    """No model of that name is installed, or the path does not exist."""


class InputMismatchError(UserError):
    """Inputs that must agree do not (channels, shapes, axes)."""
