"""The supervisor's reload scheduling, driven with an injected clock (no sleeps)."""

from __future__ import annotations

from pathlib import Path

import pytest
from drainpool import settings
from drainpool.supervisor import MAX_DEBOUNCE_SECONDS, IllegalTransition, Phase, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path) -> tuple[Supervisor, Clock]:
    path = tmp_path / "d.toml"
    path.write_text("[reload]\ndebounce_ms = 100\n")
    clock = Clock()
    return Supervisor(settings.load(path), {}, clock=clock), clock


def test_file_changes_debounce_trailing_but_not_forever(tmp_path: Path) -> None:
    sup, clock = make(tmp_path)
    sup._request_reload("config_file", clock.now + 0.1)
    assert sup._reload_due == clock.now + 0.1
    for _ in range(100):  # a stream of edits every 50 ms
        clock.now += 0.05
        sup._request_reload("config_file", clock.now + 0.1)
    assert sup._reload_due == 1000.0 + MAX_DEBOUNCE_SECONDS


def test_sighup_is_not_delayed_by_a_pending_debounce(tmp_path: Path) -> None:
    sup, clock = make(tmp_path)
    sup._request_reload("config_file", clock.now + 0.1)
    sup._request_reload("sighup", clock.now)
    assert sup._reload_due == clock.now
    assert sup._reload_source == "sighup"


def test_no_reload_is_scheduled_once_a_stop_began(tmp_path: Path) -> None:
    sup, clock = make(tmp_path)
    sup._stop_requested = True
    sup._request_reload("sighup", clock.now)
    assert sup._reload_due is None


def test_illegal_transitions_raise(tmp_path: Path) -> None:
    sup, _ = make(tmp_path)
    sup._enter(Phase.RUNNING)
    with pytest.raises(IllegalTransition, match="running -> stopped"):
        sup._enter(Phase.STOPPED)  # a stop always goes through draining
