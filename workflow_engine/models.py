"""Immutable models: a workflow, one event of its audit trail, a reconcile report.

Models are frozen pydantic models. Stores build them with ``from_row()``;
the engine changes them only through the store, never in place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_core import from_json

from .errors import InvalidInput
from .status import WorkflowStatus

JSONValue = Any
_FROZEN = ConfigDict(frozen=True, extra="forbid")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


#: A JSON escape of NUL: ``\\u0000`` preceded by an even number of backslashes.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
#: How deep inputs, savings and results may nest. Below SQLite's own JSON limit (1,000 levels
#: from 3.45 on, 2,000 before), so that every store can query what it stored, and below Python's
#: default recursion limit, so that every reader can decode it.
MAX_JSON_DEPTH = 512
#: A JSON string (skipped whole: brackets inside it do not nest) or a bracket.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _nested_deeper_than(text: str, limit: int) -> bool:
    """Whether the JSON ``text`` nests arrays and objects more than ``limit`` levels deep."""
    if text.count("[") + text.count("{") <= limit:  # the common case, at C speed
        return False
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token == "[" or token == "{":
            depth += 1
            if depth > limit:
                return True
        elif token == "]" or token == "}":
            depth -= 1
    return False


#: ``json.dumps(value, allow_nan=False, separators=(",", ":"))``, built once: ``json.dumps`` with
#: any option builds a new encoder each call, which a create pays three times.
_STRICT_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
#: ``json.dumps(value, separators=(",", ":"))``, built once: how the stores write JSON they were
#: handed already checked (by :func:`to_json`).
compact_json = json.JSONEncoder(separators=(",", ":")).encode


def load_json(text: str | bytes) -> Any:
    """Decode JSON the stores wrote, to what ``json.loads`` gives, about five times faster.

    pydantic's own parser (``pydantic_core.from_json``) gives the same values for what
    :func:`to_json` writes: exact floats, big integers, surrogate pairs, the last of two equal
    keys. It refuses to nest deeper than about 200 levels, where :data:`MAX_JSON_DEPTH` allows
    512, and a Python string holding a lone surrogate (which no store returns); ``json.loads``
    then decodes the text instead."""
    try:
        return from_json(text)
    except (ValueError, TypeError):
        return json.loads(text)


def log_extra(wf: Workflow) -> dict[str, Any]:
    """The fields every log record about a workflow carries."""
    return {"workflow_id": wf.id, "workflow_type_id": wf.workflow_type_id, "attempt": wf.attempts}


def _json_name(key: Any) -> str:
    """The name JSON gives a dict key (the encoder has accepted it: str, int, float, bool or None)."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    return float.__repr__(key) if isinstance(key, float) else int.__repr__(key)


