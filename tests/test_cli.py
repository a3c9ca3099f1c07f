"""The ``napari-unet`` command line, run in-process through ``main([...])``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import ProgressReporter, main
from napari_unet.core.config import ModelConfig
from napari_unet.core.io.reading import read_image
from napari_unet.core.io.writing import write_labels
from napari_unet.core.network.metadata import new_metadata
from napari_unet.core.network.model import build_model
from napari_unet.core.network.weights import save_model
from napari_unet.core.progress import Progress

CONFIG = ModelConfig(depth=2, base_channels=4)

pytestmark = pytest.mark.usefixtures("isolated_models")  # see conftest.py


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A tiny instance model whose output is not trivially background."""
    model = build_model(CONFIG, seed=0)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 0.5, -0.5]))
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    return save_model(path, model, new_metadata(CONFIG, name="tiny"))


@pytest.fixture
def out_dir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def image_file(tmp_path: Path, name: str, data: np.ndarray, **kwargs) -> Path:
    path = tmp_path / name
    tifffile.imwrite(path, data, **kwargs)
    return path


def blobs(shape=(48, 40), dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float32)
    for cy, cx in rng.uniform(0, 1, (4, 2)) * shape:
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0)
    img = img / img.max() * (200 if dtype == np.uint8 else 4000)
    return (img + rng.uniform(0, 5, shape)).astype(dtype)


def assert_user_error(code: int, err: str, *folders: Path, contains: str = "") -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-unet: error: ")
    assert "Traceback" not in err
    assert contains.lower() in lines[0].lower()
    for folder in folders:
        assert list(folder.iterdir()) == [], f"files left behind in {folder}"


# --------------------------------------------------------------------------------------------
# bad input: exit code 2, one line, no traceback, nothing written


def test_missing_input(capsys, tmp_path, out_dir, model_file):
    code, _, err = run(
        capsys, "predict", tmp_path / "nope.tif", "-o", out_dir, "--model", model_file
    )
    assert_user_error(code, err, out_dir, contains="does not exist")


def test_empty_input(capsys, tmp_path, out_dir, model_file):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    code, _, err = run(capsys, "predict", empty, "-o", out_dir, "--model", model_file)
    assert_user_error(code, err, out_dir, contains="empty")


def test_corrupt_input(capsys, tmp_path, out_dir, model_file):
    good = image_file(tmp_path, "good.tif", blobs((64, 64)))
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(good.read_bytes()[:300])
    code, _, err = run(capsys, "predict", corrupt, "-o", out_dir, "--model", model_file)
    assert_user_error(code, err, out_dir, contains="corrupt.tif")


def test_non_image_input(capsys, tmp_path, out_dir, model_file):
    text = tmp_path / "notes.tif"
    text.write_text("these are my notes, not an image\n" * 20)
    code, _, err = run(capsys, "predict", text, "-o", out_dir, "--model", model_file)
    assert_user_error(code, err, out_dir, contains="notes.tif")


def test_unknown_model(capsys, tmp_path, out_dir):
    img = image_file(tmp_path, "img.tif", blobs())
    code, _, err = run(capsys, "predict", img, "-o", out_dir, "--model", "no-such-model")
    assert_user_error(code, err, out_dir, contains="no model named 'no-such-model'")


def test_missing_model_path(capsys, tmp_path, out_dir):
    img = image_file(tmp_path, "img.tif", blobs())
    code, _, err = run(capsys, "predict", img, "-o", out_dir, "--model", tmp_path / "m.safetensors")
    assert_user_error(code, err, out_dir, contains="does not exist")


def test_default_model_not_installed(capsys, tmp_path, out_dir, no_builtin_models):
    img = image_file(tmp_path, "img.tif", blobs())
    code, _, err = run(capsys, "predict", img, "-o", out_dir)
    assert_user_error(code, err, out_dir, contains="starter")
    assert "not installed" in err and "--model PATH" in err


