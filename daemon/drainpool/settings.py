"""The config model: a TOML file, DRAINPOOL_ environment overrides, defaults.

Precedence is environment over file over defaults (pydantic-settings merges
them). Every problem becomes one line that names the file and line, or the
environment variable, and the dotted key, so an operator can fix a rejected
reload without reading a traceback. A missing file is an error: silently
running on defaults would hide a typo in a path.

Over 400 lines on purpose: every section's model and its one-line errors are
read together when a key is added, and splitting them by section would scatter
the precedence and line-finding rules that all sections share.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from drainpool.configchecks import UnreadableConfig, metrics_problems, read_config_text
from drainpool.queue.base import QueueError
from drainpool.queue.schemes import check_url, schema_name_problem
from drainpool.schedule_settings import ScheduleSettings, check_schedules

DEFAULT_CONFIG_PATH = Path("/etc/drainpool/drainpool.toml")
ENV_PREFIX = "DRAINPOOL_"
MIN_TOKEN_LENGTH = 16  # a console token shorter than this is a password, not a token
TASK_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class ConfigError(Exception):
    """The config cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        # One line each, whatever a key, a path or an import error held: control
        # characters are shown escaped, never sent raw to a terminal or a journal.
        problems = [_printable(p) for p in problems]
        super().__init__("; ".join(problems))
        self.problems = problems


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Section(BaseModel):
    # defer_build: Settings' validator holds every section's schema, so a section's own
    # validator is built only if a section is ever validated alone. Building one for
    # each section at import was start-up time and memory spent for nothing (issue 17).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class PoolSettings(_Section):
    workers: int = Field(8, ge=1, le=1024, description="worker slots of the pool")
    kind: Literal["thread", "process"] = "thread"
    prefetch: int | Literal["auto"] = Field(
        "auto", description='jobs leased beyond the free workers, or "auto" (see pool.Pool)'
    )

    @field_validator("prefetch", mode="before")
    @classmethod
    def _prefetch(cls, value: Any) -> Any:
        """One message for every wrong value, not one per branch of the union."""
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # from the environment
        if value == "auto" or (type(value) is int and 0 <= value <= 1024):
            return value
        raise ValueError(f'must be "auto" or a whole number from 0 to 1024, not {value!r}')


class NamedPoolSettings(PoolSettings):
    """One of several pools: its own concurrency and grace, and the tasks it serves."""

    grace_seconds: float | None = Field(None, gt=0, le=86_400, description="overrides shutdown's")
    tasks: list[str] = Field(min_length=1)


POOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ShutdownSettings(_Section):
    grace_seconds: float = Field(10.0, gt=0, le=86_400)


class ReloadSettings(_Section):
    watch: bool = True
    debounce_ms: int = Field(100, ge=0, le=60_000)


class QueueSettings(_Section):
    model_config = ConfigDict(serialize_by_alias=True)  # merged with _Section's
    url: str = "sqlite:////var/lib/drainpool/queue.db"
    lease_seconds: float = Field(60.0, gt=0, le=86_400)
    max_attempts: int = Field(5, ge=1, le=1000)
    retry_backoff_seconds: float = Field(1.0, ge=0, le=86_400)
    retry_backoff_max_seconds: float = Field(300.0, ge=0, le=86_400 * 7)
    # Issue 21: only the safety net now; an idle pool is woken by the queue (README, Queue).
    poll_interval_seconds: float = Field(10.0, gt=0, le=60, description="safety-net fetch")
    retention_seconds: float = Field(86_400.0, ge=0, le=86_400 * 366)  # 0: removed at the ack
    result_max_bytes: int = Field(65_536, ge=0, le=64 * 1024 * 1024)
    # The PostgreSQL schema that holds the queue's tables (other backends ignore it).
    # Named schema_name in Python: `schema` would shadow a BaseModel method.
    schema_name: str = Field("drainpool", alias="schema")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        try:  # an unknown scheme or option fails here (check-config, reload), not at first use
            check_url(url)
        except QueueError as exc:
            raise ValueError(str(exc)) from None
        return url

    @field_validator("schema_name")
    @classmethod
    def _plain_schema(cls, name: str) -> str:
        # Checked with Python's re, not a Field pattern: pydantic-core compiles a pattern
        # into each validator that holds it, some 140 KiB apiece here (issue 17).
        if (problem := schema_name_problem(name)) is not None:
            raise ValueError(problem)
        return name


class MetricsSettings(_Section):
    host: str = "127.0.0.1"  # loopback unless an operator says otherwise
    port: int = Field(default=9468, ge=0, le=65535)  # 0: any free port, logged at start
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


