"""Resolving a "module:attr.attr" reference (tasks, hooks, exporters): one wording everywhere."""

from __future__ import annotations

import importlib
from typing import Any


def import_ref(ref: str) -> Any:
    """The callable a "module:attr.attr" names; ValueError says why it cannot be had."""
    module_name, _, attr_path = ref.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # a module may raise anything at import
        raise ValueError(f"cannot import {ref!r}: {type(exc).__name__}: {exc}") from None
    for attr in attr_path.split("."):
        target = getattr(target, attr, None)
        if target is None:
            raise ValueError(f"cannot import {ref!r}: {module_name} has no {attr_path!r}")
    if not callable(target):
        raise ValueError(f"{ref!r} is not callable")
    return target
