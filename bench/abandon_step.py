"""The supervisor's longest step() while a process pool abandons a task that ignores SIGTERM.

Issue 17: killing and reaping a child must never block the supervisor's loop
(while it blocks, no signal is read and no watchdog ping is sent). Each run
builds a real Supervisor on a temporary config (one process worker, grace
0.2 s), starts a task that ignores SIGTERM and never checks its context,
sends SIGTERM through the supervisor's inbox, and times every step() until
the supervisor has stopped: the grace runs out, the child is sent SIGTERM,
then SIGKILL a second later, and is reaped.

    python bench/abandon_step.py [--runs 5]

Prints one line per run and the median and max of the runs' longest steps.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GRACE_SECONDS = 0.2
BETWEEN_STEPS = 0.001  # the bench's own pause between steps, so the loop does not spin
START_TIMEOUT = 30.0


def stubborn(ctx: Any, payload: dict[str, Any]) -> None:
    """The task: ignore SIGTERM, say so, then spin without ever checking the context."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the worker process's main thread
    Path(payload["started"]).write_text(str(os.getpid()))
    while True:
        pass


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def one_run(work: Path) -> dict[str, Any]:
    from drainpool import settings
    from drainpool.supervisor import Phase, Supervisor
    from drainpool.tasks import build_registry

    config = work / "drainpool.toml"
    config.write_text(
        '[pool]\nworkers = 1\nkind = "process"\n'
        f"[shutdown]\ngrace_seconds = {GRACE_SECONDS}\n"
        "[reload]\nwatch = false\n"
        '[queue]\nurl = "sqlite:///queue.db"\n'
        '[metrics]\nhost = "127.0.0.1"\nport = 0\n'
        '[tasks]\nstubborn = "abandon_step:stubborn"\n'
    )
    loaded = settings.load(config)
    supervisor = Supervisor(loaded, build_registry(loaded))
    started = work / "started"
    try:
        supervisor.start()
        assert supervisor.queue is not None
        supervisor.queue.enqueue("stubborn", {"started": str(started)})
        deadline = time.monotonic() + START_TIMEOUT
        while not started.exists() or not started.read_text():
            if time.monotonic() > deadline:
                raise SystemExit("the stubborn task did not start")
            supervisor.step(0.01)
        child = int(started.read_text())
        supervisor.inbox.put(signal.SIGTERM)
        steps: list[tuple[float, float]] = []  # (how long, when after SIGTERM)
        asked = time.perf_counter()
        while supervisor.phase is not Phase.STOPPED:
            begun = time.perf_counter()
            supervisor.step(0)
            steps.append((time.perf_counter() - begun, begun - asked))
            time.sleep(BETWEEN_STEPS)
        stopped = time.perf_counter() - asked
    finally:
        supervisor.close()
    longest, at = max(steps)
    return {
        "steps": len(steps),
        "longest_ms": longest * 1000,
        "longest_at": at,
        "stop_seconds": stopped,
        "child_gone": not Path(f"/proc/{child}").exists(),
        "exit_code": int(supervisor.exit_code),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the child imports abandon_step
    lines = _Lines()
    logging.basicConfig(level=logging.WARNING, handlers=[lines])
    longest: list[float] = []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="abandon-step-") as tmp:
            del lines.lines[:]
            result = one_run(Path(tmp))
        killed = any("ignored SIGTERM: SIGKILL" in line for line in lines.lines)
        longest.append(result["longest_ms"])
        print(
            f"run {run}: {result['steps']} steps, longest {result['longest_ms']:.2f} ms"
            f" ({result['longest_at']:.3f} s after SIGTERM);"
            f" SIGTERM to stopped {result['stop_seconds']:.3f} s; SIGKILL needed: {killed};"
            f" child reaped: {result['child_gone']}; exit code {result['exit_code']}"
        )
    print(
        f"longest step over {args.runs} runs: median {statistics.median(longest):.2f} ms,"
        f" max {max(longest):.2f} ms"
    )


if __name__ == "__main__":
    main()
