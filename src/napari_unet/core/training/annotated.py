"""What counts as annotated when the user reviewed only some objects.

A user corrects a few objects of a model's output (paints, erases, fills, relabels, deletes) and
accepts others as they are. Only those count for training: the objects reviewed, the pixels
changed (a deleted object's area is reviewed background, a painted area is reviewed), and a margin
of background around them so that the network learns where objects end. The margin never takes in
pixels of an object that was not reviewed: an untouched object is the model's own guess, and
training on it would teach the model its own mistakes.

In a Z-stack's 3D labels an id is one object across planes: :func:`reviewed_volume_mask` takes a
corrected object in every plane it spans, with a 3D margin (in Z scaled by the voxel size).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

#: Background margin around reviewed objects and edited pixels, in pixels.
REVIEW_MARGIN = 8


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def _grow(seed: np.ndarray, margin: int) -> np.ndarray:
    """``seed`` (H, W) bool dilated by a disk of radius ``margin``, computed on its bounding box."""
    from scipy.ndimage import binary_dilation

    if margin <= 0 or not seed.any():
        return seed.copy()
    ys, xs = np.nonzero(seed)
    h, w = seed.shape
    box = (
        slice(max(ys.min() - margin, 0), min(ys.max() + margin + 1, h)),
        slice(max(xs.min() - margin, 0), min(xs.max() + margin + 1, w)),
    )
    grown = np.zeros_like(seed)
    grown[box] = binary_dilation(seed[box], structure=_disk(margin))
    return grown


def reviewed_mask(
    labels: np.ndarray,
    edited: Mapping[int, np.ndarray],
    touched: Iterable[int],
    accepted: Iterable[int],
    margin: int = REVIEW_MARGIN,
) -> np.ndarray:
    """The pixels of ``labels`` that the user reviewed.

    Per 2D plane: the objects accepted (in every plane), the objects whose pixels were changed
    (in the planes where something was changed), every changed pixel, and the background (label
    0) within ``margin`` pixels of these.

    Args:
        labels: integer (*leading, H, W) labels as they are now.
        edited: ``{plane: bool (H, W)}``, the changed pixels of each plane, planes numbered in C
            order over the leading axes (a 2D image has plane 0).
        touched: ids of the objects whose pixels were changed (before or after the change).
        accepted: ids of the objects accepted as they are.
        margin: background margin in pixels.

    Returns:
        bool array, the shape of ``labels``.
    """
    labels = np.asarray(labels)
    planes = labels.reshape(-1, *labels.shape[-2:])
    touched_ids = np.fromiter({int(i) for i in touched} - {0}, dtype=np.int64)
    accepted_ids = np.fromiter({int(i) for i in accepted} - {0}, dtype=np.int64)
    mask = np.zeros(planes.shape, dtype=bool)
    for k, plane in enumerate(planes):
        changed = edited.get(k)
        ids = accepted_ids if changed is None else np.union1d(accepted_ids, touched_ids)
        seed = np.isin(plane, ids) if ids.size else np.zeros(plane.shape, bool)
        if changed is not None:
            seed |= np.asarray(changed, dtype=bool)
        if seed.any():
            mask[k] = seed | (_grow(seed, margin) & (plane == 0))
    return mask.reshape(labels.shape)


def reviewed_objects(labels: np.ndarray, mask: np.ndarray) -> int:
    """How many objects of ``labels`` lie (at least partly) in ``mask``."""
    values = np.unique(np.asarray(labels)[np.asarray(mask, dtype=bool)])
    return int(np.count_nonzero(values))


def _ball(margin: tuple[int, int, int]) -> np.ndarray:
    """An ellipsoid (2 mz + 1, 2 my + 1, 2 mx + 1) bool structuring element of semi-axes
    ``margin`` (an axis of 0 is one voxel thick)."""
    axes = [np.arange(-m, m + 1) / (m + 0.5) for m in margin]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return z * z + y * y + x * x <= 1.0


def _grow_volume(seed: np.ndarray, margin: tuple[int, int, int]) -> np.ndarray:
    """``seed`` (Z, Y, X) bool dilated by an ellipsoid of semi-axes ``margin`` voxels, one
    connected piece of the seed at a time on its own bounding box (a few reviewed nuclei in a
    large stack cost only their surroundings)."""
    from scipy.ndimage import binary_dilation, find_objects, label

    if not any(margin) or not seed.any():
        return seed.copy()
    structure = _ball(margin)
    pieces, _ = label(seed)
    grown = np.zeros_like(seed)
    for k, box in enumerate(find_objects(pieces), start=1):
        if box is None:
            continue
        outer = tuple(
            slice(max(s.start - m, 0), min(s.stop + m, n))
            for s, m, n in zip(box, margin, seed.shape, strict=True)
        )
        grown[outer] |= binary_dilation(pieces[outer] == k, structure=structure)
    return grown


def reviewed_volume_mask(
    labels: np.ndarray,
    edited: Mapping[int, np.ndarray],
    touched: Iterable[int],
    accepted: Iterable[int],
    margin: int = REVIEW_MARGIN,
    anisotropy: float = 1.0,
) -> np.ndarray:
    """The voxels of a Z-stack's 3D labels that the user reviewed.

    In a volume an id is one object across planes, so an object whose voxels were changed in
    any plane counts in every plane it spans (correcting a nucleus in 3D reviews all of it), as
    do the accepted objects and every changed voxel; background (label 0) within ``margin``
    pixels in XY and ``margin / anisotropy`` planes in Z of these is added.

    Args:
        labels: integer (Z, Y, X) labels as they are now, one id per object across planes.
        edited: ``{z: bool (Y, X)}``, the changed pixels of each Z plane.
        touched: ids of the objects whose voxels were changed (before or after the change).
        accepted: ids of the objects accepted as they are.
        margin: background margin in XY pixels.
        anisotropy: Z step over the XY pixel size.

    Returns:
        bool (Z, Y, X), the shape of ``labels``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"3D labels (Z, Y, X) expected, got shape {labels.shape}")
    ids = np.fromiter(({int(i) for i in touched} | {int(i) for i in accepted}) - {0}, np.int64)
    seed = np.isin(labels, ids) if ids.size else np.zeros(labels.shape, bool)
    for z, changed in edited.items():
        if 0 <= int(z) < labels.shape[0]:
            seed[int(z)] |= np.asarray(changed, dtype=bool)
    margin_z = round(margin / max(float(anisotropy), 1e-6))
    grown = _grow_volume(seed, (min(margin_z, labels.shape[0]), margin, margin))
    return seed | (grown & (labels == 0))
