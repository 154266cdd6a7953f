"""bench/compare.py: the check the house issue asks of a full run (no figure outside its range)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent

BEFORE = """
| metric | median | min - max | n | unit |
|---|---:|---:|---:|---|
| no-op, sustained (progress reports) | 51,115 | 39,040 - 51,561 | 5 | jobs/s |
| start to READY=1 | 0.251 | 0.218 - 0.295 | 5 | s |
| idle RSS, 2 s after one job | 41.7 | 41.6 - 41.7 | 5 | MiB |
| idle 60 s: share of a core | 0.100 % | 0.090 % - 0.110 % | 3 | % |
| of 8 in-flight jobs, back in the queue | 8 | 8 - 8 | 5 | jobs |
| only before | 1 | 1 - 1 | 1 | s |
"""

AFTER = """
| no-op, sustained (progress reports) | 38,000 | 37,000 - 52,000 | 5 | jobs/s |
| start to READY=1 | 0.240 | 0.230 - 0.300 | 5 | s |
| idle RSS, 2 s after one job | 40.9 | 40.9 - 41.0 | 5 | MiB |
| idle 60 s: share of a core | 0.200 % | 0.190 % - 0.210 % | 3 | % |
| of 8 in-flight jobs, back in the queue | 7 | 7 - 8 | 5 | jobs |
| only after | 1 | 1 - 1 | 1 | s |
"""


def load_compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "bench" / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_each_shared_figure_gets_its_verdict_by_unit() -> None:
    compare = load_compare()
    verdicts = {label: said for label, _, _, said in compare.compare(BEFORE, AFTER)}
    assert verdicts == {
        "no-op, sustained (progress reports)": "worse",  # a rate below its range
        "start to READY=1": "within",
        "idle RSS, 2 s after one job": "better",  # a size below its range
        "idle 60 s: share of a core": "worse",  # a share above its range
        "of 8 in-flight jobs, back in the queue": "moved",  # a count: no direction
    }


def test_the_command_prints_only_figures_outside_unless_asked(tmp_path: Path, capsys) -> None:
    compare = load_compare()
    (tmp_path / "before.md").write_text(BEFORE)
    (tmp_path / "after.md").write_text(AFTER)
    assert compare.main([str(tmp_path / "before.md"), str(tmp_path / "after.md")]) == 0
    out = capsys.readouterr().out
    assert (
        "| no-op, sustained (progress reports) | 51115 (39040 - 51561) jobs/s | 38000 | worse |"
        in out
    )
    assert "start to READY=1" not in out
    assert "5 figures in both: 1 within, 1 better, 2 worse, 1 moved" in out


def load_ab() -> ModuleType:
    """bench/ab.py, which imports its neighbour `compare` as the bench does (bench/ on the path)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_ab", ROOT / "bench" / "ab.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_ab_combines_single_runs_into_one_range_per_figure() -> None:
    ab = load_ab()
    runs = [
        "| start to READY=1 | 0.44 | 0.44 - 0.44 | 1 | s |\n| only once | 3 | 3 - 3 | 1 | jobs |",
        "| start to READY=1 | 0.40 | 0.40 - 0.40 | 1 | s |",
        "| start to READY=1 | 0.47 | 0.47 - 0.47 | 1 | s |",
    ]
    figures = ab.compare.figures(ab.combined(runs))
    ready = figures["start to READY=1"]
    assert (ready.median, ready.low, ready.high, ready.unit) == (0.44, 0.40, 0.47, "s")
    once = figures["only once"]
    assert (once.median, once.low, once.high) == (3, 3, 3)
