"""Time the training targets (classes + border weight map) against the exact reference.

Usage: ``python benchmarks/targets.py [--repeats N] [--no-exact]``

Label images are packed cells: random seeds, each pixel given to its nearest seed when within the
seed's radius, so many cells touch and others are separated by thin gaps. For each case the table
gives the median time of :func:`instance_targets` (fast: distances per object inside its bounding
box plus a margin), of :func:`exact_weight_map` (one distance transform per object over the whole
image) and the largest absolute difference between the two weight maps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy import ndimage as ndi

from napari_unet.core.targets import TargetConfig, exact_weight_map, instance_targets

CASES = [(256, 40), (512, 150), (1024, 600)]


def packed_cells(size: int, n_objects: int, seed: int = 0) -> np.ndarray:
    """(size, size) uint16 labels with ``n_objects`` packed, partly touching cells."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), bool)
    ys = rng.integers(0, size, n_objects)
    xs = rng.integers(0, size, n_objects)
    seeds[ys, xs] = True
    dist, (iy, ix) = ndi.distance_transform_edt(~seeds, return_indices=True)
    ids = np.zeros((size, size), np.uint16)
    ids[ys, xs] = np.arange(1, n_objects + 1)
    radius = np.zeros((size, size))
    radius[ys, xs] = rng.uniform(0.35, 0.6, n_objects) * size / np.sqrt(n_objects)
    labels = np.where(dist <= radius[iy, ix], ids[iy, ix], 0).astype(np.uint16)
    return labels


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-exact", action="store_true", help="skip the slow reference")
    args = parser.parse_args()
    config = TargetConfig()
    print(f"w0={config.w0} sigma={config.sigma} margin={config.margin} px "
          f"boundary_width={config.boundary_width}")
    print(f"{'image':>10} {'objects':>8} {'fast ms':>9} {'exact ms':>9} {'max |diff|':>11}")
    for size, n_objects in CASES:
        labels = packed_cells(size, n_objects)
        n_found = len(np.unique(labels)) - 1
        instance_targets(labels, config)  # warm-up
        fast = median_ms(lambda lab=labels: instance_targets(lab, config), args.repeats)
        if args.no_exact:
            print(f"{size:>4}x{size:<5} {n_found:>8} {fast:>9.1f} {'-':>9} {'-':>11}")
            continue
        start = time.perf_counter()
        exact = exact_weight_map(labels, config)
        exact_ms = (time.perf_counter() - start) * 1e3
        diff = float(np.abs(instance_targets(labels, config).weights - exact).max())
        print(f"{size:>4}x{size:<5} {n_found:>8} {fast:>9.1f} {exact_ms:>9.0f} {diff:>11.2e}")


if __name__ == "__main__":
    main()
