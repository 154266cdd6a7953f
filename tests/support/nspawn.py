"""A Debian 12 system container booted by systemd-nspawn: a real systemd as PID 1.

The unit file's promises (start waits for READY=1, reload is synchronous,
stop drains, the watchdog bites) can only be shown by the service manager
itself, and the machines that run the tests do not boot systemd. So a
minbase bookworm tree is built once with debootstrap, kept under
/var/tmp/drainpool-nspawn-cache keyed by its package list, and booted with
`systemd-nspawn --boot --volatile=overlay`: every run writes to a tmpfs above
the cached tree, which therefore stays pristine. Commands go in through
`nsenter -t LEADER -a`, since machinectl needs systemd on the host.

A cold run (debootstrap) takes a minute or two; a warm one boots in seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.waiting import wait_until

SUITE = "bookworm"
VARIANT = "minbase"
# dbus keeps logind (and so the boot) from failing; procps brings /bin/kill.
PACKAGES = ("systemd", "dbus", "procps", "python3", "python3-venv")
# Units that only add noise or work in a throwaway container.
MASKED = (
    "console-getty.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
)
CACHE_DIR = Path(os.environ.get("DRAINPOOL_NSPAWN_CACHE", "/var/tmp/drainpool-nspawn-cache"))
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where the host's staging directory appears inside the container (read-only).
HOST_MOUNT = "/mnt/host"
# bookworm's interpreter and C library, for the wheels fetched on the host.
CONTAINER_PYTHON = "3.11"
CONTAINER_GLIBC_MINOR = 36

_names = itertools.count()


class Unavailable(Exception):
    """This machine cannot run the container (not root, a tool missing)."""


def missing_requirements() -> list[str]:
    """What stops a container here; empty when it can run."""
    missing = [tool for tool in ("debootstrap", "systemd-nspawn", "nsenter") if not _which(tool)]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def _which(tool: str) -> str | None:
    # debootstrap lives in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def host_runs_systemd() -> bool:
    """sd_booted(3): the test a systemd host passes."""
    return Path("/run/systemd/system").is_dir()


# The suite's one poll-with-a-deadline helper, under the name this module's callers use.
until = wait_until


def pid1_child(parent: int) -> int | None:
    """The child of `parent` that is PID 1 of its own pid namespace, if any yet.

    systemd-nspawn and `unshare --pid --fork` both start one; this is its pid
    as the host sees it, the one to signal, kill or nsenter.
    """
    for children in Path(f"/proc/{parent}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                status = Path(f"/proc/{pid}/status").read_text()
                nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M)
                if nspid and len(nspid.group(1).split()) > 1 and nspid.group(1).split()[-1] == "1":
                    return int(pid)
    return None


# --- the root tree ---------------------------------------------------------------------


def apt_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for SUITE (so debootstrap can reach it)."""
    entries: list[tuple[str, list[str]]] = []  # (uri, suites)
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                entries.append((words[1], [words[2]]))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(
                (key.strip(), value.strip())
                for key, _, value in (
                    line.partition(":")
                    for line in stanza.splitlines()
                    if line.strip() and not line.startswith(("#", " ", "\t"))
                )
            )
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                for uri in fields.get("URIs", "").split():
                    entries.append((uri, fields.get("Suites", "").split()))
    for uri, suites in entries:
        if SUITE in suites:
            return uri.rstrip("/")
    raise Unavailable(f"no apt source for {SUITE} in {apt_dir}")


def tree_key(packages: tuple[str, ...] = PACKAGES) -> str:
    """The cache key: everything that changes what debootstrap builds."""
    recipe = {"suite": SUITE, "variant": VARIANT, "packages": sorted(packages), "masked": MASKED}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def root_tree(packages: tuple[str, ...] = PACKAGES, cache: Path = CACHE_DIR) -> Path:
    """The cached root tree, built by debootstrap on first use (under a lock)."""
    entry = cache / tree_key(packages)
    root, done = entry / "root", entry / "complete"
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel run waits for the same build
        if done.exists() and root.is_dir():
            return root
        partial = entry / "root.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        debootstrap = _which("debootstrap")
        assert debootstrap is not None
        argv = [
            debootstrap,
            f"--variant={VARIANT}",
            f"--include={','.join(packages)}",
            SUITE,
            str(partial),
            apt_mirror(),
        ]
        with open(entry / "debootstrap.log", "w") as log:
            result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({result.returncode}): see {log.name}")
        _trim(partial)
        partial.rename(root)
        done.write_text(json.dumps({"packages": sorted(packages), "built": time.time()}))
        return root


def _trim(root: Path) -> None:
    """Drop what a throwaway container never uses; mask the noisy units."""
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (root / junk).glob("*"):
            if path.is_file():
                path.unlink()
    units = root / "etc/systemd/system"
    for unit in MASKED:
        (units / unit).unlink(missing_ok=True)
        (units / unit).symlink_to("/dev/null")


# --- the project's wheels --------------------------------------------------------------


