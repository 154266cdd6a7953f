"""A private mount namespace for storage-fault tests: real file systems, host untouched.

`MountNamespace` starts a holder process with `unshare --mount` (private
propagation): a tmpfs or loop-mounted ext4 mounted inside it exists only for
the processes that enter it with `nsenter`, and vanishes with the last of them
(a loop device mounted with `-o loop` is freed then too: autoclear). The daemon
started in it is a `Daemon` like any other: nsenter execs it, so its pid is the
daemon's, and signals and /proc work as usual.

Needs root (CAP_SYS_ADMIN), as the test machines have.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import REPO, Daemon
from tests.support.waiting import wait_until


class MountNamespace:
    """A holder process whose mount namespace the test's processes enter."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # `cat` holds the namespace until its stdin closes: at stop(), or when the test dies.
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "cat"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.daemons: list[Daemon] = []
        self._wait_until_unshared()

    def _wait_until_unshared(self, timeout: float = 10.0) -> None:
        """Until `unshare` has made its namespace: nsenter into it before then enters ours,
        and a mount there lands on the host (it did once, on a slow machine, and outlived
        the test)."""
        ours = os.readlink("/proc/self/ns/mnt")

        def unshared() -> bool:
            if self.holder.poll() is not None:
                raise AssertionError(f"unshare --mount exited {self.holder.returncode}")
            with contextlib.suppress(OSError):
                return os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != ours
            return False

        try:
            wait_until(unshared, timeout, "unshare --mount to make its namespace", every=0.005)
        except AssertionError:
            self.stop()
            raise

    @property
    def enter(self) -> list[str]:
        return ["nsenter", "--target", str(self.holder.pid), "--mount", "--"]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (mount, umount, dd...)."""
        result = subprocess.run(
            [*self.enter, *argv], capture_output=True, text=True, timeout=60, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} failed ({result.returncode}): {result.stderr}")
        return result

    def cli(self, *args: str, config: Path) -> subprocess.CompletedProcess[str]:
        """A `drainpool` command run inside the namespace."""
        return subprocess.run(
            [*self.enter, sys.executable, "-m", "drainpool", *args, "--config", str(config)],
            cwd=self.workdir,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def start(self, config: Path) -> Daemon:
        daemon = Daemon(config, self.workdir, prefix=tuple(self.enter))
        self.daemons.append(daemon)
        return daemon.wait_ready()

    def __enter__(self) -> MountNamespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        if self.holder.poll() is None:
            assert self.holder.stdin is not None
            self.holder.stdin.close()
            try:
                self.holder.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.holder.pid, signal.SIGKILL)
                self.holder.wait(10)
