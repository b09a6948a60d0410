"""The Flask extension, through Flask's test client and the in-process engine.

Every endpoint's happy path and every error status: 400, 401, 403, 404, 409, 413, 503.
A 500 for anything a client sends is a bug.
"""

from __future__ import annotations

import importlib.util
import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask, Request, abort
from flask.testing import FlaskClient
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import HTTPException, Unauthorized

from workflow_engine import QueueUnavailable, StoreUnavailable, Workflow, WorkflowEngine, WorkflowStatus
from workflow_engine.contrib.flask import WorkflowEngineFlask
from workflow_engine.errors import ConfigurationError

from support import ROOT, RedisServer, free_port, wait_for

S = WorkflowStatus


def run_site(wf: Workflow) -> dict[str, Any]:
    return {"url": f"https://{wf.inputs.get('slug', 'x')}.example.com"}


def always_fail(wf: Workflow) -> None:
    raise ValueError("this handler always fails")


@pytest.fixture
def engine(workflow_engine: WorkflowEngine) -> WorkflowEngine:
    workflow_engine.register_handler("site", run_site)
    workflow_engine.register_handler("boom", always_fail, max_retries=0)
    workflow_engine.configure_council("c1", members=["ana", "bo", "cy"], quorum=2)
    return workflow_engine


@pytest.fixture
def app(engine: WorkflowEngine) -> Flask:
    app = Flask(__name__)
    WorkflowEngineFlask(app, engine, ui=True)
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def create(client: FlaskClient, **body: Any) -> dict[str, Any]:
    body.setdefault("workflow_type_id", "site")
    r = client.post("/api/workflow_actions", json=body)
    assert r.status_code == 201, r.json
    data: dict[str, Any] = r.json  # type: ignore[assignment]
    return data


def gated(client: FlaskClient) -> str:
    return str(create(client, assigned_council_id="c1", requires_approval=True)["id"])


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.data[:500])
    assert r.mimetype == "application/json"
    body: dict[str, Any] = r.json
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], list)
    return body


# -- POST /workflow_actions -----------------------------------------------------
def test_creating_a_workflow_enqueues_it_and_answers_201_with_its_location(client: FlaskClient) -> None:
    r = client.post(
        "/api/workflow_actions",
        json={
            "workflow_type_id": "site",
            "created_by_agent": "ava",
            "inputs": {"slug": "acme"},
            "calculated_savings": {"weekly_savings": 125.0},
        },
    )
    assert r.status_code == 201
    wf = r.json
    assert wf["status"] == "completed"  # in-process: it ran inside the request
    assert wf["result"] == {"url": "https://acme.example.com"}
    assert wf["created_by_agent"] == "ava" and wf["calculated_savings"] == {"weekly_savings": 125.0}
    assert r.headers["Location"] == f"/api/workflow_actions/{wf['id']}"
    assert client.get(r.headers["Location"]).json["id"] == wf["id"]


def test_enqueue_false_only_records_a_pending_workflow(client: FlaskClient) -> None:
    wf = create(client, enqueue=False)
    assert wf["status"] == "pending"
    wf = create(client, workflow_type_id="no-handler-yet", enqueue=False)
    assert wf["status"] == "pending"


def test_an_idempotent_replay_answers_200_with_the_first_workflow_unchanged(client: FlaskClient) -> None:
    first = create(client, idempotency_key="k-1", inputs={"slug": "one"}, enqueue=False)
    again = client.post(
        "/api/workflow_actions", json={"workflow_type_id": "site", "idempotency_key": "k-1", "inputs": {}}
    )
    assert again.status_code == 200
    assert again.json == first  # not enqueued, not changed
    assert again.headers["Location"].endswith(first["id"])


def test_an_unknown_workflow_type_is_refused_before_anything_is_created(
    client: FlaskClient, engine: WorkflowEngine
) -> None:
    body = assert_error(
        client.post("/api/workflow_actions", json={"workflow_type_id": "nope"}), 400, "unknown_workflow_type"
    )
    assert body["details"][0]["loc"] == ["body", "workflow_type_id"]
    r = client.post(
        "/api/workflow_actions",
        json={"workflow_type_id": "nope", "assigned_council_id": "c1", "requires_approval": True},
    )
    assert_error(r, 400, "unknown_workflow_type")
    assert engine.list_workflows() == []


def test_approval_needs_a_configured_council(client: FlaskClient) -> None:
    r = client.post("/api/workflow_actions", json={"workflow_type_id": "site", "requires_approval": True})
    assert "needs an assigned_council_id" in assert_error(r, 400, "invalid_input")["message"]
    r = client.post(
        "/api/workflow_actions",
        json={"workflow_type_id": "site", "requires_approval": True, "assigned_council_id": "zz"},
    )
    assert "'zz' is not configured" in assert_error(r, 400, "invalid_input")["message"]


