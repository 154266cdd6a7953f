"""Every SIGHUP answers systemd's reload protocol, whatever the reload's outcome.

Issue 23, item 8: with Type=notify-reload, `systemctl reload` sends SIGHUP and
waits for RELOADING=1 (carrying MONOTONIC_USEC) and then READY=1. A reload that
finds the config unchanged, or rejects it, must answer too, or systemctl waits
for its timeout. The real daemon sends to the test's own NOTIFY_SOCKET.
"""

from __future__ import annotations

import signal
import time

from tests.support.daemon import DaemonFactory, write_atomic
from tests.support.waiting import wait_until

QUIET = {"reload": {"watch": False}}


def test_every_sighup_sends_reloading_then_ready_naming_the_outcome(
    factory: DaemonFactory,
) -> None:
    config = factory.config(**QUIET, pool={"workers": 2})
    daemon = factory.start(config)
    good = config.read_text()
    for n, (edit, outcome) in enumerate(
        [
            (None, "unchanged"),
            ("broken = [", "rejected"),
            ("workers = 3", "applied"),
        ],
        start=1,
    ):
        if edit == "broken = [":
            write_atomic(config, good + "\nbroken = [\n")
        elif edit is not None:
            write_atomic(config, good.replace("workers = 2", edit))
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        daemon.signal(signal.SIGHUP)
        reloading = daemon.notify.wait_for("RELOADING", n)
        ready = daemon.notify.wait_for("READY", n + 1)  # the first READY=1 was the start
        assert int(reloading["MONOTONIC_USEC"]) >= before
        assert f"reload {outcome}" in ready["STATUS"], (outcome, ready)
        messages = list(daemon.notify.messages)
        assert messages.index(reloading) < messages.index(ready)
        wait_until(lambda o=outcome: daemon.status()["reload"]["result"] == o, what=outcome)
    daemon.terminate()
