"""bioimage.io packages for tests: a tiny napari-unet export, and packages that mimic models made
by other tools (another architecture, their own rdf.yaml), all written offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_unet.core.config import ModelConfig
from napari_unet.core.network.model import build_model
from napari_unet.core.network.weights import LoadedModel

TINY = ModelConfig(depth=2, base_channels=4)

ARCH_SOURCE = """import torch


class Blob(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x)
"""


def tiny_model(name: str = "tiny") -> LoadedModel:
    """A tiny instance U-Net whose output is not trivially background, at 0.5 µm/px."""
    net = build_model(TINY, seed=0).eval()
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.0, 0.5, -0.5]))
    return LoadedModel.from_model(net, name=name, pixel_size=[0.5, 0.5], object_diameter=12.0)


class Blob(nn.Module):
    """Another architecture: one 3x3 convolution giving one 'cells' logit per pixel (Y, X of any
    size), bright pixels high."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 9.0)
            self.conv.bias.fill_(-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * 10.0


def _spec():
    from bioimageio.spec.model import v0_5

    return v0_5


def _axes(v0_5, channel_names: list[str], output: bool, halo: int = 0) -> list:
    axes = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=channel_names)]
    for name in ("y", "x"):
        axis = v0_5.AxisId(name)
        if output:
            ref = v0_5.SizeReference(tensor_id=v0_5.TensorId("image"), axis_id=axis)
            cls = v0_5.SpaceOutputAxisWithHalo if halo else v0_5.SpaceOutputAxis
            extra = {"halo": halo} if halo else {}
            axes.append(cls(id=axis, size=ref, unit="micrometer", scale=0.25, **extra))
        else:
            size = v0_5.ParameterizedSize(min=16, step=8)
            axes.append(v0_5.SpaceInputAxis(id=axis, size=size, unit="micrometer", scale=0.25))
    return axes


def foreign_package(folder: Path, weights: str = "torchscript") -> Path:
    """A package made as another tool would make it: the :class:`Blob` network, input ``image``
    (scale_range 0-100 %), output ``cells`` with a sigmoid, written to
    ``folder/foreign_WEIGHTS.zip``.

    ``weights``: ``"torchscript"``, ``"onnx"``, ``"file_architecture"`` (a state dict whose
    network is a Python file in the package), or ``"pickle"`` (a whole pickled network as a
    state dict of napari-unet's own architecture).
    """
    from bioimageio.spec import save_bioimageio_package

    v0_5 = _spec()
    folder.mkdir(parents=True, exist_ok=True)
    net = Blob().eval()
    rng = np.random.default_rng(0)
    test_input = rng.random((1, 1, 32, 40)).astype(np.float32)
    with torch.no_grad():
        test_output = torch.sigmoid(net(torch.from_numpy(test_input))).numpy()
    np.save(folder / "in.npy", test_input)
    np.save(folder / "out.npy", test_output)
    (folder / "README.md").write_text("# Blob\n\nA test network.\n")
    version = v0_5.Version(torch.__version__.split("+")[0])
    if weights == "onnx":
        torch.onnx.export(
            net,
            (torch.from_numpy(test_input),),
            str(folder / "blob.onnx"),
            input_names=["x"],
            output_names=["y"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 2: "h", 3: "w"}},
        )
        entry = {"onnx": v0_5.OnnxWeightsDescr(source=folder / "blob.onnx", opset_version=17)}
    elif weights == "torchscript":
        torch.jit.script(net).save(str(folder / "blob.pt"))
        entry = {
            "torchscript": v0_5.TorchscriptWeightsDescr(
                source=folder / "blob.pt", pytorch_version=version
            )
        }
    elif weights == "file_architecture":
        (folder / "blob_arch.py").write_text(ARCH_SOURCE)
        torch.save(net.state_dict(), folder / "blob_state.pt")
        arch = v0_5.ArchitectureFromFileDescr(source=folder / "blob_arch.py", callable="Blob")
        entry = {
            "pytorch_state_dict": v0_5.PytorchStateDictWeightsDescr(
                source=folder / "blob_state.pt", architecture=arch, pytorch_version=version
            )
        }
    else:
        from napari_unet.core.bioimageio.architecture import CALLABLE, IMPORT_FROM

        torch.save(build_model(TINY), folder / "pickled.pt")  # the whole module, pickled
        arch = v0_5.ArchitectureFromLibraryDescr(
            callable=CALLABLE, import_from=IMPORT_FROM, kwargs={"depth": 2, "base_channels": 4}
        )
        entry = {
            "pytorch_state_dict": v0_5.PytorchStateDictWeightsDescr(
                source=folder / "pickled.pt", architecture=arch, pytorch_version=version
            )
        }
    descr = v0_5.ModelDescr(
        name="Blob cells test",
        description="a network of another architecture, for tests",
        authors=[v0_5.Author(name="Test Author")],
        cite=[v0_5.CiteEntry(text="test", doi=v0_5.Doi("10.1007/978-3-319-24574-4_28"))],
        license=v0_5.LicenseId("MIT"),
        documentation=v0_5.FileDescr(source=folder / "README.md"),
        inputs=[v0_5.InputTensorDescr(
            id=v0_5.TensorId("image"), axes=_axes(v0_5, ["gray"], False),
            test_tensor=v0_5.FileDescr(source=folder / "in.npy"),
            preprocessing=[v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
                axes=[v0_5.AxisId("y"), v0_5.AxisId("x")], min_percentile=0.0,
                max_percentile=100.0))],
        )],
        outputs=[v0_5.OutputTensorDescr(
            id=v0_5.TensorId("mask"), axes=_axes(v0_5, ["cells"], True, halo=4),
            test_tensor=v0_5.FileDescr(source=folder / "out.npy"),
            postprocessing=[v0_5.SigmoidDescr()],
        )],
        weights=v0_5.WeightsDescr(**entry),
    )  # fmt: skip
    return save_bioimageio_package(descr, output_path=folder / f"foreign_{weights}.zip")
