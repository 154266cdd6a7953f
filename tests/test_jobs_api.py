"""GET /api/jobs and /api/jobs/ID over real HTTP against a real daemon (issue 18).

The same read rules as /api/dead: open on loopback to a loopback Host header,
the bearer token off loopback, refused off loopback with no token configured.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.console import TOKEN, api, call, console_config, open_queue, wait_dead
from tests.support.daemon import DaemonFactory

OTHER_TOKEN = "a-completely-different-token-42"

NOT_FOUND = "no job {} (never enqueued, or its record expired after retention_seconds)"


def test_records_by_id_and_by_filter(factory: DaemonFactory, tmp_path: Path) -> None:
    daemon = factory.start(console_config(factory, actions=False))
    log = str(tmp_path / "jobs.log")
    (tmp_path / "gate").touch()  # hold returns at once
    with open_queue(tmp_path) as queue:
        done = queue.enqueue("hold", {"log": log, "gate": str(tmp_path / "gate")})
        queue.wait(done, timeout=60)
        dead = queue.enqueue("flaky", {"log": log, "fixed": str(tmp_path / "no"), "error": "bad"})
        wait_dead(queue, 1)
        later = queue.enqueue("hold", {"log": log, "gate": "-"}, delay=3600)

    record = api(daemon, f"/api/jobs/{done}")
    assert (record["id"], record["state"], record["task"], record["attempts"]) == (
        done,
        "completed",
        "hold",
        1,
    )
    assert record["worker"]["pid"] == daemon.pid
    assert record["finished_at"] >= record["started_at"] >= record["enqueued_at"]
    record = api(daemon, f"/api/jobs/{dead}")
    assert (record["state"], record["error"]) == ("dead", "ChosenError: bad")
    assert "Traceback" in record["traceback"]
    assert api(daemon, f"/api/jobs/{later}")["state"] == "delayed"

    def ids(query: str) -> list[str]:
        return [job["id"] for job in api(daemon, f"/api/jobs{query}")["jobs"]]

    assert ids("") == [later, dead, done]  # newest first
    assert api(daemon, "/api/jobs")["limit"] == 100
    assert ids("?state=&task=") == [later, dead, done]
    assert ids("?state=dead") == [dead]
    assert ids("?task=hold") == [later, done]
    assert ids("?state=completed&task=hold&limit=1") == [done]
    assert ids("?limit=1") == [later]
    assert ids("?task=nothing-by-this-name") == []

    for path in ("/api/jobs/424242", "/api/jobs/abc", "/api/jobs/"):
        missing = call(daemon, "GET", path)
        assert missing.code == 404, (path, missing)
    assert call(daemon, "GET", "/api/jobs/424242").body == {"error": NOT_FOUND.format(424242)}
    for query, named in (
        ("?state=finished", "state"),
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=x", "limit"),
    ):
        refused = call(daemon, "GET", f"/api/jobs{query}")
        assert refused.code == 400, (query, refused)
        assert refused.body["error"].startswith(named), (query, refused)
    foreign = {"Host": f"attacker.example:{daemon.port}"}  # DNS rebinding
    for path in ("/api/jobs", f"/api/jobs/{done}"):
        assert call(daemon, "GET", path, headers=foreign).code == 403
        assert call(daemon, "GET", path, headers={"Host": f"localhost:{daemon.port}"}).code == 200
    assert call(daemon, "POST", f"/api/jobs/{done}", raw=b"x").code == 405
    assert call(daemon, "GET", "/api/jobs/1/more").code == 404
    assert call(daemon, "GET", "/healthz").code == 200
    done_record = api(daemon, f"/api/jobs/{done}")
    assert (done_record["result"], done_record["result_kept"]) == ("released", True)  # pool wiring


def test_reading_jobs_off_loopback_needs_the_token(factory: DaemonFactory, tmp_path: Path) -> None:
    daemon = factory.start(console_config(factory, actions=False, host="0.0.0.0"))
    with open_queue(tmp_path) as queue:
        job_id = queue.enqueue("hold", {"log": "-", "gate": "-"}, delay=3600)
    for path in ("/api/jobs", f"/api/jobs/{job_id}"):
        assert call(daemon, "GET", path).code == 401
        wrong = call(daemon, "GET", path, headers={"Authorization": f"Bearer {OTHER_TOKEN}"})
        assert wrong.code == 401
    assert api(daemon, f"/api/jobs/{job_id}", token=TOKEN)["state"] == "delayed"
    assert [job["id"] for job in api(daemon, "/api/jobs", token=TOKEN)["jobs"]] == [job_id]

    # Without a token configured, nobody can read the records off loopback.
    console_config(factory, actions=False, host="0.0.0.0", token=None)
    daemon.reload_edited_config()
    for path in ("/api/jobs", f"/api/jobs/{job_id}"):
        refused = call(daemon, "GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert refused.code == 403 and "console.token" in refused.body["error"]