J = "application/json"
SITE = b'{"workflow_type_id": "site", '
BAD_BODIES: list[tuple[str, bytes | str, str | None, str]] = [
    ("not JSON", b"{nope", J, "invalid_json"),
    ("empty", b"", J, "invalid_json"),
    ("not UTF-8", b'{"workflow_type_id": "\xff"}', J, "invalid_json"),
    ("UTF-16", '{"workflow_type_id": "site"}'.encode("utf-16"), J, "invalid_json"),
    ("UTF-32", '{"workflow_type_id": "site"}'.encode("utf-32"), J, "invalid_json"),
    ("a form", "workflow_type_id=site", "application/x-www-form-urlencoded", "invalid_json"),
    ("no content type", b'{"workflow_type_id": "site"}', None, "invalid_json"),
    ("text/plain", b'{"workflow_type_id": "site"}', "text/plain", "invalid_json"),
    ("NaN", SITE + b'"inputs": {"x": NaN}}', J, "invalid_json"),
    ("an int of 5000 digits", SITE + b'"inputs": {"x": ' + b"9" * 5000 + b"}}", J, "invalid_json"),
    ("nested 100000 deep", SITE + b'"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", J, "invalid_json"),
    ("a JSON array", b"[1, 2]", J, "validation_error"),
    ("a JSON string", b'"site"', J, "validation_error"),
    ("null", b"null", J, "validation_error"),
    ("missing workflow_type_id", b'{"inputs": {}}', J, "validation_error"),
    ("empty workflow_type_id", b'{"workflow_type_id": ""}', J, "validation_error"),
    ("a number for a string", b'{"workflow_type_id": 7}', J, "validation_error"),
    ('"true" for a boolean', SITE + b'"enqueue": "true"}', J, "validation_error"),
    ("a list for inputs", SITE + b'"inputs": [1]}', J, "validation_error"),
    ("an unknown field", SITE + b'"require_approval": true}', J, "validation_error"),
    ("NUL in a string", b'{"workflow_type_id": "si\\u0000te"}', J, "validation_error"),
    ("NUL in inputs", SITE + b'"inputs": {"a\\u0000": 1}}', J, "validation_error"),
    ("a lone surrogate", SITE + b'"created_by_agent": "\\ud800"}', J, "validation_error"),
    (
        "inputs nested 100 deep",
        SITE + b'"inputs": {"a": ' + b"[" * 100 + b"]" * 100 + b"}}",
        J,
        "validation_error",
    ),
    ("a huge saving", SITE + b'"calculated_savings": {"weekly": 1e300}}', J, "validation_error"),
    (
        "a huge int saving",
        SITE + b'"calculated_savings": {"weekly": ' + b"9" * 40 + b"}}",
        J,
        "validation_error",
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "code"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES]
)
def test_a_bad_body_answers_400_never_500(
    client: FlaskClient, engine: WorkflowEngine, body: bytes | str, content_type: str | None, code: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/api/workflow_actions", data=body, headers=headers)
    error = assert_error(r, 400, code)
    if code == "validation_error":
        assert error["details"] and all({"loc", "msg", "type"} <= set(d) for d in error["details"])
    assert engine.list_workflows() == []


def test_a_utf8_body_is_accepted_with_or_without_a_byte_order_mark(client: FlaskClient) -> None:
    body = '{"workflow_type_id": "site", "created_by_agent": "café"}'.encode()
    for raw in (body, b"\xef\xbb\xbf" + body):
        r = client.post("/api/workflow_actions", data=raw, content_type="application/json")
        assert r.status_code == 201 and r.json["created_by_agent"] == "café"


def test_field_errors_name_every_bad_field(client: FlaskClient) -> None:
    r = client.post("/api/workflow_actions", json={"inputs": 3, "requires_approval": "yes"})
    locs = {tuple(d["loc"]) for d in assert_error(r, 400, "validation_error")["details"]}
    assert locs == {("body", "workflow_type_id"), ("body", "inputs"), ("body", "requires_approval")}


def test_a_body_over_max_body_bytes_answers_413(engine: WorkflowEngine) -> None:
    app = Flask(__name__)
    WorkflowEngineFlask(app, engine, max_body_bytes=1000)
    client = app.test_client()
    big = {"workflow_type_id": "site", "inputs": {"x": "a" * 2000}}
    assert_error(client.post("/api/workflow_actions", json=big), 413, "request_entity_too_large")
    # Without a Content-Length (chunked), the limit applies while reading.
    raw = b'{"workflow_type_id": "site", "inputs": {"x": "' + b"a" * 2000 + b'"}}'
    r = client.post(
        "/api/workflow_actions",
        input_stream=io.BytesIO(raw),
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_error(r, 413, "request_entity_too_large")
    # The same with the header a chunked request carries: werkzeug then stops at the limit quietly.
    r = client.post(
        "/api/workflow_actions",
        input_stream=io.BytesIO(raw),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_error(r, 413, "request_entity_too_large")
    assert engine.list_workflows() == []
    small = {"workflow_type_id": "site", "inputs": {"x": "a" * 100}}
    assert client.post("/api/workflow_actions", json=small).status_code == 201


def post_chunked(client: FlaskClient, body: bytes) -> Any:
    """POST a JSON body without a Content-Length, as a chunked request arrives."""
    return client.post(
        "/api/workflow_actions",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_body_of_exactly_max_body_bytes_is_accepted_with_or_without_a_content_length(
    engine: WorkflowEngine,
) -> None:
    app = Flask(__name__)
    WorkflowEngineFlask(app, engine, max_body_bytes=1000)
    client = app.test_client()
    head, tail = b'{"workflow_type_id": "site", "inputs": {"x": "', b'"}}'
    exact = head + b"a" * (1000 - len(head) - len(tail)) + tail
    assert len(exact) == 1000
    assert (
        client.post("/api/workflow_actions", data=exact, content_type="application/json").status_code == 201
    )
    assert post_chunked(client, exact).status_code == 201
    over = head + b"a" * (1001 - len(head) - len(tail)) + tail
    assert_error(post_chunked(client, over), 413, "request_entity_too_large")
    assert len(engine.list_workflows()) == 2


def test_a_chunked_body_over_max_body_bytes_is_refused_even_when_the_auth_hook_reads_it_first(
    engine: WorkflowEngine,
) -> None:
    """An auth hook that checks a signature over the body reads it before the engine does: it must
    not get a body cut at the limit, which would then pass as whole."""
    seen: list[int] = []
    app = Flask(__name__)
    WorkflowEngineFlask(app, engine, max_body_bytes=1000, auth=lambda r: seen.append(len(r.get_data())))
    client = app.test_client()
    head, tail = b'{"workflow_type_id": "site", "inputs": {"x": "', b'"}}'
    for size, status in ((1000, 201), (1001, 413), (5000, 413)):
        body = head + b"a" * (size - len(head) - len(tail)) + tail
        r = post_chunked(client, body)
        if status == 413:
            assert_error(r, 413, "request_entity_too_large")
        else:
            assert r.status_code == status, (size, r.status_code, r.json)
    assert len(engine.list_workflows()) == 1 and seen[0] == 1000


def test_a_chunked_form_over_max_body_bytes_answers_413_and_records_nothing(engine: WorkflowEngine) -> None:
    app = Flask(__name__)
    WorkflowEngineFlask(app, engine, max_body_bytes=1000, ui=True)
    client = app.test_client()
    engine.configure_council("c1", members=["ana", "bo", "cy"], quorum=2)
    wid = create(client, workflow_type_id="site", assigned_council_id="c1", requires_approval=True)["id"]
    token = csrf(client, f"/workflows/{wid}")
    form = f"csrf_token={token}&voter_id=ana&decision=approve&comment={'a' * 5000}".encode()
    r = client.post(
        f"/workflows/{wid}/vote",
        input_stream=io.BytesIO(form),
        content_type="application/x-www-form-urlencoded",
        headers={"Transfer-Encoding": "chunked", "Origin": "http://localhost"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert r.status_code == 413  # not a vote with its comment cut at the limit
    assert engine.store.votes(wid) == []


# -- GET a workflow -------------------------------------------------------------
def test_a_workflow_reads_the_same_on_both_paths_with_events_on_request(client: FlaskClient) -> None:
    wf = create(client)
    for path in (f"/api/workflow_actions/{wf['id']}", f"/api/workflows/{wf['id']}"):
        r = client.get(path)
        assert r.status_code == 200 and r.json == wf
        with_events = client.get(path + "?events=1").json
        assert [e["to_status"] for e in with_events.pop("events")] == [
            "pending",
            "queued",
            "running",
            "completed",
        ]
        assert with_events == wf
        assert "events" not in client.get(path + "?events=0").json
    assert_error(client.get(f"/api/workflows/{wf['id']}?events=maybe"), 400, "validation_error")


@pytest.mark.parametrize("wid", ["nope", "a%00b", "x" * 300, "%F0%9F%98%80"])
def test_an_unknown_id_answers_404(client: FlaskClient, wid: str) -> None:
    assert_error(client.get(f"/api/workflows/{wid}"), 404, "not_found")
    assert_error(client.get(f"/api/workflow_actions/{wid}"), 404, "not_found")
    assert_error(client.patch(f"/api/workflow_actions/{wid}", json={"status": "queued"}), 404, "not_found")


# -- PATCH ----------------------------------------------------------------------
def test_patch_moves_a_workflow_through_the_state_machine(client: FlaskClient) -> None:
    wf = create(client, enqueue=False)
    r = client.patch(f"/api/workflow_actions/{wf['id']}", json={"status": "queued"})
    assert r.status_code == 200 and r.json["status"] == "completed"  # queued runs it, in-process
    failed = create(client, workflow_type_id="boom")
    assert failed["status"] == "failed" and failed["error"] == "ValueError: this handler always fails"
    r = client.patch(f"/api/workflow_actions/{failed['id']}", json={"status": "queued"})
    assert r.status_code == 200 and r.json["attempts"] == 2  # requeued with a fresh budget, failed again
    pending = create(client, enqueue=False)
    r = client.patch(
        f"/api/workflow_actions/{pending['id']}", json={"status": "cancelled", "detail": "no need"}
    )
    assert r.status_code == 200 and r.json["status"] == "cancelled"
    events = client.get(f"/api/workflows/{pending['id']}?events=1").json["events"]
    assert events[-1]["detail"] == "cancelled: no need"


def test_patch_refuses_a_transition_the_table_forbids_with_409(client: FlaskClient) -> None:
    done = create(client)
    body = assert_error(
        client.patch(f"/api/workflow_actions/{done['id']}", json={"status": "queued"}),
        409,
        "invalid_transition",
    )
    assert "a completed workflow never runs again" in body["message"]
    r = client.patch(f"/api/workflow_actions/{gated(client)}", json={"status": "queued"})
    assert_error(r, 409, "invalid_transition")
    r = client.patch(f"/api/workflow_actions/{done['id']}", json={"status": "awaiting_approval"})
    assert_error(r, 409, "invalid_transition")
    pending = create(client, workflow_type_id="unregistered", enqueue=False)
    r = client.patch(f"/api/workflow_actions/{pending['id']}", json={"status": "queued"})
    assert_error(r, 409, "unknown_workflow_type")


@pytest.mark.parametrize(
    "body",
    [{"status": "done"}, {"status": 3}, {}, {"status": "queued", "extra": 1}, {"status": None}],
    ids=["unknown status", "a number", "missing", "unknown field", "null"],
)
def test_patch_with_a_bad_status_answers_400(client: FlaskClient, body: dict[str, Any]) -> None:
    wf = create(client, enqueue=False)
    error = assert_error(
        client.patch(f"/api/workflow_actions/{wf['id']}", json=body), 400, "validation_error"
    )
    assert error["details"][0]["loc"][0] == "body"


# -- the council ----------------------------------------------------------------
def test_the_council_votes_a_workflow_through_the_api(client: FlaskClient) -> None:
    wid = gated(client)
    assert client.get(f"/api/workflows/{wid}").json["status"] == "awaiting_approval"
    r = client.post("/api/council/vote", json={"workflow_id": wid, "voter_id": "ana", "approve": True})
    assert r.status_code == 200
    assert (r.json["approvals"], r.json["status"], r.json["decided"]) == (1, "awaiting_approval", False)
    r = client.post(
        "/api/council/vote",
        json={"workflow_id": wid, "voter_id": "bo", "approve": True, "comment": "ship it"},
    )
    assert (r.json["approvals"], r.json["status"], r.json["decided"]) == (2, "completed", True)
    assert [v["voter_id"] for v in r.json["votes"]] == ["ana", "bo"]


def test_a_rejection_quorum_rejects_and_later_votes_answer_409(client: FlaskClient) -> None:
    wid = gated(client)
    client.post("/api/council/vote", json={"workflow_id": wid, "voter_id": "ana", "approve": False})
    r = client.post("/api/council/vote", json={"workflow_id": wid, "voter_id": "cy", "approve": False})
    assert r.json["status"] == "rejected"
    r = client.post("/api/council/vote", json={"workflow_id": wid, "voter_id": "bo", "approve": True})
    assert (
        "votes are taken only while it awaits approval"
        in assert_error(r, 409, "invalid_transition")["message"]
    )


def test_vote_errors(client: FlaskClient) -> None:
    wid = gated(client)
    vote = {"workflow_id": wid, "voter_id": "ana", "approve": False}
    assert client.post("/api/council/vote", json=vote).status_code == 200
    assert (
        "change=True"
        in assert_error(client.post("/api/council/vote", json=vote), 409, "duplicate_vote")["message"]
    )
    changed = client.post("/api/council/vote", json={**vote, "approve": True, "change": True})
    assert (changed.json["approvals"], changed.json["rejections"]) == (1, 0)
    r = client.post("/api/council/vote", json={**vote, "voter_id": "mallory"})
    assert_error(r, 403, "not_a_council_member")
    assert_error(client.post("/api/council/vote", json={**vote, "workflow_id": "nope"}), 404, "not_found")
    ungated = create(client, enqueue=False)["id"]
    assert_error(
        client.post("/api/council/vote", json={**vote, "workflow_id": ungated}), 409, "invalid_transition"
    )
    for bad in ({**vote, "approve": "yes"}, {"workflow_id": wid}, {**vote, "voter_id": ""}, {**vote, "x": 1}):
        assert_error(client.post("/api/council/vote", json=bad), 400, "validation_error")


# -- who votes: the voter hook ---------------------------------------------------
def signed_in(engine: WorkflowEngine) -> FlaskClient:
    """A client of an app whose voter hook names the member in the X-User header (none without
    one), refuses the suspended member mallet's requests outright, asks a stale session to sign
    in again, and has a bug for one user."""

    def voter(request: Request) -> Any:
        user = request.headers.get("X-User")
        if user == "mallet":
            raise PermissionError("mallet is suspended")
        if user == "stale":
            raise Unauthorized("sign in again")
        return 42 if user == "bug" else user

    app = Flask(__name__)
    WorkflowEngineFlask(app, engine, voter=voter, ui=True)
    return app.test_client()


def test_with_a_voter_hook_a_caller_casts_only_the_vote_of_the_member_it_names(
    engine: WorkflowEngine,
) -> None:
    client = signed_in(engine)
    wid = gated(client)

    def vote_as(voter_id: str, **headers: str) -> Any:
        body = {"workflow_id": wid, "voter_id": voter_id, "approve": True}
        return client.post("/api/council/vote", json=body, headers=headers)

    assert vote_as("ana", **{"X-User": "ana"}).json["approvals"] == 1
    forged = vote_as("bo", **{"X-User": "ana"})
    assert "votes as 'ana', not as 'bo'" in assert_error(forged, 403, "wrong_voter")["message"]
    assert "may not vote" in assert_error(vote_as("bo"), 403, "wrong_voter")["message"]
    suspended = vote_as("mallet", **{"X-User": "mallet"})
    assert assert_error(suspended, 403, "forbidden")["message"] == "mallet is suspended"
    assert_error(vote_as("mallory", **{"X-User": "mallory"}), 403, "not_a_council_member")
    assert_error(vote_as("bo", **{"X-User": ""}), 403, "wrong_voter")  # an empty name is no member
    assert_error(vote_as("bo", **{"X-User": "stale"}), 401, "unauthorized")
    assert_error(vote_as("bo", **{"X-User": "bug"}), 500, "internal_error")
    assert_error(vote_as("ana", **{"X-User": "ana"}), 409, "duplicate_vote")  # the hook, then the engine
    tally = engine.tally(wid)
    assert [v.voter_id for v in tally.votes] == ["ana"] and tally.status is S.AWAITING_APPROVAL


def test_with_a_voter_hook_the_page_votes_as_the_caller_and_offers_no_one_else(
    engine: WorkflowEngine,
) -> None:
    client = signed_in(engine)
    wid = gated(client)
    page = client.get(f"/workflows/{wid}", headers={"X-User": "bo"}).get_data(as_text=True)
    assert "Voting as <strong>bo</strong>" in page and 'id="voter"' not in page
    token = csrf(client, f"/workflows/{wid}")
    as_bo = {"X-User": "bo"}
    forged = client.post(
        f"/workflows/{wid}/vote",
        data={"csrf_token": token, "voter_id": "ana", "decision": "approve"},
        headers=as_bo,
    )
    assert forged.status_code == 403 and "wrong_voter" in forged.get_data(as_text=True)
    r = client.post(f"/workflows/{wid}/vote", data={"csrf_token": token, "decision": "reject"}, headers=as_bo)
    assert r.status_code == 303
    assert [(v.voter_id, v.approve) for v in engine.tally(wid).votes] == [("bo", False)]
    outsider = client.get(f"/workflows/{wid}", headers={"X-User": "mallory"}).get_data(as_text=True)
    assert 'id="vote-form"' not in outsider and "mallory is not a member of this council" in outsider
    for nobody in ({}, {"X-User": ""}):
        anonymous = client.get(f"/workflows/{wid}", headers=nobody).get_data(as_text=True)
        assert 'id="vote-form"' not in anonymous and "You may not vote" in anonymous
        r = client.post(
            f"/workflows/{wid}/vote", data={"csrf_token": token, "decision": "approve"}, headers=nobody
        )
        assert r.status_code == 403 and "wrong_voter" in r.get_data(as_text=True)
    assert client.get(f"/workflows/{wid}", headers={"X-User": "mallet"}).status_code == 403


# -- GET /workflows ------------------------------------------------------------
def test_the_list_filters_and_pages_with_a_cursor(client: FlaskClient) -> None:
    ids = [create(client, created_by_agent="ava" if i % 2 else "bo", enqueue=False)["id"] for i in range(5)]
    boom = create(client, workflow_type_id="boom")["id"]
    seen: list[str] = []
    url: str | None = "/api/workflows?limit=2"
    while url:
        page = client.get(url).json
        assert len(page["workflows"]) <= 2
        seen += [wf["id"] for wf in page["workflows"]]
        url = f"/api/workflows?limit=2&cursor={page['next_cursor']}" if page["next_cursor"] else None
    assert seen == [boom, *reversed(ids)]
    assert [wf["id"] for wf in client.get("/api/workflows?status=failed").json["workflows"]] == [boom]
    agent = client.get("/api/workflows?created_by_agent=ava&workflow_type_id=site").json
    assert {wf["id"] for wf in agent["workflows"]} == {ids[1], ids[3]} and agent["next_cursor"] is None
    assert client.get("/api/workflows?limit=6").json["next_cursor"] is None


def test_identifiers_as_long_as_the_engine_takes_are_taken_by_the_api(client: FlaskClient) -> None:
    agent = "a" * 255  # the engine's limit; the API used to stop at 200
    wid = create(client, created_by_agent=agent, enqueue=False)["id"]
    found = client.get(f"/api/workflows?created_by_agent={agent}").json["workflows"]
    assert [wf["id"] for wf in found] == [wid]
    assert client.get(f"/api/workflows?created_by_agent={agent}a").status_code == 400


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("status=done", "validation_error"),
        ("limit=0", "validation_error"),
        ("limit=501", "validation_error"),
        ("limit=abc", "validation_error"),
        ("limit=" + "9" * 5000, "validation_error"),
        ("limit=-1", "validation_error"),
        ("cursor=!!", "validation_error"),
        ("cursor=bm9wZQ", "invalid_cursor"),  # "nope": no such workflow
        ("cursor=AA", "invalid_cursor"),  # a NUL byte
        ("cursor=_w", "invalid_cursor"),  # not UTF-8
        ("cursor=" + "A" * 1000, "validation_error"),
        ("workflow_type_id=a%00b", "validation_error"),
        ("status=", "validation_error"),
        ("created_by_agent=", "validation_error"),
    ],
)
def test_a_bad_list_query_answers_400(client: FlaskClient, query: str, code: str) -> None:
    assert_error(client.get(f"/api/workflows?{query}"), 400, code)


# -- analytics and the document -------------------------------------------------
def test_analytics_returns_the_engine_stats(client: FlaskClient, engine: WorkflowEngine) -> None:
    create(client, calculated_savings={"weekly_savings": 100, "yearly_savings": 5200})
    create(client, calculated_savings={"weekly_savings": 50.5, "yearly_savings": 2626})
    create(client, workflow_type_id="boom")
    r = client.get("/api/analytics")
    assert r.status_code == 200
    stats = r.json
    assert stats["total"] == 3 and stats["by_status"]["completed"] == 2 and stats["by_status"]["failed"] == 1
    assert stats["calculated_savings"] == {"weekly_savings": 150.5, "yearly_savings": 7826}
    assert stats["by_type"]["site"]["success_rate"] == 1.0
    assert set(stats) == set(engine.stats())
    assert client.get("/api/analytics?since=2999-01-01T00:00:00Z").json["total"] == 0
    assert_error(
        client.get("/api/analytics?since=2024-01-01T00:00:00"), 400, "validation_error"
    )  # no timezone
    assert_error(client.get("/api/analytics?since=0001-01-01T00:00:00%2B23:00"), 400, "validation_error")
    assert_error(client.get("/api/analytics?since=yesterday"), 400, "validation_error")
    assert_error(client.get("/api/analytics?since=0.5"), 400, "validation_error")  # not a Unix time


def test_the_openapi_document_describes_every_endpoint(client: FlaskClient) -> None:
    doc = client.get("/api/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    ops = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert ops == {
        ("/api/workflow_actions", "post"),
        ("/api/workflow_actions/{workflow_id}", "get"),
        ("/api/workflow_actions/{workflow_id}", "patch"),
        ("/api/workflows", "get"),
        ("/api/workflows/{workflow_id}", "get"),
        ("/api/council/vote", "post"),
        ("/api/analytics", "get"),
        ("/api/openapi.json", "get"),
    }
    create_op = doc["paths"]["/api/workflow_actions"]["post"]
    assert {"201", "400", "401", "403", "413", "503"} <= set(create_op["responses"])
    assert set(doc["components"]["schemas"]["CreateWorkflow"]["properties"]) == {
        "workflow_type_id",
        "created_by_agent",
        "inputs",
        "calculated_savings",
        "assigned_council_id",
        "requires_approval",
        "idempotency_key",
        "enqueue",
    }
    names = [p["name"] for p in doc["paths"]["/api/workflows"]["get"]["parameters"]]
    assert names == ["status", "workflow_type_id", "created_by_agent", "limit", "cursor"]


# -- errors around the views ----------------------------------------------------
def test_routing_errors_under_the_prefix_answer_json_and_others_are_left_alone(client: FlaskClient) -> None:
    assert_error(client.get("/api/nothing/here"), 404, "not_found")
    r = client.delete("/api/workflows")
    assert_error(r, 405, "method_not_allowed")
    assert "GET" in r.headers["Allow"]
    assert client.get("/elsewhere").mimetype == "text/html"


def test_the_apps_own_error_pages_do_not_replace_the_apis_json_errors(engine: WorkflowEngine) -> None:
    """Flask prefers an app's handler for a status code (a custom 404 or 401 page) to a handler
    for an exception class: the API registers its own for every code, and chains elsewhere."""
    app = Flask(__name__)
    for code in (401, 403, 404, 405):
        app.register_error_handler(code, lambda exc, code=code: (f"<h1>page {code}</h1>", code))

    def auth(request: Request) -> None:
        if request.headers.get("Authorization") is None:
            raise Unauthorized()
        if request.headers["Authorization"] != "Bearer ok":
            raise PermissionError("that token may not use this API")

    WorkflowEngineFlask(app, engine, auth=auth)
    client = app.test_client()
    ok = {"Authorization": "Bearer ok"}
    assert_error(client.get("/api/workflows"), 401, "unauthorized")
    assert_error(client.get("/api/workflows", headers={"Authorization": "Bearer no"}), 403, "forbidden")
    assert_error(client.get("/api/nothing/here", headers=ok), 404, "not_found")
    assert_error(client.delete("/api/workflows", headers=ok), 405, "method_not_allowed")
    assert client.get("/elsewhere").get_data(as_text=True) == "<h1>page 404</h1>"  # the app's own, elsewhere


def test_an_apps_handler_for_every_http_error_still_serves_outside_the_api(engine: WorkflowEngine) -> None:
    app = Flask(__name__)
    WorkflowEngineFlask(app, engine)
    app.register_error_handler(HTTPException, lambda exc: ({"app": exc.code}, exc.code))  # after init_app
    client = app.test_client()
    assert client.get("/elsewhere").json == {"app": 404}
    assert_error(client.get("/api/nothing/here"), 404, "not_found")


def test_a_blueprints_own_handler_for_http_errors_still_serves_its_404s(engine: WorkflowEngine) -> None:
    app = Flask(__name__)
    v2 = Blueprint("v2", __name__)
    v2.register_error_handler(HTTPException, lambda exc: ({"v2": exc.code}, exc.code))
    v2.add_url_rule("/missing", "missing", lambda: abort(404))
    app.register_blueprint(v2, url_prefix="/v2")
    WorkflowEngineFlask(app, engine)
    client = app.test_client()
    assert client.get("/v2/missing").json == {"v2": 404}  # as without the extension
    assert_error(client.get("/api/nothing/here"), 404, "not_found")


def test_a_database_outage_answers_503_as_the_openapi_document_says(
    client: FlaskClient, engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only queue_unavailable means "created": a client must tell it from store_unavailable."""
    import jsonschema_rs  # schemathesis's own validator

    doc = client.get("/api/openapi.json").json

    def down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("the database is unreachable")

    monkeypatch.setattr(engine, "create_workflow", down)
    monkeypatch.setattr(engine, "get_workflow", down)
    calls = [
        ("post", "/api/workflow_actions", "/api/workflow_actions", {"workflow_type_id": "site"}),
        ("get", "/api/workflow_actions/x", "/api/workflow_actions/{workflow_id}", None),
    ]
    for method, path, template, body in calls:
        r = getattr(client, method)(path, json=body) if body else getattr(client, method)(path)
        assert_error(r, 503, "store_unavailable")
        documented = doc["paths"][template][method]["responses"]["503"]
        schema = {**documented["content"]["application/json"]["schema"], "components": doc["components"]}
        jsonschema_rs.validate(schema, r.json)
    created = doc["paths"]["/api/workflow_actions"]["post"]["responses"]["503"]["description"]
    assert "queue_unavailable" in created and "store_unavailable" in created
    # The document itself reads no database: it is served, and promises no 503, whatever the outage.
    assert client.get("/api/openapi.json").status_code == 200
    assert "503" not in doc["paths"]["/api/openapi.json"]["get"]["responses"]


@pytest.mark.parametrize(
    "error, code",
    [
        (
            StoreUnavailable('cannot connect to PostgreSQL: server at "db.internal", port 5432: role "app"'),
            "store_unavailable",
        ),
        (
            QueueUnavailable("Redis is unavailable (Error 111 connecting to db.internal:6379)"),
            "queue_unavailable",
        ),
    ],
)
def test_an_outage_answers_503_without_the_servers_address_which_goes_to_the_log(
    client: FlaskClient,
    engine: WorkflowEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    code: str,
) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(engine, "get_workflow", down)
    for r in (client.get("/api/workflow_actions/x"), client.get("/workflows/x")):  # the API, the page
        assert r.status_code == 503 and code in r.get_data(as_text=True)
        assert "db.internal" not in r.get_data(as_text=True)
    assert "db.internal" in caplog.text  # for whoever runs the app


def test_a_server_bug_answers_a_json_500_and_is_logged(
    client: FlaskClient,
    engine: WorkflowEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(since: object = None) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(engine, "stats", broken)
    assert_error(client.get("/api/analytics"), 500, "internal_error")
    assert "a bug" in caplog.text


def test_a_queue_outage_answers_503_and_the_workflow_is_kept_to_run_later() -> None:
    engine = WorkflowEngine(database_url="sqlite:///:memory:", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    engine.register_handler("site", "we_test_handlers:noop")
    app = Flask(__name__)
    WorkflowEngineFlask(app, engine)
    client = app.test_client()
    r = client.post("/api/workflow_actions", json={"workflow_type_id": "site"})
    body = assert_error(r, 503, "queue_unavailable")
    wid = body["workflow_id"]
    assert wid in body["message"] and "will run once Redis is back" in body["message"]
    assert body["workflow"]["status"] == "queued" and r.headers["Location"].endswith(wid)
    assert engine.get_workflow(wid).status is S.QUEUED
    engine.cancel(wid)
    r = client.patch(f"/api/workflow_actions/{wid}", json={"status": "queued"})
    assert assert_error(r, 503, "queue_unavailable")["workflow"]["status"] == "queued"
    assert client.get("/api/analytics").json["queue_depth"] is None
    engine.close()


# -- auth -----------------------------------------------------------------------
def bearer(token: str) -> Any:
    """The bearer-token hook from docs/flask.md."""
    import hmac

    def auth(request: Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, sent = header.partition(" ")
        if scheme.lower() != "bearer" or not sent:
            raise Unauthorized(
                "send Authorization: Bearer <token>", www_authenticate=WWWAuthenticate("bearer")
            )
        if not hmac.compare_digest(sent.encode(), token.encode()):
            raise PermissionError("that token may not use this API")

    return auth


def test_a_cors_preflight_is_not_passed_to_the_auth_hook_and_gets_no_data(engine: WorkflowEngine) -> None:
    app = Flask(__name__)
    WorkflowEngineFlask(app, engine, auth=bearer("t"))
    client = app.test_client()
    preflight = {"Origin": "https://spa.example", "Access-Control-Request-Method": "POST"}
    r = client.options("/api/workflow_actions", headers=preflight)
    assert r.status_code == 200 and r.get_data() == b"" and "POST" in r.headers["Allow"]
    assert client.options("/api/workflow_actions").status_code == 401  # a plain OPTIONS is guarded


def test_the_auth_hook_refuses_with_401_or_403(engine: WorkflowEngine) -> None:
    app = Flask(__name__)
    WorkflowEngineFlask(app, engine, auth=bearer("s3cret"), ui=True)
    client = app.test_client()
    r = client.get("/api/workflows")
    assert assert_error(r, 401, "unauthorized")["message"] == "send Authorization: Bearer <token>"
    assert r.headers["WWW-Authenticate"].lower() == "bearer"
    r = client.get("/api/workflows", headers={"Authorization": "Bearer wrong"})
    assert assert_error(r, 403, "forbidden")["message"] == "that token may not use this API"
    ok = {"Authorization": "Bearer s3cret"}
    assert client.get("/api/workflows", headers=ok).status_code == 200
    r = client.post("/api/workflow_actions", json={"workflow_type_id": "site"}, headers=ok)
    assert r.status_code == 201
    assert_error(client.post("/api/workflow_actions", json={"workflow_type_id": "site"}), 401, "unauthorized")
    assert client.get("/api/openapi.json").status_code == 401
    assert client.get("/workflows").status_code == 401
    assert "unauthorized" in client.get("/workflows").get_data(as_text=True)
    assert client.get("/workflows", headers=ok).status_code == 200


def test_the_apps_own_smaller_body_limit_holds_on_the_apis_routes_too(engine: WorkflowEngine) -> None:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1024
    WorkflowEngineFlask(app, engine)  # max_body_bytes: 1 MB by default
    client = app.test_client()
    big = {"workflow_type_id": "site", "inputs": {"x": "a" * 2000}}
    body = assert_error(client.post("/api/workflow_actions", json=big), 413, "request_entity_too_large")
    assert "the limit is 1024" in body["message"]
    assert engine.list_workflows() == []
    assert client.post("/api/workflow_actions", json={"workflow_type_id": "site"}).status_code == 201


# -- setup ----------------------------------------------------------------------
def test_init_app_supports_the_app_factory_pattern(engine: WorkflowEngine) -> None:
    ext = WorkflowEngineFlask(url_prefix="/v1/")
    apps = [Flask("one"), Flask("two")]
    for app in apps:
        ext.init_app(app, engine)
        assert app.test_client().get("/v1/workflows").status_code == 200
    with pytest.raises(ConfigurationError, match="already registered"):
        ext.init_app(apps[0], engine)
    with pytest.raises(ConfigurationError, match="needs an engine"):
        WorkflowEngineFlask(Flask("three"))
    for prefix in ("", "/workflows", "/workflows/api"):  # the page is at /workflows
        with pytest.raises(ConfigurationError, match="ui=True needs a url_prefix outside /workflows"):
            WorkflowEngineFlask(engine=engine, url_prefix=prefix, ui=True)
    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        WorkflowEngineFlask(engine=engine, max_body_bytes=0)
    with pytest.raises(ConfigurationError, match="url_prefix"):
        WorkflowEngineFlask(engine=engine, url_prefix="api")
    with pytest.raises(ConfigurationError, match="voter must be a callable"):
        WorkflowEngineFlask(engine=engine, voter="ana")  # type: ignore[arg-type]


def test_the_api_can_live_at_the_root(engine: WorkflowEngine) -> None:
    app = Flask(__name__)
    WorkflowEngineFlask(app, engine, url_prefix="")
    client = app.test_client()
    r = client.post("/workflow_actions", json={"workflow_type_id": "site"})
    assert r.status_code == 201 and r.headers["Location"] == f"/workflow_actions/{r.json['id']}"
    assert "/workflows" in client.get("/openapi.json").json["paths"]


# -- the page -------------------------------------------------------------------
def csrf(client: FlaskClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert match, "the page has no form"
    return match.group(1)


def test_the_list_page_shows_badges_ages_filters_and_pages(client: FlaskClient) -> None:
    done = create(client, created_by_agent="ava")
    failed = create(client, workflow_type_id="boom")
    html = client.get("/workflows").get_data(as_text=True)
    assert '<span class="badge badge-completed">completed</span>' in html
    assert '<span class="badge badge-failed">failed</span>' in html
    assert re.search(r">\d+ s</td>", html), "each row shows its age"
    assert f'href="/workflows/{done["id"]}"' in html
    only_failed = client.get("/workflows?status=failed").get_data(as_text=True)
    assert failed["id"] in only_failed and done["id"] not in only_failed
    first = client.get("/workflows?limit=1").get_data(as_text=True)
    older = re.search(r'href="([^"]+)" rel="next"', first)
    assert older and failed["id"] in first
    second = client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert done["id"] in second and failed["id"] not in second and "Newest" in second
    bad = client.get("/workflows?status=nope")
    assert bad.status_code == 400 and "validation_error" in bad.get_data(as_text=True)
    assert client.get("/workflows?cursor=bm9wZQ").status_code == 400


def test_the_detail_page_shows_inputs_result_error_and_timeline(client: FlaskClient) -> None:
    wf = create(client, workflow_type_id="boom", inputs={"file": "<contacts>.csv"})
    html = client.get(f"/workflows/{wf['id']}").get_data(as_text=True)
    assert "&lt;contacts&gt;.csv" in html and "<contacts>" not in html  # escaped
    assert "ValueError: this handler always fails" in html and "Traceback" in html
    assert html.count("<li>") >= 3 and "no retries left" in html
    assert 'id="requeue"' in html and 'id="cancel"' not in html and 'id="approve"' not in html
    ok = create(client, inputs={"slug": "acme"})
    html = client.get(f"/workflows/{ok['id']}").get_data(as_text=True)
    assert "https://acme.example.com" in html and 'id="requeue"' not in html
    missing = client.get("/workflows/nope")
    assert missing.status_code == 404 and "not_found" in missing.get_data(as_text=True)


def test_the_page_votes_requeues_and_cancels_with_its_forms(client: FlaskClient) -> None:
    wid = gated(client)
    token = csrf(client, f"/workflows/{wid}")
    r = client.post(
        f"/workflows/{wid}/vote", data={"csrf_token": token, "voter_id": "ana", "decision": "approve"}
    )
    assert r.status_code == 303 and r.headers["Location"] == f"/workflows/{wid}?done=voted"
    assert "Your vote is recorded" in client.get(r.headers["Location"]).get_data(as_text=True)
    again = client.post(
        f"/workflows/{wid}/vote", data={"csrf_token": token, "voter_id": "ana", "decision": "reject"}
    )
    assert again.status_code == 409 and "duplicate_vote" in again.get_data(as_text=True)
    bad = client.post(
        f"/workflows/{wid}/vote", data={"csrf_token": token, "voter_id": "ana", "decision": "maybe"}
    )
    assert bad.status_code == 400
    r = client.post(
        f"/workflows/{wid}/vote",
        data={"csrf_token": token, "voter_id": "bo", "decision": "approve", "comment": "go"},
    )
    assert r.status_code == 303
    html = client.get(f"/workflows/{wid}").get_data(as_text=True)
    assert 'id="status">completed<' in html and "vote: bo approves: go" in html

    failed = create(client, workflow_type_id="boom")["id"]
    r = client.post(f"/workflows/{failed}/requeue", data={"csrf_token": token})
    assert r.status_code == 303
    assert client.get(f"/api/workflows/{failed}").json["attempts"] == 2
    pending = create(client, enqueue=False)["id"]
    assert client.post(f"/workflows/{pending}/cancel", data={"csrf_token": token}).status_code == 303
    assert client.get(f"/api/workflows/{pending}").json["status"] == "cancelled"
    r = client.post(f"/workflows/{pending}/cancel", data={"csrf_token": token})
    assert r.status_code == 409 and "invalid_transition" in r.get_data(as_text=True)


def test_the_page_refuses_cross_site_and_tokenless_posts(client: FlaskClient, engine: WorkflowEngine) -> None:
    pending = create(client, enqueue=False)["id"]
    token = csrf(client, f"/workflows/{pending}")
    url = f"/workflows/{pending}/cancel"
    assert client.post(url, data={}).status_code == 403
    assert client.post(url, data={"csrf_token": "x" * 43}).status_code == 403
    evil = {"Origin": "https://evil.example"}
    assert client.post(url, data={"csrf_token": token}, headers=evil).status_code == 403
    assert (
        client.post(url, data={"csrf_token": token}, headers={"Sec-Fetch-Site": "cross-site"}).status_code
        == 403
    )
    cookieless = client.application.test_client()  # another browser: the token is not its cookie
    assert cookieless.post(url, data={"csrf_token": token}).status_code == 403
    assert engine.get_workflow(pending).status is S.PENDING
    same = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    assert client.post(url, data={"csrf_token": token}, headers=same).status_code == 303


# -- the example app --------------------------------------------------------------
@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Any]:
    path = ROOT / "examples" / "flask_dashboard" / "app.py"
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location("flask_dashboard_app", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # pydantic resolves the module's annotations through it
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("flask_dashboard_app", None)
        sys.path.remove(str(path.parent))


def test_the_example_dashboard_runs_an_agents_workflow_end_to_end(dashboard: Any, tmp_path: Path) -> None:
    app = dashboard.create_app(database_url=f"sqlite:///{tmp_path / 'dash.db'}")
    client = app.test_client()
    assert client.get("/").status_code == 200
    chat = {
        "message": "execute",
        "workflow_type_id": "website_creation",
        "tasks_per_week": 30,
        "minutes_per_task": 12,
        "hourly_wage": 40,
        "inputs": {"business": "Acme Bakery"},
    }
    r = client.post("/api/agents/ava/chat", json=chat)
    assert r.status_code == 201, r.json
    wf = r.json["workflow"]
    assert wf["status"] == "awaiting_approval" and wf["created_by_agent"] == "ava"
    # 30 tasks * 12 min / 60 = 6 h a week; * $40 = $240 a week, $12,480 a year
    assert wf["calculated_savings"] == {
        "hours_saved_per_week": 6.0,
        "weekly_savings": 240.0,
        "yearly_savings": 12480.0,
    }
    assert client.post("/api/agents/ava/chat", json={"message": "hello"}).json["workflow"] is None
    for voter in ("ana", "bo"):
        vote = client.post(
            "/api/council/vote", json={"workflow_id": wf["id"], "voter_id": voter, "approve": True}
        )
        assert vote.status_code == 200
    assert vote.json["status"] == "completed"
    done = client.get(f"/api/workflows/{wf['id']}").json
    assert done["result"]["url"] == "https://acme-bakery.example.com"
    stats = client.get("/api/analytics").json
    assert stats["calculated_savings"]["yearly_savings"] == 12480.0 and stats["by_status"]["completed"] == 1
    assert "12,480" in client.get("/").get_data(as_text=True)
    assert_error(
        client.post("/api/agents/ava/chat", json={"message": "execute", "tasks_per_week": -1}),
        400,
        "validation_error",
    )


@pytest.mark.slow
@pytest.mark.services
def test_the_example_dashboard_with_real_redis_runs_approved_workflows_even_one_whose_job_redis_lost(
    dashboard: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    """`app.py --redis URL`: the worker it starts finds the handlers' module by itself and runs what
    the council approves. It also reconciles: a workflow approved while no worker ran, whose job
    Redis then forgot, is delivered again from the database (a plain `rq worker` would leave it
    queued for good)."""
    db = f"sqlite:///{tmp_path / 'dash.db'}"
    client = dashboard.create_app(database_url=db, redis_url=redis_server.url).test_client()

    def approved(business: str) -> str:
        chat = {
            "message": "execute",
            "workflow_type_id": "website_creation",
            "inputs": {"business": business},
        }
        wid: str = client.post("/api/agents/ava/chat", json=chat).json["workflow"]["id"]
        for voter in ("ana", "bo"):
            vote = {"workflow_id": wid, "voter_id": voter, "approve": True}
            assert client.post("/api/council/vote", json=vote).status_code == 200
        return wid

    def status(wid: str) -> str:
        return str(client.get(f"/api/workflows/{wid}").json["status"])

    forgotten = approved("Lost Bakery")
    redis_server.flushall()  # its job is gone; the database still says queued
    assert status(forgotten) == "queued"
    worker = dashboard.start_worker(db, redis_server.url)
    try:
        ran = approved("Acme")
        wait_for(
            lambda: status(ran) == "completed", timeout=60, what="the worker to run the approved workflow"
        )
        assert client.get(f"/api/workflows/{ran}").json["result"]["url"] == "https://acme.example.com"
        wait_for(lambda: status(forgotten) == "completed", timeout=60, what="a reconcile to deliver it again")
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:  # seen once in CI (a SIGTERM as a job ended); not reproduced
            worker.kill()
            worker.wait(timeout=10)


def test_the_example_dashboard_answers_bad_input_with_400_and_survives_odd_savings(
    dashboard: Any, tmp_path: Path
) -> None:
    app = dashboard.create_app(database_url=f"sqlite:///{tmp_path / 'dash.db'}")
    client = app.test_client()
    chat = {"message": "execute", "workflow_type_id": "website_creation", "inputs": {"x": "a\x00b"}}
    assert_error(client.post("/api/agents/ava/chat", json=chat), 400, "invalid_input")
    assert_error(
        client.post(f"/api/agents/{'a' * 300}/chat", json={**chat, "inputs": {}}), 400, "invalid_input"
    )
    deep = b'{"message": "execute", "inputs": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    for body in (b"[" * 100_000, deep, b"{not json"):
        r = client.post("/api/agents/ava/chat", data=body, content_type="application/json")
        assert_error(r, 400, "invalid_json")
    # Any client may store any JSON as savings through the extension's API: the page still renders.
    odd = {"workflow_type_id": "website_creation", "calculated_savings": {"yearly_savings": "lots"}}
    assert client.post("/api/workflow_actions", json={**odd, "enqueue": False}).status_code == 201
    page = client.get("/")
    assert page.status_code == 200 and "$n/a" in page.get_data(as_text=True)
