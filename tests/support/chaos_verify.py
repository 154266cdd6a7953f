"""The invariants of a chaos run (tests/support/chaos.py), explained in tests/test_chaos.py.

Each check reads only what the run left behind: the O_APPEND task log split
into daemon lifetimes by the test's marker lines, each daemon's own log, the
last daemon's Prometheus counters, and the queue's final state.
"""

from __future__ import annotations

import collections
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from tests.support.chaos import MAX_ATTEMPTS, ChaosResult

ENDED = re.compile(
    r"pool (\S+) generation (\d+) ended: completed (\d+), failed (\d+), interrupted (\d+),"
    r" cancelled (\d+), abandoned (\d+)"
)
ABANDONED = re.compile(r"abandoned job (\S+) \(")
OUTCOMES = ("completed", "failed", "interrupted", "cancelled", "abandoned")
LINE_KINDS = {"done": "completed", "failed": "failed", "interrupted": "interrupted"}


@dataclass(frozen=True, slots=True)
class TaskLine:
    kind: str  # start, done, failed, interrupted
    job: str
    attempt: int
    pid: int
    n: int
    lifetime: int


def read_task_log(path: Path) -> tuple[list[TaskLine], list[str]]:
    """The task lines, each with the lifetime whose marker precedes it; and malformed lines."""
    lines: list[TaskLine] = []
    malformed: list[str] = []
    lifetime = -1
    for raw in path.read_text().splitlines():
        parts = raw.split()
        if len(parts) == 2 and parts[0] == "lifetime":
            lifetime = int(parts[1])
        elif len(parts) == 5 and parts[0] in ("start", *LINE_KINDS):
            kind, job, attempt, pid, n = parts
            lines.append(TaskLine(kind, job, int(attempt), int(pid), int(n), lifetime))
        else:
            malformed.append(raw)
    return lines, malformed


@dataclass
class DaemonRecord:
    """What one lifetime's daemon said about itself in its log."""

    counts: collections.Counter[str]  # summed over every generation that ended
    abandoned: set[str]  # job ids
    abandoned_lines: int
    tracebacks: int


def read_daemon_log(text: str) -> DaemonRecord:
    counts: collections.Counter[str] = collections.Counter()
    for match in ENDED.finditer(text):
        counts.update(dict(zip(OUTCOMES, map(int, match.groups()[2:]), strict=True)))
    abandoned = ABANDONED.findall(text)
    return DaemonRecord(counts, set(abandoned), len(abandoned), text.count("Traceback"))


def compare_counts(
    where: str, daemon: dict[str, float], lines: collections.Counter[str], abandoned: int
) -> list[str]:
    """The daemon's outcome counts against the task log's lines of the same lifetime.

    Every start has exactly one outcome: completed, failed, interrupted or
    abandoned. An abandoned run may still log done, failed or interrupted
    later (its result is ignored), so each kind may exceed the daemon's count,
    by at most the number of abandoned runs in all.
    """
    problems = []
    ran = sum(daemon.get(k, 0) for k in ("completed", "failed", "interrupted", "abandoned"))
    if lines["start"] != ran:
        problems.append(f"{where}: {lines['start']} start lines but {ran} outcomes {daemon}")
    excess = 0
    for kind, outcome in LINE_KINDS.items():
        extra = lines[kind] - daemon.get(outcome, 0)
        excess += extra
        if extra < 0:
            problems.append(f"{where}: {lines[kind]} {kind} lines < {outcome} {daemon}")
    if excess > abandoned:
        problems.append(
            f"{where}: {excess} lines beyond the daemon's counts, {abandoned} abandoned"
        )
    return problems


@dataclass
class Run:
    """What verify reads, parsed once."""

    result: ChaosResult
    lines: list[TaskLine]
    records: dict[int, DaemonRecord]  # by lifetime
    killed: set[int]  # lifetimes that ended by kill -9
    abandoned_in: set[tuple[int, str]]  # (lifetime, job id) the daemon logged as abandoned
    dead: dict[int, dict]  # job number -> its dead-letter entry


def verify(result: ChaosResult) -> list[str]:
    """Every invariant of the run; an empty list when all hold."""
    lines, malformed = read_task_log(result.log)
    records = {lt.index: read_daemon_log(lt.daemon.log()) for lt in result.lifetimes}
    run = Run(
        result,
        lines,
        records,
        {lt.index for lt in result.lifetimes if lt.ended == "kill"},
        {(i, job) for i, record in records.items() for job in record.abandoned},
        {job["payload"]["n"]: job for job in result.dead},
    )
    problems = (
        [f"{len(malformed)} malformed task log lines, e.g. {malformed[:3]}"] if malformed else []
    )
    for check in (
        check_identity,
        check_nothing_lost,
        check_dead_for_a_reason,
        check_completed_twice,
        check_one_end_per_attempt,
        check_lifetimes,
        check_final_counters,
    ):
        problems += check(run)
    return problems


def check_identity(run: Run) -> list[str]:
    """One job id per job number and back."""
    ids: dict[int, set[str]] = collections.defaultdict(set)
    numbers: dict[str, set[int]] = collections.defaultdict(set)
    for line in run.lines:
        ids[line.n].add(line.job)
        numbers[line.job].add(line.n)
    return [f"job number {n} ran under ids {sorted(j)}" for n, j in ids.items() if len(j) > 1] + [
        f"job id {j} ran as numbers {sorted(n)}" for j, n in numbers.items() if len(n) > 1
    ]


