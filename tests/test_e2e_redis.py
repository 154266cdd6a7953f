"""Several real daemons sharing one real redis-server (issue 6): hand-over, crash, outage.

Each test starts its own redis-server on a free loopback port and its own
daemons. The jobs are the `record` test task, which writes start/done/
interrupted lines to one O_APPEND log shared by every daemon; job ids are
1..N in enqueue order (a fresh Redis counts from 1). A few long jobs at known
ids make "a daemon is busy right now" something a test can wait for instead
of a moment it has to guess; daemons started with TEST_TIME_SCALE run those
long jobs fast when they take them over.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.daemon import Daemon, DaemonFactory, queue_stats
from tests.support.joblog import count, events
from tests.support.redis_server import RedisServer, redis_servers
from tests.support.waiting import wait_until

JOBS = 5000
LONG = 30.0  # seconds of a long job (scaled down on the daemon that takes it over)
FAST = {"TEST_TIME_SCALE": "0.05"}

StartRedis = Callable[..., RedisServer]


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[StartRedis]:
    with redis_servers(tmp_path) as start:
        yield start


def short(i: int) -> float:
    """0 to 20 ms, spread evenly and the same on every run."""
    return (i * 7 % 21) / 1000


def redis_config(
    factory: DaemonFactory,
    server: RedisServer,
    name: str = "drainpool.toml",
    *,
    url: str | None = None,
    lease: float = 30.0,
    **sections: dict[str, Any],
) -> Path:
    pool = {"workers": 8, **sections.pop("pool", {})}
    queue = {"url": url or server.url, "lease_seconds": lease, **sections.pop("queue", {})}
    return factory.config(name, pool=pool, queue=queue, **sections)


def enqueue(factory: DaemonFactory, config: Path, log: Path, seconds: list[float]) -> None:
    """Jobs 1..len(seconds) (in this order) through `drainpool enqueue --file -`."""
    lines = "".join(
        json.dumps({"task": "record", "payload": {"log": str(log), "seconds": s}}) + "\n"
        for s in seconds
    )
    result = factory.cli("enqueue", "--file", "-", config=config, input=lines)
    assert result.returncode == 0, result.stderr


def running(daemon: Daemon) -> dict[str, float]:
    """Job id -> seconds it has run, for the jobs the daemon's pools run right now."""
    return {r["job_id"]: r["seconds"] for p in daemon.status()["pools"] for r in p["running"]}


def all_done(log: Path, n: int = JOBS) -> bool:
    return len(count(log, "done")) == n


def generation_counts(daemon: Daemon, generation: int = 1) -> dict[str, int]:
    match = re.search(rf"pool default generation {generation} ended: (.*)", daemon.log())
    assert match, daemon.log()
    return {k: int(v) for k, v in (part.split() for part in match.group(1).split(", "))}


def assert_queue_empty(factory: DaemonFactory, config: Path) -> None:
    stats = queue_stats(factory, config)  # `drainpool queue stats --json` against Redis
    assert (stats["ready"], stats["delayed"], stats["leased"], stats["dead"]) == (0, 0, 0, 0)


# The job field of each pending entry of one consumer, read in one step (see held_by).
HELD_BY = """
local held = {}
for _, entry in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[3], ARGV[2])) do
  local found = redis.call('XRANGE', KEYS[1], entry[1], entry[1])
  local fields = found[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'job' then held[#held + 1] = fields[i + 1] end
  end
end
return held
"""


def held_by(server: RedisServer, pid: int) -> set[str]:
    """Ids of the jobs whose lease the daemon `pid` holds: its pending entries in Redis.

    Read from the stream itself (see daemon/drainpool/queue/redis.py: one stream per task,
    entries that point at the job, the consumer named host:pid), because only
    Redis knows which of the jobs a daemon finished were acked before a crash. One
    script, so that the other daemon settling an entry between two reads cannot make
    the list name an entry that is gone.
    """
    stream, consumer = "drainpool:stream:record", f"{socket.gethostname()}:{pid}"
    client = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
    try:
        return set(client.eval(HELD_BY, 1, stream, "drainpool", consumer, JOBS))
    finally:
        client.close()


def ready(daemon: Daemon) -> int:
    return daemon.get("/readyz")[0]


