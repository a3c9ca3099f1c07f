"""How long the viewer freezes when the Segment widget is opened for the first time.

    xvfb-run -a python benchmarks/segment_open.py [--rounds 3] [--no-update]

Each measurement is a fresh Python process (PyTorch not imported yet, as in a viewer just
started): it opens a napari viewer, starts a ``QTimer`` firing every 10 ms, docks Segment through
the plugin manifest and records how long the call that docks it blocks, the longest pause of the
event loop in the 8 s after it, and when Run is ready (PyTorch loaded, models listed). Modes:

- ``in constructor``: PyTorch imported on the main thread while the widget is built (as before
  the background loading; forced by making the widget believe that PyTorch is loaded);
- ``background``: PyTorch imported in a thread worker (what the widget does).

The modes run in turn in every round; the table gives the median over the rounds. Rewrites the
``segment_open`` section of docs/benchmarks.md unless ``--no-update``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {"in constructor": "sync", "background": "background"}


def child(mode: str) -> dict[str, float]:
    """One measurement in this (fresh) process."""
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    if "torch" in sys.modules:
        raise RuntimeError("torch is imported already; the measurement needs a fresh process")
    if mode == "sync":
        from napari_unet._napari.segment import widget as _segment

        _segment.load_engine.__globals__["engine_loaded"] = lambda: True
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    for _ in range(30):
        app.processEvents()
        time.sleep(0.01)
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    start = time.perf_counter()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    call = time.perf_counter() - start
    last[0] = time.perf_counter()
    ready = float("nan")
    end = time.perf_counter() + 8
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.002)
        if ready != ready and widget.ready and widget.run_button.enabled:
            ready = time.perf_counter() - start
    viewer.close()
    return {"call": call, "pause": max(gaps, default=0.0), "ready": ready}


def measure(mode: str) -> dict[str, float]:
    env = dict(os.environ, NAPARI_UNET_MODELS=tempfile.mkdtemp())
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode], env=env, capture_output=True, text=True,
        timeout=300, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-update", action="store_true", help="leave docs/benchmarks.md")
    parser.add_argument("--child", choices=sorted(MODES.values()), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import command_line, machine_description, markdown_table, update_section

    machine = machine_description()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in MODES}
    for _ in range(args.rounds):
        for name, mode in MODES.items():
            results[name].append(measure(mode))
    rows = []
    for name, runs in results.items():
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        rows.append((name, f"{med['call']:.2f}", f"{med['pause']:.2f}", f"{med['ready']:.2f}"))
    table = markdown_table(
        ["PyTorch imported", "dock call blocks (s)", "longest pause after (s)", "Run ready (s)"],
        rows,
    )
    print(table)
    if not args.no_update:
        body = f"""## Opening the Segment widget (`benchmarks/segment_open.py`)

The first opening of Segment imports PyTorch. Each figure is the median of {args.rounds} fresh
processes (a viewer just started, PyTorch not imported): how long docking the widget blocks the
viewer, the longest pause of a 10 ms Qt timer in the 8 s after, and when Run is enabled.

{table}

Machine: {machine}.

Command: `xvfb-run -a {command_line()}`
"""
        update_section("segment_open", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
