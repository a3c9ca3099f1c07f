"""Export a napari-unet model as a bioimage.io model package (a ``.zip``).

The package is described with ``bioimageio.spec``'s model description classes (format 0.5; the
version comes from the library, never from here) and holds:

- ``pytorch_state_dict`` weights whose architecture is :class:`.architecture.UNet2d`, imported from
  the installed ``napari_unet`` package with the model's config as keyword arguments;
- TorchScript weights (traced on the CPU in float32), and ONNX weights (opset 17) on request;
- the napari-unet model file itself as an attachment, so napari-unet reads the package back
  without unpickling anything;
- one input ``raw`` (batch, channel, y, x) whose y/x sizes are ``min + n * step`` with ``step`` the
  network's stride and ``min`` large enough for the tiling halo, with the pixel size as ``scale``
  in micrometres; preprocessing ``scale_range`` with the model's percentiles;
- one output ``probabilities`` with the class names, the tiling halo and postprocessing
  ``softmax``: the weights give logits, the softmax makes the probabilities that the test output
  holds;
- float32 test input and output tensors computed on the CPU, a cover image, a README with the
  validation metrics, authors, license, citations, tags, and the provenance (parent model,
  training settings, metrics) in ``config.bioimageio.training`` and ``config.napari_unet``.

:func:`export_model` runs ``bioimageio.core.test_model`` on the package and writes nothing when
the test fails.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import to_dict
from ..errors import UserError
from . import EXTRA_HINT
from .architecture import CALLABLE, IMPORT_FROM

if TYPE_CHECKING:
    from ..network.weights import LoadedModel

logger = logging.getLogger(__name__)

INPUT_ID = "raw"
OUTPUT_ID = "probabilities"
UNET_CITATION = (
    "Ronneberger, O., Fischer, P., Brox, T. (2015). U-Net: Convolutional Networks for Biomedical "
    "Image Segmentation. MICCAI 2015, LNCS 9351, 234-241.",
    "10.1007/978-3-319-24574-4_28",
)
DEFAULT_LICENSE = "BSD-3-Clause"
TEST_SIZE = 256
ONNX_OPSET = 17


def _spec() -> Any:
    try:
        from bioimageio.spec.model import v0_5
    except ImportError as exc:
        raise UserError(
            f"exporting a bioimage.io package needs bioimageio.spec: {EXTRA_HINT}"
        ) from exc
    return v0_5


def _sizes(stride: int, halo: int) -> tuple[int, int]:
    """(min, step) of the input's y/x sizes: multiples of the stride, more than twice the halo."""
    minimum = stride * (2 * halo // stride + 1)
    return minimum, stride


def _test_size(minimum: int, step: int) -> int:
    return minimum + step * max(0, math.ceil((TEST_SIZE - minimum) / step))


def _test_image(loaded: LoadedModel, size: int, image: np.ndarray | None) -> np.ndarray:
    """float32 (1, C, size, size): a crop of ``image`` ((Y, X) or (C, Y, X)), else synthetic
    nuclei."""
    channels = loaded.config.in_channels
    if image is None:
        from ..synthetic.config import SAMPLE_CONFIG
        from ..synthetic.images import make_image

        config = type(SAMPLE_CONFIG)(**{**to_dict(SAMPLE_CONFIG), "shape": (size, size)})
        image, _ = make_image(config, np.random.default_rng(0))
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[None]
    if image.shape[0] != channels:
        image = np.repeat(image[:1], channels, axis=0)
    pad = [(0, 0), (0, max(0, size - image.shape[1])), (0, max(0, size - image.shape[2]))]
    image = np.pad(image, pad, mode="reflect")[:, :size, :size]
    return np.ascontiguousarray(image[None], dtype=np.float32)


def _reference_output(loaded: LoadedModel, test_input: np.ndarray) -> np.ndarray:
    """float32 (1, K, Y, X): what the package must give for ``test_input``: scale_range with the
    model's percentiles over y and x per channel, the network on the CPU in float32, softmax."""
    low, high = loaded.normalize.low, loaded.normalize.high
    lo = np.percentile(test_input, low, axis=(2, 3), keepdims=True)
    hi = np.percentile(test_input, high, axis=(2, 3), keepdims=True)
    normalised = ((test_input - lo) / (hi - lo + 1e-6)).astype(np.float32)
    net = loaded.model.to("cpu").eval()
    with torch.inference_mode():
        logits = net(torch.from_numpy(normalised))
        return torch.softmax(logits.float(), dim=1).numpy().astype(np.float32)


def _write_weights(loaded: LoadedModel, folder: Path, example: np.ndarray, onnx: bool) -> dict:
    net = loaded.model.to("cpu").eval().float()
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    files = {"state_dict": folder / "weights.pt", "torchscript": folder / "weights_torchscript.pt"}
    torch.save(state, files["state_dict"])
    with torch.inference_mode(), warnings.catch_warnings():
        # sizes are multiples of the stride: the padding branch that tracing fixes is never taken
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.13 deprecates TorchScript, which is what deepImageJ and QuPath run
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(net, torch.from_numpy(example), check_trace=False)
    traced.save(str(files["torchscript"]))
    if onnx:
        files["onnx"] = folder / "weights.onnx"
        _export_onnx(net, example, files["onnx"])
    return files


def _export_onnx(net: torch.nn.Module, example: np.ndarray, path: Path) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise UserError("ONNX weights need the onnx package: pip install onnx onnxscript") from exc
    dynamic = {"input": {0: "batch", 2: "y", 3: "x"}, "output": {0: "batch", 2: "y", 3: "x"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        _onnx_export(net, example, path, dynamic)


def _onnx_export(net: torch.nn.Module, example: np.ndarray, path: Path, dynamic: dict) -> None:
    torch.onnx.export(
        net, (torch.from_numpy(example),), str(path), input_names=["input"],
        output_names=["output"], opset_version=ONNX_OPSET, dynamic_axes=dynamic, dynamo=False,
    )  # fmt: skip


def _cover(folder: Path, test_input: np.ndarray, probs: np.ndarray, task: str) -> Path:
    """A 2:1 PNG: the normalised test image beside its labels in colour."""
    from PIL import Image
    from skimage.color import label2rgb

    from ..inference.postprocess import labels_from_probabilities
    from ..network.normalize import percentile_normalize

    gray = np.clip(percentile_normalize(test_input[0, 0], channel_axis=None), 0, 1)
    labels = labels_from_probabilities(probs[0], task)
    overlay = label2rgb(labels, image=gray, alpha=0.4, bg_label=0)
    left = np.repeat(gray[..., None], 3, axis=2)
    both = (np.concatenate([left, overlay], axis=1) * 255).astype(np.uint8)
    path = folder / "cover.png"
    Image.fromarray(both).save(path)
    return path


def _metrics_lines(metrics: dict[str, Any]) -> list[str]:
    names = {"ap_50": "AP at IoU 0.5", "pixel_iou": "foreground IoU", "score": "score"}
    lines = []
    baseline = metrics.get("baseline") or {}
    for key, label in names.items():
        value = metrics.get(key)
        if isinstance(value, int | float):
            before = baseline.get(key)
            extra = (
                f" (before fine-tuning: {before:.3f})" if isinstance(before, int | float) else ""
            )
            lines.append(f"| {label} | {value:.3f}{extra} |")
    return lines


def _readme(loaded: LoadedModel, folder: Path, description: str, authors: Sequence[str]) -> Path:
    prov = loaded.metadata.get("provenance") or {}
    settings = prov.get("settings") or {}
    metric_lines = _metrics_lines(prov.get("metrics") or {})
    pixel = loaded.pixel_size
    text = [
        f"# {loaded.name}",
        "",
        description,
        "",
        "A 2D U-Net (Ronneberger et al. 2015) made with napari-unet. Input: one image "
        f"(batch, channel, y, x) with {loaded.config.in_channels} channel(s), scaled by the "
        f"{loaded.normalize.low:g} and {loaded.normalize.high:g} percentiles of each channel. "
        f"Output: per-pixel probabilities of {', '.join(loaded.class_names)} (softmax of the "
        "network's logits).",
        "",
        f"Task: {loaded.task}. Pixel size of the training data: "
        + (f"{' x '.join(f'{v:g}' for v in pixel)} µm." if pixel else "not recorded."),
        "",
        "## Validation",
        "",
    ]
    if metric_lines:
        text += ["Held-out annotated blocks of the training images:", "", "| metric | value |",
                 "|---|---|", *metric_lines]  # fmt: skip
    else:
        text.append("No validation metrics were recorded for this model.")
    text += [
        "",
        "## Training",
        "",
        f"Fine-tuned from: {prov.get('parent') or 'none (trained from scratch)'}. "
        f"Settings: epochs {settings.get('epochs_done', '?')}, "
        f"steps {settings.get('steps', '?')}, batch size {settings.get('batch_size', '?')}, "
        f"patch size {settings.get('patch_size', '?')}, "
        f"learning rate {settings.get('learning_rate', '?')}.",
        "",
        "## Use",
        "",
        "In napari-unet: `napari-unet predict IMAGE -o OUT --model THIS.zip`, or import it with "
        "`napari-unet import-model THIS.zip`. Elsewhere: the TorchScript weights run in "
        "deepImageJ, QuPath and any bioimage.io consumer; instance labels come from a seeded "
        "watershed of the interior probabilities within the foreground.",
        "",
        f"Authors: {', '.join(authors)}. Made with napari-unet {prov.get('version', '')}.",
    ]
    path = folder / "README.md"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def _training_details(v0_5: Any, loaded: LoadedModel) -> Any:
    settings = (loaded.metadata.get("provenance") or {}).get("settings") or {}

    def number(key: str) -> float | None:
        value = settings.get(key)
        return (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )

    details: dict[str, Any] = {
        "training_preprocessing": (
            f"percentile normalisation ({loaded.normalize.low:g}, {loaded.normalize.high:g}) "
            "per channel; elastic deformation, flips, rotations, intensity augmentation"
        ),
        "training_epochs": number("epochs_done"),
        "training_batch_size": number("batch_size"),
        "initial_learning_rate": number("learning_rate"),
        "loss_function": "cross-entropy weighted by the U-Net border weight map",
        "optimizer": "AdamW",
    }
    if number("weight_decay") is not None:
        details["optimizer_kwargs"] = {"weight_decay": number("weight_decay")}
    return v0_5.TrainingDetails(**{k: v for k, v in details.items() if v is not None})


def _axes(v0_5: Any, loaded: LoadedModel, halo: int) -> tuple[list, list]:
    """The input and output axes: batch, channel, y, x (sizes, pixel size, halo)."""
    minimum, step = _sizes(loaded.config.stride, halo)
    pixel = loaded.pixel_size
    scale = {"y": pixel[-2], "x": pixel[-1]} if pixel else {"y": 1.0, "x": 1.0}
    unit = "micrometer" if pixel else None
    channels = [f"channel{i}" for i in range(loaded.config.in_channels)]
    inputs = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=channels)]
    outputs = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=list(loaded.class_names))]
    for name in ("y", "x"):
        axis = v0_5.AxisId(name)
        size = v0_5.ParameterizedSize(min=minimum, step=step)
        inputs.append(v0_5.SpaceInputAxis(id=axis, size=size, scale=scale[name], unit=unit))
        ref = v0_5.SizeReference(tensor_id=v0_5.TensorId(INPUT_ID), axis_id=axis)
        outputs.append(v0_5.SpaceOutputAxisWithHalo(id=axis, size=ref, halo=halo,
                                                    scale=scale[name], unit=unit))  # fmt: skip
    return inputs, outputs