def test_corrupt_model_file(capsys, tmp_path, out_dir, model_file):
    img = image_file(tmp_path, "img.tif", blobs())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(model_file.read_bytes()[:1000])
    code, _, err = run(capsys, "predict", img, "-o", out_dir, "--model", bad)
    assert_user_error(code, err, out_dir, contains="bad.safetensors")
    bad.write_bytes(np.random.default_rng(1).bytes(5000))
    code, _, err = run(capsys, "predict", img, "-o", out_dir, "--model", bad)
    assert_user_error(code, err, out_dir, contains="bad.safetensors")


@pytest.mark.parametrize("value", ["0", "-16", "abc"])
def test_non_positive_tile_size(capsys, tmp_path, out_dir, model_file, value):
    img = image_file(tmp_path, "img.tif", blobs())
    code, _, err = run(
        capsys, "predict", img, "-o", out_dir, "--model", model_file, f"--tile-size={value}"
    )
    assert_user_error(code, err, out_dir, contains="--tile-size")


def test_unknown_device(capsys, tmp_path, out_dir, model_file):
    img = image_file(tmp_path, "img.tif", blobs())
    code, _, err = run(
        capsys, "predict", img, "-o", out_dir, "--model", model_file, "--device", "tpu"
    )
    assert_user_error(code, err, out_dir, contains="tpu")


def test_fp16_on_the_cpu_is_a_user_error(capsys, tmp_path, out_dir, model_file):
    img = image_file(tmp_path, "img.tif", blobs())
    code, _, err = run(
        capsys,
        "predict",
        img,
        "-o",
        out_dir,
        "--model",
        model_file,
        "--device",
        "cpu",
        "--precision",
        "fp16",
    )
    assert_user_error(code, err, out_dir, contains="fp16")


def test_bf16_precision_on_the_cpu(capsys, tmp_path, out_dir, model_file):
    """bf16 runs where the CPU supports it and gives nearly the fp32 probabilities."""
    from napari_unet.core.network.device import cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no bfloat16 support")
    img = image_file(tmp_path, "img.tif", blobs())
    results = {}
    for precision in ("fp32", "bf16"):
        probs = tmp_path / f"probs_{precision}.tif"
        code, _, err = run(
            capsys,
            "predict",
            img,
            "-o",
            out_dir / f"{precision}.tif",
            "--model",
            model_file,
            "--device",
            "cpu",
            "--precision",
            precision,
            "--probabilities",
            probs,
        )
        assert code == 0, err
        results[precision] = read_image(probs).data
    assert np.abs(results["fp32"] - results["bf16"]).max() < 0.1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(capsys, tmp_path, out_dir, model_file):
    img = image_file(tmp_path, "img.tif", blobs())
    code, _, err = run(
        capsys, "predict", img, "-o", out_dir, "--model", model_file, "--device", "cuda"
    )
    assert_user_error(code, err, out_dir, contains="cuda")


def test_output_folder_does_not_exist(capsys, tmp_path, model_file):
    img = image_file(tmp_path, "img.tif", blobs())
    missing = tmp_path / "missing"
    for target in (missing, missing / "labels.tif"):
        code, _, err = run(capsys, "predict", img, "-o", target, "--model", model_file)
        assert_user_error(code, err, contains="does not exist")
        assert not missing.exists()


def test_probabilities_folder_does_not_exist(capsys, tmp_path, out_dir, model_file):
    img = image_file(tmp_path, "img.tif", blobs())
    code, _, err = run(
        capsys, "predict", img, "-o", out_dir, "--model", model_file,
        "--probabilities", tmp_path / "nowhere" / "p.tif",
    )  # fmt: skip
    assert_user_error(code, err, out_dir, contains="nowhere")


def test_file_name_output_with_several_inputs(capsys, tmp_path, out_dir, model_file):
    a = image_file(tmp_path, "a.tif", blobs())
    b = image_file(tmp_path, "b.tif", blobs())
    code, _, err = run(capsys, "predict", a, b, "-o", out_dir / "x.tif", "--model", model_file)
    assert_user_error(code, err, out_dir, contains="folder")


