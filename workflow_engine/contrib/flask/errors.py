"""HTTP errors: one JSON shape, ``{"error": code, "message": text, "details": [...]}``.

:func:`from_exception` maps the engine's exception tree (and werkzeug's HTTP
errors) to a status code and an error code, once, for the API and the page alike.
"""

from __future__ import annotations

import re
from typing import Any

from flask import current_app, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from ...errors import (
    DuplicateVote,
    InvalidInput,
    InvalidTransition,
    InvalidVote,
    NotACouncilMember,
    QueueUnavailable,
    StoreUnavailable,
    UnknownWorkflowType,
    WorkflowEngineError,
    WorkflowNotFound,
)


class ApiError(Exception):
    """An error response: its status, its code, a message, field details, and extra body fields."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {**self.extra, "error": self.code, "message": self.message, "details": self.details}


#: Engine exceptions by status and error code; the first match (most specific first) wins.
_ENGINE_ERRORS: list[tuple[type[WorkflowEngineError], int, str]] = [
    (WorkflowNotFound, 404, "not_found"),
    (InvalidTransition, 409, "invalid_transition"),
    (DuplicateVote, 409, "duplicate_vote"),
    (NotACouncilMember, 403, "not_a_council_member"),
    (InvalidVote, 409, "invalid_vote"),
    (UnknownWorkflowType, 409, "unknown_workflow_type"),
    (InvalidInput, 400, "invalid_input"),
    (QueueUnavailable, 503, "queue_unavailable"),
    (StoreUnavailable, 503, "store_unavailable"),
]


#: What a caller is told when a server is down. The exception's own text names the database's
#: host, port, role and name, or its file's path, or Redis's address: that goes to the app's log.
_UNAVAILABLE_MESSAGES: dict[str, str] = {
    "store_unavailable": "the database is unavailable, and nothing was done: try again later "
    "(the error is in the server's log)",
    "queue_unavailable": "the queue (Redis) is unavailable (the error is in the server's log); a "
    "workflow this call queued stays queued, and runs once Redis is back",
}


def from_exception(exc: BaseException) -> ApiError | None:
    """The error response for ``exc``, or None when it is not one the API answers for (a bug: 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, WorkflowEngineError):
        for kind, status, code in _ENGINE_ERRORS:
            if isinstance(exc, kind):
                if code in _UNAVAILABLE_MESSAGES:
                    current_app.logger.warning(
                        "workflow_engine: %s on %s %s: %s", code, request.method, request.path, exc
                    )
                    return ApiError(status, code, _UNAVAILABLE_MESSAGES[code])
                return ApiError(status, code, str(exc))
        return None
    if isinstance(exc, HTTPException) and exc.code is not None:
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return ApiError(exc.code, http_code(exc), exc.description or exc.name, headers=headers)
    return None


def http_code(exc: HTTPException) -> str:
    """``"Request Entity Too Large"`` -> ``"request_entity_too_large"``."""
    return re.sub(r"[^a-z0-9]+", "_", exc.name.lower()).strip("_")


def field_errors(exc: ValidationError, where: str) -> list[dict[str, Any]]:
    """pydantic's errors as JSON-safe details: ``{"loc": ["body", "inputs"], "msg": ..., "type": ...}``.

    The offending input is left out: it may be large, or not JSON-serialisable.
    """
    return [
        {
            "loc": [where, *(p if isinstance(p, int) else str(p) for p in e["loc"])],
            "msg": e["msg"],
            "type": e["type"],
        }
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def json_error(exc: Exception) -> ResponseReturnValue:
    """The API's error handler: any exception as the JSON error shape (500 for a bug, logged)."""
    error = from_exception(exc)
    if error is None:
        current_app.logger.exception(
            "workflow_engine API: unexpected error on %s %s", request.method, request.path
        )
        error = ApiError(500, "internal_error", "the server failed; the error is in its log")
    response = jsonify(error.body())
    response.status_code = error.status
    response.headers.update(error.headers)
    return response
