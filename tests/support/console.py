"""Helpers for the console tests: a config with the console on, raw HTTP, a queue handle.

Requests go through http.client so a test controls every header (Host,
Origin, Authorization, the CSRF header) exactly as a browser or an attacker
would send them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drainpool.queue import Queue, from_url

from tests.support.daemon import Daemon, DaemonFactory
from tests.support.waiting import wait_until

TOKEN = "console-test-token-0123456789"
CSRF = {"X-Drainpool-CSRF": "1"}
CONSOLE_TASKS = {
    "hold": "tests.support.console_tasks:hold",
    "flaky": "tests.support.console_tasks:flaky",
}


def console_config(
    factory: DaemonFactory,
    *,
    actions: bool = True,
    token: str | None = TOKEN,
    host: str = "127.0.0.1",
    workers: int = 2,
    name: str = "drainpool.toml",
) -> Path:
    """A test config with the console's settings; one failure makes a job dead."""
    console: dict[str, Any] = {"actions": actions}
    if token is not None:
        console["token"] = token
    return factory.config(
        name,
        # A fixed reserve of 1: the console tests count leased and ready jobs exactly.
        pool={"workers": workers, "prefetch": 1},
        queue={"max_attempts": 1},
        reload={"watch": False},
        metrics={"host": host},
        console=console,
        tasks=CONSOLE_TASKS,
    )


@dataclass(frozen=True)
class Answer:
    code: int
    body: Any  # parsed JSON when the answer is JSON, else text
    headers: dict[str, str]


def call(
    daemon: Daemon,
    method: str,
    path: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Answer:
    """One HTTP request to the daemon's endpoint on loopback, on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        sent = dict(headers or {})
        if data is not None and raw is None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        text = response.read().decode()
        kind = response.getheader("Content-Type", "")
        parsed = json.loads(text) if kind.startswith("application/json") else text
        return Answer(response.status, parsed, {k.lower(): v for k, v in response.getheaders()})
    finally:
        conn.close()


def authorized(token: str = TOKEN, **extra: str) -> dict[str, str]:
    """Headers of a legitimate scripted action: bearer token and the CSRF header."""
    return {"Authorization": f"Bearer {token}", **CSRF, **extra}


def api(daemon: Daemon, path: str, token: str | None = None) -> Any:
    """GET a console API path and return its JSON; fails the test on anything but 200."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    answer = call(daemon, "GET", path, headers=headers)
    assert answer.code == 200, (path, answer)
    return answer.body


@contextlib.contextmanager
def open_queue(tmp: Path) -> Iterator[Queue]:
    """The test config's SQLite queue, opened from the test process like a producer."""
    queue = from_url("sqlite:///queue.db", base_dir=tmp)
    try:
        yield queue
    finally:
        queue.close()


def wait_dead(queue: Queue, count: int) -> list[str]:
    """Wait until exactly `count` jobs are dead; return their ids."""

    def dead_now() -> tuple[list[str]] | None:
        ids = [job.id for job in queue.dead_list()]
        return (ids,) if len(ids) == count else None  # a tuple, so an empty list counts too

    return wait_until(dead_now, what=f"{count} dead jobs")[0]