class ConsoleSettings(_Section):
    """The web console at / (issue 11): reading is always on, actions only when asked for.

    The token may come from the environment (DRAINPOOL_CONSOLE__TOKEN) so it need not
    sit in a file; it is a SecretStr, so check-config and the effective config show
    asterisks, never the value.
    """

    actions: bool = False  # retry, purge and reload from the browser or the API
    token: SecretStr | None = None  # bearer token for actions, and for reading off loopback

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters")
        return token

    @model_validator(mode="after")
    def _actions_need_token(self) -> ConsoleSettings:
        if self.actions and self.token is None:
            raise ValueError(
                "console.actions = true needs console.token (or DRAINPOOL_CONSOLE__TOKEN)"
            )
        return self


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


# A time limit: more than 0, at most a year (above that it is a typo), never NaN or infinite.
TimeLimit = Annotated[float | None, Field(None, gt=0, le=366 * 86_400, allow_inf_nan=False)]


class CommandTask(_Section):
    """A task that runs a program: argv template filled from the payload, never a shell."""

    command: list[str] = Field(min_length=1)
    timeout_seconds: TimeLimit = None
    cwd: str | None = None
    # Plain {} and [] defaults (pydantic copies them per instance), not default_factory:
    # pydantic inspects a factory's signature, and inspect.signature(dict) compiles
    # tokenize's regular expressions, some 5 ms of every start (issue 17).
    env: dict[str, str] = {}
    # Names in env whose values are shown as *** wherever the config is shown, beside
    # those whose names look secret (drainpool.runtime.SECRET_WORDS).
    secret_env: list[str] = []

    @field_validator("secret_env")
    @classmethod
    def _secret_env_in_env(cls, names: list[str], info: ValidationInfo) -> list[str]:
        missing = [name for name in names if name not in info.data.get("env", {})]
        if missing:
            raise ValueError(f"names {', '.join(missing)}, not set in env")
        return names


class FunctionTask(_Section):
    """A Python task written as a table: `function = "module:function"` and its time limit.

    The one-line form `name = "module:function"` is the same task with no limit.
    """

    function: TaskRef
    timeout_seconds: TimeLimit = None


def _task_ref(ref: str) -> str:
    if not TASK_REF.match(ref):
        raise ValueError(f"{ref!r} is not 'module:function'")
    module = ref.partition(":")[0]
    if module == "daemon" or module.startswith("daemon."):
        # The import package was `daemon` until 0.2, a name python-daemon owns (issue 17).
        renamed = "drainpool" + ref[len("daemon") :]
        raise ValueError(f"{ref!r} names the old package 'daemon': write {renamed!r}")
    return ref


def _task_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name):
        raise ValueError(f"task name {name!r}: use 1-100 letters, digits, '_', '.', '-'")
    return name


TaskRef = Annotated[str, AfterValidator(_task_ref)]
TaskName = Annotated[str, AfterValidator(_task_name)]


def python_ref(entry: object) -> str | None:
    """The "module:function" of a Python task entry (either form); None for a command task."""
    if isinstance(entry, FunctionTask):
        return entry.function
    return entry if isinstance(entry, str) else None


def _task_kind(value: Any) -> str:
    """Which form a task entry is: a table with `function` is a Python task, else a command."""
    if isinstance(value, dict):
        return "FunctionTask" if "function" in value else "CommandTask"
    if isinstance(value, FunctionTask | CommandTask):
        return type(value).__name__
    return "str"


TaskEntry = Annotated[
    Annotated[TaskRef, Tag("str")]
    | Annotated[CommandTask, Tag("CommandTask")]
    | Annotated[FunctionTask, Tag("FunctionTask")],
    Discriminator(_task_kind),
]


class HooksSettings(_Section):
    """Functions ("module:function") called in the worker around each job (drainpool.hooks)."""

    before_job: TaskRef | None = None
    after_job: TaskRef | None = None
    on_outcome: TaskRef | None = None


class TracingSettings(_Section):
    """OpenTelemetry spans (drainpool.tracing); also on when OTEL_TRACES_EXPORTER is set."""

    enabled: bool = False
    exporter: TaskRef | None = None  # "module:function" returning a SpanExporter


