"""The workflows page: a server-rendered list and detail view, with requeue, cancel and vote forms.

The forms are protected against cross-site requests twice: a double-submit
token (a random ``SameSite=Strict`` cookie that each form repeats in a hidden
field) and a same-origin check on ``Origin`` and ``Sec-Fetch-Site``.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

from ...models import Workflow, utcnow
from ...status import ACTIVE, WorkflowStatus
from . import api, schemas
from .errors import ApiError, from_exception
from .state import engine, state

S = WorkflowStatus
CSRF_COOKIE = "workflow_engine_csrf"
#: The list's page size when the query string names none.
PAGE_SIZE = 25
NOTICES = {
    "requeued": "Requeued: it is queued again, with a fresh retry budget.",
    "cancelled": "Cancelled (a running workflow is asked to stop).",
    "voted": "Your vote is recorded.",
    "queue_unavailable": "Queued, but Redis is unavailable: it will run once Redis is back.",
}


def blueprint(guard: Callable[[], None]) -> Blueprint:
    """The page's blueprint; ``guard`` (body limit, auth) runs before anything else."""
    bp = Blueprint("workflow_engine_ui", __name__, template_folder="templates")
    bp.before_request(guard)
    bp.before_request(_check_same_origin)
    bp.after_request(_set_csrf_cookie)
    bp.register_error_handler(Exception, _html_error)
    bp.context_processor(_helpers)
    bp.add_url_rule("", "index", index, methods=["GET"])
    bp.add_url_rule("/<workflow_id>", "detail", detail, methods=["GET"])
    bp.add_url_rule("/<workflow_id>/requeue", "requeue", requeue, methods=["POST"])
    bp.add_url_rule("/<workflow_id>/cancel", "cancel", cancel, methods=["POST"])
    bp.add_url_rule("/<workflow_id>/vote", "vote", vote, methods=["POST"])
    return bp


# -- views -------------------------------------------------------------------
def index() -> ResponseReturnValue:
    args = {k: v for k, v in request.args.items() if v != ""}
    args.setdefault("limit", str(PAGE_SIZE))
    q = schemas.validate(schemas.ListQuery, args, "query")
    page, next_cursor = api.find_page(q)
    filters = {k: v for k, v in q.model_dump(mode="json", exclude={"cursor"}).items() if v is not None}
    return render_template(
        "workflow_engine/list.html",
        workflows=page,
        filters=filters,
        next_url=url_for(".index", **filters, cursor=next_cursor) if next_cursor else None,
        first_url=url_for(".index", **filters) if q.cursor else None,
        statuses=list(WorkflowStatus),
    )


def detail(workflow_id: str) -> ResponseReturnValue:
    return _detail(api.load(workflow_id), notice=NOTICES.get(request.args.get("done", "")))


def requeue(workflow_id: str) -> ResponseReturnValue:
    return _act(workflow_id, "requeued", lambda: engine().requeue(workflow_id))


def cancel(workflow_id: str) -> ResponseReturnValue:
    return _act(
        workflow_id, "cancelled", lambda: engine().cancel(workflow_id, reason="from the workflows page")
    )


def vote(workflow_id: str) -> ResponseReturnValue:
    decision = request.form.get("decision", "")
    data: dict[str, Any] = {
        "workflow_id": workflow_id,
        "voter_id": request.form.get("voter_id", ""),
        "approve": {"approve": True, "reject": False}.get(decision, decision),
        "comment": request.form.get("comment") or None,
        "change": request.form.get("change") == "1",
    }

    def cast() -> object:
        voter_id = api.vote_as(data["voter_id"])  # with a voter hook the form may leave it out
        body = schemas.validate(schemas.CastVote, {**data, "voter_id": voter_id}, "form")
        return engine().vote(
            workflow_id,
            voter_id=voter_id,
            approve=body.approve,
            comment=body.comment,
            change=body.change,
        )

    return _act(workflow_id, "voted", cast)


