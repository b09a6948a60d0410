"""Handlers: the function that runs a workflow type, found by import path.

An RQ job carries only a workflow id and its handler's import path
(``package.module:function``), so a stock ``rq worker`` can run it after
importing the app's module, and a web process that registers handlers by
path never imports handler code.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rq.timeouts import BaseTimeoutException

from .config import CONTROL_CHARACTERS, MAX_SECONDS
from .errors import ConfigurationError, InvalidInput, UnknownWorkflowType
from .models import Workflow

HandlerFunc = Callable[[Workflow], Any]


@dataclass(frozen=True)
class HandlerSpec:
    """A registered handler and its options."""

    workflow_type_id: str
    path: str
    func: HandlerFunc | None = None
    max_retries: int = 3
    retry_backoff: float = 1.0
    timeout: float | None = None

    def __post_init__(self) -> None:
        validate_type_id(self.workflow_type_id)
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or not 0 <= self.max_retries <= MAX_RETRIES
        ):
            raise InvalidInput(
                f"max_retries must be an integer from 0 to {MAX_RETRIES:,}, got {self.max_retries!r}"
            )
        if not _is_number(self.retry_backoff) or not 0 <= self.retry_backoff <= MAX_SECONDS:
            raise InvalidInput(
                f"retry_backoff must be a number of seconds from 0 to {MAX_SECONDS:.0f}, "
                f"got {self.retry_backoff!r}"
            )
        if self.timeout is not None and (not _is_number(self.timeout) or not 0 < self.timeout <= MAX_SECONDS):
            raise InvalidInput(
                f"timeout must be a number of seconds > 0 and at most {MAX_SECONDS:.0f}, or None, "
                f"got {self.timeout!r}"
            )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: The most retries a handler may ask for: far more than any backoff needs, and far from overflow.
MAX_RETRIES = 1_000_000

#: The longest identifier the engine stores (a type, an agent, a key, a council, a voter). They are
#: indexed, and PostgreSQL refuses an index entry over about 2.7 kB.
MAX_ID_LENGTH = 255


def check_id(name: str, value: str) -> str:
    """Refuse an identifier that a store could not index or keep: NUL characters, or too long."""
    if "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL characters")
    _check_unicode(name, value)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"{name} must be at most {MAX_ID_LENGTH} characters, got {len(value)}")
    return value


def check_new_id(name: str, value: str) -> str:
    """:func:`check_id`, and no control characters or whitespace around it: for a name being
    written, not looked up.

    Lookups and filters use :func:`check_id` alone, so that a name stored before this check
    existed is still found.
    """
    check_id(name, value)
    found = CONTROL_CHARACTERS.search(value)
    if found is not None:
        raise InvalidInput(
            f"{name} must not contain control characters, got {found.group()!r} at {found.start()}"
        )
    if value != value.strip():  # ' ok ' would be a second type, council or member beside 'ok'
        raise InvalidInput(f"{name} must not have whitespace around it, got {value!r}")
    return value


def storable_id(value: object) -> bool:
    """True if ``value`` could be a stored identifier; a lookup by any other value finds nothing."""
    if not isinstance(value, str):
        return False
    try:
        check_id("id", value)
    except InvalidInput:
        return False
    return True


def check_text(name: str, value: str | None) -> str | None:
    """Refuse free text (a reason, a detail, a comment) that is not a string or not valid Unicode."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string or None, got {type(value).__name__}")
    _check_unicode(name, value)
    return value