def stop_cleanly(*daemons: Daemon) -> None:
    """SIGTERM each daemon and expect a clean stop (exit 0: every job settled)."""
    for daemon in daemons:
        daemon.terminate()


def test_sigterm_on_one_daemon_hands_its_jobs_to_the_other(
    factory: DaemonFactory, start_redis: StartRedis, tmp_path: Path
) -> None:
    server = start_redis()
    log = tmp_path / "jobs.log"
    config = redis_config(factory, server)
    enqueue(factory, config, log, [LONG] * 4 + [short(i) for i in range(4, JOBS)])
    first = factory.start(config)
    # `first` takes the four long jobs (oldest first) and works on short ones beside them.
    wait_until(lambda: {"1", "2", "3", "4"} <= running(first).keys(), what="long jobs running")
    second = factory.start(config, env=FAST)
    wait_until(lambda: len(count(log, "done")) >= 1000, what="1000 jobs done")
    wait_until(lambda: second.metric("drainpool_tasks_completed_total", task="record") > 0)
    assert first.metric("drainpool_tasks_completed_total", task="record") > 0, "not shared"

    stop_cleanly(first)
    interrupted = count(log, "interrupted")
    assert {"1", "2", "3", "4"} <= interrupted.keys()
    assert max(interrupted.values()) == 1
    handed_back = generation_counts(first)
    assert handed_back["interrupted"] == len(interrupted)  # only `first` drained
    assert handed_back["abandoned"] == 0

    wait_until(lambda: all_done(log), timeout=120, what="every job done")
    done = count(log, "done")
    assert max(done.values()) == 1, "a job ran to completion twice without a crash"
    lines = events(log)
    for job in interrupted:  # finished by `second` after `first` handed it back
        cut = lines.index(("interrupted", job, "1"))
        assert ("done", job, "1") in lines[cut:], f"job {job} not finished by the other daemon"
    assert_queue_empty(factory, config)
    stop_cleanly(second)
    # Between them the two daemons completed each job once; the cancelled ones ran on `second`.
    assert handed_back["completed"] + generation_counts(second)["completed"] == JOBS


def test_kill_9_on_one_daemon_its_jobs_are_reclaimed_after_the_lease(
    factory: DaemonFactory, start_redis: StartRedis, tmp_path: Path
) -> None:
    server = start_redis()
    log = tmp_path / "jobs.log"
    config = redis_config(factory, server, lease=3.0)
    enqueue(factory, config, log, [LONG] * 4 + [short(i) for i in range(4, JOBS)])
    victim = factory.start(config)
    wait_until(lambda: {"1", "2", "3", "4"} <= running(victim).keys(), what="long jobs running")
    survivor = factory.start(config, env=FAST)
    wait_until(lambda: len(count(log, "done")) >= 1000, what="1000 jobs done")
    assert victim.metric("drainpool_tasks_completed_total", task="record") > 0, "not shared"

    # Freeze the victim first, so what it holds in Redis and what it logged stand still
    # while we read them; SIGKILL then ends it without a word to anyone.
    victim.signal(signal.SIGSTOP)
    held = held_by(server, victim.pid)
    lines = events(log)
    victim.signal(signal.SIGKILL)
    assert victim.wait_exit() == -signal.SIGKILL
    assert {"1", "2", "3", "4"} <= held
    # From the log: started before the kill and neither done nor interrupted. These are
    # the jobs running on either daemon at the kill; the victim's ones are among `held`
    # (which adds the jobs it had finished but not yet acked, and those not yet started).
    finished = {job for kind, job, _ in lines if kind in ("done", "interrupted")}
    running_at_kill = {job for kind, job, _ in lines if kind == "start"} - finished
    assert {"1", "2", "3", "4"} <= running_at_kill

    wait_until(lambda: all_done(log), timeout=120, what="every job done")
    done = count(log, "done")
    duplicates = {job for job, n in done.items() if n > 1}
    assert duplicates <= held, f"ran twice but not held by the killed daemon: {duplicates - held}"
    assert max(done.values()) <= 2
    # Every job the victim held came back once its lease expired, as a second attempt.
    redelivered = {job for kind, job, attempt in events(log) if kind == "done" and attempt == "2"}
    assert held <= redelivered
    assert_queue_empty(factory, config)
    stop_cleanly(survivor)


