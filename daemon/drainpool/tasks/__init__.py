"""The task registry: configured names resolved to callables, checked before use.

A reload builds a fresh registry from the new config before anything else
changes, so a task that cannot be imported rejects the reload and the running
generation keeps its own registry untouched.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from drainpool.payloads import UNTYPED, PayloadSpec, spec_of, typed_handler
from drainpool.refs import import_ref
from drainpool.settings import CommandTask, ConfigError, FunctionTask, LoadedConfig

Handler = Callable[..., Any]
TaskKind = Literal["function", "async", "command"]


@dataclass(frozen=True, slots=True, eq=False)  # never compared: no generated __eq__/__hash__
class TaskSpec:
    """A configured task: its name, where it came from, and how to call it."""

    name: str
    source: str  # "module:function" or the command's argv template
    kind: TaskKind
    handler: Handler
    payload: PayloadSpec = UNTYPED  # its annotations (drainpool.payloads)
    # The pool's time limit for a Python task (`[tasks.x] timeout_seconds`); a command
    # task enforces its own, so it has none here.
    timeout_seconds: float | None = None

    @property
    def identity(self) -> str:
        """What a reload compares: the source, and the time limit when there is one."""
        if self.timeout_seconds is None:
            return self.source
        return f"{self.source} timeout={self.timeout_seconds:g}"


def build_registry(loaded: LoadedConfig) -> dict[str, TaskSpec]:
    """Import every configured task; ConfigError lists each one that fails."""
    registry: dict[str, TaskSpec] = {}
    problems: list[str] = []
    for name, ref in loaded.settings.tasks.items():
        try:
            registry[name] = _resolve(name, ref)
        except Exception as exc:  # a module may raise anything at import
            problems.append(f"{loaded.where('tasks', name)}: tasks.{name}: {exc}")
    if problems:
        raise ConfigError(problems)
    return registry


def _resolve(name: str, ref: str | CommandTask | FunctionTask) -> TaskSpec:
    if isinstance(ref, FunctionTask):
        spec = _resolve(name, ref.function)
        return dataclasses.replace(spec, timeout_seconds=ref.timeout_seconds)
    if isinstance(ref, CommandTask):
        from drainpool.tasks.command import command_handler, command_source

        return TaskSpec(name, command_source(ref), "command", command_handler(ref))
    target = import_ref(ref)
    payload = spec_of(target)  # a model it names that cannot be found: a config error
    kind: TaskKind = "function"
    handler: Handler = target
    if inspect.iscoroutinefunction(target):
        from drainpool.tasks.asyncrun import run_async

        # Wrapped once here, so the pool calls every kind the same way (no per-job branch).
        kind, handler = "async", run_async(target)
    if payload.typed:
        handler = typed_handler(handler, payload)  # untyped tasks keep their own handler
    return TaskSpec(name, ref, kind, handler, payload)


def task_names(registry: Mapping[str, TaskSpec]) -> list[str]:
    return sorted(registry)