def test_channel_mismatch(capsys, tmp_path, out_dir, model_file):
    two = image_file(tmp_path, "two.tif", np.stack([blobs(), blobs()]), imagej=True,
                     metadata={"axes": "CYX"})  # fmt: skip
    code, _, err = run(capsys, "predict", two, "-o", out_dir, "--model", model_file)
    assert_user_error(code, err, out_dir, contains="channel")


def test_usage_errors(capsys, out_dir):
    code, _, err = run(capsys, "predict", "-o", out_dir)
    assert_user_error(code, err, out_dir)
    code, _, err = run(capsys, "frobnicate")
    assert_user_error(code, err, contains="frobnicate")


def test_evaluate_shape_mismatch(capsys, tmp_path):
    a = write_labels(tmp_path / "a.tif", np.zeros((20, 20), np.uint16))
    b = write_labels(tmp_path / "b.tif", np.zeros((20, 21), np.uint16))
    code, out, err = run(capsys, "evaluate", a, b)
    assert_user_error(code, err, contains="different shapes")
    assert out == ""


def test_evaluate_missing_file(capsys, tmp_path):
    a = write_labels(tmp_path / "a.tif", np.zeros((20, 20), np.uint16))
    code, out, err = run(capsys, "evaluate", a, tmp_path / "gt.tif")
    assert_user_error(code, err, contains="gt.tif")
    assert out == ""


def test_unexpected_error_exit_1(capsys, tmp_path, out_dir, model_file, monkeypatch):
    import napari_unet.core.network.registry as registry

    def boom(name):
        raise RuntimeError("something broke")

    monkeypatch.setattr(registry, "get_model", boom)
    img = image_file(tmp_path, "img.tif", blobs())
    code, _, err = run(capsys, "predict", img, "-o", out_dir, "--model", model_file)
    assert code == 1
    assert "something broke" in err and "Traceback" not in err and "--debug" in err
    code, _, err = run(capsys, "predict", img, "-o", out_dir, "--model", model_file, "--debug")
    assert code == 1 and "Traceback" in err
    monkeypatch.setenv("NAPARI_UNET_DEBUG", "1")
    code, _, err = run(capsys, "predict", img, "-o", out_dir, "--model", model_file)
    assert code == 1 and "Traceback" in err


# --------------------------------------------------------------------------------------------
# odd but valid input


def predict_ok(capsys, inputs, output, model_file, *extra) -> str:
    code, out, err = run(capsys, "predict", *inputs, "-o", output, "--model", model_file, *extra)
    assert code == 0, err
    assert "Traceback" not in err
    assert out == ""  # stdout stays clean for scripts
    return err


def check_labels(path: Path, shape, axes: str) -> np.ndarray:
    labels = read_image(path, memmap=False)
    assert labels.data.shape == shape
    assert labels.axes == axes
    assert labels.data.dtype in (np.uint16, np.uint32)
    return np.asarray(labels.data)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dtypes(capsys, tmp_path, out_dir, model_file, dtype):
    img = image_file(tmp_path, "img.tif", blobs(dtype=dtype), resolution=(2.0, 2.0),
                     imagej=True, metadata={"unit": "um"})  # fmt: skip
    predict_ok(capsys, [img], out_dir, model_file)
    assert [p.name for p in out_dir.iterdir()] == ["img_labels.tif"]
    check_labels(out_dir / "img_labels.tif", (48, 40), "YX")
    assert read_image(out_dir / "img_labels.tif").pixel_size == pytest.approx((0.5, 0.5))


def test_nan_pixels(capsys, tmp_path, out_dir, model_file):
    data = blobs(dtype=np.float32)
    data[5:15, 3:9] = np.nan
    data[0] = np.inf
    img = image_file(tmp_path, "nan.tif", data)
    predict_ok(capsys, [img], out_dir / "nan_out.tif", model_file, "--probabilities", out_dir)
    check_labels(out_dir / "nan_out.tif", (48, 40), "YX")
    probs = np.asarray(read_image(out_dir / "nan_probabilities.tif", memmap=False).data)
    assert np.isfinite(probs).all()


