"""Read a bioimage.io model package (``.zip`` or ``rdf.yaml``) as a napari-unet model.

What is accepted, in this order of preference:

1. a package napari-unet exported: its attached napari-unet model file (safetensors, no pickle);
2. ``pytorch_state_dict`` weights whose architecture is napari-unet's own
   (:class:`.architecture.UNet2d` imported from the installed package), read with
   ``torch.load(weights_only=True)``, which restores tensors and nothing else;
3. TorchScript weights;
4. ONNX weights, through ``onnxruntime`` when it is installed.

Refused, with a message that says why: state dicts whose architecture is a source file in the
package or a callable from another library (building the network would run that code), Keras and
TensorFlow weights, full pickles, 3D packages and fixed input sizes.

Networks of another architecture (3 and 4) run through :class:`.adapter.PackageNet`, which gives
them the (B, C, H, W) -> logits interface of napari-unet's U-Net; the halo, input sizes,
normalisation and class names come from the package. Only outputs named background, interior,
boundary make instance labels (seeded watershed); any other output gives semantic labels. They
can only predict: fine-tuning needs napari-unet's own architecture.
"""

from __future__ import annotations

import io
import logging
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import ModelFileError, ModelNotFoundError, UserError
from . import EXTRA_HINT
from .adapter import PackageNet, TensorLayout
from .architecture import CALLABLE, IMPORT_FROM

logger = logging.getLogger(__name__)

NATIVE_ATTACHMENT = "napari_unet.safetensors"
DEFAULT_HALO = 32


def _describe(path: Path) -> Any:
    """The package's model description (format 0.5; older formats are converted)."""
    try:
        from bioimageio.spec import InvalidDescr, load_model_description
    except ImportError as exc:
        raise UserError(f"{path}: reading a bioimage.io package needs bioimageio.spec: "
                        f"{EXTRA_HINT}") from exc  # fmt: skip
    if not path.exists():
        raise ModelNotFoundError(f"model package {path} does not exist")
    if not path.is_file() and not path.is_dir():  # a FIFO would block, /dev/zero fill memory
        raise ModelFileError(f"{path} is not a regular file (a FIFO or a device)")
    try:
        descr = load_model_description(path, format_version="latest", perform_io_checks=False)
    except RecursionError as exc:
        raise ModelFileError(
            f"{path}: not a valid bioimage.io model package (its rdf.yaml is nested too deeply)"
        ) from exc
    except (ValueError, OSError) as exc:
        raise ModelFileError(
            f"{path}: not a valid bioimage.io model package ({_first_reason(exc)})"
        ) from exc
    except Exception as exc:
        if not _is_yaml_error(exc):
            raise
        raise ModelFileError(
            f"{path}: not a valid bioimage.io model package (its rdf.yaml is not valid YAML: "
            f"{_first_reason(exc)})"
        ) from exc
    if isinstance(descr, InvalidDescr):
        raise ModelFileError(f"{path}: not a valid bioimage.io model package")
    return descr


def _first_reason(exc: BaseException) -> str:
    """The first line of ``exc`` that says something, with the line after a heading ending in
    ':' (``Invalid model description:`` then ``name: ...``)."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip(" -")]
    if not lines:
        return type(exc).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def _is_yaml_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a YAML parser's error (ruyaml's or PyYAML's), by its class names."""
    return any(
        cls.__name__ == "YAMLError" and cls.__module__.split(".")[0] in ("ruyaml", "yaml")
        for cls in type(exc).__mro__
    )


def _read(entry: Any) -> bytes:
    return entry.get_reader().read()


def _native(descr: Any, path: Path) -> Any | None:
    """The napari-unet model attached to a package napari-unet exported, else ``None``."""
    from ..network.weights import load_model_file

    for attachment in descr.attachments:
        name = str(getattr(attachment.source, "name", "") or attachment.source).split("/")[-1]
        if name != NATIVE_ATTACHMENT:
            continue
        with tempfile.TemporaryDirectory(prefix="napari-unet-import-") as tmp:
            file = Path(tmp) / NATIVE_ATTACHMENT
            file.write_bytes(_read(attachment))
            loaded = load_model_file(file)
        loaded.path = path
        return loaded
    return None


def _own_architecture(weights: Any) -> bool:
    arch = getattr(weights, "architecture", None)
    return (
        arch is not None
        and getattr(arch, "import_from", None) == IMPORT_FROM
        and str(arch.callable) == CALLABLE
    )


