"""Where results go, and the checks on input and output paths made before any work starts."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

LABELS_SUFFIX = "_labels.tif"
PROBABILITIES_SUFFIX = "_probabilities.tif"
MODEL_SUFFIX = ".safetensors"
TIFF_SUFFIXES = (".tif", ".tiff")
_IMAGE_EXTENSIONS = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpeg", ".jpg")


def image_stem(path: Path) -> str:
    """The file name without its image extension (``a.ome.tif`` -> ``a``)."""
    name = path.name
    for extension in _IMAGE_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return path.stem


def output_paths(inputs: Sequence[Path], target: Path, suffix: str, option: str) -> list[Path]:
    """Where each input's result goes, checked before any work starts.

    Args:
        inputs: the input files.
        target: the ``-o`` (or ``--probabilities``) value: an existing folder, or with one input
            a file name ending in ``.tif`` / ``.tiff``.
        suffix: appended to each input's name inside a folder (e.g. ``"_labels.tif"``).
        option: the option's name, for messages.

    Raises:
        UserError: the folder does not exist, a file name was given for several inputs, or two
            inputs would write the same output.
    """
    from napari_unet.core.errors import UserError

    if target.suffix.lower() in TIFF_SUFFIXES and not target.is_dir():
        if len(inputs) > 1:
            raise UserError(
                f"{option} {target} is a file name but {len(inputs)} inputs were given; "
                "give an existing folder"
            )
        folder = target.parent
        if not folder.is_dir():
            raise UserError(f"the output folder {folder} does not exist ({option} {target})")
        return [target]
    if not target.is_dir():
        if target.exists():
            raise UserError(f"{option} {target} is neither a folder nor a .tif file name")
        if target.suffix:
            raise UserError(
                f"{option} {target}: give an existing folder or a file name ending in .tif "
                "(results are written as TIFF)"
            )
        raise UserError(
            f"the output folder {target} does not exist ({option} takes an existing folder "
            "or, with one input, a .tif file name)"
        )
    paths = [target / f"{image_stem(p)}{suffix}" for p in inputs]
    seen: dict[Path, Path] = {}
    for source, path in zip(inputs, paths, strict=True):
        if path in seen:
            raise UserError(
                f"{seen[path]} and {source} would both be written to {path}; "
                "rename one or run them separately"
            )
        seen[path] = source
    return paths


def check_not_an_input(inputs: Iterable[Path | None], outputs: Iterable[Path]) -> None:
    """Raise UserError when an output is one of the (existing) inputs, holds one (a folder or
    store around it) or lies inside one."""
    from napari_unet.core.io.safe_paths import check_outputs_apart

    check_outputs_apart([p for p in inputs if p is not None and p.exists()], list(outputs))


def check_inputs(inputs: Sequence[Path], outputs: Sequence[Path]) -> None:
    """Every input is a non-empty file and no output overwrites an input.

    Raises:
        ImageReadError: an input is missing, a folder or empty.
        UserError: an output is one of the inputs.
    """
    from napari_unet.core.errors import ImageReadError
    from napari_unet.core.io.safe_paths import require_regular_file

    for path in inputs:
        if not path.exists():
            raise ImageReadError(f"Cannot read image '{path}': the file does not exist.")
        require_regular_file(path)
        if path.is_dir():
            raise ImageReadError(f"Cannot read image '{path}': it is a folder, not a file.")
        if path.stat().st_size == 0:
            raise ImageReadError(f"Cannot read image '{path}': the file is empty.")
    check_not_an_input(inputs, outputs)
    check_distinct(outputs)


def check_distinct(outputs: Sequence[Path]) -> None:
    """Raise UserError when two outputs (labels and probabilities) are the same file."""
    from napari_unet.core.errors import UserError

    seen: set[Path] = set()
    for path in outputs:
        resolved = path.expanduser().resolve()
        if resolved in seen:
            raise UserError(
                f"{path} is named twice as an output (-o and --probabilities); the labels and "
                "the probabilities need files of their own"
            )
        seen.add(resolved)


def model_output(text: str) -> Path:
    """The model file to write for ``-o text`` (``.safetensors`` appended when missing), checked.

    Raises:
        UserError: it is a folder, or its folder is missing or not writable.
    """
    from napari_unet.core.errors import UserError

    path = Path(text).expanduser()
    if path.suffix != MODEL_SUFFIX:
        path = path.with_name(path.name + MODEL_SUFFIX)
    if path.is_dir():
        raise UserError(f"-o {path} is a folder; give a model file name ending in {MODEL_SUFFIX}")
    if not path.parent.is_dir():
        raise UserError(f"the output folder {path.parent} does not exist (-o {text})")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"the output folder {path.parent} is not writable (-o {text})")
    return path
