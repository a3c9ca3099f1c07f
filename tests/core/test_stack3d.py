"""Z-stacks as volumes: synthetic volumes, voxel size, linking, 3D watershed and ortho fusion."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_unet.core.analysis.metrics import match
from napari_unet.core.errors import UserError
from napari_unet.core.inference.link3d import link_planes, link_stack
from napari_unet.core.inference.postprocess import postprocess
from napari_unet.core.inference.stack3d import (
    Stack3DConfig,
    default_mode,
    instances_3d,
    predict_stack,
    resample_axis,
)
from napari_unet.core.io.reading import read_image
from napari_unet.core.io.voxels import parse_voxel_size, resolve_voxel_size
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume

SMALL = Synthetic3DConfig(shape=(16, 48, 48))


# --- synthetic volumes -----------------------------------------------------------------------


def test_volume_is_seeded_with_consecutive_3d_ids():
    image, labels = make_volume(SMALL, 3)
    again, labels_again = make_volume(SMALL, 3)
    assert image.shape == labels.shape == (16, 48, 48)
    assert image.dtype == np.float32 and labels.dtype == np.uint16
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(labels, labels_again)
    ids = np.unique(labels)[1:]
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    assert len(ids) >= 3
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):  # one piece each, over planes
        assert ndimage.label(labels[sl] == i)[1] == 1
        assert sl[0].stop - sl[0].start >= 2


def test_volume_has_touching_nuclei_and_out_of_focus_light():
    config = Synthetic3DConfig(
        shape=(16, 64, 64), clustered=0.9, coverage=0.3, photons=1e5, read_noise=0.0, texture=0.0
    )
    image, labels = make_volume(config, 0)
    # touching: two different ids are 6-neighbours somewhere
    a, b = labels[:, :, :-1], labels[:, :, 1:]
    assert np.any((a > 0) & (b > 0) & (a != b))
    # haze: just above and below the nuclei (unlabelled voxels) is brighter than far away
    fg = labels > 0
    near = ndimage.binary_dilation(fg, np.ones((5, 1, 1), bool)) & ~fg
    far = ~ndimage.binary_dilation(fg, np.ones((9, 9, 9), bool))
    assert near.any() and far.any()
    assert image[near].mean() > image[far].mean() + 0.1 * (image[fg].mean() - image[far].mean())


def test_volume_voxel_size_and_dtype():
    config = Synthetic3DConfig(shape=(4, 20, 20), z_step=3.0, pixel_size=0.2, n_objects=1)
    assert config.voxel_size == pytest.approx((0.6, 0.2, 0.2))
    image, _ = make_volume(config, 0, dtype=np.uint16)
    assert image.dtype == np.uint16
    with pytest.raises(ValueError):
        Synthetic3DConfig(shape=(10, 10))


# --- voxel size ------------------------------------------------------------------------------


def test_parse_voxel_size():
    assert parse_voxel_size("1,0.5,0.5") == (1.0, 0.5, 0.5)
    assert parse_voxel_size(" 2.5 , 0.2,0.2 ") == (2.5, 0.2, 0.2)
    for bad in ("1,2", "a,b,c", "1,0,1", "1,-1,1", "1,2,3,4", "nan,1,1"):
        with pytest.raises(UserError, match="Z,Y,X"):
            parse_voxel_size(bad)


def test_missing_z_step_assumes_isotropy_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        resolved = resolve_voxel_size((0.4, 0.4), None, name="stack.tif")
    assert resolved.size == (0.4, 0.4, 0.4) and not resolved.z_known
    assert "isotropic" in resolved.note and "stack.tif" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        known = resolve_voxel_size((0.4, 0.4), 1.2)
        given = resolve_voxel_size(None, None, given=(2.0, 0.5, 0.5))
    assert known.size == (1.2, 0.4, 0.4) and known.anisotropy == pytest.approx(3.0)
    assert given.size == (2.0, 0.5, 0.5) and given.note == "" and caplog.text == ""


def test_voxel_size_from_imagej_tiff(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 8, 8), np.uint16),
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.25),
        metadata={"axes": "ZYX", "unit": "um", "spacing": 0.75},
    )
    image = read_image(path)
    resolved = resolve_voxel_size(image.pixel_size, image.z_spacing)
    assert resolved.size == pytest.approx((0.75, 0.25, 0.25)) and resolved.z_known


def test_voxel_size_from_ome_tiff(tmp_path):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 8, 8), np.uint16),
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 0.3,
            "PhysicalSizeY": 0.3,
            "PhysicalSizeZ": 0.9,
            "PhysicalSizeZUnit": "µm",
        },
    )
    image = read_image(path)
    resolved = resolve_voxel_size(image.pixel_size, image.z_spacing)
    assert resolved.size == pytest.approx((0.9, 0.3, 0.3))


# --- resampling, linking, 3D watershed ------------------------------------------------------


def test_resample_axis_is_linear_and_aligned():
    a = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    up = resample_axis(a, 0, 9)
    np.testing.assert_allclose(up[:, 0], np.linspace(0, 4, 9))
    np.testing.assert_allclose(resample_axis(up, 0, 5), a)


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_linking_merges_planes_but_not_neighbours():
    shape = (30, 40)
    stack = np.zeros((4, *shape), np.uint16)
    next_id = 1
    for z in range(4):
        for cx in (10, 24):  # two touching discs, fresh ids in every plane
            stack[z][_disc(shape, 15, cx + 0.5 * z, 6)] = next_id
            next_id += 1
    stack[3][_disc(shape, 3, 35, 2)] = next_id  # a small new object in the last plane
    linked = link_planes(stack)
    assert linked.max() == 3
    assert len(np.unique(linked[:, 15, 10])) == 1  # left disc: one id in all planes
    assert set(np.unique(linked[:, 15, 10])) != set(np.unique(linked[:, 15, 25]))
    # no overlap threshold reached: nothing linked
    assert link_planes(stack, min_overlap=1.0).max() == next_id
    # T volumes get ids unique over T
    two = link_stack(np.stack([stack, stack]))
    assert two.shape == (2, 4, *shape) and two.max() == 6


def test_3d_watershed_separates_touching_balls():
    zz, yy, xx = np.mgrid[:20, :30, :40]
    interior = np.zeros((20, 30, 40), np.float32)
    fg = np.zeros_like(interior, dtype=bool)
    for cx in (13, 27):
        d = np.sqrt((zz - 10) ** 2 + (yy - 15) ** 2 + (xx - cx) ** 2)
        interior = np.maximum(interior, np.clip(1.0 - d / 7.0, 0, 1) * 1.5)
        fg |= d <= 7.5
    interior = np.clip(interior, 0, 1)
    probs = np.stack([~fg * 1.0, interior * fg, (1 - interior) * fg]).astype(np.float32)
    labels = instances_3d(probs, config=Stack3DConfig(seed_sigma=0.0))
    assert labels.max() == 2
    assert labels[10, 15, 10] != labels[10, 15, 30]
    assert labels.dtype == np.uint16


# --- ortho fusion with the shipped starter model ---------------------------------------------


@pytest.fixture(scope="module")
def starter():
    from napari_unet.core.network.registry import get_model

    return get_model(None)


def test_default_mode():
    assert default_mode("ZYX") == "ortho" and default_mode("TZCYX") == "ortho"
    assert default_mode("TYX") == "planes" and default_mode("YX") == "planes"


@pytest.mark.slow
def test_ortho_fusion_gives_one_id_per_nucleus(starter):
    image, truth = make_volume(SMALL, 0, dtype=np.uint16)
    run = {
        mode: drain(
            predict_stack(
                image, "ZYX", starter, mode, SMALL.voxel_size, device="cpu", precision="fp32"
            )
        )
        for mode in ("planes", "ortho")
    }
    probs, labels = run["ortho"]
    assert probs.shape == (3, 16, 48, 48) and labels.shape == (16, 48, 48)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    ortho, planes = match(labels, truth, 0.5), match(run["planes"][1], truth, 0.5)
    assert ortho.ap >= planes.ap + 0.3, (ortho.to_dict(), planes.to_dict())
    assert ortho.tp >= 0.6 * ortho.n_true
    # out-of-focus light just above and below the nuclei is labelled less than plane by plane
    fg = truth > 0
    haze = ndimage.binary_dilation(fg, np.ones((7, 1, 1), bool)) & ~fg
    haze &= ~ndimage.binary_dilation(fg, np.ones((1, 5, 5), bool))
    assert (labels > 0)[haze].mean() < 0.8 * (run["planes"][1] > 0)[haze].mean()
    # each matched nucleus is one id over all its planes
    for pred_id, true_id in zip(ortho.pred_ids, ortho.true_ids, strict=True):
        z_true = np.unique(np.nonzero(truth == true_id)[0])
        z_pred = np.unique(np.nonzero(labels == pred_id)[0])
        assert len(np.intersect1d(z_true, z_pred)) >= 0.6 * len(z_true)


def test_planes_mode_keeps_per_plane_labels(starter):
    image, _ = make_volume(Synthetic3DConfig(shape=(3, 40, 40)), 1)
    probs, labels = drain(
        predict_stack(image, "ZYX", starter, "planes", device="cpu", precision="fp32")
    )
    expected = drain(postprocess(probs, "instances"))
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.slow
def test_link_mode_and_time_series_of_volumes(starter):
    image, _ = make_volume(Synthetic3DConfig(shape=(6, 32, 32), n_objects=2), 2)
    series = np.stack([image, image])
    _, per_plane = drain(
        predict_stack(image, "ZYX", starter, "planes", device="cpu", precision="fp32")
    )
    _, linked = drain(predict_stack(image, "ZYX", starter, "link", device="cpu", precision="fp32"))
    assert 0 < linked.max() < per_plane.max()
    np.testing.assert_array_equal(linked > 0, per_plane > 0)
    probs, labels = drain(
        predict_stack(
            series, "TZYX", starter, "ortho", (2.0, 1.0, 1.0), device="cpu", precision="fp32"
        )
    )
    assert probs.shape == (3, 2, 6, 32, 32) and labels.shape == (2, 6, 32, 32)
    n = int(labels[0].max())
    assert n > 0 and set(np.unique(labels[1])[1:]) == set(range(n + 1, 2 * n + 1))


@pytest.mark.slow
def test_ortho_with_a_channel_axis_matches_without(starter):
    image, _ = make_volume(Synthetic3DConfig(shape=(5, 24, 28)), 0)
    plain = drain(predict_stack(image, "ZYX", starter, "ortho", (2.0, 1.0, 1.0), device="cpu",
                                precision="fp32"))  # fmt: skip
    channel = drain(predict_stack(image[:, None], "ZCYX", starter, "ortho", (2.0, 1.0, 1.0),
                                  device="cpu", precision="fp32"))  # fmt: skip
    np.testing.assert_allclose(channel[0], plain[0], atol=1e-6)
    np.testing.assert_array_equal(channel[1], plain[1])
