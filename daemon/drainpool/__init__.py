"""drainpool: a worker-pool daemon with cooperative interruption and a bounded drain.

Tasks import what they need from here: `from drainpool import TaskContext, Interrupted`;
producers `from drainpool import Client`.
"""

from typing import TYPE_CHECKING, Any

from drainpool.context import Interrupted, TaskContext

if TYPE_CHECKING:
    from drainpool.client import Client, JobHandle

__version__ = "0.1.0"
__all__ = ["Client", "Interrupted", "JobHandle", "TaskContext", "__version__"]


def __getattr__(name: str) -> Any:
    """Client and JobHandle load on first use: a task module importing TaskContext pays nothing."""
    if name in ("Client", "JobHandle"):
        from drainpool import client

        return getattr(client, name)
    raise AttributeError(f"module 'drainpool' has no attribute {name!r}")
