"""Samples, their medians, and the RESULTS.md they become.

A scenario records one sample per repetition and metric; the report shows the
median with the min-max range and the number of samples, so a reader sees the
spread a noisy shared machine gave, not one lucky number.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Metric:
    """What one number means: where it goes in the report and how it is written."""

    key: str  # stable id, e.g. "drainpool.noop.e2e_rate"
    section: str  # report section
    label: str
    unit: str  # "jobs/s", "s", "MiB", "jobs", "ratio"
    digits: int = 0


@dataclass
class Results:
    """Every sample of a run, in the order the metrics first appeared."""

    metrics: dict[str, Metric] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)  # scenario -> "ok" or why not
    notes: dict[str, list[str]] = field(default_factory=dict)  # scenario -> method lines

    def add(self, metric: Metric, value: float) -> None:
        self.metrics.setdefault(metric.key, metric)
        self.samples.setdefault(metric.key, []).append(float(value))

    def note(self, scenario: str, text: str) -> None:
        lines = self.notes.setdefault(scenario, [])
        if text not in lines:
            lines.append(text)

    def median(self, key: str) -> float | None:
        values = self.samples.get(key)
        return statistics.median(values) if values else None

    def to_json(self) -> str:
        return json.dumps(
            {
                "metrics": {k: vars(m) for k, m in self.metrics.items()},
                "samples": self.samples,
                "status": self.status,
                "notes": self.notes,
            },
            indent=1,
        )


def fmt(value: float | None, unit: str, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if unit == "ratio":
        return f"{value:.{digits or 2}f}x"
    if unit == "%":
        return f"{value:.{digits or 1}f} %"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


@dataclass(frozen=True)
class Derived:
    """A number computed from medians of this run (a ratio, a share of an ideal)."""

    label: str
    compute: Callable[[Results], float | None]
    unit: str = "ratio"
    digits: int = 2
    # A target: (text shown, test); None for an informative row.
    target: tuple[str, Callable[[float], bool]] | None = None


def ratio(num: str, den: str, scale: float = 1.0) -> Callable[[Results], float | None]:
    """median(num) / median(den) * scale, or None when either is missing."""

    def compute(results: Results) -> float | None:
        a, b = results.median(num), results.median(den)
        return None if a is None or not b else a / b * scale

    return compute


def paired_ratio(num: str, den: str) -> Callable[[Results], float | None]:
    """The median of num[i] / den[i]: for samples taken in pairs, side by side in time."""

    def compute(results: Results) -> float | None:
        a, b = results.samples.get(num), results.samples.get(den)
        if not a or not b or len(a) != len(b) or not all(b):
            return None
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    return compute


def percentile_of(key: str, share: float) -> Callable[[Results], float | None]:
    """The nearest-rank percentile of every sample of `key` (share 0.5, 0.99): a sample."""

    def compute(results: Results) -> float | None:
        values = sorted(results.samples.get(key, []))
        if not values:
            return None
        return values[max(math.ceil(share * len(values)), 1) - 1]

    return compute


def median_of(key: str) -> Callable[[Results], float | None]:
    return lambda results: results.median(key)


def worst_of(keys: list[str], worst: Callable[..., float]) -> Callable[[Results], float | None]:
    """The worst median among `keys` (every one must be present)."""

    def compute(results: Results) -> float | None:
        values = [results.median(k) for k in keys]
        present = [v for v in values if v is not None]
        return worst(present) if present and len(present) == len(values) else None

    return compute


def _metric_table(results: Results, section: str) -> list[str]:
    rows = ["| metric | median | min - max | n | unit |", "|---|---:|---:|---:|---|"]
    for key, metric in results.metrics.items():
        if metric.section != section:
            continue
        values = results.samples[key]
        lo, hi = min(values), max(values)
        rows.append(
            f"| {metric.label} | {fmt(statistics.median(values), metric.unit, metric.digits)} "
            f"| {fmt(lo, metric.unit, metric.digits)} - {fmt(hi, metric.unit, metric.digits)} "
            f"| {len(values)} | {metric.unit} |"
        )
    return rows


TARGETS_HEADING = "Targets and ratios (medians of this run)"
FIXED_HEADINGS = (TARGETS_HEADING, "Scenarios", "How each scenario ran", "Method")


def hand_written(previous: str, sections: list[tuple[str, str]]) -> list[str]:
    """The lines of every `## ` section of a previous RESULTS.md that render() does not write.

    Figures measured outside run.py (bench/abandon_step.py, a note by hand) are
    kept, in their order, after the generated report; a section render() writes
    is dropped even when this run left it out (a --only run), being stale.
    """
    generated = {*FIXED_HEADINGS, *(title for _, title in sections)}
    kept: list[str] = []
    keeping = False
    for line in previous.splitlines():
        if line.startswith("## "):
            keeping = line[3:].strip() not in generated
        if keeping:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return kept


def render(
    results: Results,
    header: list[tuple[str, str]],
    derived: list[Derived],
    sections: list[tuple[str, str]],
    method: list[str],
    carried: list[str] | None = None,
) -> str:
    """RESULTS.md: context, targets, every metric by section, scenario status, method.

    `carried`: hand-written sections of the previous report (hand_written), kept at the end.
    """
    out = ["# drainpool benchmark results", ""]
    out += [f"- **{name}**: {value}" for name, value in header]
    out += ["", f"## {TARGETS_HEADING}", ""]
    out += ["| what | value | target | verdict |", "|---|---:|---|---|"]
    for item in derived:
        value = item.compute(results)
        if item.target is None:
            target_text, verdict = "", ""
        else:
            target_text = item.target[0]
            verdict = (
                "not measured"
                if value is None
                else ("met" if item.target[1](value) else "**missed**")
            )
        out.append(
            f"| {item.label} | {fmt(value, item.unit, item.digits)} | {target_text} | {verdict} |"
        )
    for section, title in sections:
        if any(m.section == section for m in results.metrics.values()):
            out += ["", f"## {title}", "", *_metric_table(results, section)]
    out += ["", "## Scenarios", "", "| scenario | status |", "|---|---|"]
    out += [f"| {name} | {status} |" for name, status in results.status.items()]
    if results.notes:
        out += ["", "## How each scenario ran", ""]
        for name, lines in results.notes.items():
            out.append(f"- **{name}**")
            out += [f"  - {line}" for line in lines]
    out += ["", "## Method", "", *method, ""]
    if carried:
        out += [*carried, ""]
    return "\n".join(out)


def describe(value: Any) -> str:
    """One line for the header, whatever the value."""
    return str(value).replace("\n", " ").strip()