def _check_unicode(name: str, value: str) -> None:
    """Refuse text that is not Unicode (a lone surrogate): no store could encode it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{name} must be valid Unicode text: {exc.reason} at {exc.start}") from None


def validate_type_id(type_id: object) -> str:
    if not isinstance(type_id, str):
        raise InvalidInput(f"workflow_type_id must be a string, got {type(type_id).__name__}")
    if not type_id.strip():
        raise InvalidInput("workflow_type_id must not be empty")
    # A lookup's check: a spec is also built from a stored workflow's policy (enqueueing or
    # requeueing it), whose type id an earlier release may have stored with a control character.
    # register_handler and create_workflow refuse those for new names (check_new_id).
    return check_id("workflow_type_id", type_id)


def path_of(func: HandlerFunc) -> str:
    """The import path of a module-level function: ``package.module:qualname``."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise InvalidInput(
            f"handler {func!r} is not a module-level function, so a worker cannot import it; "
            "define it at the top level of a module"
        )
    # A method bound to an instance has the path of its class's plain function: a worker would
    # import that, and call it without its self. (A classmethod's class is importable: fine.)
    if inspect.ismethod(func) and not inspect.isclass(func.__self__):
        raise InvalidInput(
            f"handler {func!r} is a method bound to an instance, which a worker cannot import "
            f"({module}:{qualname} is the plain function); register a module-level function, "
            "which may call the method"
        )
    return f"{module}:{qualname}"


def import_handler(path: str, workflow_type_id: str) -> HandlerFunc:
    """Import ``package.module:function`` (or ``package.module.function``)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise UnknownWorkflowType(
            workflow_type_id, f"malformed handler path {path!r}; use 'package.module:function'"
        )
    obj: Any = sys.modules.get(module_name)
    try:
        if obj is None or getattr(getattr(obj, "__spec__", None), "_initializing", False):
            obj = importlib.import_module(module_name)  # not imported yet, or halfway (another thread)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            # The module exists, but imports one that does not: a missing dependency of the app.
            raise _import_failed(path, workflow_type_id, exc) from exc
        raise UnknownWorkflowType(
            workflow_type_id,
            message=f"cannot import handler {path!r} for workflow type {workflow_type_id!r}: "
            f"no module named {exc.name!r}; start the worker where it can import it "
            "(rq worker --path <app dir>), or register the type with a path it can import: "
            + _register_advice(workflow_type_id),
        ) from exc
    except BaseTimeoutException:  # RQ's job timeout, during a slow import: the attempt's, retryable
        raise
    except Exception as exc:
        raise _import_failed(path, workflow_type_id, exc) from exc
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise UnknownWorkflowType(
            workflow_type_id,
            message=f"cannot import handler {path!r} for workflow type {workflow_type_id!r}: module "
            f"{module_name!r} has no {attr!r}; is the worker running the same version of the app "
            "(rq worker --path <app dir>)? Or register the type with the right path: "
            + _register_advice(workflow_type_id),
        ) from exc
    except Exception as exc:  # a module's own __getattr__ (lazy loading) that failed
        raise _import_failed(path, workflow_type_id, exc) from exc
    if not callable(obj):
        raise UnknownWorkflowType(
            workflow_type_id,
            message=f"cannot use handler {path!r} for workflow type {workflow_type_id!r}: it is a "
            f"{type(obj).__name__}, not a function; register the type with a function's path: "
            + _register_advice(workflow_type_id),
        )
    if is_async_handler(obj):
        raise UnknownWorkflowType(workflow_type_id, message=async_handler_refused(path, workflow_type_id))
    handler: HandlerFunc = obj
    return handler


def _register_advice(workflow_type_id: str) -> str:
    """How to register ``workflow_type_id``'s handler, for the messages of a handler that cannot be used."""
    return f"engine.register_handler({workflow_type_id!r}, 'package.module:function')"


def is_async_handler(func: Any) -> bool:
    """An ``async def``: calling it only makes a coroutine, which nothing would ever run."""
    return inspect.iscoroutinefunction(func)


def async_handler_refused(path: str, workflow_type_id: str) -> str:
    return (
        f"handler {path!r} for workflow type {workflow_type_id!r} is an async function, and handlers "
        "are called, not awaited: its body would never run. Register a plain function that runs "
        "it: def handler(workflow): return asyncio.run(the_async_handler(workflow))"
    )


