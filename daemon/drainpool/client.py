"""The producer's API: enqueue a task by its function, and hold a typed handle to the job.

    from drainpool import Client

    client = Client.from_config("/etc/drainpool/drainpool.toml")
    handle = client.enqueue(export, ExportRequest(path="/data/a.csv"))
    report: ExportResult = handle.result(timeout=60)

The function is only a name here (its configured name is looked up in the
config's [tasks]) and a type: the payload is checked against its annotation
before anything is queued, and `.result()` gives back its return type. The
job itself runs wherever the daemon runs; nothing of the function travels.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from drainpool.context import TaskContext
from drainpool.payloads import PayloadInvalid, PayloadSpec, dump_payload, spec_for_ref, spec_of
from drainpool.queue.base import JobInfo, JobState, Queue, QueueError
from drainpool.settings import CommandTask, FunctionTask, python_ref

R = TypeVar("R")
P = TypeVar("P")


class JobHandle(Generic[R]):
    """One enqueued job: its id, and its record and result read from the queue."""

    def __init__(self, queue: Queue, job_id: str, result_type: Any = None) -> None:
        self.id = job_id
        self._queue = queue
        self._result_type = result_type

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def info(self) -> JobInfo:
        """The job's record now; JobNotFound once it expired."""
        from drainpool.queue.base import JobNotFound

        info = self._queue.job(self.id)
        if info is None:
            raise JobNotFound(self.id)
        return info

    def status(self) -> JobState:
        return self.info().state

    def wait(self, timeout: float | None = None) -> JobInfo:
        """The record once the job has ended (completed, dead or cancelled); TimeoutError."""
        return self._queue.wait(self.id, timeout)

    def result(self, timeout: float | None = None) -> R:
        """The task's result once it completed, as its return type; JobFailed, JobCancelled."""
        value = self._queue.result(self.id, timeout)
        if self._result_type is not None and value is not None:
            return self._result_type.model_validate(value)  # type: ignore[no-any-return]
        return value  # type: ignore[no-any-return]

    def cancel(self) -> Any:
        """Stop the job: never run if waiting, its event set if running (queue.cancel)."""
        cancel = getattr(self._queue, "cancel", None)
        if cancel is None:
            raise QueueError(f"this queue ({type(self._queue).__name__}) cannot cancel a job")
        return cancel(self.id)


class Client:
    """A producer bound to one queue and (from a config) its task names."""

    def __init__(
        self, queue: Queue, tasks: Mapping[str, str | CommandTask | FunctionTask] | None = None
    ) -> None:
        self.queue = queue
        # name -> "module:function" of each Python task; a command task maps to None.
        self._tasks = {name: python_ref(entry) for name, entry in (tasks or {}).items()}
        self._specs: dict[str, PayloadSpec | None] = {}

    @classmethod
    def from_config(cls, path: str | Path | None = None) -> Client:
        """The queue and tasks of a config file (None: $DRAINPOOL_CONFIG, else /etc/...)."""
        from drainpool import runtime, settings

        loaded, _ = runtime.load(
            settings.config_path(None if path is None else str(path)), tasks=False
        )
        return cls(runtime.open_queue(loaded), loaded.settings.tasks)

    @classmethod
    def from_url(cls, url: str, tasks: Mapping[str, str] | None = None) -> Client:
        """A queue by URL; `tasks` (name -> "module:function") lets it find task functions."""
        from drainpool.queue import from_url

        return cls(from_url(url), tasks)

    def close(self) -> None:
        self.queue.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @overload
    def enqueue(  # type: ignore[overload-overlap]
        self,
        task: Callable[[TaskContext, P], Coroutine[Any, Any, R]],
        payload: P | Mapping[str, Any],
        *,
        delay: float = 0.0,
        key: str | None = None,
        timeout: float | None = None,
    ) -> JobHandle[R]: ...

    @overload
    def enqueue(
        self,
        task: Callable[[TaskContext, P], R],
        payload: P | Mapping[str, Any],
        *,
        delay: float = 0.0,
        key: str | None = None,
        timeout: float | None = None,
    ) -> JobHandle[R]: ...

    @overload
    def enqueue(
        self,
        task: str,
        payload: Any = None,
        *,
        delay: float = 0.0,
        key: str | None = None,
        timeout: float | None = None,
    ) -> JobHandle[Any]: ...

    def enqueue(
        self,
        task: Callable[..., Any] | str,
        payload: Any = None,
        *,
        delay: float = 0.0,
        key: str | None = None,
        timeout: float | None = None,
    ) -> JobHandle[Any]:
        """Check the payload when the task can be imported here, then queue it.

        PayloadInvalid (one line per error, each naming its field) and nothing
        queued when it cannot fit the task's payload type.
        """
        if isinstance(task, str):
            name, spec = task, self._spec_of_name(task)
        else:
            name, spec = self._name_of(task), spec_of(task)
        data = {} if payload is None else dump_payload(payload)  # as `drainpool enqueue`
        if spec is not None:
            errors = spec.errors(data)
            if errors:
                raise PayloadInvalid(name, errors)
        meta: dict[str, str] = {}
        from drainpool import tracing

        tracing.inject(meta)
        options: dict[str, Any] = {"delay": delay, "key": key}
        if meta:
            options["meta"] = meta
        if timeout is not None:
            if "timeout" not in inspect.signature(self.queue.enqueue).parameters:
                raise QueueError(f"{type(self.queue).__name__}.enqueue takes no per-job timeout")
            options["timeout"] = timeout
        job_id = self.queue.enqueue(name, data, **options)
        return JobHandle(self.queue, job_id, None if spec is None else spec.result_type)

    def _spec_of_name(self, name: str) -> PayloadSpec | None:
        if name not in self._specs:
            ref = self._tasks.get(name)
            self._specs[name] = spec_for_ref(ref) if ref is not None else None
        return self._specs[name]

    def _name_of(self, function: Callable[..., Any]) -> str:
        """The configured name of a task function: the [tasks] entry naming its module:qualname."""
        ref = f"{function.__module__}:{function.__qualname__}"
        names = [name for name, r in self._tasks.items() if r == ref]
        if len(names) == 1:
            return names[0]
        if names:
            raise QueueError(f"{ref} is configured as {sorted(names)}: pass the name to use")
        raise QueueError(f"{ref} is not a configured task (the config's [tasks] names no {ref!r})")
