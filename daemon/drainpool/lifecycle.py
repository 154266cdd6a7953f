"""The daemon's lifecycle states and the transitions between them (checked, never implied).

starting -> running -> draining -> (running again | stopped). The supervisor
alone moves between them; an illegal move is a bug and raises.
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


ALLOWED = {
    Phase.STARTING: {Phase.RUNNING, Phase.DRAINING, Phase.STOPPED},
    Phase.RUNNING: {Phase.DRAINING},
    Phase.DRAINING: {Phase.RUNNING, Phase.STOPPED},
    Phase.STOPPED: set(),
}


class IllegalTransition(RuntimeError):
    pass


def check_transition(old: Phase, new: Phase) -> None:
    if new not in ALLOWED[old]:
        raise IllegalTransition(f"{old.value} -> {new.value}")