def _tensors(v0_5: Any, loaded: LoadedModel, halo: int, files: dict[str, Path]) -> tuple:
    in_axes, out_axes = _axes(v0_5, loaded, halo)
    kwargs = v0_5.ScaleRangeKwargs(
        axes=[v0_5.AxisId("y"), v0_5.AxisId("x")],
        min_percentile=loaded.normalize.low,
        max_percentile=loaded.normalize.high,
    )
    inputs = v0_5.InputTensorDescr(
        id=v0_5.TensorId(INPUT_ID),
        description="the raw image, float32",
        axes=in_axes,
        test_tensor=v0_5.FileDescr(source=files["test_input"]),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[v0_5.ScaleRangeDescr(kwargs=kwargs)],
    )
    outputs = v0_5.OutputTensorDescr(
        id=v0_5.TensorId(OUTPUT_ID),
        description="class probabilities (softmax of the network's logits)",
        axes=out_axes,
        test_tensor=v0_5.FileDescr(source=files["test_output"]),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        postprocessing=[v0_5.SoftmaxDescr(kwargs=v0_5.SoftmaxKwargs(axis=v0_5.AxisId("channel")))],
    )
    return inputs, outputs


def _weights(v0_5: Any, loaded: LoadedModel, files: dict[str, Path]) -> Any:
    version = v0_5.Version(torch.__version__.split("+")[0])
    architecture = v0_5.ArchitectureFromLibraryDescr(
        callable=v0_5.Identifier(CALLABLE), import_from=IMPORT_FROM,
        kwargs=to_dict(loaded.config),
    )  # fmt: skip
    extra = {}
    if "onnx" in files:
        extra["onnx"] = v0_5.OnnxWeightsDescr(source=files["onnx"], opset_version=ONNX_OPSET,
                                              parent="pytorch_state_dict")  # fmt: skip
    return v0_5.WeightsDescr(
        pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
            source=files["state_dict"], architecture=architecture, pytorch_version=version
        ),
        torchscript=v0_5.TorchscriptWeightsDescr(
            source=files["torchscript"], pytorch_version=version, parent="pytorch_state_dict"
        ),
        **extra,
    )


