"""Bad input, fuzzed: configs, environment overrides, payloads and bulk files.

The promise under test: whatever comes in, out comes a clean error (one line
per problem, exit 78 or 2), never a traceback; and a job the daemon cannot
decode is dead-lettered without holding up the jobs behind it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sqlite3
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from drainpool import cli
from drainpool import settings as settings_mod
from drainpool.settings import TASK_REF, ConfigError
from drainpool.tasks import build_registry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.daemon import REPO, DaemonFactory, queue_stats, render_config
from tests.support.waiting import wait_until

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies ----------------------------------------------------------------

KNOWN_KEYS: dict[str, list[str]] = {
    "pool": ["workers", "kind"],
    "shutdown": ["grace_seconds"],
    "reload": ["watch", "debounce_ms"],
    "queue": [
        "url",
        "lease_seconds",
        "max_attempts",
        "retry_backoff_seconds",
        "retry_backoff_max_seconds",
        "poll_interval_seconds",
        "retention_seconds",
        "result_max_bytes",
    ],
    "metrics": ["host", "port", "tls_cert_file", "tls_key_file"],
    "log": ["level", "format"],
}
# Task references that import nothing new: real, missing, not callable, malformed.
SAFE_REFS = [
    "drainpool.tasks.examples:noop",
    "drainpool.tasks.examples:sleep",
    "drainpool.tasks.examples:nothing_here",
    "drainpool.tasks.examples:BLOCK_SIZE",
    "drainpool_fuzz_absent:task",
    "not a reference",
]

# TOML strings cannot hold surrogates; everything else goes.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
key = st.one_of(st.sampled_from(["workers", "tasks", "grace_seconds", "url", "x"]), text)
scalar = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    text,
    st.sampled_from(SAFE_REFS),
    st.datetimes(),
)
value = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(key, inner, max_size=4)),
    max_leaves=8,
)


def safe_ref(raw: str) -> str:
    """Never let a generated string import a real module: it gets a prefix nobody has."""
    return f"drainpool_fuzz_absent_{raw}" if TASK_REF.match(raw) else raw


@st.composite
def section(draw: st.DrawFn, name: str) -> dict[str, Any]:
    keys = KNOWN_KEYS.get(name, [])
    table = (
        {k: draw(value) for k in draw(st.lists(st.sampled_from(keys), unique=True))} if keys else {}
    )
    table.update(draw(st.dictionaries(key, value, max_size=2)))
    return table


@st.composite
def config_document(draw: st.DrawFn) -> dict[str, Any]:
    """A config: known sections with plausible and implausible values, unknown ones too."""
    doc: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(sorted(KNOWN_KEYS)), unique=True)):
        doc[name] = draw(section(name))
    if draw(st.booleans()):
        doc["tasks"] = draw(
            st.dictionaries(
                st.one_of(st.sampled_from(["noop", "sleep"]), text),
                st.one_of(
                    st.sampled_from(SAFE_REFS),
                    text.map(safe_ref),
                    st.fixed_dictionaries({"command": st.lists(text, max_size=3)}),
                    value,
                ),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        doc["pools"] = draw(
            st.dictionaries(
                text,
                st.one_of(
                    st.fixed_dictionaries(
                        {"tasks": st.lists(st.sampled_from(["noop", "sleep", "x"]), max_size=3)},
                        optional={"workers": value, "grace_seconds": value, "kind": value},
                    ),
                    value,
                ),
                max_size=2,
            )
        )
    doc.update(draw(st.dictionaries(key, value, max_size=1)))
    return doc


def toml_text(doc: dict[str, Any]) -> str:
    """Render anything the strategies make as TOML, using inline tables for nesting."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k_(k)} = {val(x)}" for k, x in v.items()) + "}"
        return v.isoformat()  # a datetime: a TOML local date-time

    def k_(k: str) -> str:
        return json.dumps(k, ensure_ascii=False)

    lines = []
    for name, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{k_(name)}]")
            lines.extend(f"{k_(k)} = {val(v)}" for k, v in table.items())
        else:
            lines.insert(0, f"{k_(name)} = {val(table)}")
    return "\n".join(lines) + "\n"


