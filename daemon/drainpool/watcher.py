"""Watches the config file's directory and tells the supervisor when it changed.

Editors replace files (vim and `sed -i` rename a new file over the old one),
Kubernetes swaps a `..data` symlink in the directory, and some tools truncate
and rewrite in place. Watching the directory, not the file, sees all of them;
a name filter keeps unrelated files out. The watcher never reads or applies
the config: it only hands a notice to the supervisor's inbox, where the
debounce and the validation happen.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from drainpool.inotify import DirectoryWatch

if TYPE_CHECKING:
    import watchfiles

log = logging.getLogger("drainpool.watcher")

STEP_MS = 20  # watchfiles only: quiet time that ends a burst (the supervisor debounces on top)


class ConfigWatcher:
    """A daemon thread blocked on inotify over the config's directory (and its link target's).

    Issue 21: it wakes only when a name changes in those directories
    (drainpool.inotify). Where inotify is missing, watchfiles does the work.
    """

    def __init__(self, path: Path, on_change: Callable[[], None]) -> None:
        self.path = path
        self._on_change = on_change
        self._stop = threading.Event()
        self._names = {path.name}
        self._dirs = {path.absolute().parent}
        resolved = path.resolve()
        if not resolved.is_relative_to(path.absolute().parent.resolve()):
            # A symlink to a file elsewhere: watch the target's directory too. (A ConfigMap's
            # target sits inside the directory, in a ..timestamp folder replaced at each
            # update; the `..data` rename in the watched directory shows those changes.)
            self._names.add(resolved.name)
            self._dirs.add(resolved.parent)
        self._inotify: DirectoryWatch | None = None
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)

    def start(self) -> None:
        try:
            self._inotify = DirectoryWatch(sorted(self._dirs))
        except OSError as exc:
            log.debug("inotify not used (%s): watching with watchfiles", exc)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._inotify is not None:
            self._inotify.stop()

    def _relevant_name(self, name: str) -> bool:
        return name in self._names or name.startswith("..")

    def _relevant(self, _change: watchfiles.Change, raw: str) -> bool:
        return self._relevant_name(Path(raw).name)

    def _run(self) -> None:
        try:
            if self._inotify is not None:
                self._run_inotify(self._inotify)
            else:
                self._run_watchfiles()
        except Exception as exc:  # e.g. the directory vanished; SIGHUP still works
            log.error("config watcher stopped: %s; reload by SIGHUP still works", exc)

    def _run_inotify(self, watch: DirectoryWatch) -> None:
        try:
            while (names := watch.changes()) is not None:
                if any(self._relevant_name(name) for name in names):
                    self._on_change()  # the supervisor debounces a burst of these
        finally:
            watch.release()

    def _run_watchfiles(self) -> None:
        import watchfiles  # the fallback only: its anyio and multiprocessing cost memory

        for _changes in watchfiles.watch(
            *sorted(self._dirs),
            watch_filter=self._relevant,
            debounce=1000,
            step=STEP_MS,
            stop_event=self._stop,
            rust_timeout=1000,
            recursive=False,
            raise_interrupt=False,
        ):
            self._on_change()
