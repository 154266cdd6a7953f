"""Frozen slotted dataclasses made on every job's path, without their generated __init__.

A frozen dataclass's __init__ sets each field through object.__setattr__ (a
name lookup and a generic call per field): for the objects made once per job
(Job at a fetch, TaskContext and Done at a run) that was about half of each
one's cost (issue 17). Calling each slot's own setter makes the same object
for half as much. `setters` hands them out checked against the class's
fields, so a field added to the class fails at import instead of leaving a
slot unset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot setters of `cls`'s fields, which must be `names` in order (else TypeError)."""
    found = tuple(f.name for f in dataclasses.fields(cls))
    if found != names:
        raise TypeError(f"{cls.__name__}'s fields are {found}, its builder sets {names}")
    return tuple(getattr(cls, name).__set__ for name in names)
