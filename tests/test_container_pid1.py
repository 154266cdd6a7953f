"""The image's entrypoint as PID 1, without a Docker engine: `unshare --pid --fork`.

PID 1 is special: the kernel drops every signal it has no handler for, so a
daemon that only relied on SIGTERM's default action would never stop under
`docker stop`. This runs the Dockerfile's own ENTRYPOINT, ENV and HEALTHCHECK
(read from the file, not copied) as PID 1 of a fresh pid and network
namespace, where the 0.0.0.0 the image sets for metrics reaches nothing but
the namespace's own loopback, then stops it with one SIGTERM as Docker does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deployfiles import REPO, final_stage, image_env, read_dockerfile
from tests.support.nspawn import pid1_child, until

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None,
        reason="needs root and unshare for pid and network namespaces",
    ),
]

# Runs first inside the namespaces: a new network namespace starts with its
# loopback down. It raises lo, then execs the entrypoint, which keeps PID 1.
LAUNCHER = """\
import fcntl, os, socket, struct, sys
SIOCSIFFLAGS, IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x8914, 0x1, 0x8, 0x40
with socket.socket() as s:
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING))
os.execvp(sys.argv[1], sys.argv[1:])
"""
CONFIG = """\
[pool]
workers = 2

[shutdown]
grace_seconds = 5.0

[reload]
watch = false

[tasks]
sleep = "drainpool.tasks.examples:sleep"
"""


def _command(name: str) -> list[str]:
    """An image's command as this machine runs it: its script, else its module."""
    if name in ("python", "python3"):
        return [sys.executable]
    script = Path(sysconfig.get_path("scripts")) / name
    if script.exists():
        return [str(script)]
    if name == "drainpool":
        return [sys.executable, "-m", "drainpool"]
    raise AssertionError(f"no {name} here")


@pytest.fixture
def pid1(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes], dict[str, str]]]:
    """The entrypoint running as PID 1; yields its host pid, unshare and the env."""
    image = final_stage(read_dockerfile())
    entrypoint = next(i for i in reversed(image) if i.keyword == "ENTRYPOINT").exec_form()
    assert entrypoint is not None
    config = tmp_path / "drainpool.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAINPOOL_")}
    env.update(image_env(image))
    # The image's queue sits on its volume; here the volume is tmp_path.
    env["DRAINPOOL_QUEUE__URL"] = f"sqlite:///{tmp_path / 'queue.db'}"
    env["PYTHONPATH"] = str(REPO)
    argv = [*_command(entrypoint[0]), *entrypoint[1:], "--config", str(config)]
    namespaces = ["unshare", "--pid", "--fork", "--mount-proc", "--net"]
    with open(tmp_path / "daemon.log", "wb") as log:
        unshare = subprocess.Popen(
            [*namespaces, sys.executable, "-c", LAUNCHER, *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    pid = None
    try:
        pid = until(lambda: pid1_child(unshare.pid), 30, "the namespace's PID 1")
        yield pid, unshare, env
    finally:
        if unshare.poll() is None:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)  # PID 1 takes its whole namespace along
            unshare.kill()
        unshare.wait(timeout=30)


def _in_netns(pid: int, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _cli(env: dict[str, str], config: Path, *args: str) -> str:
    """`drainpool ARGS --config CONFIG` on the host, against the same queue file."""
    return subprocess.run(
        [*_command("drainpool"), *args, "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def _queue_stats(env: dict[str, str], config: Path) -> dict[str, int]:
    return json.loads(_cli(env, config, "queue", "stats", "--json"))


def test_the_entrypoint_as_pid_1_is_healthy_and_drains_on_one_sigterm(
    pid1: tuple[int, subprocess.Popen[bytes], dict[str, str]], tmp_path: Path
) -> None:
    pid, unshare, env = pid1
    config = tmp_path / "drainpool.toml"
    healthcheck = next(
        i for i in reversed(final_stage(read_dockerfile())) if i.keyword == "HEALTHCHECK"
    ).exec_form()
    assert healthcheck is not None
    probe = [*_command(healthcheck[0]), *healthcheck[1:]]

    # The image's HEALTHCHECK, run where Docker runs it: in the container's network.
    until(lambda: _in_netns(pid, probe).returncode == 0, 60, f"the HEALTHCHECK: see {tmp_path}")
    assert pid1_child(unshare.pid) == pid  # still PID 1 of its namespace, after the exec
    # DRAINPOOL_METRICS__HOST=0.0.0.0 from the image: listening on every address.
    listening = Path(f"/proc/{pid}/net/tcp").read_text()
    assert f"00000000:{9468:04X} 00000000:0000 0A" in listening

    job = _cli(env, config, "enqueue", "sleep", '{"seconds": 600}').strip()
    assert job
    until(lambda: _queue_stats(env, config)["leased"] == 1, 60, "the job to start")

    os.kill(pid, signal.SIGTERM)  # what `docker stop` sends, once
    assert unshare.wait(timeout=60) == 0
    stats = _queue_stats(env, config)
    assert (stats["ready"], stats["leased"], stats["dead"]) == (1, 0, 0)
