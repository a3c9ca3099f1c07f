"""The one image layout: leading (plane) axes, channel, spatial and label axes on real shapes."""

import numpy as np
import pytest

from napari_unet.core.axes import CHANNEL_AXES, Layout, label_dims
from napari_unet.core.errors import InputMismatchError


def test_a_2d_image_is_one_plane():
    layout = Layout("yx", (64, 48))
    assert layout.axes == "YX" and layout.channel is None and layout.n_channels == 1
    assert layout.leading_axes == "" and layout.leading_shape == () and layout.n_planes == 1
    assert layout.label_axes == "YX" and layout.label_shape == (64, 48)
    assert layout.leading_index(0) == () and layout.plane_number(()) == 0
    planes = layout.planes(np.arange(64 * 48).reshape(64, 48))
    assert planes.shape == (1, 1, 64, 48)


def test_rgb_samples_are_the_channel_axis():
    data = np.zeros((20, 30, 3), np.uint8)
    data[..., 1] = 7
    layout = Layout("YXS", data.shape)
    assert layout.channel == "S" and layout.n_channels == 3 and "S" in CHANNEL_AXES
    assert layout.label_axes == "YX" and layout.label_shape == (20, 30)
    assert layout.layer_dims == "YX" and layout.plane_axes == "SYX"
    planes = layout.planes(data)
    assert planes.shape == (1, 3, 20, 30) and (planes[0, 1] == 7).all()


def test_channels_first():
    data = np.arange(2 * 5 * 6).reshape(2, 5, 6)
    layout = Layout("CYX", data.shape)
    assert layout.channel == "C" and layout.n_channels == 2 and layout.label_shape == (5, 6)
    np.testing.assert_array_equal(layout.planes(data)[0], data)
    assert label_dims("CYX") == [1, 2] and label_dims("ZCYX") == [0, 2, 3]


def test_time_lapse_of_stacks_numbers_planes_row_major():
    data = np.arange(3 * 4 * 5 * 6).reshape(3, 4, 5, 6)
    layout = Layout("TZYX", data.shape)
    assert layout.leading_axes == "TZ" and layout.leading_shape == (3, 4)
    assert layout.n_planes == 12 and layout.label_shape == (3, 4, 5, 6)
    assert layout.leading_index(7) == (1, 3) and layout.plane_number((1, 3)) == 7
    assert all(layout.plane_number(layout.leading_index(n)) == n for n in range(12))
    planes = layout.planes(data)
    np.testing.assert_array_equal(planes[7, 0], data[1, 3])
    assert layout.key((1, 3)) == (1, 3, slice(None), slice(None))
    np.testing.assert_array_equal(data[layout.key((2, 0))], data[2, 0])


def test_channels_between_plane_axes():
    data = np.random.default_rng(0).random((2, 3, 4, 8, 9))
    layout = Layout("TZCYX", data.shape)
    assert layout.leading_axes == "TZ" and layout.n_planes == 6 and layout.n_channels == 4
    assert layout.label_axes == "TZYX" and layout.label_shape == (2, 3, 8, 9)
    assert layout.order == (0, 1, 2, 3, 4)
    planes = layout.planes(data)
    assert planes.shape == (6, 4, 8, 9)
    np.testing.assert_array_equal(planes[layout.plane_number((1, 2))], data[1, 2])
    assert layout.without("TZ").axes == "CYX" and layout.without("TZ").shape == (4, 8, 9)


def test_channel_first_before_planes_moves_behind_them():
    data = np.random.default_rng(1).random((2, 3, 8, 9))
    layout = Layout("CZYX", data.shape)
    assert layout.order == (1, 0, 2, 3) and layout.label_axes == "ZYX"
    np.testing.assert_array_equal(layout.planes(data)[2], data[:, 2])


def test_volume_mode_keeps_z_in_the_plane():
    data = np.zeros((2, 5, 3, 8, 9))
    layout = Layout("TZCYX", data.shape, volume=True)
    assert layout.spatial == "ZYX" and layout.leading_axes == "T" and layout.n_planes == 2
    assert layout.plane_shape == (5, 8, 9) and layout.label_shape == (2, 5, 8, 9)
    assert layout.plane_axes == "CZYX" and layout.planes(data).shape == (2, 3, 5, 8, 9)
    assert Layout("TYX", (2, 8, 9), volume=True).spatial == "YX"  # no Z: planes as before


def test_position_on_layer_dims_to_plane():
    layout = Layout("ZYXS", (4, 8, 9, 3))  # three layer dimensions: Z, Y, X
    assert layout.leading_at((2.4, 0, 0)) == (2,)
    assert layout.leading_at((9.0, 0, 0)) is None
    assert layout.leading_at((9.0, 0, 0), clip=True) == (3,)
    assert layout.leading_at((-2.0, 0, 0), clip=True) == (0,)
    assert Layout("TCYX", (2, 3, 4, 5)).leading_at((1.2, 2.0, 0, 0)) == (1,)


@pytest.mark.parametrize(
    ("axes", "shape", "message"),
    [
        ("ZYX", (8, 9), "do not fit"),
        ("YYX", (2, 8, 9), "more than once"),
        ("ZX", (2, 9), "lack Y or X"),
        ("CYXS", (2, 8, 9, 3), "both channels"),
    ],
)
def test_axes_that_do_not_fit_are_refused(axes, shape, message):
    with pytest.raises(InputMismatchError, match=message):
        Layout(axes, shape)


def test_planes_refuse_an_array_of_another_shape():
    with pytest.raises(InputMismatchError, match="shape"):
        Layout("YX", (4, 4)).planes(np.zeros((4, 5)))