class Settings(BaseSettings):
    """The whole effective config of one daemon."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    # A default section is made by model_construct: its defaults, unvalidated (as
    # PoolSettings() leaves them too), without building the section's own validator.
    pool: PoolSettings = PoolSettings.model_construct()
    pools: dict[str, NamedPoolSettings] = {}
    shutdown: ShutdownSettings = ShutdownSettings.model_construct()
    reload: ReloadSettings = ReloadSettings.model_construct()
    queue: QueueSettings = QueueSettings.model_construct()
    metrics: MetricsSettings = MetricsSettings.model_construct()
    log: LogSettings = LogSettings.model_construct()
    console: ConsoleSettings = ConsoleSettings.model_construct()
    hooks: HooksSettings = HooksSettings.model_construct()
    tracing: TracingSettings = TracingSettings.model_construct()
    tasks: dict[TaskName, TaskEntry] = {}
    schedules: dict[str, ScheduleSettings] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's contents arrive as init arguments; the environment wins over them.
        return (env_settings, init_settings)

    def effective(self) -> dict[str, Any]:
        """A plain dict of every value, for diffs and for check-config.

        Secrets (console.token) show as asterisks here, so a diff of two effective
        configs cannot see a changed token: compare the sections themselves for that.
        """
        return self.model_dump(mode="json")


@dataclass(frozen=True, slots=True, eq=False)  # never compared (reloads compare settings)
class LoadedConfig:
    """Settings together with where they came from, to point errors at lines."""

    settings: Settings
    path: Path
    text: str

    @property
    def base_dir(self) -> Path:
        """Relative paths in the config (the SQLite file) resolve against this."""
        return self.path.parent

    def where(self, *key: str) -> str:
        """`path:line` of a dotted key in the file, or just the path."""
        line = find_key_line(self.text, key)
        return f"{self.path}:{line}" if line else str(self.path)


def config_path(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """--config, else $DRAINPOOL_CONFIG, else the system default."""
    return Path(cli_value or environ.get("DRAINPOOL_CONFIG") or DEFAULT_CONFIG_PATH)


def load(path: Path) -> LoadedConfig:
    """Read, parse and validate (with the process environment); raise ConfigError."""
    try:
        text = read_config_text(path)
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except UnreadableConfig as exc:
        raise ConfigError([f"{path}: not a usable config file: {exc}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, text, os.environ)) from None
    except SettingsError as exc:  # a whole section from the environment that is not JSON
        raise ConfigError([_env_problem(exc)]) from None
    loaded = LoadedConfig(settings, path, text)
    problems = (
        misspelt_environment(os.environ)
        + check_pools(loaded, explicit_pool="pool" in data)
        + check_metrics(loaded)
        + check_schedules(loaded)
    )
    if problems:
        raise ConfigError(problems)
    return loaded


def misspelt_environment(environ: Mapping[str, str]) -> list[str]:
    """DRAINPOOL_POOL_WORKERS and the like: one underscore where two belong.

    pydantic-settings ignores a variable that maps to no field, so without this
    the override an operator meant would silently not happen. Only names that
    begin with a section are reported; other DRAINPOOL_ variables are not ours.
    """
    problems = []
    for name in sorted(environ):
        rest = name[len(ENV_PREFIX) :].lower() if name.startswith(ENV_PREFIX) else ""
        if not rest or "__" in rest:
            continue
        for section in Settings.model_fields:
            if rest.startswith(f"{section}_"):
                key = rest[len(section) + 1 :].upper()
                problems.append(
                    f"environment {name}: not a setting; a section and its key are joined by"
                    f" two underscores: {ENV_PREFIX}{section.upper()}__{key}"
                )
    return problems


def check_pools(loaded: LoadedConfig, *, explicit_pool: bool) -> list[str]:
    """Every configured task is served by exactly one pool (issue: several pools)."""
    settings = loaded.settings
    if not settings.pools:
        return []
    problems = []
    if explicit_pool:
        problems.append(
            f"{loaded.where('pool')}: pool: use either [pool] (one pool) or [pools.NAME] tables"
        )
    owner: dict[str, str] = {}
    for name, pool in settings.pools.items():
        where = loaded.where("pools", name, "tasks")
        if not POOL_NAME.match(name):
            problems.append(f"{where}: pools.{name}: pool names are 1-64 letters, digits, _ or -")
        for task in pool.tasks:
            if task not in settings.tasks:
                problems.append(f"{where}: pools.{name}.tasks: {task!r} is not a configured task")
            elif task in owner:
                problems.append(
                    f"{where}: pools.{name}.tasks: task {task!r} is already served by pool"
                    f" {owner[task]!r}; a task belongs to exactly one pool"
                )
            else:
                owner[task] = name
    for task in settings.tasks:
        if task not in owner:
            problems.append(
                f"{loaded.where('tasks', task)}: tasks.{task}: served by no pool;"
                " add it to the tasks of one [pools.NAME]"
            )
    return problems


def check_metrics(loaded: LoadedConfig) -> list[str]:
    """TLS files that are missing and a host that does not resolve (issue 23): found here,
    check-config and a reload reject them instead of the endpoint failing to bind."""
    m = loaded.settings.metrics
    return [
        f"{_where_set(loaded, ('metrics', key))}: metrics.{key}: {problem}"
        for key, problem in metrics_problems(m.host, m.tls_cert_file, m.tls_key_file)
    ]


def _where_set(loaded: LoadedConfig, loc: tuple[str, ...]) -> str:
    """The environment variable that set a key, else the file line."""
    names = env_names(loc, os.environ)
    return f"environment {names[0]}" if names else loaded.where(*loc)


def env_names(loc: tuple[str, ...] | list[str], environ: Mapping[str, str]) -> list[str]:
    """The variables that set the key at `loc` or something below it, whatever their case
    (pydantic-settings reads DRAINPOOL_ names case-insensitively)."""
    wanted = (ENV_PREFIX + "__".join(loc)).upper()
    return sorted(
        name for name in environ if name.upper() == wanted or name.upper().startswith(wanted + "__")
    )


def _describe(exc: ValidationError, path: Path, text: str, environ: Mapping[str, str]) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        if _wrong_union_branch(err):
            continue
        loc = [str(part) for part in err["loc"] if not _is_union_tag(part)]
        key = ".".join(loc) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        names = env_names(loc, environ) if loc else []
        if names:
            problems.append(f"environment {', '.join(names)}: {key}: {message}")
        else:
            line = find_key_line(text, tuple(loc))
            where = f"{path}:{line}" if line else str(path)
            problems.append(f"{where}: {key}: {message}")
    return sorted(set(problems), key=problems.index)


def _env_problem(exc: SettingsError) -> str:
    """Name the variable: pydantic-settings only says which field it could not parse."""
    match = re.search(r'field "([^"]+)"', str(exc))
    if not match:
        return f"environment: {exc}"
    name = ENV_PREFIX + match.group(1).upper()
    return f"environment {name}: {match.group(1)}: not valid JSON (a table must be a JSON object)"


def _wrong_union_branch(err: Any) -> bool:
    """A task is a string or a table: report only the branch the value was meant for."""
    tags = [part for part in err["loc"] if _is_union_tag(part)]
    if not tags:
        return False
    if tags[0] == "FunctionTask":
        return False  # chosen by its `function` key: its errors are the ones
    if tags[0] == "CommandTask":
        return err["type"] == "model_type"  # not a table at all: the string branch speaks
    return isinstance(err["input"], dict)  # a table: the CommandTask branch speaks


def _is_union_tag(part: Any) -> bool:
    # pydantic names the union member it tried ("str", "CommandTask"); not a key.
    return isinstance(part, str) and (
        part in {"str", "CommandTask", "FunctionTask"} or part.startswith("function-after[")
    )


_TABLE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_ASSIGN = re.compile(r"^\s*([A-Za-z0-9_.\"'-]+?)\s*=")


def find_key_line(text: str, key: tuple[str, ...] | list[str]) -> int | None:
    """1-based line where a dotted key is set (or its table begins), best effort.

    tomllib keeps no positions; a line scan over table headers and `key =`
    lines covers the plain TOML that config files use.
    """
    if not key:
        return None
    best: tuple[int, int] | None = None  # (matched depth, line)
    table: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE.match(line)
        if header:
            table = [p.strip().strip("\"'") for p in header.group(1).split(".")]
            path = table
        else:
            assign = _ASSIGN.match(line)
            if not assign:
                continue
            path = table + [p.strip().strip("\"'") for p in assign.group(1).split(".")]
        depth = _common_prefix(path, key)
        if depth == len(path) and (best is None or depth > best[0]):
            best = (depth, number)
            if depth == len(key):
                return number
    return best[1] if best else None


def _common_prefix(a: list[str], b: tuple[str, ...] | list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def to_toml(data: Mapping[str, Any]) -> str:
    """Render the effective config as TOML (check-config's output)."""
    lines: list[str] = []

    def emit(prefix: str, table: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
        tables = {k: v for k, v in table.items() if isinstance(v, Mapping) and v}
        if prefix and (scalars or not tables):
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            if v is not None:
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        if prefix and (scalars or not tables):
            lines.append("")
        for k, v in tables.items():
            emit(f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k), v)

    emit("", data)
    return "\n".join(lines).rstrip() + "\n"


def _toml_key(key: str) -> str:
    # A JSON string is a valid TOML basic string: quotes and backslashes escaped.
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string
