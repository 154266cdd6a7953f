"""Reading the O_APPEND log that the test tasks write."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def events(path: Path) -> list[tuple[str, str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines() if line]  # type: ignore[misc]


def count(path: Path, kind: str) -> Counter[str]:
    """How many times each job id logged `kind` (start, done, interrupted, failed)."""
    return Counter(job for k, job, _ in events(path) if k == kind)
