"""Training a native 3D network: 3D targets, 3D augmentation that keeps image and labels
aligned, 3D patches, and a few real training steps that run, lower the loss and save a 3D model
file with its voxel size."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_unet.core.config import ModelConfig
from napari_unet.core.errors import UserError
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.volumes import Synthetic3DConfig, make_volume
from napari_unet.core.training.augment import AugmentConfig
from napari_unet.core.training.augment3d import augment_volume_batch, sampling_grid_3d
from napari_unet.core.training.data3d import AnnotatedVolume
from napari_unet.core.training.patches3d import (
    VolumeSampler,
    patch_depth,
    split_volume_validation,
    volume_training_pairs,
)
from napari_unet.core.training.settings import TrainConfig
from napari_unet.core.training.targets import BOUNDARY, INTERIOR, TargetConfig
from napari_unet.core.training.targets3d import instance_classes_3d, instance_targets_3d
from napari_unet.core.training.train import train

TINY = ModelConfig(depth=1, base_channels=4, spatial_dims=3)


def _two_boxes() -> np.ndarray:
    labels = np.zeros((8, 16, 16), np.uint16)
    labels[2:6, 2:8, 2:8] = 1
    labels[2:6, 2:8, 8:14] = 2  # touching object 1 along X
    return labels


def test_3d_classes_have_boundaries_in_every_axis():
    classes = instance_classes_3d(_two_boxes())
    assert classes[4, 5, 4] == INTERIOR
    assert classes[2, 5, 4] == BOUNDARY and classes[5, 5, 4] == BOUNDARY  # top, bottom plane
    assert classes[4, 5, 7] == BOUNDARY and classes[4, 5, 8] == BOUNDARY  # the shared face
    assert classes[0, 0, 0] == 0


def test_3d_weights_peak_between_objects_and_vanish_outside_the_mask():
    labels = np.zeros((8, 16, 24), np.uint16)
    labels[2:6, 4:12, 2:10] = 1
    labels[2:6, 4:12, 12:20] = 2  # a 2 px gap along X
    mask = np.ones(labels.shape, bool)
    mask[:, :, :1] = False
    targets = instance_targets_3d(labels, TargetConfig(), mask, anisotropy=2.0)
    gap, far = targets.weights[4, 8, 10], targets.weights[4, 8, 0 + 1]
    assert gap > far + 5  # the border term, about w0, in the gap
    assert (targets.weights[~mask] == 0).all()
    assert targets.classes.shape == targets.weights.shape == labels.shape


def test_augmented_labels_stay_on_the_augmented_image():
    """Image = label value, deformed elastically with flips and rotations: wherever the deformed
    labels are constant around a voxel, the (trilinear) image there equals that label."""
    labels = np.zeros((16, 32, 32), np.int64)
    labels[2:14, 2:16, 2:16] = 1
    labels[2:14, 16:30, 4:28] = 2
    labels[4:10, 6:12, 18:30] = 3
    image = torch.from_numpy(labels.astype(np.float32))[None, None].repeat(3, 1, 1, 1, 1)
    classes = torch.from_numpy(labels)[None].repeat(3, 1, 1, 1)
    config = AugmentConfig(elastic_std=4.0, gain=0, offset=0, gamma=0, noise_std=0)
    out = augment_volume_batch(
        image, classes, config=config, generator=torch.Generator().manual_seed(0), anisotropy=2.0
    )
    moved = False
    for b in range(3):
        lab = out.classes[b].numpy()
        img = out.images[b, 0].numpy()
        flat = ndi.maximum_filter(lab, 5) == ndi.minimum_filter(lab, 5, mode="constant", cval=-1)
        inside = flat & out.mask[b].numpy()
        assert inside.sum() > 1000
        np.testing.assert_allclose(img[inside], lab[inside], atol=1e-4)
        moved |= not np.array_equal(lab, labels)
    assert moved


def test_flips_and_rot90_are_exact_permutations():
    config = AugmentConfig(elastic=False, rotation=0, scale_min=1, scale_max=1, gain=0,
                           offset=0, gamma=0, noise_std=0)  # fmt: skip
    volume = torch.arange(4 * 6 * 6, dtype=torch.float32).reshape(1, 1, 4, 6, 6)
    out = augment_volume_batch(volume, config=config, generator=torch.Generator().manual_seed(3))
    assert sorted(out.images.flatten().tolist()) == volume.flatten().tolist()
    assert bool(out.mask.all())
    grid = sampling_grid_3d(2, (4, 6, 6), config, torch.Generator().manual_seed(0))
    assert grid.shape == (2, 4, 6, 6, 3)


def _volumes(n: int, seed: int = 0):
    cfg = Synthetic3DConfig(shape=(16, 32, 32), n_objects=4, z_step=1.0, pixel_size=0.5)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, labels = make_volume(cfg, rng)
        yield AnnotatedVolume(image, labels, cfg.voxel_size, name=f"v{i}")


def test_patches_and_validation_blocks():
    pairs = volume_training_pairs(_volumes(2), None, TINY)
    assert pairs[0].image.shape == (1, 16, 32, 32) and pairs[0].image.dtype == np.float32
    assert patch_depth(64, 2.0, 4) == 32 and patch_depth(16, 8.0, 4) == 4
    sampler = VolumeSampler(pairs, (8, 48, 24), np.random.default_rng(0))
    batch = sampler.sample(3)
    assert batch.images.shape == (3, 1, 8, 48, 24) and batch.classes.shape == (3, 8, 48, 24)
    assert not batch.mask[:, :, 32:].any()  # mirror padding is not annotated
    training, crops = split_volume_validation(pairs, 0.3, np.random.default_rng(0), block=16)
    assert crops and crops[0].image.ndim == 4 and crops[0].mask.any()
    held = sum(int(c.mask.sum()) for c in crops)
    assert sum(p.annotated_pixels for p in training) + held == sum(
        p.annotated_pixels for p in pairs
    )


def test_a_few_3d_training_steps_lower_the_loss_and_save(tmp_path):
    torch.manual_seed(0)
    pairs = volume_training_pairs(_volumes(2), None, TINY)
    config = TrainConfig(epochs=2, steps_per_epoch=6, batch_size=2, patch_size=16,
                         learning_rate=3e-3, warmup_steps=1, val_fraction=0.3,
                         validation_block=16, cpu_bf16=False)  # fmt: skip
    losses, validations = [], []
    for event in _events(train(pairs, tmp_path / "m3d", config=config, device="cpu",
                               model_config=TINY, pixel_size=(0.5, 0.5, 0.5))):  # fmt: skip
        if event.payload.kind == "step":
            losses.append(event.payload.loss)
        if event.payload.kind == "validation":
            validations.append(event.payload.metrics)
    assert len(losses) == 12 and np.mean(losses[-3:]) < losses[0]
    assert validations and "ap_50" in validations[-1]
    from napari_unet.core.network.weights import load_model_file

    model = load_model_file(tmp_path / "m3d.safetensors")
    assert model.spatial_dims == 3 and model.voxel_size == (0.5, 0.5, 0.5)


def _events(gen):
    events = []
    drain(gen, events.append)
    return events


def test_3d_model_refuses_planes_and_2d_model_refuses_volumes(tmp_path):
    from napari_unet.core.config import NormalizeConfig
    from napari_unet.core.training.data import make_pairs

    planes = make_pairs(np.ones((16, 16), np.float32), np.eye(16, dtype=np.uint8), "YX", 1,
                        NormalizeConfig())  # fmt: skip
    with pytest.raises(UserError, match="3D model trains on Z-stacks"):
        drain(train(planes, tmp_path / "a", model_config=TINY, device="cpu"))
    volumes = volume_training_pairs(_volumes(1), None, TINY)
    with pytest.raises(UserError, match="need a native 3D model"):
        drain(train(volumes, tmp_path / "b", model_config=ModelConfig(depth=1), device="cpu"))