def _config(v0_5: Any, loaded: LoadedModel) -> Any:
    from ..network.model import count_parameters

    bioimageio = v0_5.BioimageioConfig(
        training=_training_details(v0_5, loaded),
        architecture_type="U-Net",
        architecture_description=(
            f"2D U-Net, depth {loaded.config.depth}, {loaded.config.base_channels} base "
            f"channels, {loaded.config.norm} normalisation, {loaded.config.upsampling} upsampling"
        ),
        task="instance segmentation" if loaded.task == "instances" else "semantic segmentation",
        model_parameter_count=count_parameters(loaded.model),
    )
    metadata = json.loads(json.dumps(loaded.metadata, default=str))
    return v0_5.Config(bioimageio=bioimageio, napari_unet=metadata)


def _tags(loaded: LoadedModel) -> list[str]:
    tags = ["unet", "2d", "pytorch", "napari-unet", "segmentation", "fluorescence-light-microscopy"]
    tags.append("instance-segmentation" if loaded.task == "instances" else "semantic-segmentation")
    if loaded.task == "instances":
        tags.append("nuclei")
    return tags


def _halo(loaded: LoadedModel) -> int:
    from ..inference.tiling import default_halo, resolve_halo

    tiling = loaded.tiling
    halo = (
        resolve_halo(tiling, loaded.config) if tiling is not None else default_halo(loaded.config)
    )
    stride = loaded.config.stride
    return max(stride, stride * math.ceil(halo / stride))


