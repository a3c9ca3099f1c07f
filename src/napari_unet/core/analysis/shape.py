"""Evidence that a predicted object is two or more objects merged into one.

Two touching nuclei that the network did not separate become one label that looks confident: its
interior probability is high and its rim is clear, so the measurements of :mod:`.objects` that
describe *how sure* the network was do not see the error. What gives a merge away is the object's
*shape* and the *structure* inside it:

- more than one strong peak of the interior probability, with a saddle between them;
- more than one maximum of the distance to the object's edge (two bodies joined by a neck);
- a low solidity (area over the area of the convex hull): the waist between the two bodies;
- a ridge of boundary probability across the interior, where the network half-saw a border;
- an area well above that of the image's typical object (measured in :mod:`.objects`).

:func:`shape_features` measures the first four per object. It works object by object on the
object's bounding box, plane by plane along the leading axes when ``spatial_ndim`` is smaller than
the number of axes (a stack labelled plane by plane); a plane-by-plane measure takes the largest
count and ridge over the planes and sums areas for the solidity. It costs about a millisecond of
CPU per object of a few hundred pixels (a Python loop over the objects), which dominates
:func:`.objects.object_features`.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import QhullError
from skimage.morphology import convex_hull_image, reconstruction

#: The columns of :func:`shape_features`.
SHAPE_FEATURES: tuple[str, ...] = ("interior_peaks", "shape_peaks", "solidity", "interior_ridge")

#: A peak of the (smoothed) interior probability counts when it rises this much above the saddle
#: that joins it to a higher peak.
PEAK_DEPTH = 0.08
#: A maximum of the distance to the edge counts when it rises this share of the object's largest
#: distance (and at least one pixel) above the saddle that joins it to a higher maximum.
SHAPE_DEPTH = 0.1
#: Pixels at least this far from the object's edge form its interior, where the ridge is measured.
RIDGE_DISTANCE = 3.0
#: Counts are capped here: beyond it more peaks say nothing new.
MAX_COUNT = 4


def _count_peaks(values: np.ndarray, mask: np.ndarray, depth: float) -> int:
    """Maxima of ``values`` inside ``mask`` that rise at least ``depth`` above their saddle.

    These are the h-maxima (h = ``depth``): a maximum counts when every path from it to a higher
    one, within the mask, descends by at least ``depth``; the highest maximum always counts.
    Computed by grey reconstruction by dilation of ``values - depth`` under ``values``.
    ``values`` float (crop), ``mask`` bool of the same shape; returns 0 for an empty mask.
    """
    if not mask.any():
        return 0
    floor = float(values[mask].min()) - 2.0 * depth - 1.0
    v = np.where(mask, values, floor).astype(np.float64)
    rec = reconstruction(v - depth, v, method="dilation")
    structure = ndi.generate_binary_structure(v.ndim, v.ndim)
    top = (v - rec >= depth - 1e-9) & mask
    _, count = ndi.label(top, structure)
    return max(int(count), 1)


def _hull_area(mask: np.ndarray) -> float:
    """Pixels of the convex hull of ``mask`` (bool, cropped to the object): the mask's own area
    when the object is flat (one pixel thick along an axis) or its hull is degenerate."""
    area = float(mask.sum())
    flat = np.squeeze(mask)
    if area < 3 or flat.ndim < 2:
        return area
    with warnings.catch_warnings():
        # collinear or coplanar pixels: scikit-image warns and returns an empty hull
        warnings.simplefilter("ignore", UserWarning)
        try:
            return max(float(convex_hull_image(flat).sum()), area)
        except (QhullError, ValueError):
            return area


def _plane_features(
    mask: np.ndarray, interior: np.ndarray, boundary: np.ndarray
) -> tuple[int, int, float, float]:
    """(interior peaks, distance peaks, hull area, ridge) of one object in one plane (or volume).

    ``mask`` bool, ``interior`` and ``boundary`` float32, all of the same (padded) crop shape.
    """
    padded = np.pad(mask, 1)
    distance = ndi.distance_transform_edt(padded)[(slice(1, -1),) * mask.ndim]
    largest = float(distance.max())
    interior_peaks = _count_peaks(interior, mask, PEAK_DEPTH)
    shape_peaks = _count_peaks(distance, mask, max(1.0, SHAPE_DEPTH * largest))
    core = distance >= min(RIDGE_DISTANCE, largest)
    ridge = float(boundary[core].max()) if core.any() else 0.0
    return interior_peaks, shape_peaks, _hull_area(mask), ridge


def shape_features(
    codes: np.ndarray,
    n: int,
    interior: np.ndarray,
    boundary: np.ndarray,
    spatial_ndim: int = 2,
) -> dict[str, np.ndarray]:
    """Merge evidence of every object.

    Args:
        codes: int64 (*S) consecutive object codes 1..n, 0 background.
        n: the number of objects.
        interior: float32 (*S) interior probability, smoothed a little (the object's seed map).
        boundary: float32 (*S) boundary probability, smoothed a little.
        spatial_ndim: 2 or 3: the last axes that form one plane (or volume).

    Returns:
        float64 (n + 1,) arrays, index 0 unused, for the names of :data:`SHAPE_FEATURES`:

        - ``interior_peaks``: number of interior-probability peaks (1 for one object, capped at
          :data:`MAX_COUNT`);
        - ``shape_peaks``: number of maxima of the distance to the edge (capped likewise);
        - ``solidity``: area / convex-hull area, 0..1;
        - ``interior_ridge``: highest boundary probability at least :data:`RIDGE_DISTANCE` pixels
          inside the object (its rim excluded).
    """
    out = {name: np.zeros(n + 1) for name in SHAPE_FEATURES}
    out["solidity"][:] = 1.0
    leading = codes.ndim - min(spatial_ndim, codes.ndim)
    for code, box in enumerate(ndi.find_objects(codes), start=1):
        if box is None:
            continue
        mask = codes[box] == code
        inner, bound = interior[box], boundary[box]
        spatial = mask.shape[leading:]
        planes = zip(
            mask.reshape(-1, *spatial),
            inner.reshape(-1, *spatial),
            bound.reshape(-1, *spatial),
            strict=True,
        )
        area = hull = 0.0
        for m, i, b in planes:
            if not m.any():
                continue
            peaks, shape_peaks, hull_area, ridge = _plane_features(m, i, b)
            out["interior_peaks"][code] = max(out["interior_peaks"][code], peaks)
            out["shape_peaks"][code] = max(out["shape_peaks"][code], shape_peaks)
            out["interior_ridge"][code] = max(out["interior_ridge"][code], ridge)
            area += float(m.sum())
            hull += hull_area
        out["solidity"][code] = area / max(hull, 1.0)
    for name in ("interior_peaks", "shape_peaks"):
        np.minimum(out[name], MAX_COUNT, out=out[name])
    return out
