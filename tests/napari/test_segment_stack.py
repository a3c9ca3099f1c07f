"""Segment on a Z-stack: one 3D Labels layer with the image's scale, 3D ids, re-thresholding."""

from __future__ import annotations

import numpy as np

from napari_unet.core.inference.stack3d import predict_stack
from napari_unet.core.network.registry import get_model
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume

TIMEOUT = 120_000
CONFIG = Synthetic3DConfig(shape=(10, 40, 40))


def test_segment_fills_a_3d_labels_layer_in_the_image_scale(segment, qtbot):
    viewer, widget = segment
    image, _ = make_volume(CONFIG, 0, dtype=np.uint16)
    viewer.add_image(image, name="nuclei", scale=(1.5, 0.5, 0.5),
                     metadata={"axes": "ZYX"})  # fmt: skip
    widget.scope.value = "whole stack"
    widget.precision.value = "fp32"
    widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
    labels = viewer.layers["nuclei labels [starter]"]
    assert labels.data.shape == image.shape
    np.testing.assert_allclose(labels.scale, (1.5, 0.5, 0.5))
    _, expected = drain(predict_stack(image, "ZYX", get_model("starter"), "ortho",
                                      (1.5, 0.5, 0.5), device="cpu", precision="fp32"))  # fmt: skip
    np.testing.assert_array_equal(labels.data, expected)
    n = int(expected.max())
    assert n > 0 and f"{n} object" in widget.status.value and "(3D)" in widget.status.value
    # ids span planes: some object is in more than one plane
    assert any(len(np.unique(np.nonzero(labels.data == i)[0])) > 1 for i in range(1, n + 1))

    widget.min_size.value = widget.min_size.value + 1  # re-thresholding stays 3D
    qtbot.waitUntil(lambda: "thresholds applied" in widget.status.value, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
    after = viewer.layers["nuclei labels [starter]"].data
    assert after.shape == image.shape and 0 < after.max() <= n + 2


def test_a_stack_without_z_step_says_isotropy_is_assumed(segment, qtbot):
    from napari.utils.notifications import notification_manager

    viewer, widget = segment
    image, _ = make_volume(Synthetic3DConfig(shape=(4, 32, 32)), 1, dtype=np.uint16)
    viewer.add_image(image, name="plain")  # 3D without metadata: a Z-stack
    widget.precision.value = "fp32"
    widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
    assert any("isotropic" in str(n.message) for n in notification_manager.records)
    assert viewer.layers["plain labels [starter]"].data.shape == image.shape


def test_export_writes_the_3d_labels_of_segment_as_zyx_with_the_voxel_size(
    segment, qtbot, tmp_path
):
    import tifffile

    viewer, widget = segment
    image, _ = make_volume(CONFIG, 2, dtype=np.uint16)
    source = tmp_path / "nuclei.tif"  # an ImageJ stack of 1.5 x 0.5 x 0.5 µm voxels, as read
    tifffile.imwrite(source, image, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 1.5})  # fmt: skip
    viewer.open(str(source), plugin="napari-unet")
    widget.precision.value = "fp32"
    widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
    labels = viewer.layers["nuclei labels [starter]"]
    n = int(labels.data.max())
    assert n > 0 and f"{n} object" in widget.status.value and "(3D)" in widget.status.value

    _, export = viewer.window.add_plugin_dock_widget("napari-unet", "Export")
    out = tmp_path / "out"
    out.mkdir()
    export.folder.value, export.labels_layer.value = out, labels
    for dtype in ("auto", "uint32"):  # an ImageJ hyperstack, and the hand-written uint32 one
        export.dtype.value, export.overwrite.value = dtype, True
        (written,) = export.export()
        with tifffile.TiffFile(written) as tif:
            assert tif.series[0].axes == "ZYX" and tif.is_imagej
            assert tif.imagej_metadata["spacing"] == 1.5
            assert tif.imagej_metadata["unit"] in ("um", "micron")
            x_resolution = tif.pages.first.tags["XResolution"].value
            assert x_resolution[0] / x_resolution[1] == 2.0  # pixels per µm
            np.testing.assert_array_equal(tif.asarray(), labels.data)
            assert tif.asarray().dtype == (np.uint16 if dtype == "auto" else np.uint32)