def _act(workflow_id: str, done: str, action: Callable[[], object]) -> ResponseReturnValue:
    """Run a form's action, then redirect to the workflow (303); on a refusal, show why on its page."""
    wf = api.load(workflow_id)
    try:
        action()
    except Exception as exc:
        error = from_exception(exc)
        if error is None:
            raise
        if error.code == "queue_unavailable":
            done = error.code
        else:
            return _detail(api.load(wf.id), error=error), error.status
    return redirect(url_for(".detail", workflow_id=wf.id, done=done), code=303)


def _detail(wf: Workflow, *, notice: str | None = None, error: ApiError | None = None) -> str:
    eng = engine()
    council = eng.get_council(wf.assigned_council_id) if wf.assigned_council_id else None
    votes = eng.store.votes(wf.id) if council is not None else []
    voted = {v.voter_id for v in votes}
    can_vote = wf.status is S.AWAITING_APPROVAL and council is not None
    # With the app's voter hook the caller votes as the member it names, and only as that one.
    bound = state().voter is not None
    me = api.caller_voter() if can_vote and bound else None
    return render_template(
        "workflow_engine/detail.html",
        wf=wf,
        events=eng.get_events(wf.id),
        council=council,
        votes=votes,
        voters=sorted(council.members, key=lambda m: (m in voted, m)) if council else [],
        can_requeue=wf.status is S.FAILED
        or (wf.status is S.CANCELLED and not eng._cancelled_before_approval(wf)),
        can_cancel=wf.status in (S.PENDING, S.QUEUED, S.AWAITING_APPROVAL)
        or (wf.status is S.RUNNING and wf.cancel_requested_at is None),
        can_vote=can_vote and (not bound or (council is not None and me in council.members)),
        voting_as=me,
        bound_voter=bound,
        # Not on a refusal's page: it answers a POST, and a refresh would GET the action's URL.
        refresh=wf.status in ACTIVE and error is None,
        notice=notice,
        error=error,
    )


# -- cross-site request protection --------------------------------------------
def csrf_token() -> str:
    """This browser's form token: its cookie's value, or a new one (set on the response)."""
    token: str | None = g.get("_workflow_engine_csrf")
    if token is None:
        token = request.cookies.get(CSRF_COOKIE, "")
        if len(token) < 32 or not token.isascii():
            token = secrets.token_urlsafe(32)
            g._workflow_engine_csrf_new = True
        g._workflow_engine_csrf = token
    return token


def _check_same_origin() -> None:
    if request.method != "POST":
        return
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if (site is not None and site not in ("same-origin", "none")) or (
        origin is not None and urlsplit(origin).netloc != request.host
    ):
        raise ApiError(403, "cross_site_request", "cross-site form posts are refused")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = request.form.get("csrf_token", "")
    if not cookie or not hmac.compare_digest(sent.encode(), cookie.encode()):
        raise ApiError(
            403, "csrf_token_mismatch", "the form is stale or came from elsewhere: reload the page"
        )


def _set_csrf_cookie(response: Response) -> Response:
    if g.get("_workflow_engine_csrf_new"):
        response.set_cookie(
            CSRF_COOKIE,
            csrf_token(),
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
            path=url_for("workflow_engine_ui.index"),
        )
    return response


# -- rendering ---------------------------------------------------------------
def _html_error(exc: Exception) -> ResponseReturnValue:
    error = from_exception(exc)
    if error is None:
        raise exc
    return render_template("workflow_engine/error.html", error=error), error.status, error.headers


def age(then: datetime | None) -> str:
    """``"42 s"``, ``"5 min"``, ``"3 h"``, ``"2 d"``: how long ago."""
    if then is None:
        return ""
    seconds = max(int((utcnow() - then).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _helpers() -> dict[str, Any]:
    return {"age": age, "pretty": pretty, "csrf_token": csrf_token, "api_prefix": state().url_prefix}
