"""The console's JSON API and its guards, over real HTTP against a real daemon (issue 11).

Every refusal is checked twice: by its status code, and by looking at the
queue and the reload record afterwards, so a guard that answers 401 after
acting would still fail the test.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from drainpool.queue import Queue

from tests.support.console import (
    CSRF,
    TOKEN,
    Answer,
    api,
    authorized,
    call,
    console_config,
    open_queue,
    wait_dead,
)
from tests.support.daemon import Daemon, DaemonFactory
from tests.support.waiting import wait_until

OTHER_TOKEN = "a-completely-different-token-42"


def flaky_payload(tmp: Path, error: str = "disk full", **extra: Any) -> dict[str, Any]:
    return {
        "log": str(tmp / "jobs.log"),
        "fixed": str(tmp / "fixed"),
        "error": error,
        **extra,
    }


def hold_payload(tmp: Path) -> dict[str, str]:
    return {"log": str(tmp / "jobs.log"), "gate": str(tmp / "gate")}


def make_dead(queue: Queue, tmp: Path, count: int) -> list[str]:
    for n in range(count):
        queue.enqueue("flaky", flaky_payload(tmp, f"failure number {n}"))
    return wait_dead(queue, count)


def starts(tmp: Path, job_id: str) -> int:
    """How many times a job has started, from the tasks' own log."""
    path = tmp / "jobs.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if line.startswith(f"start {job_id} "))


def assert_no_reload_was_queued(daemon: Daemon) -> None:
    """A SIGHUP after the refused requests must be the first reload the daemon records."""
    before = daemon.status()["reload"]["seq"]
    daemon.signal(signal.SIGHUP)
    record = wait_until(
        lambda: (r := daemon.status()["reload"])["seq"] > before and r, what="the SIGHUP reload"
    )
    assert (record["seq"], record["source"]) == (before + 1, "sighup")
    assert "reload (console" not in daemon.log()


def test_reads_match_the_pools_and_the_queue(factory: DaemonFactory, tmp_path: Path) -> None:
    daemon = factory.start(console_config(factory, workers=2))
    with open_queue(tmp_path) as queue:
        dead = make_dead(queue, tmp_path, 2)
        # 2 workers and a reserve of 1 (pool.prefetch): 3 leased, the 4th waits in the queue.
        holds = [queue.enqueue("hold", hold_payload(tmp_path)) for _ in range(4)]
        wait_until(
            lambda: (
                len(api(daemon, "/api/running")["running"]) == 2
                and api(daemon, "/api/queue")["ready"] == 1
            ),
            what="2 running and 1 ready",
        )
        pool = daemon.status()["pools"][0]
        assert (pool["handed"], pool["reserve"]) == (1, 1)

        running = api(daemon, "/api/running")["running"]
        in_status = [r for pool in daemon.status()["pools"] for r in pool["running"]]
        assert {r["job_id"] for r in running} == {r["job_id"] for r in in_status}
        assert {r["job_id"] for r in running} < set(holds)
        assert all(r["task"] == "hold" and r["attempt"] == 1 for r in running)
        assert all(r["pool"] == "default" and r["generation"] == 1 for r in running)

        stats = api(daemon, "/api/queue")
        expected = queue.stats()
        assert (
            [stats[k] for k in ("ready", "delayed", "leased", "dead")]
            == [
                expected.ready,
                expected.delayed,
                expected.leased,
                expected.dead,
            ]
            == [1, 0, 3, 2]
        )
        assert stats["oldest_ready_age_seconds"] >= 0

    letters = api(daemon, "/api/dead")["dead"]
    assert sorted(job["id"] for job in letters) == sorted(dead)
    for job in letters:
        assert job["task"] == "flaky" and job["attempts"] == 1
        assert job["error"].startswith("ChosenError: failure number ")
        assert "raise ChosenError" in job["traceback"]
        assert job["payload"]["fixed"] == str(tmp_path / "fixed")
    assert len(api(daemon, "/api/dead?limit=1")["dead"]) == 1

    outcomes = api(daemon, "/api/outcomes")["outcomes"]
    failed = [o for o in outcomes if o["outcome"] == "failed"]
    assert sorted(o["job_id"] for o in failed) == sorted(dead)
    assert all(o["task"] == "flaky" and o["seconds"] is not None for o in failed)

    info = api(daemon, "/api/console")
    assert info["actions"] is True and info["reading_needs_token"] is False


