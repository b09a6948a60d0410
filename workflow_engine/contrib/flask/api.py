"""The REST endpoints: thin views over the engine's public API.

Every view validates its input with a model from :mod:`.schemas`, calls the
engine, and answers JSON; errors become ``{"error", "message", "details"}``
through :func:`.errors.from_exception`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from flask import Blueprint, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import Forbidden, default_exceptions

from ...errors import QueueUnavailable, UnknownWorkflowType, WorkflowNotFound
from ...models import Workflow
from ...status import WorkflowStatus
from . import openapi, schemas
from .errors import ApiError, json_error
from .state import engine, state

#: The ids of the workflows created in this context, while a create view watches for them.
_created: ContextVar[set[str] | None] = ContextVar("workflow_engine_created", default=None)


def note_created(workflow: Workflow, from_status: WorkflowStatus | None) -> None:
    """An engine listener: tells a create view whether its workflow is new or an idempotent replay."""
    box = _created.get()
    if box is not None and from_status is None:
        box.add(workflow.id)


def blueprint(guard: Callable[[], None]) -> Blueprint:
    """The API's blueprint; ``guard`` (body limit, auth) runs before every view."""
    bp = Blueprint("workflow_engine_api", __name__)
    bp.before_request(guard)
    bp.register_error_handler(Exception, json_error)
    # Flask tries an app's handler for a status code (a custom 401 or 404 page) before a blueprint's
    # handler for an exception class: the API's errors stay JSON only with a handler for each code.
    for code in default_exceptions:
        bp.register_error_handler(code, json_error)
    bp.add_url_rule("/workflow_actions", "create", create_workflow, methods=["POST"])
    bp.add_url_rule("/workflow_actions/<workflow_id>", "action", get_workflow, methods=["GET"])
    bp.add_url_rule("/workflow_actions/<workflow_id>", "update", update_status, methods=["PATCH"])
    bp.add_url_rule("/workflows", "list", list_workflows, methods=["GET"])
    bp.add_url_rule("/workflows/<workflow_id>", "workflow", get_workflow, methods=["GET"])
    bp.add_url_rule("/council/vote", "vote", vote, methods=["POST"])
    bp.add_url_rule("/analytics", "analytics", analytics, methods=["GET"])
    bp.add_url_rule("/openapi.json", "openapi", openapi_document, methods=["GET"])
    return bp


def load(workflow_id: str) -> Workflow:
    """The workflow, or WorkflowNotFound (404) — also for ids no workflow could have."""
    if len(workflow_id) > 200 or not workflow_id.isprintable():
        raise WorkflowNotFound(workflow_id[:200])
    return engine().get_workflow(workflow_id)


def find_page(q: schemas.ListQuery) -> tuple[list[Workflow], str | None]:
    """One page of workflows, newest first, and the cursor of the next page (None on the last)."""
    before = None
    if q.cursor is not None:
        try:
            before = load(schemas.decode_cursor(q.cursor))
        except WorkflowNotFound:
            raise schemas.invalid_cursor() from None
    page = engine().list_workflows(
        limit=q.limit + 1,
        status=q.status,
        workflow_type_id=q.workflow_type_id,
        created_by_agent=q.created_by_agent,
        before=before,
    )
    more = len(page) > q.limit
    page = page[: q.limit]
    return page, schemas.encode_cursor(page[-1].id) if more and page else None


# -- views -------------------------------------------------------------------
def create_workflow() -> ResponseReturnValue:
    body = schemas.json_body(schemas.CreateWorkflow)
    eng = engine()
    if body.enqueue and not body.requires_approval and eng.handler_for(body.workflow_type_id) is None:
        raise _unknown_type(str(UnknownWorkflowType(body.workflow_type_id)))
    token = _created.set(set())
    try:
        workflow_id = eng.create_workflow(
            workflow_type_id=body.workflow_type_id,
            created_by_agent=body.created_by_agent,
            inputs=body.inputs,
            calculated_savings=body.calculated_savings,
            assigned_council_id=body.assigned_council_id,
            idempotency_key=body.idempotency_key,
            requires_approval=body.requires_approval,
            enqueue=body.enqueue and not body.requires_approval,  # one transaction, then Redis
        )
        created = workflow_id in (_created.get() or set())
    except UnknownWorkflowType as exc:
        raise _unknown_type(str(exc)) from None
    except QueueUnavailable as exc:  # created and queued; reconcile delivers it once Redis is back
        if len(exc.workflow_ids) != 1:
            raise
        [workflow_id] = exc.workflow_ids
        location = url_for(".action", workflow_id=workflow_id)
        raise _queue_unavailable(workflow_id, "was created and is queued", location) from None
    finally:
        _created.reset(token)
    location = url_for(".action", workflow_id=workflow_id)
    if not created:  # an idempotent replay: the first workflow, unchanged
        return jsonify(eng.get_workflow(workflow_id).to_dict()), 200, {"Location": location}
    return jsonify(eng.get_workflow(workflow_id).to_dict()), 201, {"Location": location}


