"""``napari-unet import-model``: put a bioimage.io package in the model folder."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from napari_unet.cli._common import PROG, add_command

_DESCRIPTION = (
    "Put a bioimage.io model package (.zip, or the rdf.yaml of an unpacked one) in the user's "
    "model folder, so that '--model NAME' finds it. Packages of napari-unet's own U-Net become "
    "model files that can be fine-tuned; TorchScript (and, with onnxruntime, ONNX) networks of "
    "other architectures are kept as packages and can only predict. State dicts that need code "
    "from the package, and pickled models, are refused. Needs the bioimageio extra."
)


def add_import_model(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``import-model`` sub-command to ``sub`` and return its parser."""
    p = add_command(sub, common, "import-model", "put a bioimage.io package in the model folder",
                    _DESCRIPTION)  # fmt: skip
    p.add_argument("package", metavar="PACKAGE", help="a .zip package or an rdf.yaml")
    p.add_argument("--name", help="the model's name (default: the package's file name)")
    p.add_argument("--force", action="store_true", help="replace a model of the same name")
    return p


def _name(args: argparse.Namespace, source: Path) -> str:
    text = args.name or (source.parent.name if source.suffix in (".yaml", ".yml") else source.stem)
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in text.strip()).strip(".-")
    return cleaned or "imported"


def cmd_import_model(args: argparse.Namespace) -> int:
    """Run ``napari-unet import-model``; returns the exit code."""
    from napari_unet.core.bioimageio.load import load_package
    from napari_unet.core.errors import UserError
    from napari_unet.core.io.storage import atomic_path
    from napari_unet.core.network.registry import PACKAGE_SUFFIX, user_models_dir
    from napari_unet.core.network.weights import SUFFIX, save_model

    source = Path(args.package).expanduser()
    loaded = load_package(source)  # refuses what cannot be used, before anything is written
    name = _name(args, source)
    folder = user_models_dir(create=True)
    native = loaded.metadata.get("trainable") is not False
    target = folder / f"{name}{SUFFIX if native else PACKAGE_SUFFIX}"
    taken = [
        p for p in (folder / f"{name}{SUFFIX}", folder / f"{name}{PACKAGE_SUFFIX}") if p.exists()
    ]
    if taken and not args.force:
        raise UserError(f"a model named {name!r} exists ({taken[0]}); use --name or --force")
    if native:
        metadata = dict(loaded.metadata, name=name)
        save_model(target, loaded.model, metadata)
    elif source.suffix.lower() == PACKAGE_SUFFIX:
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    else:
        raise UserError(f"{source}: give the .zip package to import a network of another "
                        "architecture (an unpacked folder is not copied)")  # fmt: skip
    for path in taken:
        if path != target:
            path.unlink()
    how = "can be fine-tuned" if native else "can only predict (another architecture)"
    if not args.quiet:
        sys.stderr.write(f"{PROG}: imported {name!r} -> {target} ({how})\n")
    return 0
