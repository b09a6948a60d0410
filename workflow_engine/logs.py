"""Log output for the ``workflow-engine`` commands: plain text, or one JSON object a line.

The engine logs with the stdlib (the ``workflow_engine`` logger and its children) and
puts ``workflow_id``, ``workflow_type_id`` and ``attempt`` on every record about one
workflow, as ``extra`` fields. The JSON format keeps them as top-level keys, so a log
pipeline can filter on a workflow without parsing messages.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

from .errors import ConfigurationError

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


#: Keys the formatter writes after the extras: an extra never takes their place either.
_ADDED_LATER = frozenset({"exception", "stack"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, then the extras.

    ``workflow_id``, ``workflow_type_id`` and ``attempt`` appear when the record has them;
    other ``extra`` fields too, when JSON can hold them (else as their ``repr``). An
    exception's traceback is in ``exception``.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                # An extra never replaces a standard key: it goes under a name of its own.
                name = f"extra_{key}" if key in out or key in _ADDED_LATER else key
                out[name] = value if _json_safe(value) else repr(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out)  # ASCII: a stream that cannot encode a character would break the JSON


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, and the workflow a record is about after its message:
    ``… workflow completed [workflow_id=c856… workflow_type_id=website_creation attempt=1]``.
    Without it a text log says "attempt 1 started" and not of which workflow."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # before a traceback, if any
        text = super().formatMessage(record)
        fields = [(key, record.__dict__.get(key)) for key in _WORKFLOW_FIELDS]
        named = " ".join(f"{key}={value}" for key, value in fields if value is not None)
        return f"{text} [{named}]" if named else text


#: The fields that name the workflow a record is about, in the order a text line shows them.
_WORKFLOW_FIELDS = ("workflow_id", "workflow_type_id", "attempt")


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)  # NaN and Infinity are not JSON: strict parsers refuse them
    except (TypeError, ValueError, RecursionError):
        return False
    return True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (click's test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _stderr_handler(log_format: str, what: str, error: type[ValueError]) -> logging.Handler:
    """A stderr handler writing ``log_format`` (text or json); ``error`` names ``what`` if unknown."""
    if log_format not in FORMATS:
        raise error(f"{what} must be one of {', '.join(FORMATS)}, got {log_format!r}")
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure(log_format: str = "text", level: str | int = "INFO") -> logging.Handler:
    """Send log records to stderr in ``log_format`` (``text`` or ``json``), at ``level`` and above.

    Replaces the handler a previous call installed, and leaves every other handler alone.
    """
    handler = _stderr_handler(log_format, "log format", ValueError)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_workflow_engine", False)]:
        root.removeHandler(old)
    handler._workflow_engine = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


def _has_handlers_under(name: str) -> bool:
    """True if the logger ``name`` or one below it (``rq.worker``) has a handler: the app's own."""
    return any(
        isinstance(logger, logging.Logger) and bool(logger.handlers)
        for key, logger in list(logging.Logger.manager.loggerDict.items())
        if key == name or key.startswith(name + ".")
    )


def configure_worker_logging() -> logging.Handler | None:
    """In a stock ``rq worker``, which configures only RQ's own logger, show the engine's records.

    Sends the ``workflow_engine`` logger's records to stderr, in ``WORKFLOW_ENGINE_LOG_FORMAT``
    at ``WORKFLOW_ENGINE_LOG_LEVEL`` (text, INFO by default), and leaves the root logger alone.
    In ``json``, RQ's records go to the same handler (RQ then adds no text handler of its own),
    unless the app gave an ``rq`` logger a handler; in ``text``, RQ keeps its own. Does nothing
    where logging is configured already: a handler on the root logger or on ``workflow_engine``.
    ``workflow_engine.rq_preload`` calls it after the preload, so that an app module that
    configures logging when imported keeps its own.
    """
    import os

    logger = logging.getLogger("workflow_engine")
    if logger.handlers or logging.getLogger().handlers:
        return None
    log_format = os.environ.get("WORKFLOW_ENGINE_LOG_FORMAT") or "text"
    level = os.environ.get("WORKFLOW_ENGINE_LOG_LEVEL") or "INFO"
    handler = _stderr_handler(log_format, "WORKFLOW_ENGINE_LOG_FORMAT", ConfigurationError)
    try:
        logger.setLevel(level.upper())
    except ValueError as exc:
        raise ConfigurationError(f"WORKFLOW_ENGINE_LOG_LEVEL: {exc}") from None
    logger.addHandler(handler)  # records still propagate: a root handler the app adds later gets them too
    rq_logger = logging.getLogger("rq")
    if log_format == "json" and not _has_handlers_under("rq"):
        # RQ's own records too, so that the worker's output is one JSON object a line. RQ gives
        # `rq.worker` a text handler of its own only when no logger above it has one; like RQ's,
        # this one keeps them from reaching a root handler as well.
        rq_logger.addHandler(handler)
        rq_logger.propagate = False
    return handler
