"""A real redis-server for tests: own port, own directory, always killed by pid.

Why not a shared server: tests stop and restart Redis under the queue, so each
test that does that needs its own. Starting one costs a few tens of ms.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.server_process import ServerProcess, started_on_demand

REDIS_SERVER = Path("/usr/bin/redis-server")
START_DEADLINE = 20.0  # seconds: generous, the machine is shared and noisy
STOP_DEADLINE = 10.0


class RedisServer(ServerProcess):
    """One redis-server process on 127.0.0.1, restartable on the same port and directory."""

    name = "redis-server"
    stop_signal = signal.SIGTERM  # Redis flushes its append-only file, then exits
    start_deadline = START_DEADLINE
    stop_deadline = STOP_DEADLINE
    answer_every = 0.02

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = False,
        password: str | None = None,
        unixsocket: bool = False,
        tls: bool = False,
        binary: Path = REDIS_SERVER,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        super().__init__(self.directory / "redis.log")
        self.appendonly = appendonly
        self.password = password
        self.socket_path = self.directory / "redis.sock" if unixsocket else None
        self.binary = binary
        # TLS only (no plain port): a self-signed certificate for 127.0.0.1 that is its own CA.
        self.certificate = _self_signed_certificate(self.directory) if tls else None

    @property
    def url(self) -> str:
        """The server's URL without the password (tests add it where they mean to)."""
        if self.certificate is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.certificate[0]}"
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        port = ["--port", str(self.port)]
        if self.certificate is not None:
            cert, key = self.certificate
            port = [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
            ]  # fmt: skip
        argv = [
            str(self.binary),
            *port,
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--save", "",  # no RDB snapshots: persistence is only what appendonly says
            "--appendonly", "yes" if self.appendonly else "no",
            "--logfile", "",  # to stdout, which goes to our log file
        ]  # fmt: skip
        if self.password is not None:
            argv += ["--requirepass", self.password]
        if self.socket_path is not None:
            argv += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return argv

    def answers(self) -> bool:
        """PING (after AUTH) in raw RESP: this helper stays independent of the client under test."""
        try:
            with self._connect() as s:
                if self.password is not None:
                    s.sendall(_command("AUTH", self.password))
                    if not s.recv(64).startswith(b"+OK"):
                        return False
                s.sendall(_command("PING"))
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _connect(self) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
        if self.certificate is None:
            return raw
        context = ssl.create_default_context(cafile=str(self.certificate[0]))
        return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    argv = [
        "openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-addext", "subjectAltName=IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    subprocess.run(
        argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60
    )
    return cert, key


def _command(*words: str) -> bytes:
    out = [f"*{len(words)}\r\n".encode()]
    for w in words:
        raw = w.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


@contextmanager
def redis_servers(base_dir: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers on demand (RedisServer's options); all are killed on exit."""
    if not REDIS_SERVER.exists():  # fail, not skip: a skipped backend would pass CI silently
        pytest.fail(f"{REDIS_SERVER} is missing: apt-get install redis-server")
    with started_on_demand(RedisServer, base_dir, "redis") as start:
        yield start


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """The same as a fixture (register with `pytest_plugins = ["tests.support.redis_server"]`)."""
    with redis_servers(tmp_path) as start:
        yield start
