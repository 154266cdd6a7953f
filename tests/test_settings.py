"""The config model: precedence, every problem named by file:line or variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from drainpool import settings
from drainpool.settings import ConfigError, find_key_line, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "drainpool.toml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value.problems


def test_defaults_then_file_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[pool]\nworkers = 3\n[shutdown]\ngrace_seconds = 2.5\n")
    loaded = load(path)
    assert loaded.settings.pool.workers == 3
    assert loaded.settings.shutdown.grace_seconds == 2.5
    assert loaded.settings.queue.lease_seconds == 60  # default
    assert loaded.settings.metrics.host == "127.0.0.1"
    monkeypatch.setenv("DRAINPOOL_POOL__WORKERS", "16")
    assert load(path).settings.pool.workers == 16


def test_every_problem_is_one_line_naming_file_line_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[pool]\nworkers = 2000\nkind = "fiber"\nprefetch = -1\n[queue]\nbogus = 1\n'
        '[tasks]\nx = "nocolon"\n',
    )
    assert problems(path) == [
        f"{path}:2: pool.workers: Input should be less than or equal to 1024",
        f"{path}:3: pool.kind: Input should be 'thread' or 'process'",
        f'{path}:4: pool.prefetch: must be "auto" or a whole number from 0 to 1024, not -1',
        f"{path}:6: queue.bogus: unknown key",
        f"{path}:8: tasks.x: 'nocolon' is not 'module:function'",
    ]


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "[pool]\nworkers = = 3\n")
    (problem,) = problems(path)
    assert problem.startswith(f"{path}: TOML syntax error:")
    assert "line 2, column" in problem


def test_environment_problem_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRAINPOOL_POOL__WORKERS", "lots")
    (problem,) = problems(write(tmp_path, "[pool]\nworkers = 3\n"))
    assert problem.startswith("environment DRAINPOOL_POOL__WORKERS: pool.workers:")


def test_one_underscore_where_two_belong_is_an_error_not_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRAINPOOL_POOL_WORKERS", "3")
    monkeypatch.setenv("DRAINPOOL_SHUTDOWN_GRACE_SECONDS", "1")
    # Other DRAINPOOL_ variables (the Redis password, tooling) are not settings: left alone.
    monkeypatch.setenv("DRAINPOOL_REDIS_PASSWORD", "secret")
    monkeypatch.setenv("DRAINPOOL_CONFIG", str(tmp_path / "drainpool.toml"))
    assert problems(write(tmp_path, "[pool]\nworkers = 2\n")) == [
        "environment DRAINPOOL_POOL_WORKERS: not a setting; a section and its key are joined"
        " by two underscores: DRAINPOOL_POOL__WORKERS",
        "environment DRAINPOOL_SHUTDOWN_GRACE_SECONDS: not a setting; a section and its key"
        " are joined by two underscores: DRAINPOOL_SHUTDOWN__GRACE_SECONDS",
    ]
    monkeypatch.delenv("DRAINPOOL_POOL_WORKERS")
    monkeypatch.delenv("DRAINPOOL_SHUTDOWN_GRACE_SECONDS")
    assert load(write(tmp_path, "[pool]\nworkers = 2\n")).settings.pool.workers == 2


def test_missing_file_is_an_error_not_defaults(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.toml") == [f"{tmp_path / 'nope.toml'}: config file not found"]


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRAINPOOL_CONFIG", raising=False)
    assert settings.config_path(None) == Path("/etc/drainpool/drainpool.toml")
    monkeypatch.setenv("DRAINPOOL_CONFIG", "/srv/d.toml")
    assert settings.config_path(None) == Path("/srv/d.toml")
    assert settings.config_path("x.toml") == Path("x.toml")


def test_command_task_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[tasks.t]\ncommand = ["echo", "{x}"]\ntimeout_seconds = 5\n')
    task = load(path).settings.tasks["t"]
    assert isinstance(task, settings.CommandTask) and task.command == ["echo", "{x}"]
    assert problems(write(tmp_path, "[tasks.t]\ncommand = []\n")) == [
        f"{path}:2: tasks.t.command: List should have at least 1 item after validation, not 0"
    ]


def test_find_key_line() -> None:
    text = "# c\n[pool]\nworkers = 1\n[tasks]\na = 'x:y'\n[tasks.b]\ncommand = ['c']\n"
    assert find_key_line(text, ("pool", "workers")) == 3
    assert find_key_line(text, ("tasks", "a")) == 5
    assert find_key_line(text, ("tasks", "b", "command")) == 7
    assert find_key_line(text, ("queue", "url")) is None


def test_effective_config_round_trips_through_toml(tmp_path: Path) -> None:
    import tomllib

    loaded = load(write(tmp_path, '[tasks]\ns = "drainpool.tasks.examples:sleep"\n'))
    rendered = settings.to_toml(loaded.settings.effective())
    assert settings.Settings(**tomllib.loads(rendered)).effective() == loaded.settings.effective()


def test_effective_config_with_odd_keys_is_valid_toml(tmp_path: Path) -> None:
    import tomllib

    text = '[tasks.t]\ncommand = ["echo"]\n[tasks.t.env]\n"A\\"B" = "1"\n"C D" = "2"\n'
    loaded = load(write(tmp_path, text))
    rendered = settings.to_toml(loaded.settings.effective())
    assert tomllib.loads(rendered)["tasks"]["t"]["env"] == {'A"B': "1", "C D": "2"}


def test_default_sections_are_the_validated_defaults(tmp_path: Path) -> None:
    """Sections left out of the file are made without validation (issue 17): they must be
    what validating the same empty table gives, and a section alone still validates."""
    loaded = load(write(tmp_path, "[pool]\nworkers = 2\n"))
    for name in ("shutdown", "reload", "queue", "metrics", "log", "console", "hooks", "tracing"):
        section = getattr(loaded.settings, name)
        assert section == type(section).model_validate({}), name
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        settings.PoolSettings.model_validate({"workers": 0})
    assert settings.MetricsSettings.model_validate({}).model_dump()["port"] == 9468


def test_table_defaults_are_not_shared_between_configs(tmp_path: Path) -> None:
    """`env = {}` and `payload = {}` defaults (no default_factory, issue 17) are per instance."""
    path = write(tmp_path, '[tasks.a]\ncommand = ["true"]\n[tasks.b]\ncommand = ["true"]\n')
    tasks = load(path).settings.tasks
    first, second = tasks["a"], tasks["b"]
    assert isinstance(first, settings.CommandTask) and isinstance(second, settings.CommandTask)
    assert first.env == {} and first.env is not second.env
    assert load(path).settings.pools is not load(path).settings.pools
