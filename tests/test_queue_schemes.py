"""One registry of queue URL schemes; the protocol and the config never import a backend."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from drainpool.queue import schemes
from drainpool.settings import QueueSettings
from pydantic import ValidationError

BACKEND_MODULES = {backend.module for backend in schemes.BACKENDS}

LOADED_AFTER = """
import json, sys
import drainpool.queue, drainpool.settings
drainpool.settings.QueueSettings(url="sqlite:///q.db")
first = sorted(m for m in sys.modules if m.startswith("drainpool.queue."))
queue = drainpool.queue.Queue.from_url("sqlite:///q.db")
queue.close()
then = sorted(m for m in sys.modules if m.startswith("drainpool.queue."))
print(json.dumps([first, then]))
"""


def test_a_backend_is_imported_only_when_its_url_is_opened(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", LOADED_AFTER],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    first, then = json.loads(run.stdout)
    assert not BACKEND_MODULES & set(first), first
    assert "drainpool.queue.sqlite" in then
    assert "drainpool.queue.redis" not in then  # producers on SQLite need no redis extra


def test_the_protocol_module_imports_neither_its_package_nor_a_backend() -> None:
    tree = ast.parse(Path(schemes.__file__).with_name("base.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    drainpool_modules = {name for name in imported if name.startswith("drainpool")}
    assert drainpool_modules <= {"drainpool.queue.schemes"}, drainpool_modules


@pytest.mark.parametrize("url", ["ftp://host/q", "sqlite:q.db", "mysql://host/db"])
def test_the_config_refuses_an_unknown_scheme_naming_every_known_prefix(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        QueueSettings(url=url)
    message = str(refused.value)
    assert "unsupported queue URL" in message
    assert all(prefix in message for prefix in schemes.known_prefixes())
