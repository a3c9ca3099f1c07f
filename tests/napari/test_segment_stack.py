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