def test_redis_restart_mid_run_both_daemons_recover_by_themselves(
    factory: DaemonFactory, start_redis: StartRedis, tmp_path: Path
) -> None:
    server = start_redis(appendonly=True)
    log = tmp_path / "jobs.log"
    config = redis_config(factory, server, lease=10.0)
    # A 2 s job every 250: something for the outage to catch running.
    seconds = [2.0 if i % 250 == 125 else short(i) for i in range(JOBS)]
    long_jobs = {str(i + 1) for i, s in enumerate(seconds) if s == 2.0}
    enqueue(factory, config, log, seconds)
    daemons = [factory.start(config), factory.start(config)]
    wait_until(lambda: len(count(log, "done")) >= 1000, what="1000 jobs done")

    def a_long_job_just_started() -> str | None:
        for daemon in daemons:
            for job, ran in running(daemon).items():
                if job in long_jobs and ran < 1.0:
                    return job
        return None

    caught = wait_until(a_long_job_just_started, what="a long job running")
    server.stop()  # SIGTERM: Redis writes its append-only file and exits
    for daemon in daemons:
        wait_until(lambda d=daemon: ready(d) == 503, what="/readyz 503 while Redis is down")
        assert daemon.get("/healthz")[0] == 200  # alive, only not ready
        code, body = daemon.get("/metrics")
        assert code == 200 and "drainpool_queue_jobs{" not in body
    result = factory.cli("queue", "stats", config=config)
    assert result.returncode == 1
    assert result.stderr.startswith("drainpool: queue unavailable:")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    # The running job finishes while Redis is away; its ack waits for Redis to come back.
    wait_until(lambda: count(log, "done")[caught] == 1, what=f"job {caught} done during outage")

    server.start()  # same port, same directory: the append-only file brings the queue back
    back = len(events(log))
    for daemon in daemons:
        wait_until(lambda d=daemon: ready(d) == 200, what="/readyz 200 once Redis is back")
    wait_until(lambda: all_done(log), timeout=120, what="every job done")

    done = count(log, "done")
    assert done[caught] == 1, "the ack held over the outage was lost"
    started_after_back = {job for kind, job, _ in events(log)[back:] if kind == "start"}
    started_before_back = {job for kind, job, _ in events(log)[:back] if kind == "start"}
    duplicates = {job for job, n in done.items() if n > 1}
    # A lease could only run out while Redis was away, for jobs that had started by then.
    assert not duplicates & (started_after_back - started_before_back)
    assert_queue_empty(factory, config)
    for daemon in daemons:
        text = daemon.log()
        assert text.count("queue unavailable") == 1, text
        assert text.count("queue available again") == 1, text
        assert "Traceback" not in text
        assert daemon.metric("drainpool_pool_generation") == 1  # recovered without a restart
    stop_cleanly(*daemons)


def test_reload_on_one_daemon_while_the_other_keeps_working(
    factory: DaemonFactory, start_redis: StartRedis, tmp_path: Path
) -> None:
    server = start_redis()
    log = tmp_path / "jobs.log"
    quiet = {"reload": {"watch": False}}
    config_a = redis_config(factory, server, "a.toml", **quiet)
    config_b = redis_config(factory, server, "b.toml", **quiet)
    enqueue(factory, config_a, log, [short(i) for i in range(JOBS)])
    reloaded, other = factory.start(config_a), factory.start(config_b)
    wait_until(lambda: len(count(log, "done")) >= 1000, what="1000 jobs done")
    before = other.metric("drainpool_tasks_completed_total", task="record")

    # A new pool size and a new lease: the pool restarts and the queue is opened anew.
    redis_config(factory, server, "a.toml", lease=20.0, pool={"workers": 6}, **quiet)
    result = factory.cli("reload", "--pid", str(reloaded.pid), config=config_a)
    assert result.returncode == 0, result.stdout + result.stderr
    assert reloaded.metric("drainpool_pool_generation") == 2
    assert reloaded.metric("drainpool_pool_workers") == 6
    assert other.metric("drainpool_tasks_completed_total", task="record") > before

    wait_until(lambda: all_done(log), timeout=120, what="every job done")
    assert max(count(log, "done").values()) == 1
    assert_queue_empty(factory, config_b)
    assert other.metric("drainpool_pool_generation") == 1
    assert "draining" not in other.log()
    stop_cleanly(reloaded, other)
    gen1, gen2 = generation_counts(reloaded, 1), generation_counts(reloaded, 2)
    completed = gen1["completed"] + gen2["completed"] + generation_counts(other)["completed"]
    assert completed == JOBS


