"""drainpool: a worker-pool daemon with cooperative interruption and a bounded drain.

Tasks import what they need from here: `from drainpool import TaskContext, Interrupted`.
"""

from drainpool.context import Interrupted, TaskContext

__version__ = "0.1.0"
__all__ = ["Interrupted", "TaskContext", "__version__"]
