"""napari-unet: U-Net segmentation and fine-tuning for microscopy, in napari and from the shell.

Importing this package pulls in neither torch nor Qt; the engine lives in :mod:`napari_unet.core`.
"""

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("napari-unet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
