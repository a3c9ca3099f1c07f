"""Overlap-tile inference against one whole-image pass and against MONAI's sliding window.

    python benchmarks/tiling.py [--size 2048] [--rounds 3] [--quick] [--no-update]

On a realistic synthetic fluorescence image (``--size`` pixels square), with the built-in starter
model when it is installed (else a briefly trained stand-in of the default architecture):

- the cost of our tiling (default tile size and margin, forced 256 px tiles, several margins, the
  exact margin) as a ratio of the time of one whole-image pass, measured in this process;
- how far each tiled result is from the whole-image pass: largest probability difference and the
  share of pixels with the same class (argmax);
- the same network through MONAI's ``sliding_window_inference`` (overlap 0.25, gaussian blending)
  when MONAI is installed (``pip install monai``; a benchmark peer, not a dependency).

Prints a table and rewrites the ``tiling`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    benchmark_network,
    command_line,
    interleaved_best,
    machine_description,
    markdown_table,
    update_section,
)
from napari_unet.core.config import ModelConfig, TilingConfig
from napari_unet.core.inference.tiling import default_halo, default_tiling, predict_tiled
from napari_unet.core.network.device import Predictor
from napari_unet.core.network.model import receptive_radius
from napari_unet.core.network.normalize import percentile_normalize
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.config import SAMPLE_CONFIG
from napari_unet.core.synthetic.images import make_image


def _image(size: int) -> np.ndarray:
    config = type(SAMPLE_CONFIG)(**{**SAMPLE_CONFIG.__dict__, "shape": (size, size)})
    image, _ = make_image(config, 1)
    return percentile_normalize(image, channel_axis=None)[None]


def _tiled(
    predictor: Predictor, image: np.ndarray, k: int, tiling: TilingConfig, halo: int, stride: int
) -> np.ndarray:
    return drain(predict_tiled(predictor, image, k, tiling, halo, stride))


def _monai(predictor: Predictor, image: np.ndarray, roi: int, batch: int) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        out = sliding_window_inference(
            torch.from_numpy(image)[None],
            (roi, roi),
            batch,
            predictor,
            overlap=0.25,
            mode="gaussian",
        )
    return out[0].numpy()


def _compare(result: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    diff = float(np.abs(result - reference).max())
    same = float((result.argmax(0) == reference.argmax(0)).mean())
    return diff, same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="512 px image, 1 round")
    parser.add_argument("--no-update", action="store_true", help="do not touch the docs")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.rounds = 512, 1

    net, net_name = benchmark_network()
    config: ModelConfig = net.config
    predictor = Predictor(net, torch.device("cpu"), "fp32")  # as the table says (auto: bf16)
    image = _image(args.size)
    k, stride = config.out_classes, config.stride
    whole = TilingConfig(tile_size=args.size, batch_size=1)
    exact_halo = receptive_radius(config)
    reference = _tiled(predictor, image, k, whole, exact_halo, stride)
    eager = net.eval()

    def eager_whole() -> None:
        with torch.inference_mode():
            torch.softmax(eager(torch.from_numpy(image)[None]), dim=1)

    default = default_tiling(config, "cpu")
    halo = default_halo(config)
    cases: dict[str, tuple[TilingConfig, int]] = {
        f"default: {default.tile_size} px tiles, margin {halo} px, batch {default.batch_size}": (
            default,
            halo,
        ),
    }
    for tile in (256, 512, 768):
        cases[f"{tile} px tiles, margin {halo} px"] = (
            TilingConfig(tile_size=tile, batch_size=1),
            halo,
        )
    for margin in (32, 64, 96):
        if margin < halo:
            cases[f"256 px tiles, smaller margin {margin} px (approximate)"] = (
                TilingConfig(tile_size=256, batch_size=1),
                margin,
            )
    jobs = {"whole": lambda: _tiled(predictor, image, k, whole, halo, stride), "eager": eager_whole}
    for name, (tiling, margin) in cases.items():
        jobs[name] = lambda t=tiling, m=margin: _tiled(predictor, image, k, t, m, stride)
    try:
        import monai  # noqa: F401

        monai_name = "MONAI sliding window: 256 px, overlap 0.25, gaussian"
        jobs[monai_name] = lambda: _monai(predictor, image, 256, 4)
    except ImportError:
        monai_name = None
    times = interleaved_best(jobs, args.rounds)

    rows = [
        [
            "one whole-image pass (same fused, channels-last network)",
            "1.00",
            f"{args.size**2 / times['whole'] / 1e6:.2f}",
            "0 (reference)",
            "100%",
        ],
        [
            "one whole-image pass, plain eager PyTorch",
            f"{times['eager'] / times['whole']:.2f}",
            f"{args.size**2 / times['eager'] / 1e6:.2f}",
            "-",
            "-",
        ],
    ]
    for name in jobs:
        if name in ("whole", "eager"):
            continue
        result = (
            jobs[name]()
            if name == monai_name
            else _tiled(predictor, image, k, cases[name][0], cases[name][1], stride)
        )
        diff, same = _compare(result, reference)
        rows.append(
            [
                name,
                f"{times[name] / times['whole']:.2f}",
                f"{args.size**2 / times[name] / 1e6:.2f}",
                f"{diff:.2e}",
                f"{100 * same:.3f}%",
            ]
        )
    headers = ["method", "time vs whole image", "MP/s", "max prob. difference", "same class"]
    table = markdown_table(headers, rows)
    sys.stdout.write(table + "\n")
    if monai_name is None:
        sys.stdout.write("MONAI is not installed: pip install monai to compare.\n")
    if not args.no_update:
        body = (
            f"## Overlap-tile inference\n\n"
            f"A {args.size}x{args.size} synthetic fluorescence image, {net_name}, fp32 on the "
            f"CPU. Reference: one whole-image pass with the image mirrored by the exact margin "
            f"({exact_halo} px). Times are the best of {args.rounds} interleaved rounds in one "
            f"process.\n\n{table}\n\nMachine: {machine_description()}.  \n"
            f"Command: `{command_line()}`"
        )
        update_section("tiling", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
