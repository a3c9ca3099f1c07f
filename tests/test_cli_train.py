"""``napari-unet train``, run in-process through ``main([...])``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet import cli
from napari_unet.cli import TrainingInput, main, training_inputs
from napari_unet.cli._common import UsageError
from napari_unet.core.config import ModelConfig
from napari_unet.core.errors import UserError
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.model import build_model
from napari_unet.core.network.registry import load_model
from napari_unet.core.network.weights import save_model
from napari_unet.core.synthetic.config import SyntheticConfig
from napari_unet.core.synthetic.images import make_image
from napari_unet.core.training import loop as loop_module
from napari_unet.core.training.settings import TrainConfig

TINY = ModelConfig(depth=2, base_channels=4)
SYNTH = SyntheticConfig(shape=(80, 72), radius=(6.0, 10.0), debris=0.0)
FAST = ("--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "2", "--patch-size", "64")


@pytest.fixture(autouse=True)
def isolated_models(isolated_models, tmp_path, monkeypatch):
    """The empty user model folder of conftest.py, and the starter model is not installed."""
    monkeypatch.setattr(
        "napari_unet.core.network.registry.builtin_models_dir", lambda: tmp_path / "none"
    )
    return isolated_models


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    return save_model(path, build_model(TINY, seed=0), new_metadata(TINY, name="tiny"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Training files: two images with labels, a mask, and bad labels and masks."""
    folder = tmp_path_factory.mktemp("data")
    image, labels = make_image(SYNTH, seed=1, dtype=np.uint16)
    image2, labels2 = make_image(SYNTH, seed=2, dtype=np.uint16)
    mask = np.zeros(labels.shape, np.uint8)
    mask[10:60, 10:60] = 255
    fractional = labels.astype(np.float32)
    fractional[labels > 0] += 0.5
    arrays = {
        "img": image,
        "lab": labels,
        "img2": image2,
        "lab2": labels2,
        "mask": mask,
        "empty_mask": np.zeros_like(mask),
        "small_mask": mask[:40],
        "zero_lab": np.zeros_like(labels),
        "neg_lab": labels.astype(np.int16) - 1,
        "small_lab": labels[:40],
        "frac_lab": fractional,
        "rgb_lab": np.stack([labels.astype(np.uint8)] * 3, axis=-1),
        "bg_lab": np.where(mask > 0, 0, labels).astype(np.uint16),  # no object inside the mask
    }
    paths = {}
    for name, data in arrays.items():
        paths[name] = folder / f"{name}.tif"
        tifffile.imwrite(paths[name], data, photometric="rgb" if name == "rgb_lab" else None)
    return paths


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_tiny(capsys, files, tiny_model, output, *extra) -> tuple[int, str, str]:
    """``train`` on the first image and labels, from the tiny model, into ``output``."""
    return run(
        capsys,
        "train",
        "--image",
        files["img"],
        "--labels",
        files["lab"],
        "--model",
        tiny_model,
        *extra,
        "-o",
        output,
    )


def assert_user_error(code: int, out: str, err: str, contains: str = "") -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-unet: error: ")
    assert "Traceback" not in err and out == ""
    assert contains.lower() in lines[0].lower(), lines[0]


# --------------------------------------------------------------------------------------------
# bad input: exit code 2, one line, no model file


