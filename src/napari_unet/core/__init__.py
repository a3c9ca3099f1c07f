"""The Qt-free, napari-free engine of napari-unet.

Modules here depend on numpy, torch, scikit-image and tifffile only; they never import Qt or
napari (a test checks it). Long work is written as generators of :class:`~.progress.Progress`
events that return their result.
"""
