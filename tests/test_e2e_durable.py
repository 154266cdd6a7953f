"""The durable queue through real daemons, real producers and real file systems.

kill -9 with jobs in flight, a task that outlives its lease three times, two
daemons on one file, four producers racing the daemon for the write lock,
the enqueue options and dead letters through the command line, bulk files,
and the three storage faults: a full file system, one that turns read-only
under the daemon, and the database file deleted under it. Job logs are
written with O_APPEND by tests.support.tasks:record, one line per event.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from drainpool.queue.base import Failure
from drainpool.queue.sqlite import SqliteQueue

from tests.support.daemon import REPO, Daemon, DaemonFactory, queue_stats
from tests.support.joblog import count
from tests.support.mountns import MountNamespace
from tests.support.waiting import wait_until


def write_jobs(path: Path, payloads: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"task": "record", "payload": p}) + "\n" for p in payloads))
    return path


def seed(factory: DaemonFactory, config: Path, payloads: list[dict]) -> None:
    jobs = write_jobs(config.with_name(f"seed-{len(payloads)}.jsonl"), payloads)
    result = factory.cli("enqueue", "--file", str(jobs), config=config)
    assert result.returncode == 0, result.stderr


def leased_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {str(row[0]) for row in conn.execute("SELECT id FROM jobs WHERE state = 1")}
    finally:
        conn.close()


def readyz(daemon: Daemon) -> int:
    return daemon.get("/readyz")[0]


# -- leases -------------------------------------------------------------------


def test_kill_9_loses_no_job_and_reruns_only_what_the_dead_daemon_held(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    config = factory.config(pool={"workers": 4}, queue={"lease_seconds": 2})
    seed(factory, config, [{"log": str(log), "seconds": 0.5}] * 24)
    all_ids = {str(i) for i in range(1, 25)}
    daemon = factory.start(config)
    wait_until(lambda: len(count(log, "done")) >= 8, what="8 jobs done")
    daemon.signal(signal.SIGKILL)
    daemon.wait_exit()

    held = leased_ids(tmp_path / "queue.db")  # handed, running, or done but not yet acked
    started = set(count(log, "start"))
    running = started - set(count(log, "done"))
    assert running, "no job was running at the kill"
    assert running <= held

    restarted = factory.start(config)  # the dead daemon's leases run out within 2 s
    wait_until(lambda: set(count(log, "done")) == all_ids, what="every job done")
    starts = count(log, "start")
    twice = {job for job, n in starts.items() if n > 1}
    assert running <= twice  # delivered again once their lease expired
    assert twice <= held & started  # and nothing else ran twice
    assert max(starts.values()) == 2
    restarted.terminate()
    assert queue_stats(factory, config)["leased"] == 0


def test_a_task_that_runs_three_times_its_lease_is_delivered_once(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    # Free workers keep fetching all along: a lapsed lease would be taken at once.
    config = factory.config(pool={"workers": 3}, queue={"lease_seconds": 2})
    payload = json.dumps({"log": str(log), "seconds": 6})
    assert factory.cli("enqueue", "record", payload, config=config).returncode == 0
    daemon = factory.start(config)
    wait_until(lambda: count(log, "done")["1"] == 1, what="the long job done")
    assert count(log, "start") == {"1": 1}
    assert daemon.metric("drainpool_tasks_started_total", task="record") == 1
    daemon.terminate()
    stats = queue_stats(factory, config)
    assert (stats["ready"], stats["leased"], stats["dead"]) == (0, 0, 0)


def test_two_daemons_on_one_file_complete_each_of_2000_jobs_exactly_once(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    config = factory.config(pool={"workers": 4}, queue={"lease_seconds": 5})
    daemons = [factory.start(config), factory.start(config)]
    seed(factory, config, [{"log": str(log), "seconds": 0.002}] * 2000)
    wait_until(lambda: len(count(log, "done")) == 2000, timeout=90, what="2000 jobs done")
    starts = count(log, "start")
    assert len(starts) == 2000 and set(starts.values()) == {1}
    assert set(count(log, "done").values()) == {1}
    per_daemon = [d.metric("drainpool_tasks_started_total", task="record") for d in daemons]
    assert sum(per_daemon) == 2000 and min(per_daemon) > 0, per_daemon
    for daemon in daemons:
        daemon.terminate()


# -- contention -------------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_four_producers_racing_the_daemon_get_no_locked_error_and_lose_nothing(
    factory: DaemonFactory, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "jobs.log"
    config = factory.config(pool={"workers": 8})
    daemon = factory.start(config)
    url = f"sqlite:///{tmp_path / 'queue.db'}"  # an absolute path: sqlite:////...
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bulk = write_jobs(tmp_path / "bulk.jsonl", [{"log": str(log), "n": n} for n in range(5000)])
    outputs = [tmp_path / f"producer-{i}.out" for i in range(4)]
    for i, output in enumerate(outputs):
        if i < 3:  # the Python API, one transaction per job: the hardest on the lock
            argv = ["-m", "tests.support.producer", url, "5000", str(log), f"p{i}"]
        else:  # `drainpool enqueue --file`, batches of 1000 per transaction
            argv = ["-m", "drainpool", "enqueue", "--file", str(bulk), "--config", str(config)]
        with output.open("wb") as out:
            processes.append(
                subprocess.Popen(
                    [sys.executable, *argv], cwd=tmp_path, env=env, stdout=out, stderr=out
                )
            )
    for proc, output in zip(processes, outputs, strict=True):
        assert proc.wait(180) == 0, output.read_text()
    wait_until(lambda: len(count(log, "done")) == 20000, timeout=120, what="20000 jobs done")
    assert set(count(log, "start").values()) == {1}
    assert set(count(log, "done").values()) == {1}
    for text in [*(o.read_text() for o in outputs), daemon.log()]:
        assert "locked" not in text and "Traceback" not in text
    daemon.terminate()


# -- enqueue options and dead letters through the command line -----------------------


def test_enqueue_key_delay_and_at_from_the_command_line(factory: DaemonFactory) -> None:
    config = factory.config()
    first = factory.cli("enqueue", "noop", "{}", "--key", "nightly", config=config)
    again = factory.cli("enqueue", "noop", '{"other": 1}', "--key", "nightly", config=config)
    assert first.returncode == again.returncode == 0
    assert first.stdout == again.stdout == "1\n"
    assert factory.cli("enqueue", "noop", "--delay", "3600", config=config).returncode == 0
    later = (datetime.now() + timedelta(hours=1)).isoformat(timespec="seconds")
    assert factory.cli("enqueue", "noop", "--at", later, config=config).returncode == 0
    stats = queue_stats(factory, config)
    assert (stats["ready"], stats["delayed"]) == (1, 2)

    for args, message in [
        (("--delay", "5", "--at", later), "give --delay or --at, not both"),
        (("--at", "tomorrow"), "not an ISO 8601 time"),
        (("--delay", "nan"), "finite"),
    ]:
        refused = factory.cli("enqueue", "noop", *args, config=config)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    assert queue_stats(factory, config)["delayed"] == 2


def test_dead_letters_list_retry_and_purge_by_id(factory: DaemonFactory, tmp_path: Path) -> None:
    config = factory.config()
    queue = SqliteQueue(tmp_path / "queue.db")
    ids = [queue.enqueue("noop", {"n": n}) for n in range(3)]
    jobs = queue.fetch(3, ["noop"], 60)
    queue.settle(
        failures=[Failure(j, f"boom {j.id}", f"Traceback: line {j.id}", retry=False) for j in jobs]
    )
    queue.close()

    listed = factory.cli("queue", "dead", "list", "--json", config=config)
    dead = {d["id"]: d for d in json.loads(listed.stdout)}
    assert set(dead) == set(ids)
    assert dead["2"]["error"] == "boom 2" and dead["2"]["traceback"] == "Traceback: line 2"
    text = factory.cli("queue", "dead", "list", config=config).stdout
    assert "2\tnoop\tattempts=1\tboom 2" in text

    retried = factory.cli("queue", "dead", "retry", "1", config=config)
    assert (retried.returncode, retried.stdout) == (0, "1 dead job retried\n")
    purged = factory.cli("queue", "dead", "purge", "2", config=config)
    assert (purged.returncode, purged.stdout) == (0, "1 dead job purged\n")
    missing = factory.cli("queue", "dead", "retry", "1", "3", config=config)
    assert missing.returncode == 1 and "not a dead job: 1" in missing.stderr
    assert factory.cli("queue", "dead", "retry", "abc", config=config).returncode == 2
    stats = queue_stats(factory, config)
    assert (stats["ready"], stats["dead"]) == (2, 0)  # 1 and 3 are back, 2 is gone
    text = factory.cli("queue", "stats", config=config).stdout
    for label in ("ready        2", "delayed      0", "leased       0", "dead         0"):
        assert label in text
    assert "oldest ready " in text


# -- bulk -----------------------------------------------------------------------------


def test_bulk_file_with_bad_lines_is_rejected_whole_unless_told_to_skip(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = factory.config()
    good = json.dumps({"task": "noop", "payload": {"n": 1}}).encode()
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(
        b"\n".join(
            [
                good,
                b'{"task": "noop", "payload": ',  # 2: cut short
                good,
                b'{"task": "nope"}',  # 4: unknown task
                b'{"task": "noop", "payload": "caf\xe9"}',  # 5: Latin-1, not UTF-8
                b"",  # blank lines are skipped, not bad
                b'{"payload": {}}',  # 7: no task
                good,
            ]
        )
        + b"\n"
    )
    strict = factory.cli("enqueue", "--file", str(jobs), config=config)
    assert strict.returncode == 2
    for number, reason in [
        (2, "not valid JSON"),
        (4, "unknown task 'nope'"),
        (5, "not UTF-8"),
        (7, 'missing "task"'),
    ]:
        assert f"{jobs}:{number}: {reason}" in strict.stderr
    assert f"{jobs}: 4 bad lines: nothing enqueued" in strict.stderr
    assert queue_stats(factory, config)["ready"] == 0

    skipping = factory.cli("enqueue", "--file", str(jobs), "--skip-invalid", config=config)
    assert skipping.returncode == 0
    assert skipping.stderr.endswith(f"{jobs}: 3 jobs enqueued, 4 bad lines skipped\n")
    assert "\r" not in skipping.stderr  # no progress bar when stderr is not a terminal
    piped = factory.cli("enqueue", "--file", "-", config=config, input=(good + b"\n").decode() * 2)
    assert (piped.returncode, piped.stderr) == (0, "-: 2 jobs enqueued\n")
    assert queue_stats(factory, config)["ready"] == 5


def test_bulk_enqueue_shows_a_progress_bar_on_a_terminal(
    factory: DaemonFactory, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    config = factory.config()
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text((json.dumps({"task": "noop", "payload": {}}) + "\n") * 2500)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "drainpool",
                "enqueue",
                "--file",
                str(jobs),
                "--config",
                str(config),
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        processes.append(proc)  # killed at teardown if the test fails before it ends
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(60) == 0
    finally:
        os.close(leader)
    text = output.decode()
    assert "\r[" + "#" * 12 + "-" * 18 + "] 1000/2500" in text  # 30 wide, 40% done
    assert text.endswith(f"\r\033[K{jobs}: 2500 jobs enqueued\r\n")  # bar erased, summary


# -- storage faults --------------------------------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "nsenter", "mkfs.ext4")),
    reason="mounts a private file system: needs root, unshare, nsenter and mkfs.ext4",
)


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[MountNamespace]:
    with MountNamespace(tmp_path) as ns:
        yield ns


def start_six_jobs_on(
    vol: Path, factory: DaemonFactory, namespace: MountNamespace
) -> tuple[Daemon, Path, Path]:
    """A queue on `vol` with six 1 s jobs, a daemon with two workers running two of them."""
    tmp = vol.parent
    log = tmp / "jobs.log"
    config = factory.config(pool={"workers": 2}, queue={"url": f"sqlite:///{vol}/queue.db"})
    jobs = write_jobs(tmp / "jobs.jsonl", [{"log": str(log), "seconds": 1.0}] * 6)
    assert namespace.cli("enqueue", "--file", str(jobs), config=config).returncode == 0
    daemon = namespace.start(config)
    wait_until(lambda: len(count(log, "start")) == 2, what="two jobs running")
    return daemon, config, log


def test_queue_file_deleted_under_the_daemon(factory: DaemonFactory, tmp_path: Path) -> None:
    logs = {name: tmp_path / f"{name}.log" for name in ("retried", "acked", "new")}
    config = factory.config(queue={"retry_backoff_seconds": 0.05})
    db = tmp_path / "queue.db"
    for name, extra in (("retried", {"fail": 1}), ("acked", {})):
        payload = json.dumps({"log": str(logs[name]), "seconds": 1.0, **extra})
        assert factory.cli("enqueue", "record", payload, config=config).returncode == 0
    daemon = factory.start(config)
    wait_until(lambda: all(count(logs[n], "start") for n in ("retried", "acked")), what="started")
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)

    wait_until(lambda: readyz(daemon) == 503, what="/readyz 503")
    daemon.wait_log(
        r"queue unavailable \(not ready; retrying with backoff\): .*queue\.db: database file"
    )
    wait_until(lambda: count(logs["retried"], "failed") and count(logs["acked"], "done"))
    assert daemon.proc.poll() is None
    assert not db.exists()  # the daemon does not make an empty queue in its place

    payload = json.dumps({"log": str(logs["new"])})
    assert factory.cli("enqueue", "record", payload, config=config).returncode == 0
    wait_until(lambda: readyz(daemon) == 200, what="/readyz 200 again")
    wait_until(lambda: count(logs["new"], "done"), what="the new job done")
    # The job the daemon held when the file went is written into the new one and retried.
    wait_until(lambda: count(logs["retried"], "done"), what="the held job retried")
    assert [line.split()[0] for line in logs["retried"].read_text().splitlines()] == [
        "start",
        "failed",
        "start",
        "done",
    ]
    assert logs["retried"].read_text().splitlines()[-1].endswith(" 2")  # its second attempt
    assert sum(count(logs["acked"], "start").values()) == 1  # completed: not run again
    daemon.wait_log(r"written into .*queue\.db as job")
    daemon.terminate()


@needs_root
def test_full_file_system_blocks_then_recovers_without_losing_a_job(
    factory: DaemonFactory, tmp_path: Path, namespace: MountNamespace
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    namespace.run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(vol))
    daemon, config, log = start_six_jobs_on(vol, factory, namespace)

    namespace.run("dd", "if=/dev/zero", f"of={vol}/filler", "bs=64k", check=False)
    wait_until(lambda: readyz(daemon) == 503, what="/readyz 503 while the disk is full")
    daemon.wait_log(
        r"queue unavailable \(not ready; retrying with backoff\): .*database or disk is full"
    )
    # A write that fails for space checkpoints and truncates the WAL (issue 23), which
    # frees what the WAL held, and later WAL frames reuse its space: enqueues fit until
    # the file itself must grow. Large payloads make it grow at once.
    accepted = 0
    big = json.dumps({"log": str(log), "pad": "x" * 40_000})

    def refused_enqueue() -> subprocess.CompletedProcess[str] | None:
        nonlocal accepted
        namespace.run("dd", "if=/dev/zero", f"of={vol}/filler-{accepted}", "bs=4k", check=False)
        done = namespace.cli("enqueue", "record", big, config=config)
        accepted += done.returncode == 0
        return done if done.returncode != 0 else None

    refused = wait_until(refused_enqueue, what="an enqueue refused on the full disk")
    assert refused.returncode == 1, refused.stderr
    assert "queue unavailable" in refused.stderr and "the disk is full" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert daemon.proc.poll() is None
    wait_until(lambda: readyz(daemon) == 503, what="/readyz 503: nothing was freed")

    namespace.run("sh", "-c", f"rm {vol}/filler*")
    wait_until(lambda: readyz(daemon) == 200, what="/readyz 200 once there is room")
    total = 6 + accepted
    wait_until(lambda: len(count(log, "done")) == total, what="all jobs done")
    assert set(count(log, "start").values()) == {1}  # the daemon lived: no job twice
    daemon.terminate()


@needs_root
def test_file_system_turning_read_only_under_the_daemon(
    factory: DaemonFactory, tmp_path: Path, namespace: MountNamespace
) -> None:
    # A tmpfs or a bind mount cannot be made read-only while files are open for writing
    # on it (the kernel says EBUSY), and SQLite holds its files open. What does turn a
    # file system read-only under a running process is an error: ext4 mounted with
    # errors=remount-ro, and the `abort` mount option to cause one.
    image, vol = tmp_path / "fs.img", tmp_path / "vol"
    vol.mkdir()
    with image.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mount = ["mount", "-o", "loop,errors=remount-ro", str(image), str(vol)]
    namespace.run(*mount)
    daemon, config, log = start_six_jobs_on(vol, factory, namespace)
    taken = set(count(log, "start"))

    namespace.run("mount", "-o", "remount,abort", str(vol))
    wait_until(lambda: readyz(daemon) == 503, what="/readyz 503 on a read-only file system")
    # The first write after the abort fails with EIO, or with EROFS once the kernel has
    # remounted it read-only: which one the daemon meets first is a matter of timing.
    daemon.wait_log(
        r"queue unavailable \(not ready; retrying with backoff\): .*queue\.db:"
        r" (disk I/O error|attempt to write a readonly database)"
    )
    refused = namespace.cli("enqueue", "record", json.dumps({"log": str(log)}), config=config)
    assert refused.returncode == 1 and "queue unavailable" in refused.stderr, refused.stderr

    # The operator's repair: unmount, mount again. The loop device is freed once the
    # daemon has let go of the broken file system's files.
    namespace.run("umount", "-l", str(vol))

    def loop_released() -> bool:
        out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True)
        return out.stdout.strip() == ""

    wait_until(loop_released, what="the daemon let go of the aborted file system")
    namespace.run(*mount)
    wait_until(lambda: readyz(daemon) == 200, what="/readyz 200 after the remount")
    wait_until(lambda: len(count(log, "done")) == 6, what="all six jobs done")
    starts = count(log, "start")
    # Leases and acks committed just before the abort may not have reached the disk:
    # those jobs may run again: the two running, and the reserve of one leased with them
    # (prefetch "auto" keeps one for 1 s jobs on 2 workers). Nothing else does, and
    # nothing is lost.
    assert len({job for job, n in starts.items() if n > 1} - taken) <= 1
    assert daemon.proc.poll() is None
    daemon.terminate()
