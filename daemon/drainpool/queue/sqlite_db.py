"""One SQLite file opened for the queue: WAL, busy retries, faults, file identity.

A module of its own because what can go wrong with the file is one concern
and the queue's semantics (daemon/drainpool/queue/sqlite.py) are another:

- Busy: a transaction that meets another writer's lock is retried by this
  loop for BUSY_RETRY_SECONDS, so "database is locked" never reaches a
  producer or the daemon early. Connections have no SQLite busy handler: its
  sleeps grow 1, 2, 5 ... 100 ms, and against a producer's stream of short
  commits (a burst of enqueues, each a few hundred microseconds under the
  lock with gaps of tens between) a daemon's claim slept through the whole
  burst, 0.2-0.6 s, then overslept its end by up to 100 ms, and a producer
  slept 1 ms or more behind each claim of a few hundred microseconds. Here
  the pauses start at a tenth of a millisecond and stay at most BUSY_PAUSE_SHORT
  for the first BUSY_SHORT_SECONDS, so the lock changes hands within about
  a pause of being free; a lock held longer (a bulk enqueue) is then retried
  less often, up to BUSY_PAUSE_MAX apart (issue 21: the SQLite burst).
- Space: a write that fails because the disk is full makes the connection
  checkpoint every quarter of the space left (SQLite's own checkpoint waits
  for 4 MiB of WAL, more than a small disk holds), checkpoints and truncates
  the WAL at once, and is tried once more: recovery follows the space
  actually free, not the size the WAL once reached.
- Faults: any other SQLite or OS error (disk full, read-only file system, I/O
  error, a corrupt file) is raised as QueueUnavailable for the caller to retry;
  all but a full disk also close the connection, so the next transaction starts
  on a fresh one (a connection that met an I/O error, or that SQLite opened
  read-only, would not recover by itself).
- Identity: the file's (device, inode) is checked before and after every
  transaction. SQLite keeps writing to a deleted file's inode, where nobody
  would ever read it, so a connection to a deleted or replaced file is dropped;
  a transaction that committed while the file was swapped is reported as
  failed, to be done again on the new file. Once this object has opened the
  file it never creates it again: a deleted queue is a fault that /readyz
  shows until the file is restored or created anew (by `drainpool enqueue`).
  `epoch` names the file (a random id kept inside it, and its inode, which
  differs for a restored copy), so the queue can tell the lease tokens given
  out for an old file from those of the file now at the path.
- Journal: the -wal and -shm files are checked too (two more stats per
  transaction, of the inode alone: drainpool.queue.file_identity says why).
  Deleted under an open connection, they took every commit since the last
  checkpoint with them: the queue becomes unavailable in this process until it
  restarts, the connection is kept so that its close writes that WAL back into
  the file, and a process about to open a file that another has open without
  its -wal or -shm refuses to (issue 23).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from drainpool.queue import file_identity
from drainpool.queue.base import QueueUnavailable

T = TypeVar("T")
log = logging.getLogger("drainpool.queue")

BUSY_RETRY_SECONDS = 60.0  # then the retry loop gives up and reports the queue unavailable
BUSY_PAUSE_FIRST = 0.0001  # the retry loop's first pause; each one after doubles ...
BUSY_PAUSE_SHORT = 0.001  # ... up to this while the lock was waited for under
BUSY_SHORT_SECONDS = 1.0  # this long (a stream of short transactions), and then ...
BUSY_PAUSE_MAX = 0.05  # ... up to this (a long transaction: fewer tries)
CHECKPOINT_BUSY_MS = 5000  # a truncating checkpoint after a full disk waits this for readers
JOURNAL_SUFFIXES = ("-wal", "-shm")
ORPHAN_WAIT_SECONDS = 1.0  # a missing -wal under another process's lock, before refusing
_LOCK_BYTES, _LOCK_SPAN = 0x40000000, 512  # SQLite's PENDING_BYTE, then reserved and shared
_FLOCK = "hhqqi4x"  # struct flock on Linux (64-bit off_t)
# Files whose -wal or -shm was deleted under a connection of this process (see _check_journal).
_JOURNAL_LOST: set[Path] = set()
MIN_CHECKPOINT_PAGES = 16  # after a full disk: checkpoint at least every 64 KiB of WAL
# A random id made when the file is created; with the inode it names this very file.
_META = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT OR IGNORE INTO meta VALUES ('file_id', lower(hex(randomblob(8))))",
)
# Brings a file from the version it has (0: new) to the current one, inside the
# transaction that then sets user_version.
Migrate = Callable[[sqlite3.Connection, int], None]
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_BUGS = (sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.IntegrityError)
_HINTS = {
    "SQLITE_READONLY": "the file or its file system is read-only",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "an I/O error: a read-only or failing file system?",
    "SQLITE_CANTOPEN": "the file or its directory cannot be opened",
}


def _identity(path: Path | str) -> tuple[int, int] | None:
    # Not os.stat: reading the -wal file's times made every commit after it dearer (file_identity).
    return file_identity.identity(os.fspath(path))


def _lost_message(path: Path) -> str:
    return (
        f"{path}-wal or -shm was deleted or replaced while the daemon had the file open:"
        " the queue is not used until the daemon restarts (its stop writes the jobs it"
        " holds back into the file); producers are refused meanwhile"
    )


def _opened_elsewhere_without_journal(path: Path) -> bool:
    """Whether another process holds a SQLite lock on `path` while its -wal or -shm is missing."""
    if not path.exists() or all(Path(f"{path}{s}").exists() for s in JOURNAL_SUFFIXES):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        # SQLite's lock bytes (pending, reserved, shared range); F_GETLK sees other processes'.
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, _LOCK_BYTES, _LOCK_SPAN, 0)
        kind = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, probe))[0]
    except OSError:
        return False
    finally:
        os.close(fd)
    return kind != fcntl.F_UNLCK


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF  # the primary code of an extended one


def is_busy(exc: sqlite3.Error) -> bool:
    code = _primary_code(exc)
    if code is not None:
        return code in _BUSY_CODES
    return "locked" in str(exc) or "busy" in str(exc)


class Database:
    """A lazily opened connection to one file, shared by the threads of one process."""

    def __init__(
        self, path: Path, migrate: Migrate, version: int, *, synchronous: str, create: bool = True
    ) -> None:
        self.path = path
        self.create = create  # False: never create the file, even at the first open
        self.file_id = ""  # made at the file's creation; a copy of the file has it too
        self.epoch = ""  # names the file the connection is open on (set at each open)
        self._migrate = migrate
        self._version = version
        self._synchronous = synchronous
        self._lock = threading.Lock()  # one transaction at a time on the shared connection
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # of the file last opened
        self._journal: tuple[tuple[int, int] | None, ...] = ()  # its -wal and -shm, then
        # Their paths, made once: each transaction checks them (a Path per check cost more).
        self._journal_paths = tuple(f"{path}{suffix}" for suffix in JOURNAL_SUFFIXES)

    def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run `fn` in one transaction; retry while busy; raise QueueUnavailable on faults."""
        started = time.monotonic()
        pause = BUSY_PAUSE_FIRST
        reclaimed = False  # the WAL was checkpointed and truncated after a full disk
        while True:
            with self._lock:
                try:
                    return self._once(fn, write)
                except sqlite3.Error as exc:
                    if isinstance(exc, _BUGS):
                        raise  # a bug in the caller's SQL, not a fault of the file
                    full = _primary_code(exc) == sqlite3.SQLITE_FULL
                    if full and not reclaimed and self._reclaim_wal():
                        reclaimed = True
                        continue  # once: a retry that fails again reports the full disk
                    if not is_busy(exc):
                        if not full:
                            # A full disk leaves the connection sound (SQLite rolled back);
                            # closing it would checkpoint and delete the WAL, freeing a
                            # little space that the next commit fills again: a flapping fault.
                            self._drop()
                        raise self._unavailable(exc) from exc
                    waited = time.monotonic() - started
                    if waited > BUSY_RETRY_SECONDS:
                        raise self._unavailable(exc) from exc
                except OSError as exc:
                    self._drop()
                    raise QueueUnavailable(f"{self.path}: {exc}") from exc
            time.sleep(pause)  # lock released; another connection is writing
            cap = BUSY_PAUSE_SHORT if waited < BUSY_SHORT_SECONDS else BUSY_PAUSE_MAX
            pause = min(pause * 2, cap)

    def _reclaim_wal(self) -> bool:
        """After a write failed for space: checkpoint more often, and now (lock held).

        SQLite checkpoints on its own every 1000 pages (4 MiB of WAL): on a smaller
        disk the WAL alone fills it, every commit then fails, and nothing would
        checkpoint again, even once space is freed (the WAL grows into it). So the
        connection now checkpoints (and trims the WAL) every quarter of the space
        left, and tries a checkpoint that truncates the WAL. True when that freed
        the WAL (no reader held it, the file had room for its pages): a retry may
        then succeed. Whether it does depends on the space actually free.
        """
        if self._conn is None:
            return False
        try:
            page = self._conn.execute("PRAGMA page_size").fetchone()[0]
            st = os.statvfs(self.path.parent)
            pages = max(MIN_CHECKPOINT_PAGES, min(1000, st.f_bavail * st.f_frsize // page // 4))
            self._conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
            self._conn.execute(f"PRAGMA journal_size_limit={pages * page}")
            # The one wait left to SQLite's busy handler: for readers to leave the WAL.
            self._conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
            try:
                busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                self._conn.execute("PRAGMA busy_timeout=0")
        except (sqlite3.Error, OSError) as exc:
            log.debug("%s: checkpoint after a full disk failed: %s", self.path, exc)
            return False
        return busy == 0

    def _once(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        # A write checks the file after its commit (below), which also covers a swap
        # before it: one stat per transaction, not two, on the dispatcher's hot path.
        if self.path in _JOURNAL_LOST:
            raise QueueUnavailable(_lost_message(self.path))
        conn = self._conn if write and self._conn is not None else self._connect()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the first error is the one to report
                    conn.execute("ROLLBACK")
            raise
        if write and self._file_identity() != self._identity:
            # Swapped during the transaction: the commit may have gone to the old file.
            self._drop()
            raise QueueUnavailable(f"{self.path}: database file was deleted or replaced")
        if write:
            self._check_journal()
        return result

    def _connect(self) -> sqlite3.Connection:
        """The open connection if its file is still at the path, else a new one (lock held)."""
        if self._conn is not None:
            if self._file_identity() == self._identity:
                self._check_journal()
                return self._conn
            self._drop()
            raise QueueUnavailable(f"{self.path}: database file was deleted or replaced")
        reopening = self._identity is not None or not self.create
        if reopening and not self.path.exists():
            raise QueueUnavailable(
                f"{self.path}: database file is gone (deleted while in use); waiting for it"
                " to be restored or created again (`drainpool enqueue` creates it)"
            )
        if not reopening:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._refuse_orphaned_file()
        # mode=rw on a reopen: a file deleted since the check above is not created here.
        uri = f"file:{urllib.parse.quote(str(self.path))}?mode={'rw' if reopening else 'rwc'}"
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=0,  # no SQLite busy handler: run() retries (module docstring)
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            if conn.execute("PRAGMA user_version").fetchone()[0] < self._version:
                self._upgrade(conn)
            (file_id,) = conn.execute("SELECT value FROM meta WHERE key = 'file_id'").fetchone()
            identity = self._file_identity()
            if identity is None:
                raise QueueUnavailable(f"{self.path}: database file vanished while opening")
        except BaseException:
            conn.close()
            raise
        self.file_id = file_id
        self.epoch = f"{file_id}.{identity[1]:x}"
        self._conn, self._identity = conn, identity
        self._journal = self._journal_identity()
        return conn

    def _journal_identity(self) -> tuple[tuple[int, int] | None, ...]:
        return tuple(_identity(journal) for journal in self._journal_paths)

    def _check_journal(self) -> None:
        """Whether the -wal and -shm this connection uses are still the files at their paths.

        No other connection can delete them while this one is open (it holds a
        shared lock on the file), so a change means someone removed them by hand:
        commits made since the last checkpoint are in the deleted WAL, and a new
        connection would start an empty one beside it. The connection is kept (its
        close at the daemon's stop checkpoints that WAL into the file: nothing the
        daemon held is lost) and the queue is unavailable in this process from now
        on; producers are refused meanwhile (`_refuse_orphaned_file`).
        """
        if self._journal_identity() != self._journal:
            _JOURNAL_LOST.add(self.path)  # the queue monitor logs it, once
            raise QueueUnavailable(_lost_message(self.path))

    def _refuse_orphaned_file(self) -> None:
        """Before opening: refuse a file another process has open without its -wal or -shm.

        A process with the file open in WAL mode always has both; their absence
        means they were deleted under it, and a connection opened now would write
        to a new WAL that process never reads (issue 23: producers got ids for jobs
        that were lost). The state also appears for an instant while the last
        connection closes or the first opens: looked at again for up to a second.
        """
        pause, waited = 0.01, 0.0
        while _opened_elsewhere_without_journal(self.path):
            if waited >= ORPHAN_WAIT_SECONDS:
                raise QueueUnavailable(
                    f"{self.path}: another process (the daemon?) has the file open but its"
                    " -wal or -shm file is gone (deleted by hand?); refusing to write where"
                    " that process would never read: restart it"
                )
            time.sleep(pause)
            waited += pause
            pause = min(pause * 2, 0.2)

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Create or upgrade the file in one write transaction, if no one else did meanwhile."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found < self._version:
                self._migrate(conn, found)
                for statement in _META:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={self._version}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    @property
    def opened(self) -> bool:
        """Whether a connection was ever opened (the file existed or was created then)."""
        return self._identity is not None

    def _file_identity(self) -> tuple[int, int] | None:
        return _identity(self.path)

    def _drop(self) -> None:
        """Forget the connection (the next transaction opens a fresh one)."""
        if self._conn is not None:
            # SQLite does not checkpoint into, or delete the WAL of, a file that moved.
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _unavailable(self, exc: sqlite3.Error) -> QueueUnavailable:
        name = getattr(exc, "sqlite_errorname", "") or ""
        hint = next((h for prefix, h in _HINTS.items() if name.startswith(prefix)), "")
        return QueueUnavailable(f"{self.path}: {exc}" + (f" ({hint})" if hint else ""))

    def close(self) -> None:
        with self._lock:
            self._drop()
