"""What the daemon and the commands both need from a config: one place each.

Loading a config then building its task registry, opening its queue, and the
effective config with secrets hidden were written in the supervisor, the CLI
and `drainpool reload --dry-run` alike (issue 17); they live here so the three
cannot drift, and so control.py and cli.py need not import each other.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drainpool import settings as settings_mod
from drainpool.exitcodes import ExitCode
from drainpool.queue import Queue, RetryPolicy, from_url, redact_url
from drainpool.settings import LoadedConfig, Settings

if TYPE_CHECKING:
    from drainpool.tasks import TaskSpec

SECRET_MASK = "***"
# Parts of env names that mark a secret value (AWS_SECRET_ACCESS_KEY, PGPASSWORD, API_TOKEN,
# GITHUB_AUTH, SENTRY_DSN...). Broad on purpose: a masked value that was not secret costs a
# look at the file; a shown secret cannot be taken back. Other names: `secret_env`.
SECRET_WORDS = (
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "SECRET",
    "TOKEN",
    "KEY",
    "CREDENTIAL",
    "AUTH",
    "PRIVATE",
    "COOKIE",
    "SESSION",
    "DSN",
)


def load(path: Path, *, tasks: bool = True) -> tuple[LoadedConfig, dict[str, TaskSpec]]:
    """The config at `path` and its task registry (empty unless `tasks`).

    Raises ConfigError with every problem found, the file left untouched.
    """
    loaded = settings_mod.load(path)
    if not tasks:
        return loaded, {}
    # Imported here: producers (`enqueue`, `queue`) read the config without its tasks.
    from drainpool import hooks
    from drainpool.tasks import build_registry

    registry = build_registry(loaded)
    hooks.check(loaded)  # a hook that does not import rejects the config, as a task does
    return loaded, registry


def load_or_exit(
    config_option: str | None, *, tasks: bool = True
) -> tuple[LoadedConfig, dict[str, TaskSpec]]:
    """For commands: the config named by --config (or its defaults), or exit 78 with
    every problem on its own line."""
    try:
        return load(settings_mod.config_path(config_option), tasks=tasks)
    except settings_mod.ConfigError as exc:
        for problem in exc.problems:
            print(f"drainpool: config error: {problem}", file=sys.stderr)
        raise SystemExit(ExitCode.CONFIG) from None


def open_queue(loaded: LoadedConfig, *, durable_commits: bool = True) -> Queue:
    """The queue the config names, with its retry policy; relative paths from the file's dir.

    Producers keep `durable_commits`; the daemon turns it off for its own
    connection (see drainpool.queue.sqlite).
    """
    q = loaded.settings.queue
    retry = RetryPolicy(q.max_attempts, q.retry_backoff_seconds, q.retry_backoff_max_seconds)
    return from_url(
        q.url,
        base_dir=loaded.base_dir,
        retry=retry,
        durable_commits=durable_commits,
        retention_seconds=q.retention_seconds,
        result_max_bytes=q.result_max_bytes,
        schema=q.schema_name,
    )


def redacted_effective(settings: Settings) -> dict[str, Any]:
    """The effective config as printed or served (check-config, /api/config, the dry run):
    the queue URL's password and the secret values of command tasks' env hidden.

    (Settings.effective() already masks the console token.) The one redacted view:
    every place that shows a config shows this.
    """
    effective = settings.effective()
    effective["queue"]["url"] = redact_url(effective["queue"]["url"])
    for task in effective["tasks"].values():
        if isinstance(task, dict) and "env" in task:  # a command task, not a FunctionTask
            secret = set(task.get("secret_env", ()))
            task["env"] = {
                name: _shown_env(value, name in secret or looks_secret(name))
                for name, value in task["env"].items()
            }
    return effective


def _shown_env(value: str, secret: bool) -> str:
    """A command env value as shown: masked, or with a URL's password hidden."""
    if secret:
        return SECRET_MASK
    return redact_url(value) if "://" in value else value


def looks_secret(name: str) -> bool:
    """Whether an environment variable's name says its value is a secret."""
    upper = name.upper()
    return any(word in upper for word in SECRET_WORDS)


def config_view(loaded: LoadedConfig, registry: dict[str, TaskSpec]) -> dict[str, Any]:
    """The running config and pool plans, served at /api/config for `reload --dry-run`."""
    from drainpool.plan import plan_pools, plan_to_json  # the daemon's endpoint only

    plans = plan_pools(loaded.settings, registry)
    return {
        "config": str(loaded.path),
        "effective": redacted_effective(loaded.settings),
        "plans": {name: plan_to_json(plan) for name, plan in plans.items()},
    }
