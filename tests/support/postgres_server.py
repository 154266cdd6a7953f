"""A real PostgreSQL cluster for tests: initdb, own port and socket, always stopped by pid.

Why its own cluster: tests stop, restart and cut PostgreSQL under the queue,
and a cluster costs a second or two to create. The binaries are Debian's
(postgresql-15, installed by scripts/setup-dev). PostgreSQL refuses to run as
root, so under root the cluster runs as the `postgres` system user (which the
Debian package creates); its directory is then made with mkdtemp outside
pytest's tmp_path, because pytest keeps its base temp directory 0700 for root
and any concurrent pytest run would reset a wider mode (a link from tmp_path
points at it). The postmaster is started directly (not through pg_ctl), so
its pid is the Popen's and it is always stopped or killed by that pid
(tests/support/server_process.py).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.server_process import ServerProcess, started_on_demand

BIN_DIR = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "drainpool"  # the cluster's superuser (initdb -U), trust authentication
RUN_AS = "postgres"  # when the tests run as root
START_DEADLINE = 30.0  # seconds: generous, the machine is shared and noisy
STOP_DEADLINE = 15.0


class PostgresServer(ServerProcess):
    """One postmaster on 127.0.0.1 and a Unix socket, restartable on the same port and data."""

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown: clients cut, data kept
    start_deadline = START_DEADLINE
    stop_deadline = STOP_DEADLINE

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
        super().__init__(self.directory / "postgres.log")
        self.data = self.directory / "data"
        self.socket_dir = self.directory
        self.settings = {"fsync": "off", "full_page_writes": "off", **(settings or {})}
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

    def argv(self) -> list[str]:
        argv = [str(BIN_DIR / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.socket_dir), "-c", "listen_addresses=127.0.0.1"]  # fmt: skip
        for name, value in self.settings.items():
            argv += ["-c", f"{name}={value}"]
        if self.mount_namespace is not None:  # nsenter execs postgres: the pid stays its
            ids = (
                []
                if self.user is None
                else ["-S", str(self.user.pw_uid), "-G", str(self.user.pw_gid)]
            )
            argv = ["nsenter", "-t", str(self.mount_namespace), "--mount", *ids, "--", *argv]
        return argv

    def popen_options(self) -> dict[str, Any]:
        if self.user is not None:  # the postmaster (as RUN_AS) appends to the log too
            os.chown(self.log_path, self.user.pw_uid, self.user.pw_gid)
        # Its backends share its group: killed together.
        if self.mount_namespace is not None:  # nsenter needs root to enter, and drops it itself
            return {"start_new_session": True}
        return {"start_new_session": True, **self._as_user()}

    def kill_pid(self, pid: int) -> None:
        os.killpg(pid, signal.SIGKILL)

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

    def discard(self) -> None:
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
    with started_on_demand(PostgresServer, base_dir, "postgres") as start:
        yield start
