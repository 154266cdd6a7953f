"""Talking to a running daemon: `drainpool reload` and `drainpool status`.

A reload is synchronous: the command reads the daemon's reload counter from
its /api/status, sends SIGHUP, and waits until the counter moves, so
`systemctl reload` (ExecReload) fails visibly when the new config is rejected.
The daemon is found by --pid (its listening socket is read from /proc, which
works with any port, even port 0) or through the config's metrics address.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import ssl
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

from drainpool.exitcodes import ExitCode

POLL_SECONDS = 0.02


class ControlError(Exception):
    """The daemon cannot be reached or did not answer as expected."""


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(host, port) of every TCP socket that process `pid` listens on, from /proc."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError as exc:
        raise ControlError(f"cannot read the sockets of pid {pid}: {exc}") from None
    found = []
    for table, v6 in ((f"/proc/{pid}/net/tcp", False), (f"/proc/{pid}/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            raw_host, raw_port = fields[1].split(":")
            found.append((_proc_host(raw_host, v6), int(raw_port, 16)))
    return found


def _proc_host(raw: str, v6: bool) -> str:
    """Turn /proc's little-endian hex address into something to connect to."""
    if not v6:
        host = ".".join(str(b) for b in reversed(bytes.fromhex(raw)))
        return "127.0.0.1" if host == "0.0.0.0" else host
    words = [bytes.fromhex(raw[i : i + 8])[::-1] for i in range(0, 32, 8)]
    packed = b"".join(words)
    import ipaddress

    addr = ipaddress.IPv6Address(packed)
    if addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return "::1" if addr.is_unspecified else str(addr)


def get_status(base: str, timeout: float = 5.0) -> dict[str, Any]:
    url = f"{base}/api/status"
    context = ssl._create_unverified_context() if base.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise ControlError(f"no status from {url}: {exc}") from None


def _base_url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def find_by_pid(pid: int) -> tuple[str, dict[str, Any]]:
    """The endpoint that process `pid` listens on, http or https, and its status."""
    errors = []
    for host, port in listening_addresses(pid):
        for scheme in ("http", "https"):
            base = _base_url(host, port, scheme)
            try:
                status = get_status(base, timeout=2.0)
            except ControlError as exc:
                errors.append(str(exc))
                continue
            if status.get("pid") == pid:
                return base, status
    raise ControlError(f"pid {pid} serves no drainpool endpoint ({'; '.join(errors)})")


