"""Retry and purge by id from the CLI and the console API: ids checked once, named (issue 23).

Before, an id too large for SQLite's integers was an OverflowError traceback
from the CLI and a 500 from the API; an id that was not a dead job was only
counted; and one job was "1 dead jobs".
"""

from __future__ import annotations

from pathlib import Path

from tests.support.console import authorized, call, console_config, open_queue
from tests.support.daemon import DaemonFactory
from tests.test_console_api import make_dead

HUGE = "99999999999999999999"


def test_cli_names_bad_and_missing_ids(factory: DaemonFactory, tmp_path: Path) -> None:
    config = console_config(factory, workers=1)
    daemon = factory.start(config)
    with open_queue(tmp_path) as queue:
        first, second = sorted(make_dead(queue, tmp_path, 2), key=int)
    daemon.stop()

    huge = factory.cli("queue", "dead", "retry", HUGE, config=config)
    assert huge.returncode == 2, huge
    assert "Traceback" not in huge.stderr
    assert f"not a job id: {HUGE}" in huge.stderr and huge.stderr.count("\n") == 1

    text = factory.cli("queue", "dead", "purge", "abc", config=config)
    assert "Traceback" not in text.stderr and "not a job id: 'abc'" in text.stderr

    mixed = factory.cli("queue", "dead", "retry", first, "999", config=config)
    assert mixed.returncode == 1
    assert mixed.stdout == "1 dead job retried\n"
    assert mixed.stderr == "drainpool: not a dead job: 999\n"

    both = factory.cli("queue", "dead", "purge", second, "998", "999", config=config)
    assert both.stdout == "1 dead job purged\n"
    assert both.stderr == "drainpool: not dead jobs: 998, 999\n"


def test_api_refuses_bad_ids_and_names_missing(factory: DaemonFactory, tmp_path: Path) -> None:
    daemon = factory.start(console_config(factory, workers=1))
    with open_queue(tmp_path) as queue:
        (dead,) = make_dead(queue, tmp_path, 1)
        for bad in (int(HUGE + "000"), "12x", True, -1):
            answer = call(
                daemon, "POST", "/api/dead/purge", body={"ids": [bad]}, headers=authorized()
            )
            assert answer.code == 400, (bad, answer)
            assert "not a job id" in answer.body["error"]
        assert [job.id for job in queue.dead_list()] == [dead]

        answer = call(
            daemon, "POST", "/api/dead/purge", body={"ids": [dead, "999"]}, headers=authorized()
        )
        assert (answer.code, answer.body) == (200, {"purged": 1, "not_dead": ["999"]})
        assert queue.dead_list() == []