def _colliding_key(value: Any) -> str | None:
    """A name that two keys of one object in ``value`` would both have in JSON ({1: …, "1": …}),
    which a JSON round trip keeps only one of; None if there is none. Only objects with a key that
    is not a string are looked at: string keys of one dict are distinct already."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(type(key) is str for key in item):
                seen: set[str] = set()
                for key in item:
                    name = _json_name(key)
                    if name in seen:
                        return name
                    seen.add(name)
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


def to_json(value: Any, what: str) -> str:
    """Serialise ``value`` as strict JSON, or raise InvalidInput naming ``what``."""
    try:
        text = _STRICT_JSON.encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON-serialisable: {exc}") from exc
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply to serialise as JSON") from None
    if _nested_deeper_than(text, MAX_JSON_DEPTH):
        raise InvalidInput(
            f"{what} is nested too deeply: at most {MAX_JSON_DEPTH} levels of arrays and objects"
        )
    clash = _colliding_key(value)
    if clash is not None:
        raise InvalidInput(
            f"{what} has two keys that JSON writes as the same name, {clash!r}: one would be lost"
        )
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise InvalidInput(f"{what} must not contain NUL characters (\\u0000): PostgreSQL cannot store them")
    if "\\ud" in text or "\\uD" in text:  # a surrogate escape: a pair (fine) or a lone one (not Unicode)
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"{what} must be valid Unicode text: {exc.reason}") from None
    return text


def storable_text(text: str | None) -> str | None:
    """``text`` as every store can hold it, for messages the engine records (an exception's text,
    a traceback, an event's detail): each NUL written out as ``\\x00`` (PostgreSQL cannot store
    one), and each lone surrogate as ``\\udcff`` (not Unicode: no store can encode it; a file
    name Python decoded with ``surrogateescape`` carries them)."""
    if not text:
        return text
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is timezone.utc:  # the engine's own, and SQLite's rows
        return value
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    return value.astimezone(timezone.utc)


class Workflow(BaseModel):
    """One workflow: what to run, where it stands, and what came of it."""

    model_config = _FROZEN

    id: str
    workflow_type_id: str
    status: WorkflowStatus
    created_by_agent: str | None = None
    inputs: dict[str, JSONValue]
    calculated_savings: dict[str, JSONValue] | None = None
    assigned_council_id: str | None = None
    result: JSONValue = None
    error: str | None = None
    attempts: int = 0
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: The traceback of the last failed attempt.
    traceback: str | None = None
    #: Set by ``create_workflow(idempotency_key=...)``; unique among workflows.
    idempotency_key: str | None = None
    #: Import path of the handler (``package.module:function``), recorded when it is enqueued.
    handler: str | None = None
    #: The handler's retry policy, recorded when the workflow is enqueued.
    max_retries: int = 0
    #: The attempt number after which a failure is final: ``1 + max_retries`` when the workflow is
    #: created, then ``attempts + 1 + max_retries`` whenever it is enqueued or requeued, so a
    #: requeue gets a fresh retry budget.
    max_attempts: int = 1
    retry_backoff: float = 0.0
    timeout: float | None = None
    #: The RQ job that currently carries this workflow; only that job may claim it.
    job_id: str | None = None
    #: The worker running (or that last ran) this workflow.
    worker: str | None = None
    heartbeat_at: datetime | None = None
    #: A running workflow whose lease passes without a heartbeat is taken for lost by reconcile.
    #: The worker sets it to its heartbeat time plus its own ``stale_after``.
    lease_until: datetime | None = None
    #: A queued retry is not delivered before this time.
    run_after: datetime | None = None
    cancel_requested_at: datetime | None = None
    #: Seconds from the first start to the finish, stamped when the workflow finishes.
    duration_s: float | None = None
    #: When it last entered ``queued`` from another status; a redelivery leaves it alone.
    queued_at: datetime | None = None

    _check_times = field_validator(
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "lease_until",
        "run_after",
        "cancel_requested_at",
        "queued_at",
    )(_aware)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Workflow:
        """Build a workflow from a database row (a mapping of column to value).

        JSON columns must already be decoded; the stores do that, since only
        they know whether a column came back as text or as ``jsonb``.
        """
        return cls.model_validate(row if type(row) is dict else dict(row))  # validating copies nothing

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: enums become strings and datetimes ISO 8601 strings."""
        return self.model_dump(mode="json")

    @property
    def is_terminal(self) -> bool:
        from .status import TERMINAL

        return self.status in TERMINAL


class WorkflowEvent(BaseModel):
    """One entry of a workflow's audit trail: a status change, or a note such as a redelivery."""

    model_config = _FROZEN

    id: int
    workflow_id: str
    from_status: WorkflowStatus | None
    to_status: WorkflowStatus
    at: datetime
    #: What happened: an error, the worker's name, who cancelled.
    detail: str | None = None
    #: The workflow's attempt count when the event was recorded.
    attempt: int = 0

    _check_at = field_validator("at")(_aware)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WorkflowEvent:
        return cls.model_validate(row if type(row) is dict else dict(row))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ReconcileReport(BaseModel):
    """What one ``engine.reconcile()`` pass did, by workflow id."""

    model_config = _FROZEN

    #: Running workflows whose worker stopped heartbeating, sent back to the queue.
    requeued_stale: list[str] = []
    #: Running workflows whose worker died on their last attempt, now failed.
    failed_stale: list[str] = []
    #: Running workflows whose worker died after a cancel was requested, now cancelled.
    cancelled_stale: list[str] = []
    #: Queued workflows with no RQ job (Redis lost it, or a retry came due), delivered again.
    redelivered: list[str] = []
    #: Workflows that could not be delivered because Redis is unavailable; the next pass tries again.
    undeliverable: list[str] = []

    @property
    def total(self) -> int:
        return (
            len(self.requeued_stale)
            + len(self.failed_stale)
            + len(self.cancelled_stale)
            + len(self.redelivered)
        )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Council(BaseModel):
    """A group whose members vote on workflows assigned to it; ``quorum`` votes either way decide."""

    model_config = _FROZEN

    id: str
    members: list[str]
    quorum: int
    updated_at: datetime

    _check_at = field_validator("updated_at")(_aware)


class Vote(BaseModel):
    """One council member's vote on one workflow."""

    model_config = _FROZEN

    workflow_id: str
    voter_id: str
    approve: bool
    comment: str | None = None
    at: datetime

    _check_at = field_validator("at")(_aware)


class Tally(BaseModel):
    """Where a vote stands after a ballot: the counts, the votes, and the workflow's status."""

    model_config = _FROZEN

    workflow_id: str
    council_id: str
    status: WorkflowStatus
    quorum: int
    approvals: int
    rejections: int
    votes: list[Vote]

    @property
    def decided(self) -> bool:
        return self.status is not WorkflowStatus.AWAITING_APPROVAL

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["decided"] = self.decided
        return data
