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