def _import_failed(path: str, workflow_type_id: str, exc: BaseException) -> UnknownWorkflowType:
    """The handler's module exists but raised while it was imported: a bug or a missing setting in it."""
    return UnknownWorkflowType(
        workflow_type_id,
        message=f"cannot import handler {path!r} for workflow type {workflow_type_id!r}: importing "
        f"it raised {describe(exc)} (the traceback is recorded on the workflow)",
    )


#: The most characters of an exception's text that an attempt records as its error (and in its
#: event); and of its traceback, whose end is kept. A handler's ``ValueError(20 MB of text)``
#: would otherwise be stored twice an attempt, and read back with every listing.
MAX_ERROR_CHARS = 4_000
MAX_TRACEBACK_CHARS = 64_000


def describe(exc: BaseException) -> str:
    """``Type: message`` (``Type`` alone for no message), even for an exception whose ``__str__``
    raises; past :data:`MAX_ERROR_CHARS`, cut, saying how much."""
    try:
        text = str(exc)
    except Exception:
        text = f"<{type(exc).__name__} whose str() raised>"
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if len(described) > MAX_ERROR_CHARS:
        cut = len(described) - MAX_ERROR_CHARS
        described = f"{described[:MAX_ERROR_CHARS]}… ({cut} characters cut)"
    return described


def traceback_text() -> str:
    """The exception being handled's traceback, its end kept past :data:`MAX_TRACEBACK_CHARS`."""
    text = traceback.format_exc()
    if len(text) > MAX_TRACEBACK_CHARS:
        cut = len(text) - MAX_TRACEBACK_CHARS
        text = f"… ({cut} characters cut)\n{text[-MAX_TRACEBACK_CHARS:]}"
    return text


def import_advice(module_name: str, exc: BaseException) -> str:
    """What to do about ``exc``, raised importing ``module_name``: start the worker where the app's
    top package can be imported (``--path``) only if that package is what was not found; a module
    missing inside it is a misspelled name, and any other error the module's own."""
    if isinstance(exc, ModuleNotFoundError) and exc.name is not None:
        if exc.name == module_name.split(".")[0]:
            return "; start the worker where it can import that module (--path <app dir>)"
        if (module_name + ".").startswith(exc.name + "."):
            parent, _, child = exc.name.rpartition(".")
            found = sys.modules.get(parent)
            if found is not None and getattr(found, "__file__", None) is None:
                # A bare directory of that name came first on the path (a checkout named like its
                # package, the worker started from its parent): not the app's package at all.
                where = ", ".join(getattr(found, "__path__", []))
                return (
                    f"; {parent!r} was found as a bare directory ({where}), not the app's package: start "
                    "the worker where it can import that module (--path <app dir>)"
                )
            return f"; package {parent!r} has no module {child!r}"
    return f" (importing {module_name!r} raised it)"


def preload_handlers(names: Iterable[str]) -> list[str]:
    """Import each module (``package.module``) or handler (``package.module:function``) now.

    A forking worker calls this before it forks, so that its work-horses find the app's
    handler modules, and everything they import, already loaded. A name that cannot be
    imported raises ConfigurationError at once, instead of failing each workflow later.
    Returns the module names imported.
    """
    imported = []
    for name in names:
        module_name, sep, attr = name.strip().partition(":")
        if not module_name or (sep and not attr):
            raise ConfigurationError(
                f"cannot preload {name!r}: use 'package.module' or 'package.module:function'"
            )
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot preload {name!r}: {describe(exc)}{import_advice(module_name, exc)}"
            ) from exc
        try:
            for part in attr.split(".") if attr else ():
                obj = getattr(obj, part)
        except Exception as exc:
            raise ConfigurationError(f"cannot preload {name!r}: {describe(exc)}") from exc
        if attr and not callable(obj):
            raise ConfigurationError(f"cannot preload {name!r}: it is not callable")
        imported.append(module_name)
    return imported
