"""Every benchmark script imports: a renamed function in the package must not leave a script
that fails before it measures anything (``python benchmarks/NAME.py`` is how anyone reruns it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def _load(script: Path, monkeypatch):
    """Import a benchmark script as a module (top-level code only: main() runs under
    ``__main__``)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_script_imports(script, monkeypatch):
    assert callable(getattr(_load(script, monkeypatch), "main", None))


def test_loop_counts_the_true_objects_an_item_corrects(monkeypatch):
    """The loop benchmark's second axis: reviewing a merged prediction repaints both nuclei under
    it, so one item annotates two true objects; a nucleus only partly annotated does not count."""
    import numpy as np

    loop = _load(BENCHMARKS / "loop.py", monkeypatch)
    truth = np.zeros((40, 40), np.int32)
    truth[5:12, 5:12] = 1
    truth[5:12, 12:19] = 2
    truth[25:35, 25:35] = 3
    merged = (truth == 1) | (truth == 2)
    note = loop.Annotation(np.zeros(truth.shape, bool), np.zeros(truth.shape, bool))
    note.mask |= loop.correct(merged, truth)
    note.mask[25:30, 25:35] = True  # half of nucleus 3
    assert loop.objects_annotated([(np.zeros(truth.shape, np.float32), truth)], [note]) == 2


def test_real_nuclei_annotation_stays_in_the_left_half(monkeypatch):
    """The real-image benchmark trains on the left half only and scores the right half: a
    corrected half takes in every nucleus of the left half (cut at the middle) and nothing to
    its right, and the score only sees the right half."""
    import numpy as np

    real = _load(BENCHMARKS / "real_nuclei.py", monkeypatch)
    truth = np.zeros((40, 40), np.int32)
    truth[5:12, 5:12] = 1
    truth[20:30, 15:25] = 2  # straddles the middle (column 20)
    truth[5:12, 28:35] = 3
    mask = real.left(truth.shape)
    assert mask[:, :20].all() and not mask[:, 20:].any()
    wrong_left = truth.copy()
    wrong_left[5:12, 5:12] = 0  # a miss in the left half does not count
    assert real.right_half_ap50(wrong_left, truth) == 1.0
    missed_right = truth.copy()
    missed_right[5:12, 28:35] = 0
    assert real.right_half_ap50(missed_right, truth) == 0.5
