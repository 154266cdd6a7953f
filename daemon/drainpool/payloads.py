"""Typed payloads and results: a task's annotations, resolved once, checked at both ends.

A task annotated `(ctx, payload: SomeModel) -> ResultModel` (a pydantic model,
or a TypedDict for the payload) gets its payload validated before it runs and
its result dumped through the model after. Everything is decided once, when
the registry is built: an untyped task keeps its own handler, with no wrapper
and no per-job cost. Producers (`drainpool enqueue`, `Client`) use the same
`PayloadSpec` to refuse a payload that can never fit, before it is queued.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typing_extensions
from pydantic import BaseModel, TypeAdapter, ValidationError

from drainpool.context import JobFailed


class PayloadInvalid(ValueError):
    """A payload that cannot fit its task's type: nothing was queued."""

    def __init__(self, task: str, errors: list[str]) -> None:
        super().__init__(f"payload of {task} does not fit: " + "; ".join(errors))
        self.task = task
        self.errors = errors


@dataclass(frozen=True, slots=True)
class PayloadSpec:
    """What a task's annotations ask of its payload and promise of its result."""

    payload_type: Any = None  # a BaseModel subclass or a TypedDict; None: untyped
    result_type: type[BaseModel] | None = None
    adapter: TypeAdapter[Any] | None = None

    @property
    def typed(self) -> bool:
        return self.payload_type is not None or self.result_type is not None

    def payload_name(self) -> str:
        return getattr(self.payload_type, "__name__", str(self.payload_type))

    def validate(self, payload: Any) -> Any:
        """The payload as the task's type; ValidationError when it cannot fit."""
        if self.adapter is None:
            return payload
        return self.adapter.validate_python(payload)

    def errors(self, payload: Any) -> list[str]:
        """One line per problem, each naming its field; empty when the payload fits."""
        try:
            self.validate(payload)
        except ValidationError as exc:
            return error_lines(exc)
        return []


UNTYPED = PayloadSpec()


def error_lines(exc: ValidationError) -> list[str]:
    """`payload.field.sub: message` for each error pydantic found."""
    lines = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in ("payload", *error["loc"]))
        lines.append(f"{where}: {error['msg']}")
    return lines


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def spec_of(function: Callable[..., Any]) -> PayloadSpec:
    """Read a task function's annotations; raise ValueError if they name what cannot be found.

    Only a pydantic model or a TypedDict on the payload (the second
    parameter), and a model on the return, make a task typed; any other
    annotation (dict, Any, none) leaves it as it is. Only those two are
    resolved: a `ctx: TaskContext` imported under TYPE_CHECKING stays fine.
    """
    try:
        params = list(inspect.signature(function).parameters.values())
        annotations = inspect.get_annotations(inspect.unwrap(function))
    except (TypeError, ValueError):  # a callable object without a signature: untyped
        return PayloadSpec()
    payload_type = _resolved(
        function, annotations.get(params[1].name) if len(params) >= 2 else None
    )
    if not (_is_model(payload_type) or typing_extensions.is_typeddict(payload_type)):
        payload_type = None
    result_type = _resolved(function, annotations.get("return"))
    if not _is_model(result_type):
        result_type = None
    adapter = None
    if payload_type is not None:
        try:
            adapter = TypeAdapter(payload_type)
        except Exception as exc:  # pydantic cannot build a validator for it
            raise ValueError(f"payload type {payload_type!r}: {exc}") from None
    return PayloadSpec(payload_type, result_type, adapter)


def _resolved(function: Callable[..., Any], annotation: Any) -> Any:
    """An annotation as an object; a string one (PEP 563) evaluated in the function's module."""
    if not isinstance(annotation, str):
        return annotation
    namespace = getattr(inspect.unwrap(function), "__globals__", {})
    try:
        return eval(annotation, namespace)  # what typing.get_type_hints does, for one name
    except Exception as exc:  # NameError for a name the module never imported, and others
        raise ValueError(f"cannot resolve its annotations: {type(exc).__name__}: {exc}") from None


def typed_handler(handler: Callable[..., Any], spec: PayloadSpec) -> Callable[..., Any]:
    """`handler` validating its payload first and dumping its result after (spec.typed only).

    A payload that fails its type is a failure that no retry can mend:
    `JobFailed(retry=False)`, so the job is dead at once with the errors.
    """

    # Looked up once: this wrapper runs per job, and each call layer costs on a busy pool.
    # The adapter's own validator: TypeAdapter.validate_python adds a third (0.7 of 2 us)
    # to check options this call never passes.
    validate = None if spec.adapter is None else spec.adapter.validator.validate_python

    @functools.wraps(handler)
    def run(ctx: Any, payload: Any) -> Any:
        if validate is not None:
            try:
                payload = validate(payload)
            except ValidationError as exc:
                lines = error_lines(exc)
                raise JobFailed(
                    f"payload does not fit {spec.payload_name()}: " + "; ".join(lines), retry=False
                ) from None
        result = handler(ctx, payload)
        return result.model_dump(mode="json") if isinstance(result, BaseModel) else result

    return run


def dump_result(result: Any) -> Any:
    """A model result as JSON-ready data; anything else as it is."""
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return result


def dump_payload(payload: Any) -> Any:
    """What a producer stores for `payload`: a model becomes its JSON-ready dict."""
    return dump_result(payload)


def spec_for_ref(ref: str) -> PayloadSpec | None:
    """The spec of a "module:function" task, or None when a producer cannot import it.

    A producer is often not the daemon's machine: it may lack the task's
    module, and then it enqueues unchecked and the daemon checks.
    """
    from drainpool.refs import import_ref

    try:
        return spec_of(import_ref(ref))
    except ValueError:
        return None
