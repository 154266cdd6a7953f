"""The pickup-latency producer's loop, shared by drainpool's producer and the peers' peerctl.

Standard library only: the peers' virtual environment imports it too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

GAP_SECONDS = (0.050, 0.150)  # an idle worker between two jobs, as in issue 21
SEED = 21


def spaced_enqueue(n: int, enqueue_one: Callable[[int], object]) -> dict[int, float]:
    """Jobs 0..n-1 one at a time, a random gap apart; seq -> monotonic time of the return."""
    rng = random.Random(SEED)  # the same gaps for every system
    returned: dict[int, float] = {}
    for seq in range(n):
        time.sleep(rng.uniform(*GAP_SECONDS))  # the worker goes idle between jobs on purpose
        enqueue_one(seq)
        returned[seq] = time.monotonic()
    return returned