def test_rgb_with_one_channel_model(capsys, tmp_path, out_dir, model_file):
    rgb = np.stack([blobs(dtype=np.uint8)] * 3, axis=-1)
    img = image_file(tmp_path, "rgb.tif", rgb, photometric="rgb")
    predict_ok(capsys, [img], out_dir, model_file)
    check_labels(out_dir / "rgb_labels.tif", (48, 40), "YX")


def test_one_pixel_high_image(capsys, tmp_path, out_dir, model_file):
    img = image_file(tmp_path, "line.tif", blobs((1, 57)))
    predict_ok(capsys, [img], out_dir, model_file)
    check_labels(out_dir / "line_labels.tif", (1, 57), "YX")


def test_stack_keeps_axes_pixel_size_and_probabilities(capsys, tmp_path, out_dir, model_file):
    stack = np.stack([blobs(), blobs()[::-1], blobs()[:, ::-1]])
    img = image_file(tmp_path, "stack.tif", stack, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 2.0})  # fmt: skip
    probs_path = out_dir / "p.tif"
    predict_ok(capsys, [img], out_dir, model_file, "--probabilities", probs_path,
               "--tile-size", "16", "--overlap", "8", "--batch-size", "3")  # fmt: skip
    labels = read_image(out_dir / "stack_labels.tif", memmap=False)
    assert labels.axes == "ZYX" and labels.data.shape == (3, 48, 40)
    assert labels.pixel_size == pytest.approx((0.25, 0.25))
    assert labels.z_spacing == pytest.approx(2.0)
    probs = read_image(probs_path, memmap=False)
    assert probs.data.dtype == np.float32
    assert probs.axes == "ZCYX" and probs.data.shape == (3, 3, 48, 40)  # ImageJ's order
    np.testing.assert_allclose(np.asarray(probs.data).sum(axis=1), 1.0, atol=1e-4)


def test_image_smaller_than_a_tile(capsys, tmp_path, out_dir, model_file):
    img = image_file(tmp_path, "small.tif", blobs((7, 11)))
    predict_ok(capsys, [img], out_dir, model_file, "--tile-size", "512")
    check_labels(out_dir / "small_labels.tif", (7, 11), "YX")


def test_tiling_options_do_not_change_the_result(capsys, tmp_path, out_dir, model_file):
    img = image_file(tmp_path, "img.tif", blobs((70, 90)))
    predict_ok(capsys, [img], out_dir / "whole.tif", model_file, "--tile-size", "1024",
               "--probabilities", out_dir / "whole_p.tif")  # fmt: skip
    predict_ok(capsys, [img], out_dir / "tiled.tif", model_file, "--tile-size", "32", "--exact",
               "--probabilities", out_dir / "tiled_p.tif")  # fmt: skip
    whole = np.asarray(read_image(out_dir / "whole_p.tif", memmap=False).data)
    tiled = np.asarray(read_image(out_dir / "tiled_p.tif", memmap=False).data)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_several_inputs_into_a_folder(capsys, tmp_path, out_dir, model_file):
    a = image_file(tmp_path, "a.ome.tif", blobs(), ome=True)
    b = image_file(tmp_path, "b.tiff", blobs((30, 30), np.uint8))
    err = predict_ok(capsys, [a, b], out_dir, model_file)
    assert sorted(p.name for p in out_dir.iterdir()) == ["a_labels.tif", "b_labels.tif"]
    check_labels(out_dir / "b_labels.tif", (30, 30), "YX")
    assert "a.ome.tif" in err and "b.tiff" in err  # progress on stderr


def test_quiet_prints_nothing(capsys, tmp_path, out_dir, model_file):
    img = image_file(tmp_path, "img.tif", blobs())
    err = predict_ok(capsys, [img], out_dir, model_file, "-q")
    assert err == ""


