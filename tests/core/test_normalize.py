"""Percentile normalisation and the arrangement of images as planes for a 2D model."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.config import NormalizeConfig
from napari_unet.core.errors import InputMismatchError
from napari_unet.core.network import normalize
from napari_unet.core.network.normalize import (
    as_planes,
    normalize_bounds,
    normalize_plane,
    percentile_bounds,
    percentile_normalize,
)


def test_percentiles_map_to_zero_and_one_per_channel():
    ramp = np.arange(10_000, dtype=np.uint16).reshape(100, 100)
    image = np.stack([ramp, ramp // 4 + 7])  # two channels with different ranges
    out = percentile_normalize(image, low=1.0, high=99.0)
    assert out.dtype == np.float32 and out.shape == image.shape
    for c in range(2):
        lo, hi = np.percentile(image[c], (1.0, 99.0))
        expected = (image[c].astype(np.float64) - lo) / (hi - lo)
        np.testing.assert_allclose(out[c], expected, atol=1e-5)
        assert np.mean(out[c] < 0) == pytest.approx(0.01, abs=0.002)
        assert np.mean(out[c] > 1) == pytest.approx(0.01, abs=0.002)


def test_channel_axis_none_uses_one_range_for_all():
    image = np.stack([np.zeros((4, 4)), np.full((4, 4), 10.0)])
    out = percentile_normalize(image, low=0.0, high=100.0, channel_axis=None)
    np.testing.assert_allclose(out[0], 0.0)
    np.testing.assert_allclose(out[1], 1.0)
    per_channel = percentile_normalize(image, low=0.0, high=100.0, channel_axis=0)
    np.testing.assert_allclose(per_channel, 0.0)  # each channel is constant on its own


def test_nan_pixels_are_ignored_and_become_zero():
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 10.0, size=(1, 64, 64)).astype(np.float32)
    with_nan = image.copy()
    with_nan[0, :8, :8] = np.nan
    with_nan[0, 20, 20] = np.inf
    out = percentile_normalize(with_nan)
    assert np.isfinite(out).all()
    assert (out[0, :8, :8] == 0).all() and out[0, 20, 20] == 0
    valid = np.isfinite(with_nan[0])
    lo, hi = np.percentile(image[0][valid], (1.0, 99.8))
    expected = (image[0] - lo) / (hi - lo)
    np.testing.assert_allclose(out[0][valid], expected[valid], atol=1e-5)


@pytest.mark.parametrize("value", [0, 7, 65535])
def test_constant_image_gives_zeros(value):
    image = np.full((2, 10, 12), value, dtype=np.uint16)
    out = percentile_normalize(image)
    assert out.dtype == np.float32
    assert (out == 0).all()


def test_all_nan_channel_gives_zeros():
    image = np.stack([np.full((5, 5), np.nan), np.arange(25.0).reshape(5, 5)]).astype(np.float32)
    out = percentile_normalize(image, low=0.0, high=100.0)
    assert (out[0] == 0).all()
    np.testing.assert_allclose(out[1], np.arange(25.0).reshape(5, 5) / 24.0, atol=1e-6)


def test_large_images_use_a_strided_sample_close_to_the_exact_percentiles(monkeypatch):
    rng = np.random.default_rng(1)
    image = rng.gamma(2.0, 50.0, size=(1, 300, 300)).astype(np.float32)
    exact = percentile_bounds(image)
    monkeypatch.setattr(normalize, "PERCENTILE_SAMPLE_LIMIT", 10_000)
    sampled = percentile_bounds(image)
    below_low = np.mean(image < sampled[0, 0])
    below_high = np.mean(image < sampled[0, 1])
    assert below_low == pytest.approx(0.01, abs=0.003)
    assert below_high == pytest.approx(0.998, abs=0.002)
    assert not np.array_equal(sampled, exact)  # the sample was really used


def test_stack_bounds_cover_the_whole_stack_not_each_plane():
    planes = np.stack([np.full((1, 8, 8), 10.0), np.full((1, 8, 8), 20.0)]).astype(np.float32)
    planes[0, 0, 0, 0] = 0.0
    bounds = normalize_bounds(planes, NormalizeConfig(low=0.0, high=100.0))
    np.testing.assert_allclose(bounds, [[0.0, 20.0]])
    np.testing.assert_allclose(normalize_plane(planes[1], bounds), 1.0)
    np.testing.assert_allclose(normalize_plane(planes[0], bounds)[0, 1, 1], 0.5)


def test_method_none_keeps_intensities_as_float32():
    plane = np.array([[[1, 2], [3, 65535]]], dtype=np.uint16)
    bounds = normalize_bounds(plane[np.newaxis], NormalizeConfig(method="none"))
    out = normalize_plane(plane, bounds)
    assert bounds is None and out.dtype == np.float32
    np.testing.assert_array_equal(out, plane.astype(np.float32))


def test_normalize_config_rejects_bad_values():
    with pytest.raises(ValueError):
        NormalizeConfig(low=50.0, high=10.0)
    with pytest.raises(ValueError):
        NormalizeConfig(method="zscore")


# --- as_planes -----------------------------------------------------------------------------------


def _labelled(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape)


def test_yx_is_one_plane_with_one_channel():
    data = _labelled((5, 7))
    planes, leading, out_axes = as_planes(data, "YX", 1)
    assert planes.shape == (1, 1, 5, 7) and leading == () and out_axes == "YX"
    np.testing.assert_array_equal(planes[0, 0], data)


def test_zyx_gives_one_plane_per_z():
    data = _labelled((3, 5, 7))
    planes, leading, out_axes = as_planes(data, "ZYX", 1)
    assert planes.shape == (3, 1, 5, 7) and leading == (3,) and out_axes == "ZYX"
    np.testing.assert_array_equal(planes[2, 0], data[2])


def test_tzyx_flattens_time_and_z_in_order():
    data = _labelled((2, 3, 5, 7))
    planes, leading, out_axes = as_planes(data, "TZYX", 1)
    assert planes.shape == (6, 1, 5, 7) and leading == (2, 3) and out_axes == "TZYX"
    np.testing.assert_array_equal(planes[4, 0], data[1, 1])
    assert np.shares_memory(planes, data)  # no copy of a big stack


def test_tzcyx_keeps_channels_per_plane():
    data = _labelled((2, 3, 2, 5, 7))
    planes, leading, out_axes = as_planes(data, "TZCYX", 2)
    assert planes.shape == (6, 2, 5, 7) and leading == (2, 3) and out_axes == "TZYX"
    np.testing.assert_array_equal(planes[5, 1], data[1, 2, 1])


def test_channel_axis_anywhere_is_moved():
    data = _labelled((2, 3, 5, 7))  # C, Z, Y, X
    planes, leading, out_axes = as_planes(data, "CZYX", 2)
    assert planes.shape == (3, 2, 5, 7) and leading == (3,) and out_axes == "ZYX"
    np.testing.assert_array_equal(planes[1, 0], data[0, 1])
    np.testing.assert_array_equal(planes[1, 1], data[1, 1])


def test_rgb_becomes_gray_for_a_one_channel_model():
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 100
    rgb[..., 1] = 200
    rgb[..., 2] = 50
    planes, leading, out_axes = as_planes(rgb, "YXS", 1)
    assert planes.shape == (1, 1, 4, 6) and leading == () and out_axes == "YX"
    expected = 0.2125 * 100 + 0.7154 * 200 + 0.0721 * 50
    np.testing.assert_allclose(planes[0, 0], expected, rtol=1e-6)


def test_rgb_is_kept_for_a_three_channel_model_and_alpha_dropped():
    rgba = _labelled((4, 6, 4))
    planes, _, _ = as_planes(rgba, "YXS", 3)
    assert planes.shape == (1, 3, 4, 6)
    for c in range(3):
        np.testing.assert_array_equal(planes[0, c], rgba[..., c])


def test_rgb_stack_keeps_z():
    data = _labelled((2, 4, 6, 3))
    planes, leading, out_axes = as_planes(data, "ZYXS", 3)
    assert planes.shape == (2, 3, 4, 6) and leading == (2,) and out_axes == "ZYX"


@pytest.mark.parametrize(
    ("shape", "axes", "in_channels", "fragment"),
    [
        ((2, 5, 7), "CYX", 1, "2 channels"),
        ((5, 7), "YX", 3, "1 channel "),
        ((3, 5, 7), "CYX", 1, "3 channels"),  # three fluorescence channels are not RGB
        ((5, 7, 3), "YXS", 2, "3 channels"),
    ],
)
def test_channel_mismatch_is_a_clear_error(shape, axes, in_channels, fragment):
    with pytest.raises(InputMismatchError) as info:
        as_planes(np.zeros(shape, dtype=np.uint8), axes, in_channels)
    message = str(info.value)
    assert fragment in message and f"expects {in_channels}" in message and axes in message


@pytest.mark.parametrize(("shape", "axes"), [((5, 7), "ZYX"), ((2, 5, 7), "ZZX"), ((2, 5), "CY")])
def test_axes_that_do_not_fit_are_an_error(shape, axes):
    with pytest.raises(InputMismatchError):
        as_planes(np.zeros(shape), axes, 1)
