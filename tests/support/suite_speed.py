"""What keeps the whole suite inside its time budget (12 minutes on a 2-core machine).

The suite mostly waits on real processes, but not only: every daemon and every
`drainpool` command it starts is a new Python that imports the package (about
0.7 s of CPU each), and it starts hundreds of them (test_job_commands.py alone
about a hundred). A worker keeps half a core to most of one busy. Two things follow.

- Bytecode, compiled once. Where PYTHONDONTWRITEBYTECODE is set (as on the CI
  machine), no process ever writes the package's .pyc files, so each one compiles
  the drainpool sources again: a quarter of its start-up CPU. The run compiles
  them once before the first test (py_compile writes whatever that variable
  says); a source edited later is seen by its mtime and compiled in memory.
- Long modules first. xdist hands out one test file at a time (`--dist loadfile`,
  so module fixtures stay in one worker) and by default the files with the most
  tests first; a long file with few tests (the chaos runs, a thousand reloads)
  then starts last and the run waits for it alone. Files holding a `slow` test go
  first instead, the rest keep xdist's order (most tests first), and pyproject
  turns xdist's own reordering off (`--no-loadscope-reorder`).
"""

from __future__ import annotations

import compileall
from collections import Counter
from pathlib import Path

import drainpool
import pytest

TESTS_DIR = Path(__file__).resolve().parent.parent
SOURCES = (Path(drainpool.__file__).resolve().parent, TESTS_DIR)


def compile_bytecode(config: pytest.Config) -> None:
    """Write the .pyc files of the package and of the test helpers the daemons import.

    Once per run: in the xdist controller, or in the only process without xdist.
    """
    if hasattr(config, "workerinput"):  # an xdist worker: the controller did it
        return
    for source in SOURCES:
        compileall.compile_dir(source, quiet=2)


def long_modules_first(items: list[pytest.Item]) -> None:
    """Reorder `items` in place: modules with a `slow` test first, then by test count.

    A module's tests stay together and in their order (a stable sort on a module key).
    """
    count = Counter(item.path for item in items)
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.path not in slow, -count[item.path], str(item.path)))
