"""Train the built-in starter model from scratch on synthetic nuclei and cells.

The starter model ships in the package (``src/napari_unet/models/starter.safetensors``); this
script is how it was made. It draws a fresh set of synthetic images with randomised magnification,
noise, blur, texture and crowding (:func:`napari_unet.core.synthetic.config.random_config`), trains
the
default architecture with the regular training loop (elastic deformation, border weight map) for a
wall-clock budget, and writes the best model by validation score.

    python scripts/make_starter.py --minutes 20 -o src/napari_unet/models/starter.safetensors
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

from napari_unet.core.config import ModelConfig, NormalizeConfig
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.registry import load_model
from napari_unet.core.network.weights import save_model
from napari_unet.core.progress import drain
from napari_unet.core.synthetic.config import random_config
from napari_unet.core.synthetic.images import make_image
from napari_unet.core.training.data import make_pairs
from napari_unet.core.training.settings import TrainConfig
from napari_unet.core.training.train import train

#: The pixel size (µm) the starter's data stands for: the synthetic nuclei are drawn at the size
#: of nuclei at 0.5 µm/px, as in the shipped sample images.
PIXEL_SIZE = (0.5, 0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="src/napari_unet/models/starter.safetensors")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--patch-size", type=int, default=192)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--resume", help="continue training this model file (a warm restart)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    rng = np.random.default_rng(args.seed)
    normalize = NormalizeConfig()
    pairs = []
    started = time.perf_counter()
    for i in range(args.images):
        image, labels = make_image(random_config(rng, (args.size, args.size)), rng)
        pairs += make_pairs(image, labels, "YX", 1, normalize, name=f"synthetic {i}")
    logging.info("made %d synthetic images in %.1f s", len(pairs), time.perf_counter() - started)

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
        model_config=ModelConfig(),
        normalize=normalize,
        pixel_size=PIXEL_SIZE,
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
            "data": "synthetic nuclei and cells (napari_unet.core.synthetic.config.random_config)",
        },
        metrics=provenance["metrics"],
        pixel_size=PIXEL_SIZE,
        object_diameter=model.object_diameter,
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
