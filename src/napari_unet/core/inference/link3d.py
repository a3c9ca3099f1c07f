"""Linking per-plane labels across Z into 3D objects, by overlap.

The cheap way to 3D ids for large stacks: each plane is labelled on its own (one network pass per
plane), then an object in plane z and one in plane z + 1 become the same 3D object when each is
the other's best match and their overlap (the shared pixels as a fraction of the smaller of the
two, so that the small caps at a nucleus's top and bottom still link) reaches a threshold.
Mutual best matches keep a nucleus from swallowing its neighbour through one merged plane.
"""

from __future__ import annotations

import numpy as np

from ..labels import labels_dtype, stack_ids


def _plane_links(a: np.ndarray, b: np.ndarray, min_overlap: float) -> np.ndarray:
    """Mutual best matches between the ids of two planes.

    Args:
        a, b: integer labels (Y, X) of neighbouring planes (ids unique across the stack).
        min_overlap: the least overlap of a link (shared pixels over the smaller area).

    Returns:
        int64 (L, 2): pairs (id in a, id in b).
    """
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    pa, pb = a[both].astype(np.int64), b[both].astype(np.int64)
    pairs, inter = np.unique(np.stack([pa, pb], 1), axis=0, return_counts=True)
    ids_a, area_a = np.unique(a[a > 0], return_counts=True)
    ids_b, area_b = np.unique(b[b > 0], return_counts=True)
    smaller = np.minimum(
        area_a[np.searchsorted(ids_a, pairs[:, 0])], area_b[np.searchsorted(ids_b, pairs[:, 1])]
    )
    iou = inter / smaller  # overlap as a fraction of the smaller object
    order = np.argsort(-iou, kind="stable")
    pairs, iou = pairs[order], iou[order]
    # First occurrence in descending overlap is each id's best match.
    best_a = np.unique(pairs[:, 0], return_index=True)[1]
    best_b = np.unique(pairs[:, 1], return_index=True)[1]
    mutual = np.intersect1d(best_a, best_b)
    mutual = mutual[iou[mutual] >= min_overlap]
    return pairs[mutual]


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


def link_planes(labels: np.ndarray, min_overlap: float = 0.5) -> np.ndarray:
    """3D ids for a (Z, Y, X) stack of per-plane labels.

    Args:
        labels: integer (Z, Y, X) labels with ids unique across the stack (as
            :func:`~.postprocess.postprocess` gives them); 0 is background.
        min_overlap: the least overlap (shared pixels over the smaller object's area) that links
            two objects of neighbouring planes.

    Returns:
        (Z, Y, X) labels, one id per linked chain, ids 1..N in order of first appearance,
        uint16 when N fits, else uint32.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected labels (Z, Y, X), got shape {labels.shape}")
    n_ids = int(labels.max()) if labels.size else 0
    parent = np.arange(n_ids + 1, dtype=np.int64)
    for z in range(labels.shape[0] - 1):
        for i, j in _plane_links(labels[z], labels[z + 1], min_overlap):
            ri, rj = _find(parent, int(i)), _find(parent, int(j))
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([_find(parent, i) for i in range(n_ids + 1)], np.int64)
    present = np.zeros(n_ids + 1, bool)
    present[np.unique(labels)] = True
    present[0] = False
    root_ids = np.unique(roots[present])
    lut = np.zeros(n_ids + 1, np.int64)
    lut[present] = np.searchsorted(root_ids, roots[present]) + 1
    return lut[labels].astype(labels_dtype(len(root_ids)))


def link_stack(labels: np.ndarray, min_overlap: float = 0.5) -> np.ndarray:
    """:func:`link_planes` for each volume of (T?, Z, Y, X) labels; ids unique over T."""
    volumes = labels.reshape(-1, *labels.shape[-3:])
    return stack_ids(link_planes(volume, min_overlap) for volume in volumes).reshape(labels.shape)
