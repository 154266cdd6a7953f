"""The SQLite queue's doorbell: how a producer wakes the daemons idle on the same file.

Design (issue 21): a directory beside the queue file, `<file>-doorbell/`,
holds one Unix datagram socket per listening pool. After its commit, a
producer sends one datagram (the task names, one per line) to every socket in
it; a pool serving one of those tasks wakes and fetches once.

A datagram's lines: `task` (a job of it may be ready), `task<TAB>due` (a
delayed job, due at that epoch time), and `#task<TAB>id,id,...` (the ids of
the ready jobs that the `task` line announced; at most MAX_IDS). With the
ids, an idle daemon claims those rows by primary key instead of looking for
due jobs first, a fifth less work per fetch (issue 21); the ids are a hint,
never the only way to a job (see Heard). Task names never start with "#", so
a daemon that predates the ids ignores those lines, and a producer that
predates them sends none: the daemon then looks for due jobs as before.

Why this shape rather than the alternatives:
- SQLite has no notification, and inotify on the WAL fires on every write of
  every connection (the daemons' own leases and acks too), so a daemon would
  wake for its own work and could not tell which task changed.
- Datagrams are fire-and-forget: a send to a full buffer fails at once with
  EAGAIN (the daemon already has a wake-up pending) and a send to a socket
  whose daemon died fails with ECONNREFUSED, so a producer never blocks nor
  fails because a daemon is gone or slow; the stale socket is removed.
- The file system finds the listeners: any process that can open the queue
  file can find and ring them, with no registry to keep in step. A producer
  that cannot create or write the directory (read-only) still enqueues: the
  daemons find its job at their safety-net poll.
- A pool checks every CHECK_SECONDS that its socket file is still there
  (someone may have deleted it) and binds a new one if not: one stat().
- A producer lists the directory only when it changed: it keeps the socket
  names with the directory's inode and mtime, one stat() per ring instead of
  a listing (Listeners; issue 21's burst rings a thousand times in a row).

Socket paths are bound through /proc/self/fd/<dir fd>/<name>, so a queue
file deep in a long path does not hit the 108-byte limit of sun_path.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from drainpool.queue.wakeups import ChannelWaiter, WaitMode, process_tag

log = logging.getLogger("drainpool.queue")

SUFFIX = ".sock"
MAX_DATAGRAM = 65_536
MAX_IDS = 64  # ids per task in one ring; beyond, none are sent (the daemon looks instead)
IDS_MARK = "#"  # starts a line of ids; never the first character of a task name
CHECK_SECONDS = 2.0  # a listener checks this often that its socket file is still there
# A listing made this long after the directory's last change is kept until its mtime moves:
# a second change within one tick of the file system's clock would leave the mtime as it was.
# Linux stamps files from a clock of 1-10 ms ticks; an mtime of whole seconds is taken for a
# file system that keeps only seconds (2 s on the coarsest).
SETTLED_SECONDS = 0.1
COARSE_SETTLED_SECONDS = 3.0
_GONE = (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK)  # nobody listens there any more


def doorbell_dir(queue_path: Path) -> Path:
    return queue_path.with_name(queue_path.name + "-doorbell")


class Doorbell:
    """The producer's side: rings every listener after a commit; never raises."""

    def __init__(self, queue_path: Path) -> None:
        self.directory = doorbell_dir(queue_path)
        self._sender: socket.socket | None = None
        self._listeners = Listeners(self.directory)

    def ring(
        self,
        tasks: Iterable[str],
        due: float | None = None,
        ids: Mapping[str, Sequence[str]] | None = None,
    ) -> int:
        """Send the task names (and a delayed job's due time) to every listening pool.

        `ids`: the ready jobs' ids by task, sent on lines of their own (module
        docstring). Returns how many were rung.
        """
        suffix = "" if due is None else f"\t{due!r}"
        try:
            names = self._listeners.names()
            if not names:
                return 0
            with _reach(self.directory) as address:
                lines = [task + suffix for task in dict.fromkeys(tasks)]
                for task, job_ids in (ids or {}).items():
                    if 0 < len(job_ids) <= MAX_IDS:
                        lines.append(f"{IDS_MARK}{task}\t{','.join(job_ids)}")
                message = "\n".join(lines).encode()
                if len(message) > MAX_DATAGRAM:  # cut at a line: never half an id
                    message = message[: max(message.rfind(b"\n", 0, MAX_DATAGRAM + 1), 0)]
                return sum(self._send(message, address(name), name) for name in names)
        except OSError:
            return 0  # no directory: nobody listens (or it cannot be read: the safety net)

    def _send(self, message: bytes, address: str, name: str) -> bool:
        try:
            self._socket().sendto(message, address)
        except OSError as exc:
            if exc.errno in _GONE:
                with contextlib.suppress(OSError):  # a read-only directory keeps it
                    (self.directory / name).unlink()
            return False  # EAGAIN: its buffer is full, so a wake-up is pending anyway
        return True

    def _socket(self) -> socket.socket:
        if self._sender is None:
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.setblocking(False)
            self._sender = sender
        return self._sender

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None