def build_description(
    loaded: LoadedModel,
    folder: Path,
    authors: Sequence[str],
    license: str = DEFAULT_LICENSE,
    description: str | None = None,
    test_image: np.ndarray | None = None,
    onnx: bool = False,
) -> Any:
    """Write the package's files into ``folder`` and return its ``ModelDescr`` (not yet tested).

    Args:
        loaded: the model to export.
        folder: an empty folder for the files (weights, test tensors, cover, README).
        authors: the authors' names (at least one).
        license: an SPDX license identifier.
        description: one paragraph; default: the model file's description.
        test_image: (Y, X) or (C, Y, X) image to crop the test input from; default synthetic.
        onnx: also write ONNX weights (needs the ``onnx`` package).
    """
    v0_5 = _spec()
    from ..network.weights import save_model

    if not authors:
        raise UserError("a bioimage.io package needs at least one author: give --author NAME")
    halo = _halo(loaded)
    minimum, step = _sizes(loaded.config.stride, halo)
    test_input = _test_image(loaded, _test_size(minimum, step), test_image)
    test_output = _reference_output(loaded, test_input)
    files = _write_weights(loaded, folder, test_input, onnx)
    files["test_input"], files["test_output"] = (
        folder / "test_input.npy",
        folder / "test_output.npy",
    )
    np.save(files["test_input"], test_input)
    np.save(files["test_output"], test_output)
    native = save_model(folder / "napari_unet.safetensors", loaded.model, loaded.metadata)
    text = (
        description
        or loaded.metadata.get("description")
        or (f"napari-unet {loaded.task} model '{loaded.name}' for fluorescence microscopy images.")
    )
    readme = _readme(loaded, folder, str(text), authors)
    inputs, outputs = _tensors(v0_5, loaded, halo, files)
    cite_text, doi = UNET_CITATION
    return v0_5.ModelDescr(
        name=_package_name(loaded.name),
        description=str(text)[:1024],
        authors=[v0_5.Author(name=name) for name in authors],
        cite=[v0_5.CiteEntry(text=cite_text, doi=v0_5.Doi(doi))],
        license=v0_5.LicenseId(license),
        tags=_tags(loaded),
        documentation=v0_5.FileDescr(source=readme),
        covers=[v0_5.FileDescr(source=_cover(folder, test_input, test_output, loaded.task))],
        attachments=[v0_5.FileDescr(source=native)],
        inputs=[inputs],
        outputs=[outputs],
        weights=_weights(v0_5, loaded, files),
        config=_config(v0_5, loaded),
    )


