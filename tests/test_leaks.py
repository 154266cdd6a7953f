"""Leaks: a thousand reloads under load, and a thousand SIGHUPs as fast as they go.

Threads, file descriptors and memory are read from /proc/PID of the real
daemon. Samples are taken at quiet points, after waiting (by polling, with a
deadline) for the abandoned threads of stubborn tasks to finish, so a sample
holds only what the daemon keeps; those stray threads are counted during the
run by the daemon itself (drainpool_stray_threads) and reported.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, DaemonFactory, queue_stats
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # a minute and a half: started first (tests/support/suite_speed.py)
RELOADS = int(os.environ.get("DRAINPOOL_LEAK_RELOADS", "1000"))  # even: 2 workers at the end
WARMUP = 100  # caches, the allocator's arenas and the first imports settle by then
THREAD_SLACK = 2  # an HTTP request thread of our own poll may still be winding down
FD_SLACK = 2  # and its socket
# RSS: keeping every ended generation's Pool alive (planted on purpose once, to
# calibrate) grows RSS by about 15 KiB a reload, 13 MiB over these 900 reloads;
# a clean run moves by a fraction of one MiB at the same quiet points.
RSS_SLACK_KIB = 8 * 1024


@dataclass(frozen=True)
class Sample:
    threads: int
    fds: int
    rss_kib: int

    def __str__(self) -> str:
        return f"{self.threads} threads, {self.fds} fds, {self.rss_kib / 1024:.1f} MiB RSS"


def sample(pid: int) -> Sample:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return Sample(len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd")), rss)


def quiet_sample(daemon: Daemon) -> Sample:
    """Wait until no abandoned thread is left, then read /proc."""
    wait_until(
        lambda: daemon.metric("drainpool_stray_threads") == 0, what="stray threads to finish"
    )
    return sample(daemon.pid)


def reload_to(factory: DaemonFactory, daemon: Daemon, workers: int) -> None:
    """Rewrite the config with `workers`, SIGHUP, and wait for the READY=1 of that generation.

    sd_notify is the daemon's own report of an applied reload; reading the
    test's NOTIFY_SOCKET log is cheap enough to poll closely, unlike HTTP.
    """
    ready = daemon.notify.count("READY")
    write_config(factory, workers)
    daemon.signal(signal.SIGHUP)
    wait_until(
        lambda: daemon.notify.count("READY") > ready,
        what=f"READY=1 after a reload to {workers} workers",
        every=0.002,
    )
    status = daemon.notify.wait_for("READY", ready + 1)["STATUS"]
    assert status.startswith("running:") and f" {workers} workers," in status, status


def write_config(factory: DaemonFactory, workers: int) -> Path:
    return factory.config(
        pool={"workers": workers},
        shutdown={"grace_seconds": 0.02},  # stubborn tasks are abandoned at every reload
        reload={"watch": False},  # only our SIGHUPs reload
    )


def loaded_daemon(factory: DaemonFactory, count: int) -> tuple[Path, Daemon]:
    """A daemon with 2 workers and `count` jobs waiting: one in twenty is stubborn."""
    config = write_config(factory, 2)
    lines = []
    for i in range(count):
        if i % 20 == 0:
            lines.append({"task": "stubborn", "payload": {"seconds": 0.3}})
        else:
            lines.append({"task": "sleep", "payload": {"seconds": 0.02}})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    result = factory.cli("enqueue", "--file", "-", config=config, input=text)
    assert result.returncode == 0, result.stderr
    # glibc gives each busy thread an arena of its own, up to 8 per core: how many the
    # abandoned and replaced worker threads touch depends on timing (another test file
    # running beside this one), and each holds freed memory in RSS. Two arenas keep the
    # samples about what the daemon keeps, not about the allocator's spread.
    return config, factory.start(config, env={"MALLOC_ARENA_MAX": "2"})


def test_a_thousand_reloads_under_load_keep_threads_fds_and_memory_flat(
    factory: DaemonFactory,
) -> None:
    config, daemon = loaded_daemon(factory, 40_000)
    samples: dict[int, Sample] = {}
    stray_seen = 0
    for i in range(1, RELOADS + 1):
        reload_to(factory, daemon, 3 if i % 2 else 2)
        if i % 50 == 0:
            stray_seen = max(stray_seen, int(daemon.metric("drainpool_stray_threads")))
        if i in (WARMUP, RELOADS // 2, RELOADS):  # even: 2 workers at each sample
            samples[i] = quiet_sample(daemon)
    report = "; ".join(f"after {i}: {s}" for i, s in samples.items())
    print(f"{RELOADS} reloads: {report}; at most {stray_seen} stray threads seen")
    warm, end = samples[WARMUP], samples[RELOADS]
    assert end.threads <= warm.threads + THREAD_SLACK, report
    assert end.fds <= warm.fds + FD_SLACK, report
    assert end.rss_kib <= warm.rss_kib + RSS_SLACK_KIB, report
    # It was under load the whole time: work was left, and tasks were abandoned on the way.
    stats = queue_stats(factory, config)
    assert stats["ready"] > 0, stats
    assert daemon.metric("drainpool_tasks_abandoned_total", task="stubborn") > 0
    assert daemon.metric("drainpool_config_reloads_total", result="applied") == RELOADS
    assert "Traceback" not in daemon.log()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() in (0, 1)  # 1 if a stubborn task was running at the stop


def test_a_thousand_sighups_as_fast_as_possible_then_the_latest_config_wins(
    factory: DaemonFactory,
) -> None:
    _, daemon = loaded_daemon(factory, 2_000)
    for _ in range(1000):
        daemon.signal(signal.SIGHUP)
    # Still up, and every queued SIGHUP was handled (coalesced: the file never changed).
    wait_until(
        lambda: daemon.metric("drainpool_config_reloads_total", result="unchanged") >= 1,
        what="the burst handled",
    )
    assert daemon.proc.poll() is None
    assert daemon.get("/healthz")[0] == 200
    reload_to(factory, daemon, 5)
    assert daemon.metric("drainpool_pool_workers") == 5
    assert daemon.metric("drainpool_config_reloads_total", result="applied") == 1
    assert daemon.metric("drainpool_config_reloads_total", result="unchanged") <= 1000
    assert "Traceback" not in daemon.log()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() in (0, 1)