def _state_dict_model(descr: Any, path: Path) -> Any:
    """napari-unet's U-Net from ``pytorch_state_dict`` weights of its own architecture."""
    from ..network.metadata import new_metadata
    from ..network.weights import LoadedModel
    from .architecture import UNet2d

    weights = descr.weights.pytorch_state_dict
    try:
        net = UNet2d(**dict(weights.architecture.kwargs))
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: invalid U-Net settings in the package ({exc})") from exc
    try:
        state = torch.load(io.BytesIO(_read(weights)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(
            f"{path}: refused: its state dict holds pickled Python objects, not only tensors, "
            "and unpickling them could run code"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: its state dict is not a mapping of names to tensors")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelFileError(f"{path}: the weights do not fit the U-Net ({first})") from exc
    layout = TensorLayout.from_descr(descr, path)
    meta = new_metadata(net.config, task=layout.task, name=str(descr.name),
                        class_names=layout.class_names, normalize=layout.normalize,
                        tiling=layout.tiling, pixel_size=layout.pixel_size)  # fmt: skip
    meta["source"] = _source(descr, path, "pytorch_state_dict")
    return LoadedModel(model=net.eval(), config=net.config, metadata=meta, path=path)


def _source(descr: Any, path: Path, weights: str) -> dict[str, Any]:
    return {"format": "bioimage.io", "package": str(path), "weights": weights,
            "id": str(descr.id) if descr.id else None, "name": str(descr.name)}  # fmt: skip


def _refusal(descr: Any, path: Path) -> str:
    weights = descr.weights
    state = weights.pytorch_state_dict
    reasons = []
    if state is not None:
        arch = state.architecture
        if hasattr(arch, "source"):
            reasons.append(
                f"its state dict needs the network code in {arch.source}, and loading it would "
                "run that file's code"
            )
        else:
            reasons.append(
                f"its state dict needs {arch.import_from}.{arch.callable}, another library's "
                "network, which napari-unet does not run"
            )
    if weights.onnx is not None:
        reasons.append(
            f"its ONNX weights need onnxruntime ({EXTRA_HINT.replace('bioimageio', 'onnx')})"
        )
    formats = ("keras_hdf5", "keras_v3", "tensorflow_saved_model_bundle", "tensorflow_js")
    others = [name for name in formats if getattr(weights, name, None) is not None]
    if others:
        reasons.append(f"{', '.join(others)} weights are not supported")
    text = "; ".join(reasons) or "it has no weights napari-unet can run"
    return (
        f"{path}: cannot use this package: {text} (accepted: TorchScript, ONNX, and state dicts "
        "of napari-unet's U-Net)"
    )


def _foreign(descr: Any, path: Path) -> Any | None:
    """A package of another architecture, through its TorchScript or ONNX weights."""
    from ..network.metadata import new_metadata
    from ..network.weights import LoadedModel

    layout = TensorLayout.from_descr(descr, path)
    weights = descr.weights
    if weights.torchscript is not None:
        try:
            with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(io.BytesIO(_read(weights.torchscript)), map_location="cpu")
        except Exception as exc:
            raise ModelFileError(f"{path}: the TorchScript weights cannot be read ({exc})") from exc
        kind = "torchscript"
    elif weights.onnx is not None and _has_onnxruntime():
        from .adapter import OnnxModule

        module, kind = OnnxModule(_read(weights.onnx)), "onnx"
    else:
        return None
    net = PackageNet(module.eval(), layout)
    config = ModelConfig(in_channels=layout.in_channels, out_classes=len(layout.class_names),
                         depth=layout.depth, base_channels=1, norm="none")  # fmt: skip
    net.config = config
    meta = new_metadata(config, task=layout.task, name=str(descr.name),
                        class_names=layout.class_names, normalize=layout.normalize,
                        tiling=layout.tiling, pixel_size=layout.pixel_size)  # fmt: skip
    meta["source"] = _source(descr, path, kind)
    meta["trainable"] = False
    meta["description"] = str(descr.description)
    logger.info("loaded %s weights of package %s (predict only)", kind, path)
    return LoadedModel(model=net, config=config, metadata=meta, path=path)


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def load_package(path: str | Path) -> Any:
    """Read a bioimage.io model package as a :class:`~napari_unet.core.network.weights.LoadedModel`.

    Args:
        path: a ``.zip`` package, or the ``rdf.yaml`` / ``bioimageio.yaml`` of an unpacked one.

    Returns:
        The model, with ``metadata["trainable"]`` false for networks of another architecture.

    Raises:
        ModelNotFoundError: no such file.
        ModelFileError: not a valid package, or no weights napari-unet accepts (the message says
            which weights were refused and why).
        UserError: the bioimageio extra is not installed.
    """
    path = Path(path).expanduser()
    descr = _describe(path)
    loaded = _native(descr, path)
    if loaded is None and descr.weights.pytorch_state_dict is not None:
        if _own_architecture(descr.weights.pytorch_state_dict):
            loaded = _state_dict_model(descr, path)
    if loaded is None:
        loaded = _foreign(descr, path)
    if loaded is None:
        raise ModelFileError(_refusal(descr, path))
    return loaded


def package_summary(path: str | Path) -> dict[str, Any]:
    """The metadata napari-unet would use for a package (for the model list), read without
    loading its weights when it is a napari-unet export."""
    descr = _describe(Path(path))
    config = getattr(descr.config, "napari_unet", None)
    if isinstance(config, dict) and config.get("format") == "napari-unet":
        return config
    return load_package(path).metadata
