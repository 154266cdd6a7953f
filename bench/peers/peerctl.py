"""The bench's hands inside the peers' virtual environment (never run by the project's Python).

    peerctl.py versions                      JSON {package: version} of the peers
    peerctl.py enqueue PEER TASK N [ARG...]  enqueue N jobs; prints JSON {"seconds": ...}
    peerctl.py pending PEER                  prints JSON {"pending": ...}
    peerctl.py spaced PEER N                 N stamp jobs, 50-150 ms apart; prints JSON
                                             {"returned": {seq: monotonic time of the return}}

PEER is dramatiq, huey, celery (on Redis), procrastinate or pgqueuer (on
PostgreSQL); its app module is `<PEER>_app`. The bench (system Python) runs
this with bench/.venv-peers/bin/python and PYTHONPATH holding bench/ and
bench/peers/, and BENCH_REDIS_URL set (the completion count), and BENCH_PG_URL
for the PostgreSQL peers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from importlib.metadata import version

from spaced import spaced_enqueue

PEERS = ("dramatiq", "huey", "celery", "procrastinate", "pgqueuer")
PACKAGES = (
    "dramatiq",
    "huey",
    "celery",
    "kombu",
    "redis",
    "procrastinate",
    "pgqueuer",
    "psycopg",
    "asyncpg",
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="peerctl")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("versions")
    enqueue = sub.add_parser("enqueue")
    enqueue.add_argument("peer", choices=PEERS)
    enqueue.add_argument("task")
    enqueue.add_argument("n", type=int)
    enqueue.add_argument("args", nargs="*", type=float)
    pending = sub.add_parser("pending")
    pending.add_argument("peer", choices=PEERS)
    spaced = sub.add_parser("spaced")
    spaced.add_argument("peer", choices=PEERS)
    spaced.add_argument("n", type=int)
    ns = parser.parse_args()

    if ns.command == "versions":
        print(json.dumps({name: version(name) for name in PACKAGES}))
        return
    app = importlib.import_module(f"{ns.peer}_app")
    if ns.command == "enqueue":
        start = time.monotonic()
        app.enqueue(ns.task, ns.n, list(ns.args))
        print(json.dumps({"seconds": time.monotonic() - start, "started": start}))
    elif ns.command == "spaced":
        returned = spaced_enqueue(ns.n, lambda seq: app.enqueue("stamp", 1, [float(seq)]))
        print(json.dumps({"returned": returned}))
    else:
        print(json.dumps({"pending": app.pending()}))


if __name__ == "__main__":
    main()
