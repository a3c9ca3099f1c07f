"""The napari layer: reader, writer, sample data and the Segment, Fine-tune and Export widgets.

Modules here may import napari, magicgui and qtpy; heavy imports (torch) stay inside functions so
that napari starts fast. All the work is done by :mod:`napari_unet.core`.
"""
