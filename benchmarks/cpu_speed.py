"""Megapixels per second of the default U-Net on the CPU (and on a GPU when there is one).

Usage: ``python benchmarks/cpu_speed.py [--quick] [--size PX] [--rounds N] [--sweep] [--no-update]``

On one synthetic ``size`` x ``size`` fluorescence image (default 2048), in one process, with the
jobs interleaved in every round and the best round kept (other processes on the machine slow all
jobs alike):

1. plain eager PyTorch: the network (``ModelConfig()``, BatchNorm not folded, default memory
   layout) on the whole image at once, then a softmax: the baseline;
2. our network path in float32: :class:`~napari_unet.core.network.device.Predictor` (BatchNorm
folded,
   channels-last, inference mode) through overlap-tile inference with the default CPU tiling;
3. the same in bfloat16 autocast, if the CPU supports it, with its largest probability
   difference from float32 and the share of pixels with the same class;
4. end to end: percentile normalisation, tiled network and instance post-processing
   (``predict_probabilities`` + ``labels_from_probabilities``), with the post-processing share.

``--sweep`` adds a table of tile sizes and batch sizes. The network is trained for a few quick
steps on synthetic nuclei first (cached in the temporary folder), so that probabilities and
post-processing behave as with real weights. On a CUDA machine it also measures the network with
and without autocast for 16 and 32 base channels. The results replace this script's section of
``docs/benchmarks.md`` unless ``--quick`` or ``--no-update`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import torch

from _common import (
    benchmark_network,
    command_line,
    interleaved_best,
    machine_description,
    markdown_table,
    trained_network,
    update_section,
)
from napari_unet.core.config import ModelConfig, TilingConfig
from napari_unet.core.inference.tiling import default_tiling, predict_tiled, resolve_halo, tile_grid
from napari_unet.core.network.device import Predictor, cpu_supports_bf16, describe_device
from napari_unet.core.network.model import UNet, receptive_radius
from napari_unet.core.network.normalize import percentile_normalize
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.config import SAMPLE_CONFIG
from napari_unet.core.synthetic.images import make_image

SECTION = "cpu_speed"
CPU = torch.device("cpu")


def synthetic_image(size: int, seed: int = 1) -> np.ndarray:
    """A realistic synthetic nuclei image (size, size) uint16."""
    config = dataclasses.replace(SAMPLE_CONFIG, shape=(size, size))
    image, _ = make_image(config, seed, dtype=np.uint16)
    return image


def eager_whole(net: UNet, image: np.ndarray) -> Callable[[], np.ndarray]:
    """Plain eager inference of the whole (H, W) float32 image: -> (K, H, W) float32."""
    x = torch.from_numpy(image)[None, None]

    def run() -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(net(x), dim=1)[0].numpy()

    return run


def tiled(
    predictor: Predictor, net: UNet, image: np.ndarray, tiling: TilingConfig
) -> Callable[[], np.ndarray]:
    """Our tiled network path on the normalised (H, W) float32 image: -> (K, H, W) float32."""
    config = net.config
    halo = resolve_halo(tiling, config)

    def run() -> np.ndarray:
        gen = predict_tiled(
            predictor, image[None], config.out_classes, tiling, halo, stride=config.stride
        )
        return drain(gen)

    return run


def end_to_end(
    net: UNet, raw: np.ndarray, device: torch.device, precision: str = "auto"
) -> tuple[float, float] | None:
    """(seconds for normalisation + tiled network, seconds for instance post-processing) of the
    raw (H, W) image at ``precision``, or ``None`` when the engine's predict/post-process modules
    are missing."""
    import time

    try:
        from napari_unet.core.inference.postprocess import labels_from_probabilities
        from napari_unet.core.inference.predict import predict_probabilities
    except ImportError as exc:
        logging.warning("end to end skipped: %s", exc)
        return None
    start = time.perf_counter()
    probs = drain(predict_probabilities(raw, "YX", net, device=device, precision=precision))
    middle = time.perf_counter()
    labels_from_probabilities(probs, "instances")
    return middle - start, time.perf_counter() - middle


def best_end_to_end(
    net: UNet, raw: np.ndarray, device: torch.device, rounds: int, precision: str = "auto"
) -> tuple[float, float] | None:
    """Best (network, post-processing) seconds over ``rounds`` (plus one warm-up)."""
    results = [end_to_end(net, raw, device, precision) for _ in range(rounds + 1)][1:]
    if any(r is None for r in results):
        return None
    network = min(r[0] for r in results if r is not None)
    post = min(r[1] for r in results if r is not None)
    return network, post


def accuracy(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(largest absolute probability difference, fraction of pixels with the same argmax)."""
    diff = float(np.abs(reference - other).max())
    same = float((reference.argmax(0) == other.argmax(0)).mean())
    return diff, same


