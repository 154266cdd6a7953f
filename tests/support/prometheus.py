"""A real Prometheus for tests, and promtool.

`running_prometheus(target, workdir)` starts /usr/bin/prometheus on a free
loopback port with a data directory of its own, scraping one target every
second with config/prometheus/alerts.yml loaded, and stops it by pid when the
block ends. The end-to-end tests point it at the real daemon; the static suite
points it at a small exporter to prove the harness itself:

    with running_prometheus(f"127.0.0.1:{port}", tmp_path / "prometheus") as prom:
        prom.wait_for_targets_up()
        prom.wait_for('drainpool_tasks_completed_total{task="sleep"} > 0')
        for expression in dashboard_and_alert_expressions():
            prom.query(expression.expr)  # raises PrometheusError on a bad query
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.expressions import (
    ALERTS,
    SCRAPE_INTERVAL,
    Expression,
    dashboard_and_alert_expressions,
)
from tests.support.net import free_port
from tests.support.waiting import wait_until

# Offered from here too, so an end-to-end test needs one import for the live check.
__all__ = [
    "ALERTS",
    "Expression",
    "Prometheus",
    "PrometheusError",
    "dashboard_and_alert_expressions",
    "promtool",
    "promtool_check_metrics",
    "running_prometheus",
]

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
_HTTP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 3


class PrometheusError(RuntimeError):
    """Prometheus did not start, or answered a request with an error."""


class Prometheus:
    """A running Prometheus server and a small client of its HTTP API."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET an API path and return its `data`, raising on an error answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self._call(urllib.request.Request(self.url + path + query))

    def post(self, path: str, form: dict[str, str]) -> Any:
        """POST a form (long expressions do not fit a URL) and return its `data`."""
        body = urllib.parse.urlencode(form).encode()
        return self._call(urllib.request.Request(self.url + path, data=body, method="POST"))

    def _call(self, request: urllib.request.Request) -> Any:
        try:
            with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:  # 4xx/5xx carry a JSON error body
            with error:
                answer = json.load(error)
        if answer.get("status") != "success":
            raise PrometheusError(f"{answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate `expr` now; returns the result list (vector samples or a scalar pair)."""
        data = self.post("/api/v1/query", {"query": expr})
        result = data["result"]
        return result if data["resultType"] in ("vector", "matrix") else [{"value": result}]

    def query_value(self, expr: str) -> float | None:
        """The value of a one-sample result, or None while the result is empty."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll `expr` until `predicate(result)` holds (default: the result is not empty)."""
        last: list[list[dict[str, Any]]] = [[]]

        def check() -> bool:
            last[0] = self.query(expr)
            return predicate(last[0])

        try:
            wait_until(check, timeout, f"{expr} to hold")
        except AssertionError as error:
            raise AssertionError(f"{error}; last result: {last[0]}") from None
        return last[0]

    def targets(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/targets", {"state": "active"})["activeTargets"])

    def wait_for_targets_up(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until every scrape target reports health "up"; returns the targets."""
        last: list[list[dict[str, Any]]] = [[]]

        def all_up() -> bool:
            last[0] = self.targets()
            return bool(last[0]) and all(t["health"] == "up" for t in last[0])

        try:
            wait_until(all_up, timeout, "every target to be up")
        except AssertionError as error:
            states = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in last[0]]
            raise AssertionError(f"{error}; targets: {states}") from None
        return last[0]

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule, flattened out of its group."""
        groups = self.get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def stop(self) -> None:
        """Stop by pid: SIGTERM, then SIGKILL if it has not exited in time."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


def write_config(
    path: Path, target: str, rule_files: tuple[Path, ...], job: str = "drainpool"
) -> None:
    """A Prometheus config scraping `target` (host:port) every second.

    JSON is valid YAML, so no YAML writer is needed.
    """
    config = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "rule_files": [str(Path(rule).resolve()) for rule in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
    }
    path.write_text(json.dumps(config, indent=2))


def _start(config: Path, data_dir: Path, log_path: Path, timeout: float) -> Prometheus:
    """One attempt to start Prometheus on a fresh port and wait until it is ready."""
    port = free_port()
    argv = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=info",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    server = Prometheus(process, port, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise PrometheusError(f"prometheus exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=_HTTP_TIMEOUT) as r:
                return r.status == 200
        except OSError:  # not listening yet, or 503 while the TSDB opens
            return False

    try:
        wait_until(ready, timeout, f"prometheus on port {port} to be ready")
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running_prometheus(
    target: str,
    workdir: Path,
    rule_files: tuple[Path, ...] = (ALERTS,),
    job: str = "drainpool",
    startup_timeout: float = 60.0,
) -> Iterator[Prometheus]:
    """A ready Prometheus that scrapes `target` as `job`, stopped by pid on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    write_config(config, target, rule_files, job)
    log_path = workdir / "prometheus.log"
    server = None
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        log_start = log_path.stat().st_size if log_path.exists() else 0
        try:
            server = _start(config, workdir / "data", log_path, startup_timeout)
            break
        except (PrometheusError, AssertionError) as error:
            log = log_path.read_bytes()[log_start:].decode(errors="replace")
            # Another process may take the port between free_port() and the bind.
            if "address already in use" not in log or attempt == _PORT_ATTEMPTS:
                tail = "\n".join(log.splitlines()[-30:])
                raise PrometheusError(f"{error}; log {log_path}:\n{tail}") from None
    assert server is not None
    try:
        yield server
    finally:
        server.stop()


def promtool(
    *args: str, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run promtool with its output captured (never through a shell)."""
    return subprocess.run(
        [PROMTOOL, *args],
        cwd=cwd,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def promtool_check_metrics(text: str) -> list[str]:
    """What `promtool check metrics` finds wrong with an exposition; [] when clean.

    Exit 0 is clean, 3 means lint findings and 1 an unparsable exposition; both
    failures print their reasons, one a line.
    """
    done = promtool("check", "metrics", stdin=text)
    if done.returncode == 0:
        return []
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines or [f"promtool check metrics exited {done.returncode} without a message"]