def get_workflow(workflow_id: str) -> ResponseReturnValue:
    q = schemas.query(schemas.WorkflowQuery)
    wf = load(workflow_id)
    data: dict[str, Any] = wf.to_dict()
    if q.events:
        data["events"] = [e.to_dict() for e in engine().get_events(wf.id)]
    return jsonify(data)


def update_status(workflow_id: str) -> ResponseReturnValue:
    body = schemas.json_body(schemas.UpdateStatus)
    load(workflow_id)
    try:
        wf = engine().update_status(workflow_id, body.status, detail=body.detail)
    except QueueUnavailable:
        location = url_for(".action", workflow_id=workflow_id)
        raise _queue_unavailable(workflow_id, "is queued", location) from None
    return jsonify(wf.to_dict())


def list_workflows() -> ResponseReturnValue:
    page, next_cursor = find_page(schemas.query(schemas.ListQuery))
    return jsonify({"workflows": [wf.to_dict() for wf in page], "next_cursor": next_cursor})


def vote() -> ResponseReturnValue:
    body = schemas.json_body(schemas.CastVote)
    load(body.workflow_id)
    voter_id = vote_as(body.voter_id)
    tally = engine().vote(
        body.workflow_id,
        voter_id=voter_id,
        approve=body.approve,
        comment=body.comment,
        change=body.change,
    )
    return jsonify(tally.to_dict())


def caller_voter() -> str | None:
    """The council member the app's ``voter`` hook says this request's caller votes as (None, or an
    empty string: the caller may not vote). The hook may refuse the request as ``auth`` does; only
    with a hook."""
    hook = state().voter
    assert hook is not None, "caller_voter() needs the voter hook"
    try:
        me = hook(request)
    except PermissionError as exc:
        raise Forbidden(str(exc) or None) from exc
    if me is not None and not isinstance(me, str):  # a bug in the hook: 500, logged
        raise TypeError(f"voter(request) must return a member id (str) or None, not {type(me).__name__}")
    return me or None  # "" too (session.get("user", "")): no member, so no vote


def vote_as(named: str) -> str:
    """Who casts a vote that names ``named`` as its voter.

    Without a ``voter`` hook, that member. With one, the caller's own member id, which the vote
    must name (the page's form may leave it empty); a vote naming another member, or any vote
    by a caller the hook names no member for, is refused with 403 ``wrong_voter``."""
    if state().voter is None:
        return named
    me = caller_voter()
    if me is None:
        raise ApiError(403, "wrong_voter", "this caller may not vote")
    if named not in ("", me):
        raise ApiError(403, "wrong_voter", f"this caller votes as {me!r}, not as {named!r}")
    return me


def analytics() -> ResponseReturnValue:
    q = schemas.query(schemas.AnalyticsQuery)
    return jsonify(engine().stats(since=q.since))


def openapi_document() -> ResponseReturnValue:
    st = state()
    return jsonify(openapi.document(st.url_prefix, server=request.script_root or None))


# -- errors ------------------------------------------------------------------
def _unknown_type(message: str) -> ApiError:
    return ApiError(
        400,
        "unknown_workflow_type",
        message,
        details=[
            {
                "loc": ["body", "workflow_type_id"],
                "msg": "no handler is registered for this workflow type",
                "type": "unknown_workflow_type",
            }
        ],
    )


def _queue_unavailable(workflow_id: str, what: str, location: str) -> ApiError:
    wf = engine().get_workflow(workflow_id)
    return ApiError(
        503,
        "queue_unavailable",
        f"workflow {workflow_id} {what}, but the queue (Redis) is unavailable; "
        "it will run once Redis is back (engine.reconcile() delivers it). Do not create it again.",
        extra={"workflow_id": workflow_id, "workflow": wf.to_dict()},
        headers={"Location": location},
    )