def _package_name(name: str) -> str:
    """A package name as bioimage.io allows it (letters, digits, spaces, ``_-()``)."""
    cleaned = "".join(c if c.isalnum() or c in " _-()" else " " for c in name).strip()
    cleaned = " ".join(cleaned.split()) or "napari-unet model"
    return cleaned if len(cleaned) >= 5 else f"napari-unet {cleaned}"


def check_package(descr: Any) -> None:
    """Run ``bioimageio.core``'s ``test_model`` on ``descr`` (every weight format, on the CPU).

    Raises:
        UserError: the test fails; the message gives the first failures.
    """
    try:
        from bioimageio.core import test_model
    except ImportError as exc:
        raise UserError(
            f"testing a bioimage.io package needs bioimageio.core: {EXTRA_HINT}"
        ) from exc
    summary = test_model(descr, devices=["cpu"], determinism="full")
    if summary.status == "passed":
        return
    failures = []
    for detail in summary.details:
        if detail.status == "failed":
            errors = "; ".join(str(e.msg) for e in detail.errors[:2])
            failures.append(f"{detail.name}: {errors}" if errors else detail.name)
    raise UserError("the package fails bioimageio's test: " + " | ".join(failures[:3]))


def export_model(
    loaded: LoadedModel,
    output: str | Path,
    authors: Sequence[str],
    license: str = DEFAULT_LICENSE,
    description: str | None = None,
    test_image: np.ndarray | None = None,
    onnx: bool = False,
) -> Path:
    """Write ``loaded`` as a bioimage.io package ``output`` (a ``.zip``), tested first.

    Args: as for :func:`build_description`.

    Returns:
        The package written.

    Raises:
        UserError: the extra is not installed, no author, or the package fails the test (then
            nothing is written).
    """
    from ..io.storage import atomic_path

    _spec()  # a clear message when the extra is missing
    from bioimageio.spec import save_bioimageio_package

    output = Path(output).expanduser()
    if output.suffix.lower() != ".zip":
        raise UserError(f"{output}: a bioimage.io package is a .zip file")
    if not output.parent.is_dir():
        raise UserError(f"cannot write {output}: the folder {output.parent} does not exist")
    with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as tmp:
        descr = build_description(loaded, Path(tmp), authors, license, description, test_image,
                                  onnx)  # fmt: skip
        check_package(descr)
        with atomic_path(output) as target:
            save_bioimageio_package(descr, output_path=Path(target))
    logger.info("wrote bioimage.io package %s", output)
    return output
