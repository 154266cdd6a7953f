"""The `[schedules.NAME]` tables of the config (issue 20), validated before any use.

A module apart from settings.py because what a schedule may say (a cron
expression parsed by cronsim, an IANA zone, a duration) is one concern with
its own rules; settings.py only holds the field and calls `check_schedules`
for the rules that need the whole file (the task must be configured).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from drainpool.settings import LoadedConfig

SCHEDULE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# The usual shorthands; cronsim reads only the five fields, so they are spelt out here.
CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
MAX_EVERY_SECONDS = 366 * 86_400.0


def parse_duration(text: str) -> float:
    """Seconds in "30s", "5m", "1h30m", "2d"; ValueError naming the accepted forms."""
    spaced = text.replace(" ", "")
    parts = _DURATION_PART.findall(spaced)
    if not spaced or "".join(n + u for n, u in parts) != spaced:
        raise ValueError(f'{text!r} is not a duration such as "30s", "5m", "1h" or "1h30m"')
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def cron_fields(expression: str) -> str:
    """The five fields of a cron expression or of its @alias."""
    return CRON_ALIASES.get(expression.strip().lower(), expression.strip())


class ScheduleSettings(BaseModel):
    """One `[schedules.NAME]` table: when (cron or every), what (task, payload), how."""

    # Validated within Settings only: its own validator is built if ever used alone.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    cron: str | None = None
    every: str | None = None
    task: str
    payload: dict[str, Any] = {}  # copied per instance; no default_factory (settings.py)
    timezone: str = "UTC"
    catch_up: Literal["none", "last"] = "none"
    jitter_seconds: float = Field(0.0, ge=0, le=86_400)
    enabled: bool = True

    @field_validator("cron")
    @classmethod
    def _cron(cls, expression: str | None) -> str | None:
        if expression is None:
            return None
        fields = cron_fields(expression)
        if len(fields.split()) != 5:
            raise ValueError(
                f"{expression!r}: a cron expression has five fields (minute hour day month"
                " weekday) or is one of " + ", ".join(CRON_ALIASES)
            )
        from cronsim import CronSim, CronSimError  # a config without cron never loads it

        try:
            next(CronSim(fields, datetime(2000, 1, 1, tzinfo=UTC)))
        except (CronSimError, StopIteration) as exc:
            raise ValueError(f"{expression!r} is not a valid cron expression: {exc}") from None
        return expression

    @field_validator("every")
    @classmethod
    def _every(cls, every: str | None) -> str | None:
        if every is None:
            return None
        seconds = parse_duration(every)
        if seconds < 1:
            raise ValueError(f"{every!r}: a schedule runs at most once a second")
        if seconds > MAX_EVERY_SECONDS:
            raise ValueError(f"{every!r}: at most 366d; use cron for yearly schedules")
        return every

    @field_validator("timezone")
    @classmethod
    def _zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{name!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
        return name

    @field_validator("payload", mode="before")
    @classmethod
    def _table(cls, payload: Any) -> Any:
        if not isinstance(payload, dict):
            raise ValueError('must be a table, e.g. payload = { path = "/data" }')
        return payload


def check_schedules(loaded: LoadedConfig) -> list[str]:
    """The rules that need the whole file: one spelling of when, a configured task."""
    settings = loaded.settings
    problems = []
    for name, schedule in settings.schedules.items():
        if not SCHEDULE_NAME.match(name):
            problems.append(
                f"{loaded.where('schedules', name)}: schedules.{name}: names are 1-100"
                " letters, digits, '_', '.' or '-'"
            )
        if (schedule.cron is None) == (schedule.every is None):
            key = "every" if schedule.cron is not None else "task"
            said = "both cron and every" if schedule.cron is not None else "neither cron nor every"
            problems.append(
                f"{loaded.where('schedules', name, key)}: schedules.{name}: {said}; give exactly"
                " one of them"
            )
        if schedule.task not in settings.tasks:
            problems.append(
                f"{loaded.where('schedules', name, 'task')}: schedules.{name}.task:"
                f" {schedule.task!r} is not a configured task"
            )
    return problems