class Listeners:
    """The socket names in a doorbell directory, listed again only when it changed.

    One stat() of the directory per ring: a bind, an unlink or a rename in it
    moves its mtime. A listing taken within SETTLED_SECONDS of the last change
    (COARSE_SETTLED_SECONDS on a file system that keeps whole seconds) is not
    kept, so the directory is listed at every ring until it has been still
    that long.
    """

    def __init__(self, directory: Path) -> None:
        self._path = str(directory)
        self._key: tuple[int, int] | None = None  # (inode, mtime ns) of the kept listing
        self._names: list[str] = []

    def names(self) -> list[str]:
        """The names ending in SUFFIX; OSError when the directory cannot be read."""
        st = os.stat(self._path)
        key = (st.st_ino, st.st_mtime_ns)
        if key == self._key:
            return self._names
        names = [name for name in os.listdir(self._path) if name.endswith(SUFFIX)]
        tick = COARSE_SETTLED_SECONDS if st.st_mtime_ns % 1_000_000_000 == 0 else SETTLED_SECONDS
        settled = time.time() - st.st_mtime_ns / 1e9 > tick
        self._key = key if settled else None
        self._names = names
        return names


class DoorbellWaiter(ChannelWaiter):
    """A pool's side: one datagram socket in the doorbell directory."""

    armed_mode: WaitMode = "doorbell"

    def __init__(
        self,
        queue_path: Path,
        tasks: Collection[str],
        heard: Heard | None = None,
    ) -> None:
        self.directory = doorbell_dir(queue_path)
        super().__init__(f"doorbell in {self.directory}")
        self._tasks = set(tasks)
        # What the rings said, noted before wait() returns; the queue's fetch takes it.
        self.heard = heard or Heard()
        self._socket: socket.socket | None = None
        self._path: Path | None = None
        self._inode: int | None = None

    def _arm(self) -> None:
        self.directory.mkdir(exist_ok=True)
        name = process_tag() + SUFFIX
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            with _reach(self.directory) as address:
                sock.bind(address(name))
            self._path = self.directory / name
            self._inode = self._path.stat().st_ino
        except BaseException:
            sock.close()
            raise
        self._socket = sock

    def _listen(self, timeout: float) -> bool:
        assert self._socket is not None and self._path is not None
        if self._interrupter.select([self._socket.fileno()], min(timeout, CHECK_SECONDS)):
            return self._drain_datagrams()
        if not self._interrupter.closed.is_set() and self._moved(self._path):
            raise OSError(f"its socket {self._path.name} was removed")
        return False

    def _drain_datagrams(self) -> bool:
        """Read every datagram waiting (a burst of enqueues is one wake-up)."""
        assert self._socket is not None
        wanted = False
        while True:
            try:
                message = self._socket.recv(MAX_DATAGRAM)
            except BlockingIOError:
                break
            ready: set[str] = set()  # our tasks rung for a job due now
            named: dict[str, list[int]] = {}  # task: the ids its ring named
            for line in message.decode(errors="replace").splitlines():
                task, _, rest = line.partition("\t")
                if task.startswith(IDS_MARK):
                    if task[1:] in self._tasks:
                        named[task[1:]] = _ids(rest)
                elif task in self._tasks:
                    wanted = True
                    if rest:
                        self._note_due(float(rest))
                    else:
                        ready.add(task)
            if ready:
                self.heard.note({task: named.get(task) or None for task in ready})
        return wanted

    def _moved(self, path: Path) -> bool:
        """Whether our socket file is no longer at `path` (deleted, or replaced)."""
        try:
            return path.stat().st_ino != self._inode
        except OSError:
            return True

    def _disarm(self) -> None:
        sock, path = self._socket, self._path
        self._socket = self._path = None
        if sock is not None:
            sock.close()
        if path is not None and not self._moved(path):
            with contextlib.suppress(OSError):
                path.unlink()


class Heard:
    """The rings for our tasks since the dispatcher last took them: by task, the ids named.

    None for a task means that a ring named no ids (an older producer, a batch of
    enqueues), or that more than MAX_IDS were named since the last fetch (a busy
    pool, which does not fetch while its workers are full, keeps no growing
    list): its jobs must be looked for. The listener notes, the dispatcher
    takes; the ids are only a hint (another daemon may have claimed them, and
    a lost datagram names nothing), so the claim checks each row, and a look
    for due jobs stays the way to find everything else.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, set[int] | None] = {}

    def note(self, rung: Mapping[str, Collection[int] | None]) -> None:
        with self._lock:
            for task, ids in rung.items():
                held = self._tasks.get(task, set())
                if held is None or ids is None:
                    self._tasks[task] = None
                else:
                    held.update(ids)
                    self._tasks[task] = held if len(held) <= MAX_IDS else None

    def take(self, tasks: Collection[str]) -> tuple[bool, list[int]]:
        """Whether any of `tasks` rang, and the ids named (empty: look for them), forgotten here."""
        rung = look = False
        ids: set[int] = set()
        with self._lock:
            for task in tasks:
                if task in self._tasks:
                    named = self._tasks.pop(task)
                    rung = True
                    if named is None:
                        look = True
                    else:
                        ids.update(named)
        return rung, [] if look else sorted(ids)

    def forget(self, tasks: Collection[str]) -> None:
        """A look for due jobs of `tasks` answers every ring heard for them so far."""
        with self._lock:
            for task in tasks:
                self._tasks.pop(task, None)


def _ids(text: str) -> list[int]:
    """The ids of an ids line; none if it is malformed (the ring then only wakes)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        return []


@contextlib.contextmanager
def _reach(directory: Path) -> Iterator[Callable[[str], str]]:
    """Socket addresses in `directory`: its path when short, else through a directory fd.

    sun_path holds 108 bytes; /proc/self/fd/N/name reaches the same file in a few.
    """
    if len(os.fsencode(directory)) < 80:
        prefix = f"{directory}/"  # strings, not Paths: a producer rings after every enqueue
        yield lambda name: prefix + name
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield lambda name: f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)