def test_daemon_started_while_redis_is_down_starts_work_once_it_is_up(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=True)  # not started yet
    log = tmp_path / "jobs.log"
    config = redis_config(factory, server, pool={"workers": 4})
    try:
        daemon = factory.start(config)  # READY=1 all the same: the process is up
        assert ready(daemon) == 503
        assert daemon.status()["queue_ok"] is False
        code, body = daemon.get("/metrics")
        assert code == 200 and "drainpool_queue_jobs{" not in body
        refused = factory.cli("enqueue", "record", json.dumps({"log": str(log)}), config=config)
        assert refused.returncode == 1
        assert refused.stderr.startswith("drainpool: queue unavailable:"), refused.stderr
        assert "Traceback" not in refused.stderr

        # Freeze the daemon while Redis comes up with a job of a task it does not know: the
        # dead-lettering of such jobs, skipped at start, must run once Redis is reachable.
        daemon.signal(signal.SIGSTOP)
        server.start()
        ghost = factory.config(
            "ghost.toml",
            queue={"url": server.url},
            tasks={"ghost": "drainpool.tasks.examples:noop"},
        )
        assert factory.cli("enqueue", "ghost", "{}", config=ghost).returncode == 0
        daemon.signal(signal.SIGCONT)

        wait_until(lambda: ready(daemon) == 200, what="/readyz 200 once Redis is up")
        enqueue(factory, config, log, [short(i) for i in range(100)])
        wait_until(lambda: all_done(log, 100), what="jobs done")
        wait_until(lambda: queue_stats(factory, config)["dead"] == 1, what="ghost job buried")
        dead = factory.cli("queue", "dead", "list", config=config)
        assert "task 'ghost' is not configured" in dead.stdout
        text = daemon.log()
        assert text.count("queue unavailable") == 1, text
        assert text.count("queue available again") == 1, text
        assert "Traceback" not in text
        stop_cleanly(daemon)
    finally:
        server.kill()


