"""Training pairs from annotated Z-stacks in three orientations, and `train` on a Z-stack."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core.config import NormalizeConfig
from napari_unet.core.errors import UserError
from napari_unet.core.network.weights import read_metadata
from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume
from napari_unet.core.training.data3d import AnnotatedVolume, volume_pairs

CONFIG = Synthetic3DConfig(shape=(8, 32, 40), n_objects=6, clustered=0.7)


@pytest.fixture(scope="module")
def volume():
    return make_volume(CONFIG, 4, dtype=np.uint16)


def _pairs(image, labels, mask=None, voxel=(2.0, 1.0, 1.0)):
    item = AnnotatedVolume(image, labels, voxel, mask, name="v")
    return volume_pairs(item, 1, NormalizeConfig())


def test_pairs_in_three_orientations_resampled_to_isotropic(volume):
    image, labels = volume
    pairs = _pairs(image, labels)
    views = {p.name.split(", ")[1].split(" ")[0] for p in pairs}
    assert views == {"XY", "XZ", "YZ"}
    shapes = {p.name.split(", ")[1].split(" ")[0]: p.image.shape for p in pairs}
    n_iso = (8 - 1) * 2 + 1
    assert shapes["XY"] == (1, 32, 40)
    assert shapes["XZ"] == (1, n_iso, 40)
    assert shapes["YZ"] == (1, n_iso, 32)
    for p in pairs:
        assert p.image.dtype == np.float32 and p.labels.shape == p.image.shape[1:]
        assert p.targets.mask.all()  # fully labelled planes: everything annotated
    xz = [p for p in pairs if ", XZ" in p.name]
    assert any(p.labels.any() for p in xz)
    assert len(xz) <= 32


def test_a_3d_mask_restricts_every_orientation(volume):
    image, labels = volume
    ids, sizes = np.unique(labels[labels > 0], return_counts=True)
    reviewed = int(ids[np.argmax(sizes)])
    mask = labels == reviewed  # one reviewed nucleus
    pairs = _pairs(image, labels, mask)
    assert {p.name.split(", ")[1].split(" ")[0] for p in pairs} == {"XY", "XZ", "YZ"}
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    xy = [p for p in pairs if ", XY" in p.name]
    assert len(xy) == len(zs)
    for p in pairs:
        inside = p.targets.mask
        assert inside.any()
        # only the reviewed nucleus is annotated: no other id inside the mask
        assert set(np.unique(p.labels[inside])) <= {reviewed}
        assert inside.sum() <= (p.labels == reviewed).sum() + 1e-9
    total = sum(int(p.targets.mask.sum()) for p in xy)
    assert total == int(mask.sum())


def test_planes_without_labels_are_not_annotated(volume):
    image, labels = volume
    partial = labels.copy()
    partial[4:] = 0  # only the first four planes were reviewed
    pairs = _pairs(image, partial)
    xy = [p for p in pairs if ", XY" in p.name]
    assert len(xy) == 4
    for p in pairs:
        if ", XZ" in p.name:  # rows of the reviewed planes only (Z resampled x2)
            rows = np.flatnonzero(p.targets.mask.any(axis=1))
            assert rows.max() <= 2 * 3 + 1
    with pytest.raises(UserError):
        _pairs(image, np.zeros_like(labels))


def test_train_on_a_zstack_records_the_voxel_size(
    capsys, tmp_path, volume, isolated_models, monkeypatch
):
    image, labels = volume
    mask = np.zeros(labels.shape, np.uint8)
    mask[:, :, :20] = 1  # the left half was reviewed
    paths = {}
    for name, data in (("img", image), ("lab", labels), ("mask", mask)):
        paths[name] = tmp_path / f"{name}.tif"
        tifffile.imwrite(
            paths[name],
            data,
            imagej=True,
            resolution=(2.0, 2.0),
            metadata={"axes": "ZYX", "unit": "um", "spacing": 1.0},
        )
    out = tmp_path / "m.safetensors"
    code = main(["train", "--image", str(paths["img"]), "--labels", str(paths["lab"]),
                 "--mask", str(paths["mask"]), "-o", str(out), "--model", "scratch",
                 "--depth", "2", "--base-channels", "4", "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "32",
                 "--device", "cpu", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    meta = read_metadata(out)
    assert meta["pixel_size_um"] == pytest.approx([1.0, 0.5, 0.5])


def test_train_reads_each_image_once(capsys, tmp_path, volume, isolated_models, monkeypatch):
    from collections import Counter

    from napari_unet.core.io import reading

    image, labels = volume
    paths = {}
    for name, data, axes in (
        ("stack", image, "ZYX"), ("stack_labels", labels, "ZYX"),
        ("plane", image[3], "YX"), ("plane_labels", labels[3], "YX"),
    ):  # fmt: skip
        paths[name] = tmp_path / f"{name}.tif"
        tifffile.imwrite(paths[name], data, imagej=True, resolution=(2.0, 2.0),
                         metadata={"axes": axes, "unit": "um", "spacing": 1.0})  # fmt: skip
    reads: Counter = Counter()
    original = reading.read_image

    def counted(path, *args, **kwargs):
        reads[str(path)] += 1
        return original(path, *args, **kwargs)

    monkeypatch.setattr(reading, "read_image", counted)
    out = tmp_path / "m.safetensors"
    code = main(["train", "--image", str(paths["stack"]), "--labels", str(paths["stack_labels"]),
                 "--image", str(paths["plane"]), "--labels", str(paths["plane_labels"]),
                 "-o", str(out), "--model", "scratch", "--depth", "2", "--base-channels", "4",
                 "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1",
                 "--patch-size", "32", "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert reads[str(paths["stack"])] == 1 and reads[str(paths["plane"])] == 1
    assert read_metadata(out)["pixel_size_um"] == pytest.approx([1.0, 0.5, 0.5])


def test_random_volume_configs_span_z_steps_and_cut_into_three_orientations():
    """The starter's 3D training data: valid stacks about 32 µm deep at z steps from 1 to 4
    pixels, whose XZ and YZ planes (resampled to the XY pixel) hold annotated nuclei."""
    from napari_unet.core.synthetic.volumes import random_volume_config

    rng = np.random.default_rng(3)
    configs = [random_volume_config(rng, yx=(32, 32)) for _ in range(40)]
    steps = [c.z_step for c in configs]
    assert 1.0 <= min(steps) < 1.5 and 3.0 < max(steps) <= 4.0
    for c in configs:
        assert abs(c.shape[0] * c.z_step * c.pixel_size - 32.0) <= max(2.0, c.z_step)
        assert c.blur_z > c.blur_xy
    config = configs[0]
    image, labels = make_volume(config, rng)
    assert labels.max() > 0 and image.shape == labels.shape == config.shape
    pairs = volume_pairs(
        AnnotatedVolume(image, labels, config.voxel_size), 1, NormalizeConfig(), max_planes=4
    )
    views = {pair.name.split(", ")[1] for pair in pairs if pair.labels.any()}
    assert views == {"XY", "XZ", "YZ"}
