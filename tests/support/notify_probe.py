"""A stand-in Type=notify service for the nspawn tests, driven by drainpool.systemd.Notifier.

It runs under the container's own python3 with only drainpool/systemd.py on its
path, so the real systemd 252 judges the real datagrams. The test steers it
through files in its RuntimeDirectory (/run/probe):

- `go`: send READY=1 (until then the unit stays "activating");
- `pings`: written by the probe, the number of watchdog pings sent so far;
- SIGUSR1: stop pinging, as a hung supervisor loop would;
- SIGTERM: send STOPPING=1 (and EXTEND_TIMEOUT_USEC=$PROBE_EXTEND seconds if
  set), then exit, or with PROBE_HOLD set, exit only once `exit` exists.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from drainpool.systemd import Notifier

RUN = Path("/run/probe")
TICK = 0.05


def main() -> int:
    notifier = Notifier.from_env()
    events: list[int] = []
    # Handlers only record; the loop below decides (as the daemon does).
    signal.signal(signal.SIGTERM, lambda signum, _frame: events.append(signum))
    signal.signal(signal.SIGUSR1, lambda signum, _frame: events.append(signum))

    while not (RUN / "go").exists():
        time.sleep(TICK)
    notifier.ready(f"probe running as pid {os.getpid()}")

    pings = 0
    hung = False
    while signal.SIGTERM not in events:
        hung = hung or signal.SIGUSR1 in events
        now = time.monotonic()
        if not hung and notifier.watchdog_due(now):
            notifier.watchdog_ping(now)
            pings += 1
            (RUN / "pings").write_text(str(pings))
        time.sleep(TICK)

    notifier.stopping("probe stopping")
    if os.environ.get("PROBE_EXTEND"):
        notifier.extend_timeout(float(os.environ["PROBE_EXTEND"]))
    if os.environ.get("PROBE_HOLD"):
        while not (RUN / "exit").exists():
            time.sleep(TICK)
    notifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