def cpu_rows(
    net: UNet, raw: np.ndarray, rounds: int, tiling: TilingConfig
) -> tuple[list[list[object]], list[str]]:
    """Rows of the CPU table and notes."""
    image = percentile_normalize(raw, channel_axis=None)
    mp = image.size / 1e6
    jobs: dict[str, Callable[[], np.ndarray]] = {"eager": eager_whole(net, image)}
    jobs["fp32"] = tiled(Predictor(net, CPU, "fp32"), net, image, tiling)
    if cpu_supports_bf16():
        jobs["bf16"] = tiled(Predictor(net, CPU, "bf16"), net, image, tiling)
    outputs = {name: job() for name, job in jobs.items()}
    seconds = interleaved_best(jobs, rounds, warmup=False)
    halo = resolve_halo(tiling, net.config)
    tile_text = f"tiles {tiling.tile_size} px + halo {halo}, batch {tiling.batch_size}"
    eager = seconds["eager"]
    rows: list[list[object]] = [
        ["plain eager PyTorch, whole image, fp32", f"{mp / eager:.2f}", "1.00x", "reference"]
    ]
    notes = []
    for name in ("fp32", "bf16"):
        if name not in seconds:
            continue
        # fp32 against the whole-image pass (tiling error; away from the image border, where
        # the whole-image pass sees zero padding and tiles see the mirrored image); bf16 against
        # fp32 (precision error)
        reference = "eager" if name == "fp32" else "fp32"
        margin = receptive_radius(net.config) if name == "fp32" else 0
        inner = (slice(None), slice(margin, -margin or None), slice(margin, -margin or None))
        diff, same = accuracy(outputs[reference][inner], outputs[name][inner])
        if margin:
            reference += f" ({margin} px from the border)"
        rows.append(
            [
                f"Predictor, {tile_text}, {name}",
                f"{mp / seconds[name]:.2f}",
                f"{eager / seconds[name]:.2f}x",
                f"vs {reference}: max prob diff {diff:.2g}, same class {100 * same:.3f}%",
            ]
        )
    if "bf16" not in seconds:
        notes.append("bf16: this CPU has no native bfloat16 support; not measured.")
    precisions = ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]
    for precision in precisions:
        e2e = best_end_to_end(net, raw, CPU, rounds, precision)
        if e2e is None:
            notes.append("end to end: core.predict / core.postprocess not available; not measured.")
            break
        network, post = e2e
        total = network + post
        rows.append(
            [
                f"end to end: normalise + tiled network ({precision}) + instances",
                f"{mp / total:.2f}",
                f"{eager / total:.2f}x",
                f"post-processing {post:.2f} s = {100 * post / total:.0f}% of {total:.2f} s",
            ]
        )
    return rows, notes