def wheelhouse(repo: Path, dest: Path, log: Path) -> Path:
    """The project's wheel and every dependency as wheels for bookworm's Python.

    The container has no network (--private-network), so pip inside installs
    with --no-index from this directory. The source is copied first so that
    the build leaves nothing behind in the repository.
    """
    src = dest.parent / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(repo / name, src / name)
    shutil.copytree(repo / "daemon", src / "daemon", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    with open(log, "a") as out:

        def run(*args: str) -> None:
            subprocess.run([*pip, *args], stdout=out, stderr=subprocess.STDOUT, check=True)

        run("wheel", "--no-deps", "--wheel-dir", str(dest), str(src))
        (wheel,) = dest.glob("drainpool-*.whl")
        # Wheels for the container's interpreter, whatever Python runs the tests.
        # pip does not widen a given --platform to older glibc tags, so every
        # tag that bookworm's glibc can load is listed.
        arch = platform.machine()
        tags = [f"manylinux_2_{minor}_{arch}" for minor in range(CONTAINER_GLIBC_MINOR, 16, -1)]
        run(
            "download",
            "--only-binary=:all:",
            f"--python-version={CONTAINER_PYTHON}",
            "--implementation=cp",
            *(f"--platform={tag}" for tag in [*tags, f"manylinux2014_{arch}"]),
            "--dest",
            str(dest),
            str(wheel),
        )
    return wheel


# --- the container ---------------------------------------------------------------------


class Container:
    """One booted container; use as a context manager so it is always torn down."""

    def __init__(self, root: Path, stage: Path, log: Path) -> None:
        self.root = root
        self.stage = stage  # the host side of HOST_MOUNT
        self.log = log
        self.name = f"drainpool-test-{os.getpid()}-{next(_names)}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None

    def __enter__(self) -> Container:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> None:
        nspawn = _which("systemd-nspawn")
        assert nspawn is not None
        argv = [
            nspawn,
            f"--directory={self.root}",
            "--volatile=overlay",  # writes go to a tmpfs: the cached tree stays clean
            "--boot",
            f"--machine={self.name}",
            "--console=read-only",
            "--private-network",
            f"--bind-ro={self.stage}:{HOST_MOUNT}",
            # systemd in the container loads BPF programs for its cgroups.
            "--system-call-filter=bpf",
        ]
        env = dict(os.environ)
        if not host_runs_systemd():
            # No machined to register with and no systemd to make a scope for
            # us: stay in our own cgroup and use the unified hierarchy.
            argv += ["--register=no", "--keep-unit"]
            env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.leader = until(self._find_leader, 60, "the container's PID 1")
        until(self._booted, timeout, "the container to finish booting")

    def _find_leader(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}: see {self.log}")
        return pid1_child(self.proc.pid)

    def _booted(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the container stopped while booting: see {self.log}")
        state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
        return state in ("running", "degraded")

    def run(
        self,
        argv: list[str],
        *,
        check: bool = True,
        timeout: float = 120.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside every namespace of the container, with a clean environment."""
        assert self.leader is not None, "the container is not running"
        nsenter = _which("nsenter")
        assert nsenter is not None
        result = subprocess.run(
            [nsenter, "-t", str(self.leader), "-a", "--", *argv],
            env={"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0"},
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{argv} exited {result.returncode}\nstdout: {result.stdout}\n"
                f"stderr: {result.stderr}"
            )
        return result

    def popen(self, argv: list[str], out: Path) -> subprocess.Popen[bytes]:
        """Start argv inside the container without waiting; output goes to `out`."""
        assert self.leader is not None
        nsenter = _which("nsenter")
        assert nsenter is not None
        with open(out, "ab") as sink:
            return subprocess.Popen(
                [nsenter, "-t", str(self.leader), "-a", "--", *argv],
                env={"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0"},
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def put(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside the container (through the staging mount)."""
        staged = self.stage / "put" / path.lstrip("/")
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(text)
        source = f"{HOST_MOUNT}/put/{path.lstrip('/')}"
        self.run(["install", "-D", f"--mode={mode:o}", source, path])

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show` properties of a unit."""
        out = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def cursor(self) -> str:
        """The journal's current position, to read only what comes after it."""
        out = self.run(["journalctl", "--no-pager", "--lines=0", "--show-cursor"]).stdout
        return out.strip().rpartition("-- cursor: ")[2]

    def journal(self, unit: str, after: str | None = None) -> str:
        """The unit's journal (messages only), from after cursor `after` if given."""
        argv = ["journalctl", "--no-pager", "--output=cat", f"--unit={unit}"]
        if after:
            argv.append(f"--after-cursor={after}")
        return self.run(argv, check=False).stdout

    def stop(self) -> None:
        """Power the container off; kill it by pid if it does not go in time."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # nspawn turns SIGTERM into an orderly poweroff of the container.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                if self.leader is not None:
                    # PID 1 of a pid namespace takes every process in it along.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)
                proc.kill()
                proc.wait(timeout=60)
        self.leader = None


@contextlib.contextmanager
def booted(stage: Path, log: Path, packages: tuple[str, ...] = PACKAGES) -> Iterator[Container]:
    """Build (or reuse) the tree, boot a container, and always tear it down."""
    missing = missing_requirements()
    if missing:
        raise Unavailable(f"missing: {', '.join(missing)}")
    with Container(root_tree(packages), stage, log) as container:
        yield container
