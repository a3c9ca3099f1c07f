"""How late the viewer's event loop runs while the Fine-tune widget trains.

    xvfb-run -a python benchmarks/gui_latency.py [--seconds 30] [--rounds 1]
        [--modes idle,thread,...] [--no-update]

Opens a real napari viewer (a display is needed: ``xvfb-run -a`` gives one), loads the shipped
sample (``samples/nuclei.tif`` and its labels), opens the Fine-tune widget through the plugin
manifest and, in each mode, presses Train (the starter model fine-tuned with the default settings:
batch 4, 192 px patches, default augmentation) and measures for ``--seconds`` from that moment how
late a ``QTimer`` set to fire every 10 ms fires (the lateness of a tick is its interval minus
10 ms: what a user feels as a frozen or jerky viewer). Then it stops the run and waits for it to
end before the next mode; with ``--rounds`` the modes are measured in turn again, so that load
from other processes affects them alike. Modes:

- ``idle``: no training (the floor of this machine and display);
- ``thread``: training in a napari thread worker, torch's default number of threads;
- ``thread-1``: the same with torch limited to all cores but one while training;
- ``process``: training in a separate (spawned) process, torch's default threads;
- ``process-1``: the same with all cores but one.

Prints a table (percentiles and largest lateness, ticks more than 100 ms late, seconds from Train
to the first training step, training steps done, load average) and rewrites
the ``gui_latency`` section of docs/benchmarks.md. Models are written to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, machine_description, markdown_table, update_section

SECTION = "gui_latency"
TICK_MS = 10
MODES = ("idle", "thread", "thread-1", "process", "process-1")
SAMPLES = Path(__file__).resolve().parent.parent / "src" / "napari_unet" / "samples"


def _pump(seconds: float) -> None:
    """Run the Qt event loop for ``seconds``."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()


def _ticks(seconds: float, widget=None) -> tuple[np.ndarray, float]:
    """Run the event loop for ``seconds`` with a 10 ms timer.

    Returns:
        The lateness of each tick in ms, and the seconds until ``widget`` reported its first
        training status (``nan`` if none came).
    """
    from qtpy.QtCore import Qt, QTimer

    stamps: list[float] = []
    first: list[float] = []

    def tick() -> None:
        stamps.append(time.perf_counter())
        if not first and widget is not None and widget.last_status is not None:
            first.append(stamps[-1])

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    start = time.perf_counter()
    timer.start()
    _pump(seconds)
    timer.stop()
    intervals = np.diff(np.asarray(stamps)) * 1000.0
    return np.clip(intervals - TICK_MS, 0.0, None), (first[0] - start if first else float("nan"))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _measure(widget, mode: str, seconds: float) -> dict:
    """Lateness while ``mode`` runs, the time to the first step and the steps done."""
    import torch

    if mode == "idle":
        lateness, _ = _ticks(seconds)
        return {
            "mode": mode,
            "threads": "-",
            "lateness": lateness,
            "startup": float("nan"),
            "steps": 0,
            "load": os.getloadavg()[0],
        }
    threads = max(1, _cores() - 1) if mode.endswith("-1") else None
    widget.backend = mode.split("-")[0]
    widget.threads = threads
    widget.model_name.value = f"bench-{mode}"
    widget.train()
    lateness, startup = _ticks(seconds, widget)
    steps = widget.last_status.step if widget.last_status is not None else 0
    load = os.getloadavg()[0]
    widget.stop()
    deadline = time.monotonic() + 600
    while widget.running and time.monotonic() < deadline:
        _pump(0.2)
    shown = threads if threads is not None else torch.get_num_threads()
    return {
        "mode": mode,
        "threads": shown,
        "lateness": lateness,
        "startup": startup,
        "steps": steps,
        "load": load,
    }


DESCRIPTIONS = {
    "idle": "no training",
    "thread": "thread worker",
    "thread-1": "thread worker, cores - 1 torch threads",
    "process": "separate process",
    "process-1": "separate process, cores - 1 torch threads",
}
HEADERS = [
    "training",
    "torch threads",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "ticks > 100 ms",
    "s to 1st step",
    "steps",
    "load",
]


def _row(r: dict) -> list:
    late = r["lateness"]
    startup = "-" if np.isnan(r["startup"]) else f"{r['startup']:.1f}"
    return [
        DESCRIPTIONS[r["mode"]],
        r["threads"],
        f"{np.percentile(late, 50):.1f}",
        f"{np.percentile(late, 95):.1f}",
        f"{np.percentile(late, 99):.0f}",
        f"{late.max():.0f}",
        int((late > 100).sum()),
        startup,
        r["steps"] if r["mode"] != "idle" else "-",
        f"{r['load']:.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring time per mode")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the modes, in turn, this many times"
    )
    parser.add_argument("--no-update", action="store_true", help="do not rewrite the docs")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)} (choose from {', '.join(MODES)})")
    os.environ["NAPARI_UNET_MODELS"] = tempfile.mkdtemp(prefix="napari-unet-bench-")

    import napari

    from napari_unet._napari.finetune.training_data import WHOLE
    from napari_unet.core.io.reading import read_image

    machine = machine_description()
    viewer = napari.Viewer()
    image = read_image(SAMPLES / "nuclei.tif", memmap=False)
    labels = read_image(SAMPLES / "nuclei_labels.tif", memmap=False)
    viewer.add_image(image.data, name="nuclei")
    viewer.add_labels(labels.data, name="nuclei labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    widget.confirm = lambda message: True
    widget.rule.value = WHOLE  # the sample's labels are its ground truth: every object is right
    widget.budget.value = "minutes"
    widget.minutes.value = 60.0
    _pump(2.0)  # let the window settle
    results = []
    for _ in range(args.rounds):
        for mode in modes:
            results.append(_measure(widget, mode, args.seconds))
            print(" | ".join(str(cell) for cell in _row(results[-1])), flush=True)
    viewer.close()
    table = markdown_table(HEADERS, [_row(r) for r in results])
    print()
    print(table)
    idle = [DESCRIPTIONS[r["mode"]] for r in results if r["mode"] != "idle" and not r["steps"]]
    if idle:
        raise SystemExit(
            f"no training step was taken in: {', '.join(idle)}; the docs are not updated"
        )
    if not args.no_update:
        body = (
            "## Viewer responsiveness while training (`benchmarks/gui_latency.py`)\n\n"
            "A napari viewer under Xvfb with the shipped sample (512 x 512) and the Fine-tune "
            "widget fine-tuning the starter model (batch 4, 192 px patches, default "
            f"augmentation). For {args.seconds:.0f} s from pressing Train, a Qt timer set to "
            f"fire every {TICK_MS} ms records how late each tick is (goal: 95th percentile under "
            "100 ms); steps are the training steps done in that time, load the load average at "
            "its end (other processes included). The widget trains in a separate process with "
            "all cores but one for torch (`FinetuneWidget.backend`, `FinetuneWidget.threads`)."
            "\n\n"
            f"{table}\n\nMachine: {machine}.  \nCommand: `xvfb-run -a {command_line()}`"
        )
        print(f"\nupdated {update_section(SECTION, body)}")


if __name__ == "__main__":
    main()