def find_daemon(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The daemon's endpoint base URL and its current status."""
    if getattr(args, "pid", None):
        return find_by_pid(args.pid)
    path, metrics = _metrics_table(args.config)
    port, host = metrics["port"], str(metrics["host"])
    if port == 0:
        raise ControlError(f"{path}: metrics.port is 0 (any free port): pass --pid")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    base = _base_url(host, int(port), "https" if metrics.get("tls_cert_file") else "http")
    return base, get_status(base)


def _metrics_table(config_option: str | None) -> tuple[Path, dict[str, Any]]:
    """The config's effective [metrics] settings; from the raw file when the config is invalid.

    A daemon keeps running on its old config when the file is broken by an edit: it
    must still be reachable through that file's address (issue 23).
    """
    from drainpool import settings
    from drainpool.configchecks import read_config_text

    path = settings.config_path(config_option)
    try:
        loaded = settings.load(path)
    except settings.ConfigError as exc:
        try:
            raw = tomllib.loads(read_config_text(path)).get("metrics", {})
        except (OSError, ValueError, tomllib.TOMLDecodeError):
            raw = None
        defaults = settings.MetricsSettings().model_dump()
        if not isinstance(raw, dict) or not isinstance(raw.get("port", 0), int):
            raise ControlError(
                f"{exc.problems[0]}; cannot find the daemon's address in it: pass --pid PID"
            ) from None
        raw = {**defaults, **raw}
        print(
            f"drainpool: warning: config is invalid ({exc.problems[0]});"
            " using its [metrics] table to find the daemon",
            file=sys.stderr,
        )
        return path, raw
    return path, loaded.settings.metrics.model_dump()


def dry_run(args: argparse.Namespace) -> int:
    """Print what a reload would do, pool by pool, without doing it (supervisorctl reread)."""
    from drainpool.plan import diff_plans, plan_from_json, plan_pools
    from drainpool.runtime import load_or_exit, redacted_effective

    try:
        base, _ = find_daemon(args)
        # /api/config is under the console's read rules: off loopback it needs the token.
        running = _get_json(f"{base}/api/config", token=_console_token(args.config))
    except ControlError as exc:
        print(f"drainpool: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    # Without --config, the file the running daemon was started with (not the default path).
    loaded, registry = load_or_exit(args.config or running.get("config"))  # 78 if invalid
    old = {name: plan_from_json(plan) for name, plan in running["plans"].items()}
    new = plan_pools(loaded.settings, registry)
    queue_before = running["effective"]["queue"]
    queue_after = redacted_effective(loaded.settings)["queue"]
    changes = diff_plans(
        old, new, everything="queue changed" if queue_after != queue_before else ""
    )
    for name in sorted(old.keys() | new.keys()):
        why = changes.get(name)
        if why is None:
            print(f"pool {name}: unchanged (keeps running)")
        elif why == "new pool":
            print(f"pool {name}: start (new pool)")
        elif why == "removed":
            print(f"pool {name}: drain and stop (removed)")
        else:
            print(f"pool {name}: drain and restart ({why})")
    others = {
        key
        for key, value in loaded.settings.effective().items()
        if key not in ("pool", "pools", "queue", "tasks", "shutdown")
        and value != running["effective"].get(key)
    }
    if others:
        print(f"applied without a restart: {', '.join(sorted(others))}")
    if not changes and not others:
        print("no change: a reload would do nothing")
    return ExitCode.OK


def _console_token(config_option: str | None) -> str | None:
    """The console token of the config (file or DRAINPOOL_CONSOLE__TOKEN), if it loads."""
    from drainpool import settings

    try:
        token = settings.load(settings.config_path(config_option)).settings.console.token
    except settings.ConfigError:
        return None
    return token.get_secret_value() if token is not None else None


def _get_json(url: str, token: str | None = None) -> Any:
    context = ssl._create_unverified_context() if url.startswith("https") else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise ControlError(f"no answer from {url}: {exc}") from None


def reload(args: argparse.Namespace) -> int:
    if getattr(args, "dry_run", False):
        return dry_run(args)
    try:
        base, before = find_daemon(args)
        pid = int(before["pid"])
        seq = int(before["reload"]["seq"])
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            try:
                now = get_status(base, timeout=2.0)
            except ControlError:
                # The reload may have moved the endpoint (a new port, TLS turned on):
                # look for it again through the daemon's sockets.
                with contextlib.suppress(ControlError):
                    base = find_by_pid(pid)[0]
                continue
            record = now["reload"]
            if record["seq"] > seq and now["state"] in ("running", "stopped"):
                return _report(record, now)
    except (ControlError, ProcessLookupError, PermissionError) as exc:
        print(f"drainpool reload: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    print(f"drainpool reload: no result within {args.timeout:g}s", file=sys.stderr)
    return ExitCode.FAILURE


def _report(record: dict[str, Any], status: dict[str, Any]) -> int:
    if record["result"] == "rejected":
        print(f"drainpool reload: rejected: {record['message']}", file=sys.stderr)
        return ExitCode.CONFIG
    pools = ", ".join(
        f"{p['name']} g{p['generation']} ({p['workers']} workers)" for p in status["pools"]
    )
    print(f"reload {record['result']}: {status['state']}, pools {pools}")
    return ExitCode.OK


def status(args: argparse.Namespace) -> int:
    try:
        base, current = find_daemon(args)
        first = True
        while True:
            text = json.dumps(current, indent=1) if args.json else render_status(current)
            if args.watch and sys.stdout.isatty():
                sys.stdout.write("\033[H\033[J")  # cursor home, clear: redraw in place
            elif args.watch and not first:
                print()  # not a terminal: one block per refresh, a blank line between
            print(text, flush=True)
            first = False
            if not args.watch:
                return ExitCode.OK
            time.sleep(1.0)
            current = get_status(base)
    except ControlError as exc:
        print(f"drainpool status: {exc}", file=sys.stderr)
        return ExitCode.FAILURE


def render_status(status: dict[str, Any]) -> str:
    """A short table: state, pools, in-flight by task, queue depth, last reload."""
    lines = [f"state        {status['state']}{'' if status['ready'] else ' (not ready)'}"]
    for pool in status["pools"]:
        lines.append(
            f"pool         {pool['name']}: generation {pool['generation']},"
            f" {pool['workers']} workers, {len(pool['running'])} in flight"
        )
    by_task: dict[str, int] = {}
    for pool in status["pools"]:
        for running in pool["running"]:
            by_task[running["task"]] = by_task.get(running["task"], 0) + 1
    for task, count in sorted(by_task.items()):
        lines.append(f"  in flight  {task}: {count}")
    for pool in status["pools"]:
        for running in pool["running"]:
            if running.get("stop_reason"):  # asked to stop: a drain, a cancel, a time limit
                lines.append(
                    f"  stopping   job {running['job_id']} ({running['task']}):"
                    f" {running['stop_reason']} {running['stopping_seconds']:.1f}s ago"
                )
    queue = status.get("queue")
    if queue:
        counts = ", ".join(f"{k} {queue[k]}" for k in ("ready", "delayed", "leased", "dead"))
        age = queue.get("oldest_ready_age_seconds")
        lines.append(f"queue        {counts}" + (f" (oldest ready {age:.1f}s)" if age else ""))
    elif status.get("queue_problem"):
        lines.append(f"queue        unavailable: {status['queue_problem']}")
    record = status["reload"]
    if record["seq"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["at"]))
        detail = f": {record['message']}" if record["message"] else ""
        lines.append(f"last reload  {record['result']} ({record['source']}, {when}){detail}")
    else:
        lines.append("last reload  none")
    return "\n".join(lines)
