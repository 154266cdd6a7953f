"""A real PostgreSQL cluster for tests: initdb, own port and socket, always stopped by pid.

Why its own cluster: tests stop, restart and cut PostgreSQL under the queue,
and a cluster costs a second or two to create. The binaries are Debian's
(postgresql-15, installed by scripts/setup-dev). PostgreSQL refuses to run as
root, so under root the cluster runs as the `postgres` system user (which the
Debian package creates); its directory is then made with mkdtemp outside
pytest's tmp_path, because pytest keeps its base temp directory 0700 for root
and any concurrent pytest run would reset a wider mode (a link from tmp_path
points at it). The postmaster is started directly (not through pg_ctl), so
its pid is the Popen's and it is always stopped or killed by that pid.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.net import free_port
from tests.support.waiting import wait_until

BIN_DIR = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "drainpool"  # the cluster's superuser (initdb -U), trust authentication
RUN_AS = "postgres"  # when the tests run as root
START_DEADLINE = 30.0  # seconds: generous, the machine is shared and noisy
STOP_DEADLINE = 15.0


class PostgresServer:
    """One postmaster on 127.0.0.1 and a Unix socket, restartable on the same port and data."""

    def __init__(
        self,
        directory: Path,
        *,
        settings: dict[str, str] | None = None,
        mount_namespace: int | None = None,
    ) -> None:
        """`mount_namespace`: the pid of a process (tests/support/mountns.py) whose mount
        namespace the postmaster runs in, so it sees the test's small file systems."""
        self.link = Path(directory)
        self.mount_namespace = mount_namespace
        self.user = pwd.getpwnam(RUN_AS) if os.geteuid() == 0 else None
        if self.user is None:
            self.directory = self.link
            self.directory.mkdir(parents=True, exist_ok=True)
        else:
            self.directory = Path(tempfile.mkdtemp(prefix="drainpool-pg-"))
            os.chown(self.directory, self.user.pw_uid, self.user.pw_gid)
            self.link.parent.mkdir(parents=True, exist_ok=True)
            self.link.symlink_to(self.directory)
        self.data = self.directory / "data"
        self.socket_dir = self.directory
        self.log_path = self.directory / "postgres.log"
        self.port = free_port()
        self.settings = {"fsync": "off", "full_page_writes": "off", **(settings or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_tool("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
                       "-E", "UTF8", "--no-sync", "--no-instructions")  # fmt: skip

    def _as_user(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _run_tool(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [str(BIN_DIR / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.directory,
            **self._as_user(),
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def url(self, user: str = SUPERUSER, database: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    @property
    def socket_url(self) -> str:
        return f"postgresql://{SUPERUSER}@/postgres?host={self.socket_dir}&port={self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, deadline: float = START_DEADLINE) -> None:
        """Start the postmaster and return once it answers; raise with its log if not."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"postgres already running (pid {self.proc.pid})")
        argv = [str(BIN_DIR / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.socket_dir), "-c", "listen_addresses=127.0.0.1"]  # fmt: skip
        for name, value in self.settings.items():
            argv += ["-c", f"{name}={value}"]
        as_user = self._as_user()
        if self.mount_namespace is not None:  # nsenter execs postgres: the pid stays its
            ids = (
                []
                if self.user is None
                else ["-S", str(self.user.pw_uid), "-G", str(self.user.pw_gid)]
            )
            argv = ["nsenter", "-t", str(self.mount_namespace), "--mount", *ids, "--", *argv]
            as_user = {}  # nsenter needs root to enter, and drops it itself
        with open(self.log_path, "ab") as log:
            if self.user is not None:
                os.chown(self.log_path, self.user.pw_uid, self.user.pw_gid)
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its backends share its group: killed together
                **as_user,
            )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start:\n{self.log_tail()}")
            return self.answers()

        try:
            wait_until(up, deadline, "postgres to accept connections", every=0.05)
        except AssertionError:
            self.kill()
            raise RuntimeError(
                f"postgres did not start in {deadline} s:\n{self.log_tail()}"
            ) from None

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.url(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit); its rows, if any."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            cur = conn.execute(statement, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def stop(self, deadline: float = STOP_DEADLINE) -> None:
        """Fast shutdown (SIGINT: clients cut, data kept), SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the postmaster's process group by its pid, and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def remove(self) -> None:
        """Kill and delete the cluster's files (the mkdtemp directory under root)."""
        self.kill()
        if self.directory != self.link:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.link.unlink(missing_ok=True)


@contextmanager
def postgres_servers(base_dir: Path) -> Iterator[Callable[..., PostgresServer]]:
    """Start clusters on demand (PostgresServer's options); all are killed and removed on exit."""
    if not (BIN_DIR / "postgres").exists():  # fail, not skip: a skipped backend passes silently
        pytest.fail(f"{BIN_DIR}/postgres is missing: apt-get install postgresql")
    servers: list[PostgresServer] = []

    def start(**options: Any) -> PostgresServer:
        server = PostgresServer(base_dir / f"postgres-{len(servers)}", **options)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.remove()