def test_same_names_would_collide(capsys, tmp_path, out_dir, model_file):
    (tmp_path / "x").mkdir()
    a = image_file(tmp_path, "img.tif", blobs())
    b = image_file(tmp_path / "x", "img.tif", blobs())
    code, _, err = run(capsys, "predict", a, b, "-o", out_dir, "--model", model_file)
    assert_user_error(code, err, out_dir, contains="img_labels.tif")


# --------------------------------------------------------------------------------------------
# evaluate and models


def test_evaluate_prints_json(capsys, tmp_path):
    gt = np.zeros((30, 30), np.uint16)
    gt[2:10, 2:10] = 1
    gt[15:25, 15:25] = 2
    pred = gt.copy()
    pred[15:25, 15:25] = 0  # one object missed
    gt_path = write_labels(tmp_path / "gt.tif", gt)
    pred_path = write_labels(tmp_path / "pred.tif", pred)
    code, out, err = run(capsys, "evaluate", pred_path, gt_path)
    assert code == 0, err
    result = json.loads(out)
    assert result["n_true"] == 2 and result["n_pred"] == 1
    assert result["tp"] == 1 and result["fn"] == 1 and result["fp"] == 0
    assert result["ap_50"] == pytest.approx(0.5)

    mask = np.zeros((30, 30), np.uint8)
    mask[:12, :12] = 1  # only the region around the found object was reviewed
    mask_path = tmp_path / "mask.tif"
    tifffile.imwrite(mask_path, mask)
    code, out, err = run(capsys, "evaluate", pred_path, gt_path, "--mask", mask_path)
    assert code == 0, err
    assert json.loads(out)["ap_50"] == pytest.approx(1.0)


def by_name_metrics(report: dict, name: str) -> dict:
    return next(m for m in report["models"] if m["name"] == name)["metrics"]


def test_models_lists_user_models(capsys, isolated_models, model_file, no_builtin_models):
    shutil.copy(model_file, isolated_models / "nuclei.safetensors")
    (isolated_models / "broken.safetensors").write_bytes(b"\0" * 50)
    meta = new_metadata(CONFIG, metrics={"ap_50": float("nan"), "loss": np.float32(0.25)})
    save_model(isolated_models / "unvalidated.safetensors", build_model(CONFIG), meta)
    code, out, err = run(capsys, "models", "--json")
    assert code == 0, err

    def strict(token):
        raise ValueError(f"not strict JSON: {token}")

    report = json.loads(out, parse_constant=strict)
    assert by_name_metrics(report, "unvalidated") == {"ap_50": None, "loss": 0.25}
    by_name = {m["name"]: m for m in report["models"]}
    assert by_name["nuclei"]["task"] == "instances"
    assert by_name["nuclei"]["builtin"] is False
    assert by_name["broken"]["error"]
    assert report["user_dir"] == str(isolated_models)
    assert report["default_installed"] is False

    code, out, err = run(capsys, "models")
    assert code == 0, err
    assert "nuclei" in out and "broken" in out and "unvalidated" in out
    assert "not installed" in out

    out_dir = isolated_models.parent / "o"
    out_dir.mkdir()
    img = image_file(isolated_models.parent, "img.tif", blobs())
    predict_ok(capsys, [img], out_dir, "nuclei")  # found by name
    assert (out_dir / "img_labels.tif").is_file()


# --------------------------------------------------------------------------------------------
# progress and the installed entry point


def test_progress_line_on_a_terminal(terminal):
    stream = terminal
    reporter = ProgressReporter(stream, "img.tif")
    for done in range(1, 5):
        reporter(Progress("predict", done, 4, f"tile batch {done}/4"))
    reporter.close()
    text = stream.getvalue()
    assert text.startswith("\r") and text.endswith("\n")
    assert "100%" in text and text.count("\n") == 1


def test_installed_console_script_help():
    script = shutil.which("napari-unet", path=str(Path(sys.executable).parent))
    script = script or shutil.which("napari-unet")
    if script is None:
        pytest.skip("the napari-unet console script is not installed")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "predict" in result.stdout and "evaluate" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "napari_unet", "models", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--json" in result.stdout
