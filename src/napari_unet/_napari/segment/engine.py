"""PyTorch, the model registry and the inference engine, loaded in the background the first time
Segment opens.

Importing torch takes seconds (about 3 s on a small laptop); done in the widget's constructor,
it froze the viewer. :func:`load_engine` imports it in a thread worker instead and calls back on
the main thread when it is ready; the widget keeps Run disabled until then.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

#: What Segment needs before it can list models and run.
ENGINE_MODULES = (
    "torch",
    "napari_unet.core.network.registry",
    "napari_unet.core.network.device",
    "napari_unet.core.inference.engine",
)


def engine_loaded() -> bool:
    """Whether PyTorch and the model registry are imported already."""
    return all(name in sys.modules for name in ENGINE_MODULES)


def describe_device() -> tuple[str, str]:
    """``(device type, text)`` of the device Segment runs on, e.g. ``("cpu", "CPU (2
    threads)")``, with a hint when a GPU is present but PyTorch cannot use it. Imports torch and
    the modules of :data:`ENGINE_MODULES`."""
    from napari_unet.core.inference import engine  # noqa: F401  (imported here, not at Run)
    from napari_unet.core.network import device as devices
    from napari_unet.core.network import weights  # noqa: F401

    device = devices.resolve_device("auto")
    hint = devices.gpu_hint()
    return device.type, devices.describe_device(device) + (f". Hint: {hint}." if hint else "")


def load_engine(
    on_ready: Callable[[tuple[str, str]], None], on_error: Callable[[BaseException], None]
) -> Any:
    """Make the engine ready, then call ``on_ready`` with :func:`describe_device`'s result.

    When the engine is imported already, ``on_ready`` is called now and ``None`` returned;
    otherwise the import runs in a thread worker (returned), and ``on_ready`` (or ``on_error``)
    is called on the main thread when it ends.
    """
    if engine_loaded():
        on_ready(describe_device())
        return None
    from napari.qt.threading import create_worker

    worker = create_worker(describe_device, _start_thread=False, _ignore_errors=True)
    worker.returned.connect(on_ready)
    worker.errored.connect(on_error)
    worker.start()
    return worker
