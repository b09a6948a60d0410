"""Request models and their parsing: every client mistake becomes a 400 with pydantic's field errors.

The models are strict (a JSON ``"true"`` is not a boolean, ``1`` is not a string)
and forbid unknown fields, so a typo such as ``require_approval`` is refused
rather than ignored. The OpenAPI document is generated from these same models.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from datetime import datetime, timezone
from typing import Annotated, Any, TypeVar

from flask import request
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from ...handlers import MAX_ID_LENGTH
from ...status import WorkflowStatus
from .errors import ApiError, field_errors

M = TypeVar("M", bound=BaseModel)

#: Deepest nesting accepted in ``inputs`` and ``calculated_savings``.
MAX_DEPTH = 64
#: The largest number accepted in ``calculated_savings``, whose values analytics sums in SQL.
MAX_SAVING = 1e12
#: The largest page of ``GET /workflows``.
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
#: A text field may hold anything but NUL, which PostgreSQL cannot store.
NO_NUL = r"^[^\x00]*$"
_ISO_DATETIME = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d")


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _storable(value: str) -> str:
    """A key or string of a JSON object: Unicode text without NUL (a field's NO_NUL pattern)."""
    if "\x00" in _text(value):
        raise ValueError("must not contain NUL characters")
    return value


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    """Check a JSON object iteratively: its depth, and that every string is storable."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"must not be nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            for key, child in item.items():
                _storable(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _storable(item)
    return value


def _savings(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    for key, number in value.items():
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if not math.isfinite(number) or abs(number) > MAX_SAVING:
                raise ValueError(f"{key!r} must be a number from -{MAX_SAVING:g} to {MAX_SAVING:g}")
    return value


def _iso(value: Any) -> Any:
    if isinstance(value, str) and not _ISO_DATETIME.match(value):
        raise ValueError("must be an ISO 8601 date and time with a timezone, such as 2024-05-01T12:00:00Z")
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("must be a representable UTC time") from None


Text = Annotated[str, Field(pattern=NO_NUL), AfterValidator(_text)]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=NO_NUL), AfterValidator(_text)]
#: An identifier that may be empty (an agent), within the engine's length.
Name = Annotated[str, Field(max_length=MAX_ID_LENGTH, pattern=NO_NUL), AfterValidator(_text)]
JSONObject = Annotated[dict[str, Any], AfterValidator(_json_object)]
Savings = Annotated[JSONObject | None, AfterValidator(_savings)]
Status = Annotated[WorkflowStatus, Field(strict=False)]

_BODY = ConfigDict(strict=True, extra="forbid")
_QUERY = ConfigDict(extra="ignore")


class CreateWorkflow(BaseModel):
    """Create a workflow, and enqueue it unless it requires approval or ``enqueue`` is false."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "workflow_type_id": "site",
                    "created_by_agent": "ava",
                    "inputs": {"business": "Acme Bakery"},
                    "calculated_savings": {"weekly_savings": 240.0, "yearly_savings": 12480.0},
                }
            ]
        },
    )

    workflow_type_id: Id
    created_by_agent: Name | None = None
    inputs: JSONObject = Field(default_factory=dict)
    calculated_savings: Savings = None
    assigned_council_id: Id | None = None
    requires_approval: bool = False
    idempotency_key: Id | None = None
    enqueue: bool = True


class UpdateStatus(BaseModel):
    """Move a workflow to ``status``: ``queued`` enqueues or requeues it, ``cancelled`` cancels it."""

    model_config = ConfigDict(
        strict=True, extra="forbid", json_schema_extra={"examples": [{"status": "cancelled"}]}
    )

    status: Status
    detail: Text | None = None


class CastVote(BaseModel):
    """A council member's vote on a workflow awaiting approval; ``change`` replaces an earlier vote."""

    model_config = _BODY

    workflow_id: Id
    voter_id: Id
    approve: bool
    comment: Text | None = None
    change: bool = False


class ListQuery(BaseModel):
    """Filters and paging of ``GET /workflows``."""

    model_config = _QUERY

    status: Status | None = Field(None, description="Only workflows in this status.")
    workflow_type_id: Id | None = Field(None, description="Only workflows of this type.")
    created_by_agent: Id | None = Field(None, description="Only workflows this agent created.")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="The page size.")
    cursor: Annotated[str, Field(max_length=400, pattern=r"^[A-Za-z0-9_-]+$")] | None = Field(
        None, description="The next_cursor of the previous page."
    )


class WorkflowQuery(BaseModel):
    """``?events=1`` adds the workflow's event timeline."""

    model_config = _QUERY

    events: bool = Field(False, description="Add the event timeline (events=1).")


class AnalyticsQuery(BaseModel):
    """``?since=<ISO 8601 with a timezone>`` limits the counts to workflows created since then."""

    model_config = _QUERY

    since: Annotated[AwareDatetime, BeforeValidator(_iso), AfterValidator(_utc)] | None = Field(
        None, description="Count only the workflows created since then (ISO 8601 with a timezone)."
    )


def json_body(model: type[M]) -> M:
    """The request's JSON body, validated by ``model``; ApiError 400 for any client mistake."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    ):
        raise ApiError(
            400,
            "invalid_json",
            f"send a JSON object with Content-Type: application/json (got {request.content_type or 'none'})",
        )
    raw = request.get_data(cache=True)  # its size was checked before the request (extension._before_request)
    try:
        # UTF-8 only (RFC 8259 8.1; a BOM is ignored): json.loads would guess UTF-16 and UTF-32 too.
        data = json.loads(raw.decode("utf-8-sig"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        detail = {"loc": ["body"], "msg": "must be a JSON object", "type": "model_type"}
        raise ApiError(400, "validation_error", "the body must be a JSON object", details=[detail])
    return validate(model, data, "body")


def query(model: type[M]) -> M:
    """The query string, validated by ``model``; unknown names are ignored; a repeated name counts once."""
    return validate(model, request.args.to_dict(), "query")


def validate(model: type[M], data: Any, where: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(
            400, "validation_error", f"invalid request {where}", details=field_errors(exc, where)
        ) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# -- cursors -----------------------------------------------------------------
def encode_cursor(workflow_id: str) -> str:
    """An opaque cursor naming the last workflow of a page (keyset paging on the engine's ``before=``)."""
    return base64.urlsafe_b64encode(workflow_id.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> str:
    """The workflow id in ``cursor``; ApiError 400 if it is not one this API issued."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        text = ""
    if not text or not text.isprintable():
        raise invalid_cursor()
    return text


def invalid_cursor() -> ApiError:
    return ApiError(
        400,
        "invalid_cursor",
        "cursor is not one this API issued; pass the next_cursor of a previous page, or omit it",
        details=[{"loc": ["query", "cursor"], "msg": "unknown cursor", "type": "invalid_cursor"}],
    )