def sweep_rows(net: UNet, raw: np.ndarray, rounds: int) -> list[list[object]]:
    """Network throughput (fp32, and bf16 if supported) by tile size and batch size."""
    image = percentile_normalize(raw, channel_axis=None)
    mp = image.size / 1e6
    precisions = ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]
    predictors = {p: Predictor(net, CPU, p) for p in precisions}
    jobs = {}
    for size in (128, 256, 384, 512):
        for batch in (1, 4):
            for p in precisions:
                tiling = TilingConfig(tile_size=size, batch_size=batch)
                jobs[(size, batch, p)] = tiled(predictors[p], net, image, tiling)
    seconds = interleaved_best(jobs, rounds)
    halo = resolve_halo(TilingConfig(), net.config)
    stride = net.config.stride
    return [
        [size, tile_grid(image.shape, size, halo, stride)[0].height, batch, p, f"{mp / s:.2f}"]
        for (size, batch, p), s in seconds.items()
    ]


def cuda_rows(raw: np.ndarray, rounds: int) -> list[list[object]]:
    """Network and end-to-end throughput on the GPU, with and without autocast."""
    device = torch.device("cuda")
    image = percentile_normalize(raw, channel_axis=None)
    repeats = 5
    mp = repeats * image.size / 1e6
    rows: list[list[object]] = []
    for base in (16, 32):
        net = trained_network(ModelConfig(base_channels=base), steps=20)
        tiling = default_tiling(net.config, "cuda")
        jobs = {}
        for precision in ("fp32", "auto"):
            predictor = Predictor(net, device, precision)
            run = tiled(predictor, net, image, tiling)
            jobs[predictor.precision] = lambda run=run: [run() for _ in range(repeats)]
        seconds = interleaved_best(jobs, rounds)
        for precision, s in seconds.items():
            rows.append([base, f"network, {precision}", f"{mp / s:.1f}"])
        e2e = best_end_to_end(net, raw, device, rounds)
        if e2e is not None:
            total = sum(e2e)
            rows.append([base, "end to end (autocast)", f"{image.size / 1e6 / total:.1f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run, docs unchanged")
    parser.add_argument("--size", type=int, default=None, help="image side (default 2048)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3)")
    parser.add_argument("--sweep", action="store_true", help="also sweep tile and batch sizes")
    parser.add_argument("--no-update", action="store_true", help="leave docs/benchmarks.md")
    args = parser.parse_args()
    size = args.size or (512 if args.quick else 2048)
    rounds = args.rounds or (1 if args.quick else 3)
    logging.basicConfig(level=logging.WARNING)

    net, net_name = benchmark_network()
    raw = synthetic_image(size)
    tiling = default_tiling(net.config, "cpu")
    machine = machine_description()
    print(f"{machine}\n{describe_device(CPU)}, image {size} x {size}, best of {rounds} rounds\n")

    rows, notes = cpu_rows(net, raw, rounds, tiling)
    table = markdown_table(["CPU, fp32 unless said", "MP/s", "vs eager", "notes"], rows)
    print(table)
    for note in notes:
        print(note)
    sections = [table, *notes]
    if args.sweep:
        headers = ["tile size", "window (core + halo)", "batch", "precision", "MP/s"]
        sweep = markdown_table(headers, sweep_rows(net, raw, rounds))
        print("\n" + sweep)
        sections += ["Tile and batch sizes (network only, same image):", sweep]
    if torch.cuda.is_available():
        gpu = markdown_table(["base channels", "job", "MP/s"], cuda_rows(raw, rounds))
        print("\n" + gpu)
        sections += [f"GPU: {describe_device(torch.device('cuda'))}", gpu]
    if not (args.quick or args.no_update):
        body = "\n\n".join(
            [
                f"## CPU speed (`benchmarks/cpu_speed.py`)\n\nNetwork: {net_name}; one "
                f"{size} x {size} synthetic image; default tiling; best of {rounds} interleaved "
                "rounds.",
                *sections,
                f"Machine: {machine}.  \nCommand: `{command_line()}`",
            ]
        )
        print(f"\nupdated {update_section(SECTION, body)}")


if __name__ == "__main__":
    main()
