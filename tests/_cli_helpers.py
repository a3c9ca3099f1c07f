"""Running ``napari-unet`` in-process or in a child process, shared by the command-line tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from napari_unet.cli import main


def run(capsys, *argv) -> tuple[int, str]:
    """``main(argv)`` (each item passed through ``str``): the exit code and what went to stderr."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def run_out_err(capsys, *argv) -> tuple[int, str, str]:
    """``main(argv)``: the exit code, stdout and stderr."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def predict_argv(source, output, model, *extra) -> list:
    """The words of ``predict SOURCE -o OUTPUT -m MODEL --device cpu EXTRA...``."""
    return ["predict", source, "-o", output, "-m", model, "--device", "cpu", *extra]


def predict_cpu(capsys, source, output, model, *extra) -> tuple[int, str]:
    """:func:`run` of :func:`predict_argv`."""
    return run(capsys, *predict_argv(source, output, model, *extra))


def train_argv(image, labels, output, model, *extra) -> list:
    """The words of ``train --image IMAGE --labels LABELS -o OUTPUT --model MODEL --device cpu
    -q EXTRA...``."""
    return [
        "train",
        "--image",
        image,
        "--labels",
        labels,
        "-o",
        output,
        "--model",
        model,
        "--device",
        "cpu",
        "-q",
        *extra,
    ]


def one_error(code: int, err: str, *words: str) -> None:
    """Exit code 2 and one ``napari-unet: error:`` line that holds each of ``words``."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("napari-unet: error:"), err
    for word in words:
        assert word in err, err


def child_env() -> dict[str, str]:
    """The environment for a child Python that imports what this one does."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def nuclei_model_file(tmp_path_factory) -> Path:
    """The hand-set nuclei network of ``_blockwise_helpers``, saved in a fresh folder."""
    from _blockwise_helpers import save_nuclei_model

    return save_nuclei_model(tmp_path_factory.mktemp("models") / "nuclei.safetensors")
