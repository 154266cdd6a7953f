"""Pool plans: what each named pool should be, and what a reload would restart.

Derived from Settings alone, so the supervisor, `reload --dry-run` and
`check-config --diff` compare the running daemon with a file the same way
(supervisord's reread: only the pools whose plan changed restart).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from drainpool import hooks, tracing
from drainpool.pool import PoolConfig
from drainpool.settings import PoolSettings, Settings
from drainpool.tasks import TaskSpec


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """What one named pool should be, derived from Settings; compared at reload."""

    config: PoolConfig
    task_refs: tuple[tuple[str, str], ...]  # (name, source) of the tasks it serves


def plan_pools(settings: Settings, registry: dict[str, TaskSpec]) -> dict[str, PoolPlan]:
    """Named pools from [pools.NAME]; a lone [pool] table is one pool `default` for every task."""

    def config(name: str, pool: PoolSettings, grace_seconds: float | None) -> PoolConfig:
        return PoolConfig(
            name=name,
            workers=pool.workers,
            grace_seconds=grace_seconds or settings.shutdown.grace_seconds,
            lease_seconds=settings.queue.lease_seconds,
            poll_interval_seconds=settings.queue.poll_interval_seconds,
            kind=pool.kind,
            prefetch=pool.prefetch,
            result_max_bytes=(
                settings.queue.result_max_bytes if settings.queue.retention_seconds > 0 else None
            ),
            hooks=hooks.refs_of(settings.hooks),
            tracing=tracing.wanted(settings.tracing),
        )

    if not settings.pools:
        plan = PoolPlan(config("default", settings.pool, None), _refs(registry, registry.keys()))
        return {"default": plan}
    return {
        name: PoolPlan(config(name, pool, pool.grace_seconds), _refs(registry, pool.tasks))
        for name, pool in settings.pools.items()
    }


def plan_to_json(plan: PoolPlan) -> dict[str, Any]:
    return {"config": dataclasses.asdict(plan.config), "tasks": [list(t) for t in plan.task_refs]}


def plan_from_json(data: dict[str, Any]) -> PoolPlan:
    config = dict(data["config"])
    config["hooks"] = tuple(tuple(pair) for pair in config.get("hooks", ()))  # JSON has lists
    return PoolPlan(PoolConfig(**config), tuple(tuple(t) for t in data["tasks"]))  # type: ignore[misc]


def _refs(registry: dict[str, TaskSpec], names: Iterable[str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, registry[name].identity) for name in names if name in registry))


def diff_plans(
    old: dict[str, PoolPlan], new: dict[str, PoolPlan], *, everything: str = ""
) -> dict[str, str]:
    """Pool name -> why it restarts (supervisord's reread): new, removed, or what changed.

    `everything` names a change that concerns every pool (the queue), restarting all.
    """
    changes = {}
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before is None:
            changes[name] = "new pool"
        elif after is None:
            changes[name] = "removed"
        elif everything:
            changes[name] = everything
        elif before != after:
            parts = [
                f"{field} {getattr(before.config, field)} -> {getattr(after.config, field)}"
                for field in ("workers", "kind", "prefetch", "grace_seconds", "lease_seconds")
                if getattr(before.config, field) != getattr(after.config, field)
            ]
            if before.task_refs != after.task_refs:
                parts.append("tasks changed")
            changes[name] = ", ".join(parts) or "settings changed"
    return changes
