"""Shared helpers of the benchmark scripts: machine description, timing, tables, the docs page and
a briefly trained network.

Each script rewrites only its own section of ``docs/benchmarks.md``, delimited by
``<!-- BEGIN name -->`` and ``<!-- END name -->``; other sections are kept as they are.
"""

from __future__ import annotations

import hashlib
import platform
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from napari_unet.core.config import ModelConfig, to_dict
from napari_unet.core.network.model import UNet, build_model
from napari_unet.core.synthetic.config import SyntheticConfig

#: The unfamiliar sample of the fine-tuning and quality benchmarks: elongated, heavily textured,
#: clumped nuclei (radius 6-10 px) that the starter model was not trained on.
ROD_DOMAIN = SyntheticConfig(
    radius=(6.0, 10.0),
    elongation=0.85,
    irregularity=0.1,
    coverage=0.3,
    clustered=0.6,
    texture=0.9,
    photons=40.0,
    blur=1.2,
    debris=0.4,
    gradient=0.6,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """One line: CPU model, cores, torch threads, torch version and the GPU if any."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    text = (
        f"{cpu_model()}, {cores} cores ({torch.get_num_threads()} torch threads), "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        text += f", GPU: {props.name} ({props.total_memory / 1e9:.0f} GB)"
    if hasattr(os, "getloadavg"):
        text += f"; load average {os.getloadavg()[0]:.1f} at the start (other processes)"
    return text


def command_line() -> str:
    """The command that ran this script, relative to the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(DOCS.parent.parent)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def update_section(name: str, body: str, path: Path = DOCS) -> Path:
    """Replace (or append) the section ``name`` of ``path`` with ``body``.

    The section is the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` lines;
    everything else in the file is kept.
    """
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def interleaved_best(
    jobs: dict[str, Callable[[], object]], rounds: int, warmup: bool = True
) -> dict[str, float]:
    """Best wall-clock seconds of each job over ``rounds``, the jobs run in turn in every round
    so that load from other processes affects them alike."""
    if warmup:
        for job in jobs.values():
            job()
    best = dict.fromkeys(jobs, float("inf"))
    for _ in range(rounds):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _training_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A normalised synthetic image (size, size) float32 and its classes (size, size) int64:
    0 background, 1 interior, 2 boundary."""
    from skimage.segmentation import find_boundaries

    from napari_unet.core.network.normalize import percentile_normalize
    from napari_unet.core.synthetic.config import SAMPLE_CONFIG
    from napari_unet.core.synthetic.images import make_image

    config = type(SAMPLE_CONFIG)(**{**to_dict(SAMPLE_CONFIG), "shape": (size, size)})
    image, labels = make_image(config, rng)
    classes = np.where(labels > 0, 1, 0)
    classes[find_boundaries(labels, mode="inner") & (labels > 0)] = 2
    return percentile_normalize(image, channel_axis=None), classes.astype(np.int64)


def trained_network(
    config: ModelConfig | None = None, steps: int = 60, crop: int = 96, seed: int = 0
) -> UNet:
    """A U-Net trained for ``steps`` quick Adam steps on synthetic nuclei, in eval mode.

    Not a useful model, but its weights and BatchNorm statistics are those of training, unlike
    random ones, which is what precision and seam measurements need. Cached in the temporary
    folder by configuration, steps, crop and seed.
    """
    config = config or ModelConfig()
    key = hashlib.sha256(repr((to_dict(config), steps, crop, seed)).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"napari-unet-bench-{key}.pt"
    net = build_model(config, seed=seed)
    if cache.exists():
        net.load_state_dict(torch.load(cache, weights_only=True))
        return net.eval()
    rng = np.random.default_rng(seed)
    pool = [_training_pair(rng, 256) for _ in range(4)]
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(8):
            image, classes = pool[rng.integers(len(pool))]
            y0, x0 = rng.integers(0, 256 - crop, 2)
            xs.append(image[y0 : y0 + crop, x0 : x0 + crop])
            ys.append(classes[y0 : y0 + crop, x0 : x0 + crop])
        x = torch.from_numpy(np.stack(xs))[:, None]
        y = torch.from_numpy(np.stack(ys))
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    net.eval()
    torch.save(net.state_dict(), cache)
    return net


def benchmark_network() -> tuple[UNet, str]:
    """The built-in starter model when it is installed (else the default architecture briefly
    trained, see :func:`trained_network`), in eval mode, and a phrase naming it."""
    from napari_unet.core.errors import UserError
    from napari_unet.core.network.registry import get_model

    try:
        model = get_model(None)
    except UserError:
        return trained_network(ModelConfig()), (
            "the default architecture briefly trained (no starter model installed)"
        )
    c = model.config
    return model.model.eval(), (
        f"the built-in starter model (depth {c.depth}, "
        f"{c.base_channels} base channels, {c.norm} norm)"
    )
