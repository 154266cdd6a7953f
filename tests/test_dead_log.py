"""Every job that goes dead is logged once, however it died (issue 23, item 13).

A failure past max_attempts is logged after the settle on both backends; a
job whose lease ran out max_attempts times is buried by the fetch itself, in
SQLite's transaction or Redis's script, and must be logged all the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from drainpool.queue import Queue, RetryPolicy, from_url

from tests.support.redis_server import redis_servers
from tests.support.waiting import wait_until


@pytest.fixture(params=["sqlite", "redis"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Queue]:
    retry = RetryPolicy(max_attempts=1)
    if request.param == "sqlite":
        opened = from_url(f"sqlite:///{tmp_path / 'queue.db'}", retry=retry)
        try:
            yield opened
        finally:
            opened.close()
        return
    with redis_servers(tmp_path) as start_redis:
        opened = from_url(start_redis().url, retry=retry)
        try:
            yield opened
        finally:
            opened.close()


def test_a_job_whose_lease_ran_out_too_often_is_logged_dead(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="drainpool.queue")
    job_id = queue.enqueue("t", {})
    (job,) = queue.fetch(1, ["t"], 0.2)  # and never settled: its worker "died"
    assert job.id == job_id
    wait_until(lambda: queue.stats().dead == 1 or queue.fetch(1, ["t"], 0.2), what="dead")
    wait_until(lambda: queue.stats().dead == 1, what="the lapsed job buried")
    lines = [r.getMessage() for r in caplog.records if "is dead after" in r.getMessage()]
    assert lines == [
        f"job {job_id} (task t) is dead after 1 attempt(s): lease expired 1 times:"
        " its worker died each time"
    ], lines
