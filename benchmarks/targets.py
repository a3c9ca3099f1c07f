"""Time the training targets (classes + border weight map) against the exact reference.

Usage: ``python benchmarks/targets.py [--repeats N] [--no-exact] [--exact-all]``

Label images are packed cells: random seeds, each pixel given to its nearest seed when within the
seed's radius, so many cells touch and others are separated by thin gaps. For each case the table
gives the median wall-clock and CPU time of :func:`instance_targets` (fast: distances per object
inside its bounding box plus a margin; the CPU time is what an idle machine's wall clock would
show, since the work is single-threaded), the time of :func:`exact_weight_map` (one distance
transform per object over the whole image; by default only up to 512 x 512, the 1024 case takes
about a minute) and the largest absolute difference between the two weight maps. The last case is
a partial annotation: a 256 x 256 annotated square in a crowded 2048 x 2048 label image.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy import ndimage as ndi

from _common import command_line, machine_description, update_section
from napari_unet.core.training.targets import TargetConfig, exact_weight_map, instance_targets

# (image side, objects, side of the annotated square or None for the whole image)
CASES = [(256, 40, None), (512, 150, None), (1024, 600, None), (2048, 2400, 256)]


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


def median_ms(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU milliseconds of ``fn()``."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-exact", action="store_true", help="skip the slow reference")
    parser.add_argument(
        "--exact-all",
        action="store_true",
        help="run the slow reference on the 1024 x 1024 case too",
    )
    parser.add_argument("--no-update", action="store_true", help="do not touch the docs")
    args = parser.parse_args()
    machine = machine_description()
    lines: list[str] = []

    def out(text: str = "") -> None:
        print(text)
        lines.append(text)

    config = TargetConfig()
    out(
        f"w0={config.w0} sigma={config.sigma} margin={config.margin} px "
        f"boundary_width={config.boundary_width}"
    )
    out(
        f"{'image':>10} {'objects':>8} {'annotated':>10} {'fast ms':>8} {'fast cpu':>9} "
        f"{'exact ms':>9} {'max |diff|':>11}"
    )
    for size, n_objects, annotated in CASES:
        labels = packed_cells(size, n_objects)
        n_found = len(np.unique(labels)) - 1
        mask = None
        if annotated is not None:
            mask = np.zeros(labels.shape, bool)
            mask[size // 2 : size // 2 + annotated, size // 2 : size // 2 + annotated] = True
        instance_targets(labels, config, mask)  # warm-up
        wall, cpu = median_ms(
            lambda lab=labels, m=mask: instance_targets(lab, config, m), args.repeats
        )
        region = "all" if annotated is None else f"{annotated}x{annotated}"
        row = f"{size:>4}x{size:<5} {n_found:>8} {region:>10} {wall:>8.1f} {cpu:>9.1f}"
        if args.no_exact or (size > 512 and not args.exact_all):
            out(f"{row} {'-':>9} {'-':>11}")
            continue
        start = time.perf_counter()
        exact = exact_weight_map(labels, config, mask)
        exact_ms = (time.perf_counter() - start) * 1e3
        diff = float(np.abs(instance_targets(labels, config, mask).weights - exact).max())
        out(f"{row} {exact_ms:>9.0f} {diff:>11.2e}")
    if not args.no_update:
        update_section(
            "targets",
            "## Training targets (`benchmarks/targets.py`)\n\n"
            "Median of "
            f"{args.repeats} runs; fast = `instance_targets`, exact = "
            "one distance transform per object over the whole image.\n\n```text\n"
            + "\n".join(lines)
            + f"\n```\n\nMachine: {machine}.  \n"
            f"Command: `{command_line()}`",
        )


if __name__ == "__main__":
    main()