def test_every_console_answer_carries_the_security_policy(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon = factory.start(console_config(factory))
    page = call(daemon, "GET", "/")
    assert page.code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/console.js"' in page.body
    static = ("/static/console.js", "/static/chart.js", "/static/jobpage.js", "/static/console.css")
    reads = ("/api/queue", "/api/dead", "/api/outcomes/minutes", "/api/jobs/1")
    for path in ("/", *static, *reads):
        answer = call(daemon, "GET", path)
        assert answer.code == (404 if path == "/api/jobs/1" else 200), path  # no job 1 yet
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy, path
        assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy, path
        assert answer.headers["x-content-type-options"] == "nosniff", path
    assert (
        call(daemon, "GET", "/static/console.js")
        .headers["content-type"]
        .startswith("text/javascript")
    )


REFUSALS = {
    "no token": ({**CSRF}, 401),
    "wrong token": (authorized(OTHER_TOKEN), 401),
    "no CSRF header": ({"Authorization": f"Bearer {TOKEN}"}, 403),
    "another origin": (authorized(Origin="http://attacker.example"), 403),
    "a cross-site fetch": (authorized(**{"Sec-Fetch-Site": "cross-site"}), 403),
}
ACTIONS = (
    ("/api/dead/retry", {"all": True}),
    ("/api/dead/purge", {"all": True}),
    ("/api/reload", {}),
)


def refuse_everything(daemon: Daemon, headers: dict[str, str], code: int) -> None:
    for path, body in ACTIONS:
        answer = call(daemon, "POST", path, body=body, headers=headers)
        assert answer.code == code, (path, answer)
        assert answer.body["error"], answer
        if code == 401:
            assert answer.headers["www-authenticate"].startswith("Bearer")


def test_actions_without_token_csrf_or_same_origin_change_nothing(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon = factory.start(console_config(factory))
    with open_queue(tmp_path) as queue:
        ids = make_dead(queue, tmp_path, 2)
        before = queue.dead_list()
        for headers, code in REFUSALS.values():
            refuse_everything(daemon, headers, code)
        assert queue.dead_list() == before
        assert queue.stats().ready == 0
    assert all(starts(tmp_path, job_id) == 1 for job_id in ids)
    assert daemon.log().count("console dead_retry refused for 127.0.0.1") == len(REFUSALS)
    assert daemon.log().count("console reload refused for 127.0.0.1") == len(REFUSALS)
    assert_no_reload_was_queued(daemon)


def test_actions_off_refuse_even_a_correct_request(factory: DaemonFactory, tmp_path: Path) -> None:
    daemon = factory.start(console_config(factory, actions=False))
    assert api(daemon, "/api/console")["actions"] is False
    with open_queue(tmp_path) as queue:
        ids = make_dead(queue, tmp_path, 1)
        before = queue.dead_list()
        refuse_everything(daemon, authorized(), 403)
        assert queue.dead_list() == before
    assert starts(tmp_path, ids[0]) == 1
    assert "console actions are off" in daemon.log()
    assert_no_reload_was_queued(daemon)


def test_retry_purge_and_reload_with_the_token(factory: DaemonFactory, tmp_path: Path) -> None:
    config = console_config(factory, workers=1)
    daemon = factory.start(config)
    same_origin = authorized(Origin=f"http://127.0.0.1:{daemon.port}")
    with open_queue(tmp_path) as queue:
        first, second, third = sorted(make_dead(queue, tmp_path, 3), key=int)
        (tmp_path / "fixed").touch()

        answer = call(daemon, "POST", "/api/dead/retry", body={"ids": [first]}, headers=same_origin)
        assert (answer.code, answer.body) == (200, {"retried": 1})
        wait_until(lambda: f"done {first} 1" in (tmp_path / "jobs.log").read_text())
        assert sorted(wait_dead(queue, 2), key=int) == [second, third]
        wait_until(
            lambda: any(
                o["job_id"] == first and o["outcome"] == "completed"
                for o in api(daemon, "/api/outcomes")["outcomes"]
            ),
            what="the retried job's outcome",
        )

        answer = call(
            daemon, "POST", "/api/dead/purge", body={"ids": [second]}, headers=authorized()
        )
        assert (answer.code, answer.body) == (200, {"purged": 1})
        assert [job.id for job in queue.dead_list()] == [third]

        answer = call(daemon, "POST", "/api/dead/retry", body={"all": True}, headers=authorized())
        assert (answer.code, answer.body) == (200, {"retried": 1})
        wait_until(lambda: f"done {third} 1" in (tmp_path / "jobs.log").read_text())
        assert starts(tmp_path, second) == 1  # purged: never ran again
    log = daemon.log()
    assert "console dead_retry by 127.0.0.1:" in log and f'{{"ids": ["{first}"]}}' in log
    assert "console dead_purge by 127.0.0.1:" in log

    # A reload from the console restarts the pool whose config changed, like SIGHUP.
    console_config(factory, workers=2)
    answer = call(daemon, "POST", "/api/reload", body={}, headers=authorized())
    assert (answer.code, answer.body) == (202, {"requested": True, "seq": 0})
    record = wait_until(lambda: (r := daemon.status()["reload"])["seq"] == 1 and r)
    assert (record["result"], record["source"]) == ("applied", "console")
    pool = wait_until(lambda: daemon.status()["pools"])[0]
    assert (pool["generation"], pool["workers"]) == (2, 2)
    assert daemon.metric("drainpool_pool_restarts_total", reason="console") == 1

    # A new token alone is a change (the effective config shows it only as asterisks).
    console_config(factory, workers=2, token=OTHER_TOKEN)
    answer = call(daemon, "POST", "/api/reload", body={}, headers=authorized())
    assert answer.code == 202
    record = wait_until(lambda: (r := daemon.status()["reload"])["seq"] == 2 and r)
    assert record["result"] == "applied"
    assert daemon.status()["pools"][0]["generation"] == 2  # no pool restart for it
    retry_all = {"all": True}
    assert call(daemon, "POST", "/api/dead/retry", body=retry_all, headers=authorized()).code == 401
    ok = call(daemon, "POST", "/api/dead/retry", body=retry_all, headers=authorized(OTHER_TOKEN))
    assert (ok.code, ok.body) == (200, {"retried": 0})


def test_reading_off_loopback_needs_the_token(factory: DaemonFactory, tmp_path: Path) -> None:
    # Bound to every address, so the console cannot trust who connects: reads need the token.
    daemon = factory.start(console_config(factory, actions=False, host="0.0.0.0"))
    assert call(daemon, "GET", "/api/dead").code == 401
    wrong = call(daemon, "GET", "/api/dead", headers={"Authorization": f"Bearer {OTHER_TOKEN}"})
    assert wrong.code == 401
    assert api(daemon, "/api/dead", token=TOKEN)["dead"] == []
    assert api(daemon, "/api/queue", token=TOKEN)["dead"] == 0
    assert call(daemon, "GET", "/").code == 200  # the page itself holds no data
    assert call(daemon, "GET", "/api/status").code == 200  # drainpool reload/status read it
    assert api(daemon, "/api/console")["reading_needs_token"] is True
    for path in ("/api/jobs/1", "/api/outcomes/minutes"):
        assert call(daemon, "GET", path).code == 401, path
        assert call(daemon, "GET", path, headers={"Authorization": f"Bearer {TOKEN}"}).code in (
            200,
            404,  # no job 1: the token was accepted
        ), path

    # Without a token configured, nobody can read the console off loopback.
    console_config(factory, actions=False, host="0.0.0.0", token=None)
    daemon.reload_edited_config()
    refused = call(daemon, "GET", "/api/dead", headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.code == 403 and "console.token" in refused.body["error"]


JSON = {"Content-Type": "application/json"}
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int]] = [
    ("GET", "/api/dead/retry", {}, 405),
    ("POST", "/metrics", {"raw": b"x"}, 405),
    ("POST", "/nowhere", {"raw": b"x"}, 404),
    ("POST", "/api/dead/retry", {"raw": b"[" * (65 * 1024), "headers": JSON}, 413),
    ("POST", "/api/dead/retry", {"raw": b"{not json", "headers": JSON}, 400),
    ("POST", "/api/dead/retry", {"body": {"ids": []}}, 400),
    ("POST", "/api/dead/retry", {"body": {"ids": ["abc"]}}, 400),
    ("POST", "/api/dead/retry", {"body": {"all": True, "ids": ["1"]}}, 400),
    ("POST", "/api/dead/retry", {"body": {"everything": True}}, 400),
    (
        "POST",
        "/api/dead/retry",
        {"raw": b"all=true", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        415,
    ),
    ("GET", "/api/dead?limit=0", {}, 400),
    ("GET", "/api/dead?limit=x", {}, 400),
    ("GET", "/api/dead", {"host": "attacker.example"}, 403),  # DNS rebinding
    ("POST", "/api/dead/retry", {"body": {"all": True}, "host": "attacker.example"}, 403),
    ("GET", "/api/queue", {"host": "localhost"}, 200),
    ("GET", "/api/queue", {"host": "[::1]"}, 200),
]


def test_bad_requests_are_refused_and_the_server_goes_on(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon = factory.start(console_config(factory))
    with open_queue(tmp_path) as queue:
        ids = make_dead(queue, tmp_path, 1)
        for method, path, options, code in BAD_REQUESTS:
            headers = {**(authorized() if method == "POST" else {}), **options.get("headers", {})}
            if "host" in options:
                headers["Host"] = f"{options['host']}:{daemon.port}"
            answer: Answer = call(
                daemon,
                method,
                path,
                body=options.get("body"),
                raw=options.get("raw"),
                headers=headers,
            )
            assert answer.code == code, (method, path, options, answer)
            assert call(daemon, "GET", "/healthz").code == 200  # still serving
        assert [job.id for job in queue.dead_list()] == ids
        assert queue.stats().ready == 0


def test_check_config_never_prints_the_token(
    factory: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = console_config(factory)
    shown = factory.cli("check-config", config=config)
    assert shown.returncode == 0, shown.stderr
    assert TOKEN not in shown.stdout + shown.stderr
    assert 'token = "**********"' in shown.stdout

    monkeypatch.setenv("DRAINPOOL_CONSOLE__TOKEN", OTHER_TOKEN)
    shown = factory.cli("check-config", config=config)
    assert shown.returncode == 0, shown.stderr
    assert OTHER_TOKEN not in shown.stdout + shown.stderr

    monkeypatch.delenv("DRAINPOOL_CONSOLE__TOKEN")
    refused = factory.cli("check-config", config=console_config(factory, token=None))
    assert refused.returncode == 78
    assert "console.actions = true needs console.token" in refused.stderr


def test_a_job_by_id_and_the_outcomes_per_minute(factory: DaemonFactory, tmp_path: Path) -> None:
    daemon = factory.start(console_config(factory))
    with open_queue(tmp_path) as queue:
        [dead_id] = make_dead(queue, tmp_path, 1)
        # A task no pool serves, settled here as a pool would, with its batch's counts.
        queue.enqueue("offline", {"n": 1})
        [job] = queue.fetch(1, ["offline"], 60)
        queue.settle(acks=[job], outcomes={"completed": 2, "interrupted": 1})

    record = api(daemon, f"/api/jobs/{dead_id}")
    assert (record["id"], record["task"], record["state"]) == (dead_id, "flaky", "dead")
    assert record["payload"] == flaky_payload(tmp_path, "failure number 0")
    assert "failure number 0" in record["error"] and record["traceback"]
    assert record["attempts"] == 1 and record["enqueued_at"] <= record["finished_at"]
    assert record["worker"]["pid"] == daemon.pid
    assert api(daemon, f"/api/jobs/{job.id}")["state"] == "completed"

    missing = call(daemon, "GET", "/api/jobs/987654")
    assert missing.code == 404
    assert missing.body["error"] == (
        "no job 987654 (never enqueued, or its record expired after retention_seconds)"
    )
    assert call(daemon, "GET", "/api/jobs/not-an-id").code == 404
    assert call(daemon, "GET", f"/api/jobs/{dead_id}/more").code == 404
    assert call(daemon, "GET", "/api/jobs/").code == 404

    answer = api(daemon, "/api/outcomes/minutes")
    minutes = answer["minutes"]
    assert answer["outcomes"] == [
        "completed", "failed", "interrupted", "cancelled", "abandoned", "aborted", "timed_out",
        "dead",
    ]  # fmt: skip
    assert 60 <= len(minutes) <= 62  # the last hour, minute by minute, zero-filled
    assert all(set(m) == {"minute", *answer["outcomes"]} for m in minutes)
    total = {name: sum(m[name] for m in minutes) for name in answer["outcomes"]}
    # At least: the pool may count its own outcomes too (the flaky job's failure).
    assert total["completed"] >= 2 and total["interrupted"] >= 1
    assert total["dead"] == 1  # the queue counts the final failure itself
