"""The long chaos run of issue 9, outside pytest.

    python -m bench.chaos --jobs 5000 --seconds 60 [--seed N] [--redis]   # from the repo root

It runs tests/support/chaos.py (the same schedule and checks as
tests/test_chaos.py) at the size given, prints the seed first and every
broken invariant at the end, and exits 1 if there is one. The work directory
(task log, daemon logs, queue) is kept when something failed.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

from tests.support.chaos import run_chaos
from tests.support.chaos_verify import verify
from tests.support.daemon import daemons
from tests.support.redis_server import redis_servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The long chaos run of issue 9.")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(10**9))
    parser.add_argument("--redis", action="store_true", help="queue in a real redis-server")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="drainpool-chaos-"))
    with daemons(work) as factory, redis_servers(work / "redis") as start_redis:
        url = start_redis().url if args.redis else "sqlite:///queue.db"
        result = run_chaos(
            factory, work, jobs=args.jobs, seconds=args.seconds, seed=args.seed, queue_url=url
        )
        problems = verify(result)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} broken invariants; kept {work}", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
