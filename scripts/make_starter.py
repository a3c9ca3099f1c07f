"""Train the built-in starter model from scratch on synthetic nuclei and cells.

The starter model ships in the package (``src/napari_unet/models/starter.safetensors``); this
script is how it was made. It draws a fresh set of synthetic images with randomised magnification,
noise, blur, texture and crowding (:func:`napari_unet.core.synthetic.config.random_config`), plus
XY, XZ and YZ planes of synthetic Z-stacks with anisotropic blur and out-of-focus haze
(:func:`napari_unet.core.synthetic.volumes.random_volume_config`, z resampled to the XY pixel as
Fine-tune does), so that ortho fusion finds the same nuclei in every orientation. It trains the
architecture asked for with the regular training loop (elastic deformation, border weight map)
for a budget of wall-clock or CPU minutes, and writes the best model by validation score.

    python scripts/make_starter.py --minutes 60 --clock cpu --threads 1 \\
        -o src/napari_unet/models/starter.safetensors
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np
import torch

from napari_unet.core.config import ModelConfig, NormalizeConfig
from napari_unet.core.inference.rescale import training_scale
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.registry import load_model
from napari_unet.core.network.weights import save_model
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.config import random_config
from napari_unet.core.synthetic.images import make_image
from napari_unet.core.synthetic.volumes import make_volume, random_volume_config
from napari_unet.core.training.data import TrainingPair, make_pairs
from napari_unet.core.training.data3d import AnnotatedVolume, volume_pairs
from napari_unet.core.training.settings import TrainConfig
from napari_unet.core.training.train import train

#: The pixel size (µm) the starter's data stands for: the synthetic nuclei are drawn at the size
#: of nuclei at 0.5 µm/px, as in the shipped sample images.
PIXEL_SIZE = (0.5, 0.5)


def synthetic_pairs(
    images: int, size: int, volumes: int, planes: int, normalize: NormalizeConfig, seed: int
) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """Training planes: those of ``images`` 2D images of ``size`` px, and those cut from
    ``volumes`` Z-stacks of 128 x 128 px (at most ``planes`` XZ and YZ planes each and a third as
    many XY planes), as two lists."""
    rng = np.random.default_rng(seed)
    flat, cut = [], []
    for i in range(images):
        image, labels = make_image(random_config(rng, (size, size)), rng)
        flat += make_pairs(image, labels, "YX", 1, normalize, name=f"synthetic {i}")
    for i in range(volumes):
        config = random_volume_config(rng)
        image, labels = make_volume(config, rng)
        item = AnnotatedVolume(image, labels, config.voxel_size, name=f"volume {i}")
        made = volume_pairs(item, 1, normalize, max_planes=planes)
        # a third of the XY planes: 2D images already teach XY, the volumes are for XZ and YZ
        xy = [pair for pair in made if ", XY, " in pair.name]
        cut += [pair for pair in made if ", XY, " not in pair.name] + xy[::3]
    return flat, cut


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="src/napari_unet/models/starter.safetensors")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="what --minutes counts: wall-clock time or this process's CPU time",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument("--depth", type=int, default=ModelConfig().depth)
    parser.add_argument("--base-channels", type=int, default=ModelConfig().base_channels)
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--volumes", type=int, default=10, help="synthetic Z-stacks (10)")
    parser.add_argument("--planes", type=int, default=16, help="XZ and YZ planes per stack (16)")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--patch-size", type=int, default=192)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--resume", help="continue training this model file (a warm restart)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    normalize = NormalizeConfig()
    started = time.perf_counter()
    flat, cut = synthetic_pairs(
        args.images, args.size, args.volumes, args.planes, normalize, args.seed
    )
    pairs = flat + cut
    logging.info(
        "made %d training planes (%.1f MP) in %.1f s", len(pairs),
        sum(p.labels.size for p in pairs) / 1e6, time.perf_counter() - started,
    )  # fmt: skip

    config = TrainConfig(
        epochs=10_000,
        max_minutes=args.minutes,
        steps_per_epoch=50,
        batch_size=8,
        patch_size=args.patch_size,
        learning_rate=args.learning_rate,
        patience=0,
        val_fraction=0.1,
        seed=args.seed,
        freeze_batchnorm=False,
    )
    base = load_model(args.resume) if args.resume else None
    gen = train(
        pairs,
        args.output,
        base=base,
        config=config,
        device=args.device,
        name="starter",
        model_config=ModelConfig(depth=args.depth, base_channels=args.base_channels),
        normalize=normalize,
        pixel_size=PIXEL_SIZE,
        clock=time.process_time if args.clock == "cpu" else time.perf_counter,
    )
    drain(gen, lambda e: logging.info(e.message) if e.payload.kind != "step" else None)

    # record the recipe (every stage, when resumed) in the shipped file
    recipe = " ".join(["python scripts/make_starter.py", *(argv or sys.argv[1:])])
    if base is not None:
        earlier = base.metadata["provenance"]["settings"].get("recipe")
        recipe = f"{earlier}; then {recipe}" if earlier else recipe
    model = load_model(args.output)
    provenance = model.metadata["provenance"]
    metadata = new_metadata(
        model.config,
        task="instances",
        name="starter",
        normalize=normalize,
        data_hashes=provenance["data_hashes"],
        parent=provenance["parent"],
        settings={
            **provenance["settings"],
            "recipe": recipe,
            "data": (
                "synthetic nuclei and cells (napari_unet.core.synthetic.config.random_config) "
                "and XY/XZ/YZ planes of synthetic Z-stacks "
                "(napari_unet.core.synthetic.volumes.random_volume_config)"
            ),
        },
        metrics=provenance["metrics"],
        pixel_size=PIXEL_SIZE,
        # the 2D images' diameter: most planes cut from a stack meet a nucleus off its centre, so
        # their smaller cross-sections would make the diameter that ``--diameter auto`` compares
        # an image's objects with about 1.5x too small
        object_diameter=training_scale(flat, "instances")["object_diameter"],
    )
    metadata["description"] = (
        "Starter model for fluorescence nuclei and cells, trained from "
        "scratch on synthetic images; fine-tune it on your own data."
    )
    save_model(args.output, model.model, metadata)
    logging.info("wrote %s: %s", args.output, provenance["metrics"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