BAD_INPUTS = {
    "labels missing": (["--image", "img"], "has no labels"),
    "labels without image": (
        ["--image", "img", "--labels", "lab", "--labels", "lab2"],
        "have no image",
    ),
    "no data": ([], "no training data"),
    "shape mismatch": (["--image", "img", "--labels", "small_lab"], "shape"),
    "all-zero labels": (["--image", "img", "--labels", "zero_lab"], "all zero"),
    "negative labels": (["--image", "img", "--labels", "neg_lab"], "negative"),
    "fractional labels": (["--image", "img", "--labels", "frac_lab"], "non-integer"),
    "RGB labels": (["--image", "img", "--labels", "rgb_lab"], "RGB"),
    "zero epochs": (["--image", "img", "--labels", "lab", "--epochs", "0"], "--epochs"),
    "empty mask": (
        ["--image", "img", "--labels", "lab", "--mask", "empty_mask"],
        "no pixel as annotated",
    ),
    "mask shape": (["--image", "img", "--labels", "lab", "--mask", "small_mask"], "mask"),
    "mask first": (["--mask", "mask", "--image", "img", "--labels", "lab"], "before any"),
    "two masks": (
        ["--image", "img", "--labels", "lab", "--mask", "mask", "--mask", "mask"],
        "two masks",
    ),
    "no object in the mask": (["--image", "img", "--labels", "bg_lab", "--mask", "mask"], "object"),
    "zero minutes": (["--image", "img", "--labels", "lab", "--max-minutes", "0"], "--max-minutes"),
    "negative minutes": (
        ["--image", "img", "--labels", "lab", "--max-minutes", "-3"],
        "--max-minutes",
    ),
    "missing image": (["--image", "nothing.tif", "--labels", "lab"], "does not exist"),
    "depth without scratch": (["--image", "img", "--labels", "lab", "--depth", "2"], "scratch"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(capsys, tmp_path, files, tiny_model, case):
    argv, contains = BAD_INPUTS[case]
    argv = [str(files.get(a, a)) for a in argv]
    output = tmp_path / "new.safetensors"
    code, out, err = run(capsys, "train", *argv, "--model", tiny_model, *FAST[2:], "-o", output)
    assert_user_error(code, out, err, contains)
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry"]  # no temporary file either


def test_output_folder_missing(capsys, tmp_path, files, tiny_model):
    output = tmp_path / "missing" / "new.safetensors"
    code, out, err = train_tiny(capsys, files, tiny_model, output)
    assert_user_error(code, out, err, "does not exist")
    assert not output.parent.exists()


def test_default_model_not_installed(capsys, tmp_path, files):
    output = tmp_path / "new.safetensors"
    code, out, err = run(
        capsys, "train", "--image", files["img"], "--labels", files["lab"], "-o", output
    )
    assert_user_error(code, out, err, "starter")
    assert not output.exists()


def test_output_is_the_base_model(capsys, files, tiny_model):
    before = tiny_model.read_bytes()
    code, out, err = train_tiny(capsys, files, tiny_model, tiny_model)
    assert_user_error(code, out, err, "fine-tuned")
    assert tiny_model.read_bytes() == before


# --------------------------------------------------------------------------------------------
# pairing of --image, --labels and --mask


def test_masks_belong_to_the_pair_given_just_before():
    items = [
        ("image", "a"),
        ("labels", "la"),
        ("mask", "ma"),
        ("image", "b"),
        ("labels", "lb"),
        ("image", "c"),
        ("mask", "mc"),
        ("labels", "lc"),
    ]
    assert training_inputs(items) == [
        TrainingInput(Path("a"), Path("la"), Path("ma")),
        TrainingInput(Path("b"), Path("lb"), None),
        TrainingInput(Path("c"), Path("lc"), Path("mc")),
    ]
    # labels given after all images: a mask after the first labels goes with the first pair
    items = [("image", "a"), ("image", "b"), ("labels", "la"), ("mask", "ma"), ("labels", "lb")]
    assert [i.mask for i in training_inputs(items)] == [Path("ma"), None]
    with pytest.raises(UserError):
        training_inputs([("labels", "la"), ("image", "a"), ("mask", "m1"), ("mask", "m2")])


def test_time_budget_alone_lifts_the_epoch_limit():
    args = cli.build_parser().parse_args(
        [
            "train",
            "--image",
            "a",
            "--labels",
            "b",
            "-o",
            "m",
            "--max-minutes",
            "2.5",
            "--no-elastic",
            "--seed",
            "3",
        ]
    )
    config = cli.train_config(args)
    assert config.max_minutes == 2.5 and config.epochs > 10_000
    assert config.augment.elastic is False and config.seed == 3 and config.targets.w0 > 0
    args = cli.build_parser().parse_args(
        ["train", "--image", "a", "--labels", "b", "-o", "m", "--epochs", "7", "--no-weight-map"]
    )
    config = cli.train_config(args)
    assert config.epochs == 7 and config.max_minutes is None
    # only the border term goes: the classes stay balanced
    assert config.targets.w0 == 0 and config.targets.class_balance
    assert config.keep_base_weight == TrainConfig().keep_base_weight
    for value, expected in (("0", 0.0), ("2.5", 2.5)):
        args = cli.build_parser().parse_args(
            ["train", "--image", "a", "--labels", "b", "-o", "m", "--keep-base", value]
        )
        assert cli.train_config(args).keep_base_weight == expected
    with pytest.raises(UsageError, match="keep-base"):
        cli.build_parser().parse_args(
            ["train", "--image", "a", "--labels", "b", "-o", "m", "--keep-base", "-1"]
        )


# --------------------------------------------------------------------------------------------
# real runs


def test_fine_tune_two_pairs_with_a_mask(capsys, tmp_path, files, tiny_model):
    output = tmp_path / "tuned.safetensors"
    code, out, err = run(
        capsys,
        "train",
        "--image",
        files["img"],
        "--labels",
        files["lab"],
        "--image",
        files["img2"],
        "--labels",
        files["lab2"],
        "--mask",
        files["mask"],
        "--model",
        tiny_model,
        *FAST,
        "--no-elastic",
        "--no-weight-map",
        "--seed",
        "4",
        "--name",
        "my cells",
        "-o",
        output,
    )
    assert code == 0, err
    epoch_lines = [line for line in err.splitlines() if line.startswith("napari-unet: epoch")]
    assert len(epoch_lines) == 2 and "loss" in epoch_lines[0] and "left" in epoch_lines[0]
    assert f"model: {output.resolve()}" in out
    assert "fine-tuned from tiny" in out and "validation" in out

    loaded = load_model(output)
    meta = loaded.metadata
    assert meta["name"] == "my cells" and loaded.config == TINY
    prov = meta["provenance"]
    assert prov["parent"] == "tiny"
    assert len(prov["data_hashes"]) == 2 and len(set(prov["data_hashes"])) == 2
    settings = prov["settings"]
    assert settings["epochs"] == 2 and settings["steps_per_epoch"] == 3 and settings["seed"] == 4
    assert settings["targets"]["w0"] == 0 and settings["augment"]["elastic"] is False
    assert settings["training_pixels"] == 80 * 72 + 50 * 50
    assert "loss" in prov["metrics"] and "score" not in prov["metrics"]  # no held-out data
    created = dt.datetime.fromisoformat(prov["created"])
    assert abs(dt.datetime.now(dt.timezone.utc) - created) < dt.timedelta(minutes=10)


def test_from_scratch_with_validation(capsys, tmp_path):
    image, labels = make_image(
        SyntheticConfig(shape=(336, 336), radius=(6.0, 10.0)), seed=5, dtype=np.uint16
    )
    tifffile.imwrite(tmp_path / "big.tif", image)
    tifffile.imwrite(tmp_path / "big_labels.tif", labels)
    code, out, err = run(
        capsys,
        "train",
        "--image",
        tmp_path / "big.tif",
        "--labels",
        tmp_path / "big_labels.tif",
        "--model",
        "scratch",
        "--depth",
        "2",
        "--base-channels",
        "4",
        *FAST,
        "-o",
        tmp_path / "new",
    )
    assert code == 0, err
    assert "napari-unet: before training: validation AP50" in err
    assert "trained from scratch" in out
    assert "validation before: AP50" in out and "validation after:  AP50" in out
    loaded = load_model(tmp_path / "new.safetensors")  # the suffix is added
    assert loaded.config == TINY
    prov = loaded.metadata["provenance"]
    assert prov["parent"] is None and prov["settings"]["validation_crops"] >= 1
    metrics = prov["metrics"]
    assert {"ap_50", "pixel_iou", "score"} <= set(metrics)
    assert {"ap_50", "pixel_iou", "score"} <= set(metrics["baseline"])
    assert metrics["score"] >= metrics["baseline"]["score"]


def test_ctrl_c_keeps_the_best_checkpoint(capsys, tmp_path, files, tiny_model, monkeypatch):
    real = loop_module.augment_batch
    calls = []

    def interrupted_at_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "augment_batch", interrupted_at_step_5)
    output = tmp_path / "stopped.safetensors"
    code, out, err = train_tiny(capsys, files, tiny_model, output, *FAST)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == (
        f"napari-unet: interrupted; the best model so far is in {output}"
    )
    assert "Traceback" not in err and out == ""
    settings = load_model(output).metadata["provenance"]["settings"]
    assert settings["epochs_done"] == 1 and settings["steps"] == 3  # saved after epoch 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry", output.name]


def test_ctrl_c_before_the_first_save(capsys, tmp_path, files, tiny_model, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "save_model", interrupted)
    output = tmp_path / "stopped.safetensors"
    code, out, err = train_tiny(capsys, files, tiny_model, output, *FAST)
    assert code == 130 and out == ""
    assert err.strip().splitlines()[-1] == "napari-unet: interrupted before a model was saved"
    assert not output.exists()


def test_progress_line_on_a_terminal(terminal):
    from napari_unet.core.progress import Progress
    from napari_unet.core.training.settings import TrainStatus

    stream = terminal
    reporter = cli.TrainReporter(stream, epochs=4)
    reporter(Progress("train", 1, 8, "", TrainStatus("step", 1, 0, 0.5, {}, {}, float("nan"))))
    metrics = {"ap_50": 0.5, "pixel_iou": 0.75, "score": 0.625}
    reporter(Progress("train", 2, 8, "", TrainStatus("validation", 2, 1, 0.4, metrics, {}, 65.0)))
    reporter.close()
    text = stream.getvalue()
    assert "\repoch 1/4, step 1: loss 0.5000" in text
    assert text.endswith(
        "napari-unet: epoch 1/4: loss 0.4000, validation AP50 0.500, pixel IoU 0.750 (best), "
        "1:05 left\n"
    )
    assert reporter.last.step == 2
    assert torch.get_num_threads() == 1  # the shared test setting holds


def test_from_scratch_on_a_two_channel_image_then_predict(capsys, tmp_path):
    nuclei, labels = make_image(
        SyntheticConfig(shape=(96, 96), radius=(6.0, 10.0)), seed=2, dtype=np.uint16
    )
    cyto = np.where(labels > 0, 600, 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "two.tif", np.stack([nuclei, cyto]), imagej=True,
                     metadata={"axes": "CYX"})  # fmt: skip
    tifffile.imwrite(tmp_path / "two_labels.tif", labels)
    code, _, err = run(
        capsys, "train", "--image", tmp_path / "two.tif", "--labels", tmp_path / "two_labels.tif",
        "--model", "scratch", "--depth", "2", "--base-channels", "4", *FAST,
        "-o", tmp_path / "two_model.safetensors",
    )  # fmt: skip
    assert code == 0, err
    loaded = load_model(tmp_path / "two_model.safetensors")
    assert loaded.config.in_channels == 2 and loaded.metadata["in_channels"] == 2
    model = tmp_path / "two_model.safetensors"
    code, _, err = run(capsys, "predict", tmp_path / "two.tif", "-o", tmp_path / "out.tif",
                       "--model", model, "--device", "cpu")  # fmt: skip
    assert code == 0, err
    assert tifffile.imread(tmp_path / "out.tif").shape == (96, 96)
    # a one-channel image for a two-channel model: one clear line, exit 2
    tifffile.imwrite(tmp_path / "one.tif", nuclei)
    code, _, err = run(capsys, "predict", tmp_path / "one.tif", "-o", tmp_path / "one_out.tif",
                       "--model", model, "--device", "cpu")  # fmt: skip
    assert code == 2 and "expects 2" in err and len(err.strip().splitlines()) == 1