@st.composite
def damaged(draw: st.DrawFn, doc_text: str) -> str:
    """The same document with a few characters replaced, inserted or cut."""
    chars = list(doc_text)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(chars)))
        chars.insert(at, draw(st.sampled_from([*"[]{}=\"'\n#.,\\", "\x00", "é"])))
    return "".join(chars)


# -- helpers -------------------------------------------------------------------


def assert_clean(exc: ConfigError) -> None:
    """A config error is a list of single, non-empty lines."""
    assert exc.problems, "a ConfigError with no problem"
    for problem in exc.problems:
        assert isinstance(problem, str) and problem.strip(), exc.problems
        assert problem.isprintable(), f"a problem with control characters: {problem!r}"
        assert "Traceback" not in problem


def load_clean(path: Path) -> None:
    """settings.load and the task registry: a config, or a clean ConfigError, nothing else."""
    try:
        loaded = settings_mod.load(path)
        build_registry(loaded)
    except ConfigError as exc:
        assert_clean(exc)


def run_cli(*argv: str) -> tuple[int, str]:
    """The real CLI, in this process (fast enough for hypothesis): exit code and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.dispatch(list(argv))
        except SystemExit as exc:  # _load exits 78 on a config error
            code = int(exc.code or 0)
    return code, err.getvalue()


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def minimal_config(tmp: Path, **extra: dict[str, Any]) -> Path:
    path = tmp / "drainpool.toml"
    sections: dict[str, dict[str, Any]] = {
        "queue": {"url": "sqlite:///queue.db", "retry_backoff_seconds": 0.05},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "tasks": {"noop": "drainpool.tasks.examples:noop"},
        **extra,
    }
    path.write_text(render_config(sections))
    return path


# -- the config loader ---------------------------------------------------------


@FUZZ
@given(doc=config_document(), data=st.data())
def test_fuzzed_toml_gives_a_config_or_clean_errors(
    tmp_path: Path, doc: dict[str, Any], data: st.DataObject
) -> None:
    path = tmp_path / "fuzz.toml"
    rendered = toml_text(doc)
    path.write_text(data.draw(st.one_of(st.just(rendered), damaged(rendered))), errors="replace")
    load_clean(path)


@settings(FUZZ, max_examples=15)
@given(doc=config_document())
def test_fuzzed_toml_through_check_config_exits_0_or_78_with_one_line_each(
    tmp_path: Path, doc: dict[str, Any]
) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_text(toml_text(doc))
    code, err = run_cli("check-config", "--config", str(path))
    assert code in (0, 78), err
    if code == 78:
        lines = err.split("\n")[:-1]
        assert lines and all(line.startswith("drainpool: config error: ") for line in lines)
        assert all(line.isprintable() for line in lines), err


ENV_PATHS = [
    "POOL",
    "POOL__WORKERS",
    "POOL__KIND",
    "POOLS",
    "POOLS__A",
    "POOLS__A__WORKERS",
    "POOLS__A__TASKS",
    "SHUTDOWN__GRACE_SECONDS",
    "RELOAD__WATCH",
    "QUEUE",
    "QUEUE__URL",
    "QUEUE__MAX_ATTEMPTS",
    "METRICS__PORT",
    "LOG__LEVEL",
    "TASKS",
    "TASKS__NOOP",
    "TASKS__EXTRA",
]
env_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30
)
env_value = st.one_of(
    env_text,
    value.map(lambda v: json.dumps(v, default=str)),  # JSON, which nested sections accept
    st.sampled_from(['{"workers": 2}', "[1]", "{", "null", '{"a": {"tasks": ["noop"]}}']),
)
env_name = st.one_of(
    st.sampled_from(ENV_PATHS),
    st.text(string.ascii_uppercase + "_", min_size=1, max_size=12),
)


@FUZZ
@given(env=st.dictionaries(env_name, env_value, max_size=4))
def test_fuzzed_environment_overrides_give_a_config_or_clean_errors(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = minimal_config(tmp_path)
    with environment({f"DRAINPOOL_{name}": v for name, v in env.items()}):
        load_clean(path)


def test_check_config_names_a_broken_environment_variable_without_a_traceback(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    """A nested section set from the environment must be JSON; saying so is a config error."""
    path = minimal_config(tmp_path)
    result = factory.cli("check-config", config=path)
    assert result.returncode == 0, result.stderr
    for name, raw in [("DRAINPOOL_POOL", "{not json"), ("DRAINPOOL_TASKS", "[1, 2")]:
        code, err = run_command(["check-config", "--config", str(path)], {name: raw})
        assert code == 78 and "Traceback" not in err, err
        assert err.count("\n") == 1 and name in err, err


def run_command(
    argv: list[str], env: dict[str, str] | None = None, stdin: bytes = b""
) -> tuple[int, str]:
    """The real `python -m drainpool` process, with bytes on stdin (factory.cli takes text)."""
    proc = subprocess.run(
        [sys.executable, "-m", "drainpool", *argv],
        env={**os.environ, **(env or {}), "PYTHONPATH": str(REPO)},
        input=stdin,
        capture_output=True,
        timeout=120,
    )
    return proc.returncode, proc.stderr.decode(errors="replace")


# -- payloads at the door: the CLI and bulk files ----------------------------------

DEEP = 100_000  # json.loads raises RecursionError long before this


@FUZZ
@given(raw=st.binary(max_size=200).filter(lambda b: b"\x00" not in b))
def test_fuzzed_payload_argument_is_enqueued_or_refused_in_one_line(
    tmp_path: Path, raw: bytes
) -> None:
    # argv arrives as bytes decoded with surrogateescape, as Python does for a real command.
    path = minimal_config(tmp_path)
    code, err = run_cli("enqueue", "--config", str(path), "--", "noop", os.fsdecode(raw))
    assert code in (0, 2), err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("drainpool: payload is "), err


@FUZZ
@given(lines=st.lists(st.binary(max_size=120), max_size=5), skip=st.booleans())
def test_fuzzed_bulk_file_is_enqueued_or_refused_line_by_line(
    tmp_path: Path, lines: list[bytes], skip: bool
) -> None:
    path = minimal_config(tmp_path)
    jobs = tmp_path / "jobs.jsonl"
    good = json.dumps({"task": "noop", "payload": {"ok": True}}).encode()
    jobs.write_bytes(b"\n".join([good, *lines]) + b"\n")
    argv = ["enqueue", "--file", str(jobs), "--config", str(path)]
    code, err = run_cli(*argv, *(["--skip-invalid"] if skip else []))
    assert code in (0, 2), err
    for line in err.splitlines():
        assert line.startswith((f"{jobs}:", "drainpool: ")), err


def test_deep_nesting_and_bad_bytes_are_refused_with_one_line_not_a_traceback(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    """Through the real command: exit 2, a line that says why, and nothing enqueued."""
    path = minimal_config(tmp_path)
    # One argument may be at most 128 KiB (MAX_ARG_STRLEN): 60000 levels fit.
    deep_arg = "[" * 60_000 + "]" * 60_000
    code, err = run_command(["enqueue", "noop", deep_arg, "--config", str(path)])
    assert code == 2 and "Traceback" not in err and "nested too deeply" in err, err
    deep_line = json.dumps({"task": "noop", "payload": "X"}).replace('"X"', "[" * DEEP + "]" * DEEP)
    not_utf8 = b'{"task": "noop", "payload": "\xff\xfe"}'
    for body in (deep_line.encode(), not_utf8, b"\x89PNG\r\n\x1a\n\x00\x00binary"):
        for source in ("file", "stdin"):
            if source == "file":
                jobs = tmp_path / "jobs.jsonl"
                jobs.write_bytes(body + b"\n")
                argv, stdin = ["--file", str(jobs)], b""
            else:
                argv, stdin = ["--file", "-"], body + b"\n"
            code, err = run_command(["enqueue", *argv, "--config", str(path)], stdin=stdin)
            assert code == 2 and "Traceback" not in err, err
            assert re.search(r":1: (nested too deeply|not UTF-8|not valid JSON)", err), err
    assert queue_stats(factory, path)["ready"] == 0, "a refused input was enqueued"


# -- payloads already in the queue ----------------------------------------------


def test_undecodable_jobs_in_the_queue_are_dead_lettered_and_the_rest_run(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    """Jobs written by something else (an old version, a hand edit): the daemon must cope.

    A payload nested 100000 deep (json.loads raises RecursionError, not ValueError),
    one that is not JSON, and one that is not even UTF-8 sit between good jobs;
    the bad ones are dead-lettered with their reason, the good ones complete, and
    the dispatcher never stalls on them.
    """
    log = tmp_path / "jobs.log"
    config = factory.config(pool={"workers": 2}, queue={"url": "sqlite:///queue.db"})
    record = {"log": str(log)}
    good = json.dumps({"task": "record", "payload": record})
    assert factory.cli("enqueue", "--file", "-", config=config, input=good + "\n").returncode == 0
    db = sqlite3.connect(tmp_path / "queue.db")
    now = time.time()
    bad_payloads: list[Any] = [
        "[" * DEEP + "]" * DEEP,
        "{this is not json",
        b"\xff\xfe\x00 a blob",
    ]
    insert = "INSERT INTO jobs (task, payload, due_at, enqueued_at) VALUES ('record', {}, ?, ?)"
    with db:
        for payload in bad_payloads:
            db.execute(insert.format("?"), (payload, now, now))
        # Text that is not UTF-8: Python's sqlite3 cannot even read the row back as str.
        db.execute(insert.format("CAST(? AS TEXT)"), (b'{"a": "\xff"}', now, now))
    db.close()
    lines = "".join(good + "\n" for _ in range(5))
    assert factory.cli("enqueue", "--file", "-", config=config, input=lines).returncode == 0
    daemon = factory.start(config)
    wait_until(
        lambda: len(log.read_text().splitlines()) >= 12 if log.exists() else False,
        what="the six good jobs done",
    )
    wait_until(lambda: queue_stats(factory, config)["dead"] == 4, what="four dead letters")
    dead = factory.cli("queue", "dead", "list", "--json", config=config)
    assert dead.returncode == 0 and "Traceback" not in dead.stderr, dead.stderr
    errors = sorted(job["error"] for job in json.loads(dead.stdout))
    assert any("nested too deeply" in e for e in errors), errors
    assert sum("not valid JSON" in e or "not UTF-8" in e for e in errors) == 3, errors
    wait_until(  # a task's log line comes before its ack
        lambda: (s := queue_stats(factory, config))["ready"] == s["leased"] == 0,
        what="the good jobs acked",
    )
    log_text = daemon.log()
    assert "dispatcher error" not in log_text and "Traceback" not in log_text, log_text
    daemon.terminate()


def test_a_50_megabyte_payload_runs_and_the_daemon_stays_healthy(
    factory: DaemonFactory, tmp_path: Path
) -> None:
    config = factory.config(pool={"workers": 2})
    huge = json.dumps({"task": "noop", "payload": {"blob": "x" * (50 << 20)}})
    result = factory.cli("enqueue", "--file", "-", config=config, input=huge + "\n")
    assert result.returncode == 0, result.stderr
    daemon = factory.start(config)
    wait_until(
        lambda: daemon.metric("drainpool_tasks_completed_total", task="noop") == 1,
        timeout=120,
        what="the huge job completed",
    )
    assert daemon.get("/healthz")[0] == 200

    def settled() -> bool:  # the counter moves when the task ends, the ack a round later
        stats = queue_stats(factory, config)
        return stats["ready"] == stats["leased"] == stats["dead"] == 0

    wait_until(settled, timeout=60, what="the huge job acked, nothing dead")
    daemon.terminate()