def check_nothing_lost(run: Run) -> list[str]:
    """Nothing waits, nothing is leased: every job number logged done or is dead."""
    problems = []
    stats = run.result.stats
    if stats["ready"] or stats["delayed"] or stats["leased"] or stats["dead"] != len(run.dead):
        problems.append(f"queue not settled: {stats}, {len(run.dead)} in the dead list")
    done = {line.n for line in run.lines if line.kind == "done"}
    lost = [n for n in range(run.result.jobs) if n not in run.dead and n not in done]
    if lost:
        problems.append(f"{len(lost)} jobs lost (neither done nor dead): {lost[:20]}")
    return problems


def check_dead_for_a_reason(run: Run) -> list[str]:
    """Dead by failing max_attempts times, or by leases that a kill -9 left to expire."""
    kinds = run.result.kinds
    problems = []
    for n, job in run.dead.items():
        error = job["error"]
        by_kill = error.startswith("lease expired") and run.killed
        by_failure = (
            kinds[n] == "doomed"
            and error.startswith("RuntimeError: chaos: failing attempt")
            and job["attempts"] == MAX_ATTEMPTS
        )
        if not (by_kill or by_failure):
            problems.append(f"job {n} ({kinds[n]}) dead for no reason: {job}")
    return problems + [
        f"doomed job {n} was not dead-lettered"
        for n, kind in kinds.items()
        if kind == "doomed" and n not in run.dead
    ]


def check_completed_twice(run: Run) -> list[str]:
    """A done line counts unless a kill -9 (done, never acked) or an abandonment explains it."""
    unexplained: collections.Counter[int] = collections.Counter()
    for line in run.lines:
        if line.kind == "done" and not (
            line.lifetime in run.killed or (line.lifetime, line.job) in run.abandoned_in
        ):
            unexplained[line.n] += 1
    return [
        f"job {n} completed {count} times with no kill or abandonment"
        for n, count in unexplained.items()
        if count > (0 if n in run.dead else 1)
    ]


def check_one_end_per_attempt(run: Run) -> list[str]:
    """One done or failed per delivered attempt, unless the job was abandoned (same number)."""
    ever_abandoned = {job for _, job in run.abandoned_in}
    ends = collections.Counter(
        (line.job, line.attempt) for line in run.lines if line.kind in ("done", "failed")
    )
    return [
        f"job {job} attempt {attempt} ended {count} times"
        for (job, attempt), count in ends.items()
        if count > 1 and job not in ever_abandoned
    ]


ALLOWED_EXIT = {"term": {0, 1}, "final": {0}, "double_term": {0, 1, -signal.SIGTERM}}


def check_lifetimes(run: Run) -> list[str]:
    """Per lifetime: the daemon's own counts against the task log, and its exit code."""
    seen_in: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in run.lines:
        seen_in[line.lifetime][line.kind] += 1
    problems = []
    for lt in run.result.lifetimes:
        record, seen = run.records[lt.index], seen_in[lt.index]
        where = f"lifetime {lt.index} ({lt.ended}, rc {lt.rc})"
        if record.tracebacks:
            problems.append(f"{where}: {record.tracebacks} tracebacks in {lt.daemon.log_path}")
        if lt.ended == "kill":
            # Only the generations that ended before the kill were counted.
            ran = sum(record.counts[k] for k in ("completed", "failed", "interrupted", "abandoned"))
            if seen["start"] < ran:
                problems.append(f"{where}: {seen['start']} starts < {ran} counted outcomes")
            if lt.rc != -signal.SIGKILL:
                problems.append(f"{where}: not ended by SIGKILL")
            continue
        if record.abandoned_lines != record.counts["abandoned"]:
            problems.append(f"{where}: abandoned lines and counts differ {record}")
        problems += compare_counts(where, record.counts, seen, record.counts["abandoned"])
        if lt.rc not in ALLOWED_EXIT[lt.ended] or (
            lt.rc == 1 and lt.ended == "term" and not record.counts["abandoned"]
        ):
            problems.append(f"{where}: unexpected exit code")
    return problems


def check_final_counters(run: Run) -> list[str]:
    """The last daemon's Prometheus counters, per task, against its lifetime's lines."""
    final = run.result.lifetimes[-1].index
    task_of = {n: "flaky" if kind == "doomed" else kind for n, kind in run.result.kinds.items()}
    problems = []
    for task in ("coop", "slow", "flaky", "stubborn"):
        seen = collections.Counter(
            line.kind for line in run.lines if line.lifetime == final and task_of[line.n] == task
        )
        counters = {
            outcome: run.result.final_counters.get(
                f'drainpool_tasks_{outcome}_total{{task="{task}"}}', 0
            )
            for outcome in ("started", *OUTCOMES)
        }
        if counters["started"] != seen["start"]:
            problems.append(f"final {task}: started_total {counters} vs {seen['start']} starts")
        problems += compare_counts(f"final {task}", counters, seen, int(counters["abandoned"]))
    return problems