def test_frozen_redis_times_out_and_never_hangs_the_endpoints(
    factory: DaemonFactory, start_redis: StartRedis, tmp_path: Path
) -> None:
    server = start_redis()
    assert server.pid is not None
    log = tmp_path / "jobs.log"
    config = redis_config(factory, server, pool={"workers": 2})
    daemon = factory.start(config)
    enqueue(factory, config, log, [0.0])
    wait_until(lambda: all_done(log, 1), what="first job done")
    os.kill(server.pid, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        # Before the daemon has noticed and after: the scrape answers either way, without
        # the queue's samples, and health stays fine; readiness goes once a call times out.
        code, body = daemon.get("/metrics")
        assert code == 200 and "drainpool_queue_jobs{" not in body
        wait_until(lambda: ready(daemon) == 503, what="/readyz 503 while Redis is frozen")
        assert daemon.get("/healthz")[0] == 200
        code, body = daemon.get("/metrics")
        assert code == 200 and "drainpool_queue_jobs{" not in body
        assert "Timeout" in daemon.status()["queue_problem"]
    finally:
        os.kill(server.pid, signal.SIGCONT)
    wait_until(lambda: ready(daemon) == 200, what="/readyz 200 after SIGCONT")
    enqueue(factory, config, log, [0.0])
    wait_until(lambda: all_done(log, 2), what="second job done")
    assert daemon.log().count("queue unavailable") == 1
    stop_cleanly(daemon)


def test_password_from_url_or_environment_is_never_shown(
    factory: DaemonFactory, start_redis: StartRedis, tmp_path: Path, monkeypatch: Any
) -> None:
    secret = "pw-5f3a/9?x"  # with characters that would cut a URL parsed carelessly
    server = start_redis(password=secret)
    quoted = secret.replace("/", "%2F").replace("?", "%3F")
    log = tmp_path / "jobs.log"
    in_url = redis_config(
        factory, server, "url.toml", url=f"redis://:{quoted}@127.0.0.1:{server.port}/0"
    )
    from_env = redis_config(factory, server, "env.toml")  # the URL carries no password

    shown = factory.cli("check-config", config=in_url)
    assert shown.returncode == 0, shown.stderr
    assert f'url = "redis://:***@127.0.0.1:{server.port}/0"' in shown.stdout
    assert quoted not in shown.stdout and secret not in shown.stdout

    daemon = factory.start(in_url)
    monkeypatch.setenv("DRAINPOOL_REDIS_PASSWORD", secret)
    enqueue(factory, from_env, log, [0.0, 0.0])
    wait_until(lambda: all_done(log, 2), what="jobs done")
    code, body = daemon.get("/api/config")
    assert code == 200 and "***" in body and quoted not in body

    monkeypatch.setenv("DRAINPOOL_REDIS_PASSWORD", "wrong-" + secret)
    refused = factory.cli("queue", "stats", config=from_env)
    assert refused.returncode == 1 and secret not in refused.stderr, refused.stderr

    server.stop()  # the daemon's error lines carry the (redacted) URL
    wait_until(lambda: ready(daemon) == 503, what="/readyz 503")
    stop_cleanly(daemon)
    text = daemon.log()
    assert "queue unavailable" in text and "redis://:***@" in text
    assert quoted not in text and secret not in text


def test_tls_and_password_from_the_environment_only(
    factory: DaemonFactory, start_redis: StartRedis, tmp_path: Path, monkeypatch: Any
) -> None:
    """A file that names no Redis at all; the environment brings the rediss:// URL and secret."""
    secret = "tls-pw-81c2"
    server = start_redis(tls=True, password=secret)
    assert server.url.startswith("rediss://")
    log = tmp_path / "jobs.log"
    config = factory.config(pool={"workers": 2})  # queue.url in the file: the SQLite default
    env = {"DRAINPOOL_QUEUE__URL": server.url, "DRAINPOOL_REDIS_PASSWORD": secret}
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # for the CLI, which inherits this process's environment
    shown = factory.cli("check-config", config=config)
    assert shown.returncode == 0 and "rediss://127.0.0.1" in shown.stdout, shown.stderr
    daemon = factory.start(config, env=env)
    enqueue(factory, config, log, [0.0, 0.0, 0.0])
    wait_until(lambda: all_done(log, 3), what="jobs done over TLS")
    assert_queue_empty(factory, config)
    assert not (tmp_path / "queue.db").exists(), "the file's SQLite URL was used"
    stop_cleanly(daemon)
    assert secret not in daemon.log()


def test_bad_redis_url_option_is_a_config_error_at_start_and_at_reload(
    factory: DaemonFactory, start_redis: StartRedis
) -> None:
    server = start_redis()
    bad = redis_config(factory, server, "bad.toml", url=server.url + "?no_such_option=1")
    checked = factory.cli("check-config", config=bad)
    assert checked.returncode == 78
    assert "no_such_option" in checked.stderr and "Traceback" not in checked.stderr

    config = redis_config(factory, server, reload={"watch": False})
    daemon = factory.start(config)
    redis_config(factory, server, url=server.url + "?no_such_option=1", reload={"watch": False})
    result = factory.cli("reload", "--pid", str(daemon.pid), config=config)
    assert result.returncode == 78, result.stdout + result.stderr
    assert ready(daemon) == 200  # the old queue and pools run on untouched
    assert daemon.metric("drainpool_pool_generation") == 1
    stop_cleanly(daemon)


def test_stop_while_redis_is_down_ends_after_the_grace(
    factory: DaemonFactory, start_redis: StartRedis, tmp_path: Path
) -> None:
    """Releases that cannot reach Redis are retried for the grace, then left to their leases."""
    server = start_redis(appendonly=True)
    log = tmp_path / "jobs.log"
    config = redis_config(factory, server, pool={"workers": 2}, shutdown={"grace_seconds": 1.0})
    enqueue(factory, config, log, [LONG, LONG])
    daemon = factory.start(config)
    wait_until(lambda: len(running(daemon)) == 2, what="both jobs running")
    server.stop()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 1  # jobs left unreleased: not a clean stop
    assert "2 jobs left unsettled" in daemon.log()
    assert Counter(kind for kind, _, _ in events(log)) == {"start": 2, "interrupted": 2}
    server.start()
    stats = queue_stats(factory, config)
    assert stats["leased"] == 2, "their leases keep them until they expire"
