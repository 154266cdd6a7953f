"""Compare two RESULTS.md reports: which medians fall outside the earlier min-max.

The house issue asks that a change moves no figure outside the range an earlier
full run measured. Both reports are read as written (their metric tables), so
an old report kept in git can be compared with a new run:

    git show 2f9f422:bench/RESULTS.md > /tmp/before.md
    python bench/compare.py /tmp/before.md bench/RESULTS.md

A figure is matched by its label; one that is outside gets "better" or "worse"
by its unit (rates up are better; times, sizes, shares and counts of commands
down are better; other counts are reported as "moved").
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROW = re.compile(
    r"^\|\s*(?P<label>[^|]+?)\s*\|\s*(?P<median>[^|]+?)\s*\|\s*(?P<low>[^|]+?)\s+-\s+(?P<high>[^|]+?)\s*\|\s*(?P<n>\d+)\s*\|\s*(?P<unit>[^|]+?)\s*\|$"
)
HIGHER_IS_BETTER = ("jobs/s",)
LOWER_IS_BETTER = ("s", "ms", "MiB", "%", "commands", "bytes")


@dataclass(frozen=True)
class Figure:
    """One row of a metric table: the median and the range of its samples."""

    median: float
    low: float
    high: float
    unit: str


def number(text: str) -> float:
    """A figure as RESULTS.md writes it: '1,234', '0.017 %', '12.5'."""
    return float(text.replace(",", "").replace("%", "").strip())


def figures(report: str) -> dict[str, Figure]:
    """Every metric row of a report, by label (the first row wins if a label repeats)."""
    found: dict[str, Figure] = {}
    for line in report.splitlines():
        match = ROW.match(line.strip())
        if match is None:
            continue
        try:
            figure = Figure(
                number(match["median"]), number(match["low"]), number(match["high"]), match["unit"]
            )
        except ValueError:
            continue
        found.setdefault(match["label"], figure)
    return found


def verdict(before: Figure, after: Figure) -> str:
    """'within', or which side of the earlier range the new median fell on and what that means."""
    if before.low <= after.median <= before.high:
        return "within"
    above = after.median > before.high
    if after.unit in HIGHER_IS_BETTER:
        return "better" if above else "worse"
    if after.unit in LOWER_IS_BETTER:
        return "worse" if above else "better"
    return "moved"


def compare(before: str, after: str) -> list[tuple[str, Figure, Figure, str]]:
    """The labels both reports measured, each with both figures and the verdict."""
    old, new = figures(before), figures(after)
    return [
        (label, old[label], new[label], verdict(old[label], new[label]))
        for label in new
        if label in old
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--all", action="store_true", help="list figures within the range too")
    ns = parser.parse_args(argv)
    rows = compare(ns.before.read_text(), ns.after.read_text())
    print("| metric | before: median (min - max) | after: median | verdict |")
    print("|---|---:|---:|---|")
    for label, old, new, said in rows:
        if ns.all or said != "within":
            earlier = f"{old.median:g} ({old.low:g} - {old.high:g}) {old.unit}"
            print(f"| {label} | {earlier} | {new.median:g} | {said} |")
    counts = {
        kind: sum(1 for row in rows if row[3] == kind)
        for kind in ("within", "better", "worse", "moved")
    }
    print(
        f"\n{len(rows)} figures in both: " + ", ".join(f"{n} {kind}" for kind, n in counts.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
