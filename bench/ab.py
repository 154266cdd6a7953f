"""Two trees' benches run in alternation, for a comparison that the host's drift cannot sway.

On a shared 2-core host the same code measured five minutes apart moved by
up to 30 % (bench/RESULTS.md, "Before and after issues 17-24"), so one tree
run after the other compares the host's minutes, not the code. This runs
`bench/run.py --reps 1` of each tree in turn, A B B A A B ..., and writes
each side's figures as one report (median, min - max over the pairs), then
prints bench/compare.py's table of the two:

    python bench/ab.py /tmp/old . --pairs 3 --only drainpool-start drainpool-noop

Each tree runs with its own virtualenv (TREE/.venv) and its own bench, so an
old commit checked out with `git worktree add` is measured as it was.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import compare


def run_once(tree: Path, only: list[str], out: Path) -> str:
    """One `--reps 1` run of the tree's own bench; the report's text."""
    argv = [str(tree / ".venv/bin/python"), "bench/run.py", "--reps", "1", "--out", str(out)]
    subprocess.run([*argv, "--only", *only], cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return out.read_text()


def combined(reports: list[str]) -> str:
    """One report from several: per label, the median and range of the runs' medians."""
    samples: dict[str, list[compare.Figure]] = {}
    for report in reports:
        for label, figure in compare.figures(report).items():
            samples.setdefault(label, []).append(figure)
    lines = ["| metric | median | min - max | n | unit |", "|---|---:|---:|---:|---|"]
    for label, found in samples.items():
        medians = [f.median for f in found]
        low, high = min(medians), max(medians)
        mid = statistics.median(medians)
        lines.append(f"| {label} | {mid:g} | {low:g} - {high:g} | {len(found)} | {found[0].unit} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the earlier tree (with its .venv)")
    parser.add_argument("after", type=Path, help="the later tree (with its .venv)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--only", nargs="+", required=True, help="bench/run.py scenarios")
    parser.add_argument("--out", type=Path, help="directory for the two combined reports")
    ns = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="drainpool-ab-"))
    out = ns.out or work
    out.mkdir(parents=True, exist_ok=True)
    sides: dict[str, list[str]] = {"before": [], "after": []}
    trees = {"before": ns.before.resolve(), "after": ns.after.resolve()}
    for pair in range(ns.pairs):
        order = ("before", "after") if pair % 2 == 0 else ("after", "before")
        for side in order:
            report = run_once(trees[side], ns.only, work / f"{side}-{pair}.md")
            sides[side].append(report)
            print(f"pair {pair + 1}/{ns.pairs}: {side} done", file=sys.stderr)
    for side, reports in sides.items():
        (out / f"{side}.md").write_text(combined(reports))
    return compare.main([str(out / "before.md"), str(out / "after.md"), "--all"])


if __name__ == "__main__":
    sys.exit(main())
