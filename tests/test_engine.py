"""The engine's behaviour, specified on the in-process mode (the `workflow_engine` pytest fixture)."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fakeredis
import pydantic
import pytest
import rq

from workflow_engine import (
    InvalidTransition,
    QueueUnavailable,
    StoreUnavailable,
    UnknownWorkflowType,
    Workflow,
    WorkflowEngine,
    WorkflowEngineError,
    WorkflowNotFound,
    WorkflowStatus,
    cancel_requested,
    config,
    current_engine,
    execution,
    models,
    recovery,
    transport,
)
from workflow_engine.errors import ConfigurationError, HandlerTimeout, InvalidInput
from workflow_engine.models import utcnow
from workflow_engine.stores import open_store

import we_test_handlers
from support import a_workflow, true_in_a_forked_child, wait_for

S = WorkflowStatus


def double(wf: Workflow) -> dict[str, int]:
    return {"doubled": wf.inputs["n"] * 2}


def boom(wf: Workflow) -> None:
    raise RuntimeError("boom")


def not_json(wf: Workflow) -> object:
    return {"when": object()}


def exits(wf: Workflow) -> None:
    sys.exit(3)  # as a CLI library called from a handler would


def cancelled(wf: Workflow) -> None:
    raise asyncio.CancelledError()  # as asyncio.run() of a task that was cancelled would


def create(engine: WorkflowEngine, type_id: str = "double", **inputs: object) -> str:
    return engine.create_workflow(
        workflow_type_id=type_id, created_by_agent="agent", inputs=inputs or {"n": 1}
    )


def row_count(engine: WorkflowEngine) -> int:
    return len(engine.list_workflows(limit=10_000))


# -- creating and reading -------------------------------------------------------
def test_a_new_workflow_is_pending_with_a_creation_event(workflow_engine: WorkflowEngine) -> None:
    wid = workflow_engine.create_workflow(
        workflow_type_id="website_creation",
        created_by_agent="content_creator_agent",
        inputs={"business": "Ana's Bakery"},
        calculated_savings={"weekly_savings": 200.0},
        assigned_council_id="c1",
    )
    wf = workflow_engine.get_workflow(wid)
    assert wf.status is S.PENDING
    assert (wf.inputs, wf.calculated_savings, wf.assigned_council_id) == (
        {"business": "Ana's Bakery"},
        {"weekly_savings": 200.0},
        "c1",
    )
    assert wf.attempts == 0 and wf.result is None and wf.error is None
    [event] = workflow_engine.get_events(wid)
    assert (event.from_status, event.to_status, event.workflow_id) == (None, S.PENDING, wid)


def file_engine(
    tmp_path: Path, *, heartbeat_interval: float, stale_after: float, is_async: bool = False
) -> WorkflowEngine:
    """An engine on a SQLite file in ``tmp_path`` and fakeredis (in-process unless ``is_async``),
    with the recovery timings a test is about."""
    return WorkflowEngine(
        database_url=f"sqlite:///{tmp_path / 'w.db'}",
        redis_url="fakeredis://",
        is_async=is_async,
        heartbeat_interval=heartbeat_interval,
        stale_after=stale_after,
    )


def test_workflow_ids_are_random_uuids_as_32_hex_characters_and_valid_rq_job_ids(
    workflow_engine: WorkflowEngine,
) -> None:
    ids = {create(workflow_engine) for _ in range(50)}
    assert len(ids) == 50
    for wid in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", wid) and re.fullmatch(r"[A-Za-z0-9_-]+", wid)
        assert uuid.UUID(wid).version == 4 and uuid.UUID(wid).hex == wid


def test_timestamps_are_timezone_aware_utc(workflow_engine: WorkflowEngine) -> None:
    wf = workflow_engine.get_workflow(create(workflow_engine))
    assert wf.created_at.tzinfo is not None and wf.created_at.utcoffset() == timedelta(0)
    assert wf.created_at.tzinfo == timezone.utc


def test_a_workflow_model_refuses_naive_timestamps_and_converts_other_offsets_to_utc(
    workflow_engine: WorkflowEngine,
) -> None:
    wf = workflow_engine.get_workflow(create(workflow_engine))
    later = datetime(2030, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    moved = Workflow.model_validate({**wf.model_dump(), "started_at": later})
    assert moved.started_at == later and moved.started_at.tzinfo is timezone.utc
    assert moved.started_at.hour == 10
    with pytest.raises(pydantic.ValidationError, match="timezone-aware"):
        Workflow.model_validate({**wf.model_dump(), "started_at": later.replace(tzinfo=None)})


def test_to_dict_is_json_safe_with_iso_8601_datetimes(workflow_engine: WorkflowEngine) -> None:
    workflow_engine.register_handler("double", double)
    wid = create(workflow_engine, n=4)
    workflow_engine.enqueue_execution(wid)
    data = workflow_engine.get_workflow(wid).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["status"] == "completed"
    assert data["created_at"].endswith("Z")  # ISO 8601, UTC
    assert (
        datetime.fromisoformat(data["created_at"].replace("Z", "+00:00"))
        == workflow_engine.get_workflow(wid).created_at
    )
    assert data["result"] == {"doubled": 8}


def test_the_workflow_model_is_frozen(workflow_engine: WorkflowEngine) -> None:
    wf = workflow_engine.get_workflow(create(workflow_engine))
    with pytest.raises(ValueError):
        wf.status = S.COMPLETED  # type: ignore[misc]
    assert wf.model_copy(update={"attempts": 3}).attempts == 3


def test_getting_an_unknown_id_raises_workflow_not_found(workflow_engine: WorkflowEngine) -> None:
    with pytest.raises(WorkflowNotFound, match="no workflow with id 'nope'"):
        workflow_engine.get_workflow("nope")
    with pytest.raises(WorkflowNotFound):
        workflow_engine.get_events("nope")
    assert issubclass(WorkflowNotFound, WorkflowEngineError)


@pytest.mark.parametrize("bad", [["an-id"], {"id": 1}, 42, None])
def test_enqueueing_something_that_is_not_an_id_raises_workflow_not_found(
    workflow_engine: WorkflowEngine, bad: object
) -> None:
    create(workflow_engine)  # the engine remembers what it created: a list must not reach that cache
    with pytest.raises(WorkflowNotFound, match=r": a workflow id is a string, not (list|dict|int|NoneType)$"):
        workflow_engine.enqueue_execution(bad)  # type: ignore[arg-type]
    with pytest.raises(WorkflowNotFound, match=r": a workflow id is a string, not "):
        workflow_engine.get_workflow(bad)  # type: ignore[arg-type]


def test_a_very_long_unknown_id_is_cut_short_in_the_message(workflow_engine: WorkflowEngine) -> None:
    with pytest.raises(WorkflowNotFound) as caught:
        workflow_engine.get_workflow("x" * 5000)
    assert str(caught.value) == f"no workflow with id {'x' * 100!r}… (5000 characters)"
    assert caught.value.workflow_id == "x" * 5000


def test_list_workflows_is_newest_first_and_filters_by_status_type_and_agent(
    workflow_engine: WorkflowEngine,
) -> None:
    workflow_engine.register_handler("double", double)
    ids = [
        workflow_engine.create_workflow(workflow_type_id=t, created_by_agent=a, inputs={"n": i})
        for i, (t, a) in enumerate([("double", "a1"), ("other", "a2"), ("double", "a2"), ("other", "a1")])
    ]
    workflow_engine.enqueue_execution(ids[2])
    assert [w.id for w in workflow_engine.list_workflows()] == ids[::-1]
    assert [w.id for w in workflow_engine.list_workflows(status="completed")] == [ids[2]]
    assert [w.id for w in workflow_engine.list_workflows(workflow_type_id="other")] == [ids[3], ids[1]]
    assert [w.id for w in workflow_engine.list_workflows(created_by_agent="a2")] == [ids[2], ids[1]]
    assert [
        w.id for w in workflow_engine.list_workflows(workflow_type_id="double", created_by_agent="a1")
    ] == [ids[0]]
    assert [w.id for w in workflow_engine.list_workflows(limit=2)] == [ids[3], ids[2]]


def test_list_workflows_pages_with_a_keyset_cursor(workflow_engine: WorkflowEngine) -> None:
    ids = [create(workflow_engine) for _ in range(7)]
    seen: list[str] = []
    page = workflow_engine.list_workflows(limit=3)
    while page:
        seen += [w.id for w in page]
        page = workflow_engine.list_workflows(limit=3, before=page[-1])
    assert seen == ids[::-1]


# -- running in-process -----------------------------------------------------------
def test_enqueue_in_process_runs_the_workflow_to_completion_before_returning(
    workflow_engine: WorkflowEngine,
) -> None:
    workflow_engine.register_handler("double", double)
    wid = create(workflow_engine, n=21)
    workflow_engine.enqueue_execution(wid)
    wf = workflow_engine.get_workflow(wid)
    assert (wf.status, wf.result, wf.attempts) == (S.COMPLETED, {"doubled": 42}, 1)
    assert wf.started_at is not None and wf.finished_at is not None and wf.finished_at >= wf.started_at
    assert [(e.from_status, e.to_status) for e in workflow_engine.get_events(wid)] == [
        (None, S.PENDING),
        (S.PENDING, S.QUEUED),
        (S.QUEUED, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
    ]


def test_a_type_id_given_as_a_str_subclass_finds_its_registered_handler(
    workflow_engine: WorkflowEngine,
) -> None:
    """An app's StrEnum of its types: the member is the registered id, and validated like any."""
    import enum

    class Types(str, enum.Enum):
        REPORT = "report"
        BAD = " report"

    workflow_engine.register_handler("report", "we_test_handlers:record_success", max_retries=5)
    wf = workflow_engine.get_workflow(workflow_engine.create_workflow(workflow_type_id=Types.REPORT))
    assert (wf.workflow_type_id, wf.handler, wf.max_retries) == (
        "report",
        "we_test_handlers:record_success",
        5,
    )
    with pytest.raises(InvalidInput, match="whitespace"):
        workflow_engine.create_workflow(workflow_type_id=Types.BAD)


def test_the_decorator_registers_a_handler_and_returns_the_function(workflow_engine: WorkflowEngine) -> None:
    decorated = workflow_engine.handler("double", max_retries=0)(double)
    assert decorated is double
    spec = workflow_engine.handler_for("double")
    assert spec is not None and spec.path == f"{__name__}:double" and spec.max_retries == 0


def test_a_handler_registered_by_import_path_is_imported_when_it_runs(
    workflow_engine: WorkflowEngine, effects: object
) -> None:
    workflow_engine.register_handler("rec", "we_test_handlers:record_success")
    wid = create(workflow_engine, "rec", x=1)
    workflow_engine.enqueue_execution(wid)
    assert workflow_engine.get_workflow(wid).result == {"echo": {"x": 1}}


def test_a_failing_handler_is_recorded_as_failed_not_raised(workflow_engine: WorkflowEngine) -> None:
    workflow_engine.register_handler("boom", boom, max_retries=0)
    wid = create(workflow_engine, "boom")
    workflow_engine.enqueue_execution(wid)  # does not raise
    wf = workflow_engine.get_workflow(wid)
    assert wf.status is S.FAILED
    assert wf.error == "RuntimeError: boom"
    assert wf.traceback is not None and "raise RuntimeError" in wf.traceback


def test_a_base_exception_from_a_handler_fails_its_attempt_and_only_a_stop_request_is_raised_again(
    workflow_engine: WorkflowEngine,
) -> None:
    workflow_engine.register_handler("cancelled", cancelled, max_retries=0)
    wid = create(workflow_engine, "cancelled")
    workflow_engine.enqueue_execution(wid)  # does not raise
    wf = workflow_engine.get_workflow(wid)
    assert (wf.status, wf.error) == (S.FAILED, "CancelledError")
    assert wf.traceback is not None and "asyncio.CancelledError()" in wf.traceback

    workflow_engine.register_handler("exits", exits, max_retries=0)
    wid = create(workflow_engine, "exits")
    with pytest.raises(SystemExit):  # the process was asked to stop: it is, once the attempt is written
        workflow_engine.enqueue_execution(wid)
    wf = workflow_engine.get_workflow(wid)
    assert (wf.status, wf.error, wf.attempts) == (S.FAILED, "SystemExit: 3", 1)
    assert [e.to_status for e in workflow_engine.get_events(wid)][-2:] == [S.RUNNING, S.FAILED]


def test_in_process_a_stop_request_is_raised_after_the_other_waiting_jobs_ran_as_a_worker_runs_them(
    workflow_engine: WorkflowEngine,
) -> None:
    """A worker records the job whose handler asked to stop, and goes on with the next ones: its
    retry and the jobs delivered with it run; so they do in-process, before it is raised."""
    workflow_engine.register_handler("exits", exits, max_retries=1, retry_backoff=0)
    workflow_engine.register_handler("double", double)
    stopper = create(workflow_engine, "exits")
    others = [create(workflow_engine) for _ in range(2)]
    with pytest.raises(SystemExit):
        workflow_engine.enqueue_many([stopper, *others])
    assert [workflow_engine.get_workflow(w).status for w in others] == [S.COMPLETED, S.COMPLETED]
    wf = workflow_engine.get_workflow(stopper)
    assert (wf.status, wf.attempts) == (S.FAILED, 2), "its retry ran too"


def test_a_long_retry_budget_runs_in_process_without_exhausting_the_stack(
    workflow_engine: WorkflowEngine,
) -> None:
    """Each retry runs after the attempt that failed, not inside it: 300 attempts in one call."""
    workflow_engine.register_handler("boom", boom, max_retries=299, retry_backoff=0)
    wid = workflow_engine.create_workflow(workflow_type_id="boom")
    workflow_engine.enqueue_execution(wid)
    wf = workflow_engine.get_workflow(wid)
    assert (wf.status, wf.attempts) == (S.FAILED, 300)


_PARENTS: dict[str, WorkflowEngine] = {}


def child(wf: Workflow) -> dict[str, bool]:
    return {"child": True}


def parent_with_its_own_engine(wf: Workflow) -> dict[str, str]:
    """A handler that enqueues a child through an engine that lives only inside it."""
    helper = WorkflowEngine(
        database_url=_PARENTS["main"].database_url, redis_url="fakeredis://", is_async=False
    )
    helper.register_handler("child", child)
    return {"child": helper.create_workflow(workflow_type_id="child", enqueue=True)}


def parent_then_store_fails(wf: Workflow) -> dict[str, str]:
    engine = _PARENTS["flaky"]
    cid = engine.create_workflow(workflow_type_id="child", enqueue=True)
    engine.store.fail_next_completion = True  # type: ignore[attr-defined]
    return {"child": cid}


def test_a_child_enqueued_in_process_runs_even_if_its_engine_is_gone_or_the_parent_fails_to_record(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = WorkflowEngine(database_url=url, redis_url="fakeredis://", is_async=False)
    engine.register_handler("child", child)
    engine.register_handler("parent", parent_with_its_own_engine)
    engine.register_handler("flaky_parent", parent_then_store_fails)
    _PARENTS.update(main=engine, flaky=engine)
    parent = engine.create_workflow(workflow_type_id="parent", enqueue=True)
    child_id = engine.get_workflow(parent).result["child"]  # type: ignore[index]
    assert engine.get_workflow(child_id).status is S.COMPLETED

    apply = engine.store.apply

    def flaky_apply(changes: Any) -> Any:
        if (
            getattr(engine.store, "fail_next_completion", False)
            and changes[0].changes.get("status") is S.COMPLETED
        ):
            engine.store.fail_next_completion = False  # type: ignore[attr-defined]
            raise StoreUnavailable("the database went away for a moment")
        return apply(changes)

    engine.store.apply = flaky_apply  # type: ignore[method-assign]
    flaky = engine.create_workflow(workflow_type_id="flaky_parent")
    with pytest.raises(StoreUnavailable):
        engine.enqueue_execution(flaky)  # the parent's completion failed, and says so
    children = engine.list_workflows(workflow_type_id="child")
    assert [wf.status for wf in children] == [S.COMPLETED, S.COMPLETED]  # its child ran all the same
    engine.close()


def parent_that_enqueues_its_child_twice(wf: Workflow) -> dict[str, str]:
    engine = _PARENTS["twice"]
    cid = engine.create_workflow(workflow_type_id="child", enqueue=True)
    engine.enqueue_execution(cid)  # queued, its job waiting: nothing to do, as in production
    return {"child": cid}


def test_rqs_job_timeout_during_a_slow_import_fails_the_attempt_with_retries_not_the_workflow_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RQ's backstop (the handler's timeout plus a grace) runs from the job's start: an import that
    outlasts it is the attempt's failure, as a timeout is, not a handler that cannot be imported."""
    (tmp_path / "we_very_slow_import.py").write_text(
        "import time\ntime.sleep(1.0)\ndef run(workflow):\n    return None\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(transport, "TIMEOUT_GRACE", 0)  # RQ's backstop: ceil(0.5) + 0 = 1 s
    engine = file_engine(tmp_path, heartbeat_interval=5, stale_after=30, is_async=True)
    engine.register_handler("slow", "we_very_slow_import:run", timeout=0.5, max_retries=1, retry_backoff=0)
    wid = engine.create_workflow(workflow_type_id="slow", enqueue=True)

    rq.SimpleWorker([engine.queue], connection=engine.redis).work(burst=True)

    wf = engine.get_workflow(wid)
    assert (wf.status, wf.attempts) == (S.FAILED, 2), wf.error
    assert wf.error is not None and wf.error.startswith("JobTimeoutException: "), wf.error
    assert "cannot import" not in wf.error


def test_a_handler_whose_module_takes_longer_than_stale_after_to_import_keeps_its_lease(
    tmp_path: Path,
) -> None:
    """A plain forking worker imports the handler's module in every work-horse, after the claim.
    The heartbeat runs from the claim on, so a slow import is not taken for a lost worker."""
    engine = file_engine(tmp_path, heartbeat_interval=0.1, stale_after=0.5, is_async=True)
    engine.register_handler("slow", "we_slow_import:run")  # by path: imported when the job runs
    wid = engine.create_workflow(workflow_type_id="slow", enqueue=True)
    wf = engine.get_workflow(wid)
    sys.modules.pop("we_slow_import", None)  # imported afresh: one second
    stop, reports = threading.Event(), []

    def reconciler() -> None:  # another process, every tenth of a second
        while not stop.is_set():
            reports.append(engine.reconcile())
            time.sleep(0.1)

    thread = threading.Thread(target=reconciler)
    thread.start()
    try:
        status = execution.run_attempt(engine, wid, job_id=str(wf.job_id), handler=wf.handler, worker="w")
    finally:
        stop.set()
        thread.join()
    assert status == "completed" and engine.get_workflow(wid).attempts == 1
    assert not any(report.requeued_stale for report in reports)
    engine.close()


def raises_unknown_type(wf: Workflow) -> None:
    raise UnknownWorkflowType("child", "a handler that asked for a type nobody registered")


def test_an_unknown_type_raised_by_the_handler_itself_is_an_error_like_any_other(
    workflow_engine: WorkflowEngine,
) -> None:
    workflow_engine.register_handler("asks", raises_unknown_type, max_retries=1, retry_backoff=0)
    wid = workflow_engine.create_workflow(workflow_type_id="asks", enqueue=True)
    wf = workflow_engine.get_workflow(wid)
    assert (wf.status, wf.attempts) == (S.FAILED, 2)  # retried, as any handler error is
    assert wf.traceback is not None and "raises_unknown_type" in wf.traceback


def test_a_cancel_requested_while_a_missing_handler_was_looked_up_ends_the_workflow_cancelled(
    workflow_engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing the handler's module can take a while; a cancel asked meanwhile is honoured,
    as it is for any other failed attempt, instead of being recorded as a failure."""
    workflow_engine.register_handler("gone", "we_no_such_module:handler")
    wid = workflow_engine.create_workflow(workflow_type_id="gone")
    real = workflow_engine.resolve_handler

    def cancelled_while_importing(path: str, workflow_type_id: str) -> Any:
        workflow_engine.cancel(wid, reason="operator")
        return real(path, workflow_type_id)  # UnknownWorkflowType: the module does not exist

    monkeypatch.setattr(workflow_engine, "resolve_handler", cancelled_while_importing)
    workflow_engine.enqueue_execution(wid)
    wf = workflow_engine.get_workflow(wid)
    assert wf.status is S.CANCELLED, (wf.status, wf.error)
    assert wf.error is not None and "we_no_such_module" in wf.error
    assert wf.finished_at is not None
    last = workflow_engine.get_events(wid)[-1]
    assert (last.from_status, last.to_status) == (S.RUNNING, S.CANCELLED)
    assert last.detail is not None and last.detail.endswith("cancelled as requested")


def test_enqueueing_a_workflow_whose_job_waits_in_process_does_nothing_as_in_production(
    workflow_engine: WorkflowEngine,
) -> None:
    _PARENTS["twice"] = workflow_engine
    workflow_engine.register_handler("child", child)
    workflow_engine.register_handler("parent", parent_that_enqueues_its_child_twice)
    parent = workflow_engine.create_workflow(workflow_type_id="parent", enqueue=True)
    child_id = workflow_engine.get_workflow(parent).result["child"]  # type: ignore[index]
    trail = [(e.from_status, e.to_status) for e in workflow_engine.get_events(child_id)]
    assert trail == [
        (None, S.PENDING),
        (S.PENDING, S.QUEUED),
        (S.QUEUED, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
    ]


# -- handlers that start workflows: current_engine() ---------------------------
def parent_through_current_engine(wf: Workflow) -> dict[str, str]:
    """Starts its child through the engine running it: once, though its first attempt then fails."""
    engine = current_engine()
    cid = engine.create_workflow(
        workflow_type_id="child", inputs={"parent": wf.id}, idempotency_key=f"{wf.id}:child", enqueue=True
    )
    if wf.attempts == 1:
        raise ConnectionError("failed after starting its child")
    return {"child": cid, "engine": engine.key}


def test_a_handler_starts_a_child_through_current_engine_and_a_retry_with_its_key_starts_no_second(
    workflow_engine: WorkflowEngine,
) -> None:
    workflow_engine.register_handler("child", child)
    workflow_engine.register_handler("parent", parent_through_current_engine, max_retries=1, retry_backoff=0)
    pid = workflow_engine.create_workflow(workflow_type_id="parent", enqueue=True)

    parent = workflow_engine.get_workflow(pid)
    assert (parent.status, parent.attempts) == (S.COMPLETED, 2), parent.error
    assert parent.result == {"child": parent.result["child"], "engine": workflow_engine.key}  # type: ignore[index]
    [only_child] = workflow_engine.list_workflows(workflow_type_id="child")
    assert only_child.id == parent.result["child"]  # type: ignore[index]
    assert only_child.inputs == {"parent": pid}
    assert (only_child.status, only_child.result) == (S.COMPLETED, {"child": True})


def current_engine_in_a_thread(wf: Workflow) -> dict[str, str]:
    """What current_engine() says in a thread this handler starts."""
    said: list[str] = []

    def call() -> None:
        try:
            current_engine()
        except WorkflowEngineError as exc:
            said.append(str(exc))

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    return {"in_thread": said[0], "here": current_engine().key}


def test_current_engine_outside_a_handler_or_in_a_thread_it_started_raises_saying_where_it_works(
    workflow_engine: WorkflowEngine,
) -> None:
    message = "current_engine() is only available while a handler runs, in the handler's own thread"
    with pytest.raises(WorkflowEngineError, match=re.escape(message)):
        current_engine()
    workflow_engine.register_handler("threads", current_engine_in_a_thread)
    wid = workflow_engine.create_workflow(workflow_type_id="threads", enqueue=True)
    result = workflow_engine.get_workflow(wid).result
    assert result["here"] == workflow_engine.key  # type: ignore[index]
    assert result["in_thread"].startswith(message)  # type: ignore[index]
    with pytest.raises(WorkflowEngineError):
        current_engine()  # the attempt is over


def parent_of_an_unknown_type(wf: Workflow) -> None:
    current_engine().create_workflow(workflow_type_id="nobody_registered", enqueue=True)


def app_module(folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module in ``folder``, importable, whose ``engine`` is an app's with a ``report`` handler."""
    module = f"we_app_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(
        "from workflow_engine import WorkflowEngine\n"
        "engine = WorkflowEngine(\n"
        "    database_url='sqlite:///:memory:', redis_url='fakeredis://', is_async=False\n"
        ")\n"
        "engine.register_handler('report', 'we_test_handlers:noop', max_retries=5, timeout=9)\n"
        "not_an_engine = 42\n",
        encoding="utf-8",
    )
    (folder / f"{module}_checkout").mkdir()  # no __init__.py: a namespace package if imported
    # An app whose settings check exits as it is imported.
    (folder / f"{module}_exits.py").write_text(
        "import sys\nsys.exit('SECRET_KEY is not set')\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(folder))
    return module


def test_a_work_horse_uses_the_engine_its_worker_prepared_finished_as_it_would_have_built_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain forking worker builds its engine as it reads its first workflow job, unconnected and
    without the app: each work-horse inherits it instead of building one per job. The horse finishes
    it (the app's handlers), and builds its own if the environment no longer says the same."""
    module = app_module(tmp_path, monkeypatch)
    database_url = f"sqlite:///{tmp_path / 'w.db'}"
    monkeypatch.setenv("WORKFLOW_ENGINE_DATABASE_URL", database_url)
    monkeypatch.setenv("WORKFLOW_ENGINE_APP", f"{module}:engine")
    execution.set_worker_engine(None)
    try:
        execution.prepare_worker_engine()
        prepared = execution._worker_engine
        assert prepared is not None and prepared.database_url == database_url
        assert prepared._app_name is None and module not in sys.modules, "the app is the horse's to import"
        assert not (tmp_path / "w.db").exists(), "nothing is connected"
        execution.prepare_worker_engine()
        assert execution._worker_engine is prepared, "prepared once"

        def finished() -> bool:
            engine = execution.worker_engine()
            return (
                engine is prepared
                and engine._app_name == f"{module}:engine"
                and engine.handler_types() == ["report"]
            )

        assert true_in_a_forked_child(finished)
        monkeypatch.setenv("WORKFLOW_ENGINE_QUEUE", "elsewhere")

        def built_again() -> bool:
            engine = execution.worker_engine()
            return engine is not prepared and engine.queue_name == "elsewhere"

        assert true_in_a_forked_child(built_again)
        monkeypatch.setenv("WORKFLOW_ENGINE_HEARTBEAT_INTERVAL", "soon")

        def says_why() -> bool:
            with pytest.raises(ConfigurationError, match="WORKFLOW_ENGINE_HEARTBEAT_INTERVAL"):
                execution.worker_engine()
            return True

        assert true_in_a_forked_child(says_why)
        assert execution._worker_engine is prepared and prepared._app_name is None, (
            "the worker's own is untouched"
        )
    finally:
        execution.set_worker_engine(None)
        sys.modules.pop(module, None)


def test_a_prepared_engine_is_finished_once_in_a_process_that_forks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A SimpleWorker reads its first job's meta and runs the job in one process: the first job
    finishes the engine, and later jobs neither take the app's handlers again nor log it again."""
    module = app_module(tmp_path, monkeypatch)
    monkeypatch.setenv("WORKFLOW_ENGINE_DATABASE_URL", f"sqlite:///{tmp_path / 'w.db'}")
    monkeypatch.setenv("WORKFLOW_ENGINE_APP", f"{module}:engine")
    execution.set_worker_engine(None)
    caplog.set_level("INFO", logger="workflow_engine")
    try:
        execution.prepare_worker_engine()
        prepared = execution._worker_engine
        assert execution._ready is None, "not complete: a job must not take it as it is"
        assert [execution.worker_engine() for _ in range(3)] == [prepared] * 3
        assert execution._ready is prepared, "complete: later jobs take it without the lock"
        said = [r.getMessage() for r in caplog.records if r.name == "workflow_engine.execution"]
        assert said == [
            f"handlers from the app's engine {module}:engine",
            f"worker engine from the environment: sqlite:///{tmp_path / 'w.db'}",
        ]
    finally:
        execution.set_worker_engine(None)
        sys.modules.pop(module, None)


def test_a_prepared_engine_whose_app_cannot_be_loaded_at_a_strict_start_stays_prepared_for_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = app_module(tmp_path, monkeypatch)
    monkeypatch.setenv("WORKFLOW_ENGINE_DATABASE_URL", f"sqlite:///{tmp_path / 'w.db'}")
    monkeypatch.setenv("WORKFLOW_ENGINE_APP", f"{module}:missing")
    execution.set_worker_engine(None)
    try:
        execution.prepare_worker_engine()
        prepared = execution._worker_engine
        assert prepared is not None
        with pytest.raises(ConfigurationError, match="has no 'missing'"):
            execution.worker_engine(strict=True)
        assert execution._worker_engine is prepared and execution._prepared is not None
        monkeypatch.setenv("WORKFLOW_ENGINE_APP", f"{module}:engine")
        engine = execution.worker_engine(strict=True)
        assert engine is prepared and engine.handler_types() == ["report"] and execution._prepared is None
    finally:
        execution.set_worker_engine(None)
        sys.modules.pop(module, None)


@pytest.mark.parametrize("order", ["set, then prepared", "prepared, then set"])
def test_an_engine_set_is_never_replaced_by_a_prepared_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """`workflow-engine worker` and a preloading worker set theirs at start: reading a job's meta
    before or after changes nothing, and the engine set is used as it is."""
    monkeypatch.setenv("WORKFLOW_ENGINE_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.setenv("WORKFLOW_ENGINE_APP", "we_no_such_app:engine")  # taken only by an engine built here
    execution.set_worker_engine(None)
    given = WorkflowEngine(database_url=f"sqlite:///{tmp_path / 'given.db'}", redis_url="fakeredis://")
    try:
        if order == "set, then prepared":
            execution.set_worker_engine(given)
            execution.prepare_worker_engine()
        else:
            execution.prepare_worker_engine()
            execution.set_worker_engine(given)
        assert execution.worker_engine(strict=True) is given
    finally:
        execution.set_worker_engine(None)
        given.close()


def test_an_app_whose_import_reads_a_workflow_job_does_not_stop_its_worker_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building the worker's engine imports the app; an app that reads a workflow job as it is
    imported (Job.fetch in a module, a framework's ready hook) unpickles its meta meanwhile, which
    prepares an engine only if nothing is building one: it must not wait for the builder."""
    module = app_module(tmp_path, monkeypatch)
    reader = f"{module}_reads_jobs"
    (tmp_path / f"{reader}.py").write_text(
        "import pickle\n"
        "from workflow_engine import transport\n"
        "pickle.loads(pickle.dumps({transport.META_KEY: transport.PRELOAD}))  # what Job.fetch does\n"
        f"from {module} import engine\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_ENGINE_")}
    env.update(
        WORKFLOW_ENGINE_DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}",
        WORKFLOW_ENGINE_APP=f"{reader}:engine",
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(we_test_handlers.__file__).parent)]),
    )
    start = (  # what `rq worker -c workflow_engine.rq_preload` and `workflow-engine worker` do first
        "from workflow_engine import execution; engine = execution.worker_engine(strict=True); "
        "print(engine._app_name, engine.handler_types())"
    )
    out = subprocess.run(
        [sys.executable, "-c", start], capture_output=True, text=True, env=env, timeout=30, check=True
    )
    assert out.stdout.strip() == f"{reader}:engine ['report']"


@pytest.mark.services
def test_a_worker_handler_starting_a_type_its_engine_lacks_fails_saying_what_the_apps_engine_gave(
    tmp_path: Path, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stock worker's engine (built from the environment) has only the handlers of the app's
    engine that WORKFLOW_ENGINE_APP names; the failed attempt says which of three cases it was.
    One that cannot be loaded fails only the attempts that need it: other jobs run."""
    module = app_module(tmp_path, monkeypatch)
    web = WorkflowEngine(database_url=f"sqlite:///{tmp_path / 'w.db'}", redis_url=redis_server.url)
    web.register_handler("parent", parent_of_an_unknown_type, max_retries=0)
    web.register_handler("report", "we_test_handlers:noop")
    monkeypatch.setenv("WORKFLOW_ENGINE_DATABASE_URL", web.database_url)
    monkeypatch.setenv("WORKFLOW_ENGINE_REDIS_URL", redis_server.url)
    said = {}
    try:
        cases = [
            ("unset", None),
            ("loaded", f"{module}:engine"),
            ("broken", f"{module}:missing"),
            ("set", None),
        ]
        for case, app in cases:
            if app is None:
                monkeypatch.delenv("WORKFLOW_ENGINE_APP", raising=False)
            else:
                monkeypatch.setenv("WORKFLOW_ENGINE_APP", app)
            execution.set_worker_engine(None)  # built again, from the environment, at the first job
            if case == "set":  # but the worker runs on an engine that did not take it (set by code)
                monkeypatch.setenv("WORKFLOW_ENGINE_APP", f"{module}:engine")
                execution.set_worker_engine(
                    WorkflowEngine(database_url=web.database_url, redis_url=redis_server.url)
                )
            wid = web.create_workflow(workflow_type_id="parent", enqueue=True)
            other = web.create_workflow(workflow_type_id="report", enqueue=True)
            rq.SimpleWorker([web.queue], connection=web.redis).work(burst=True)
            assert web.get_workflow(other).status is S.COMPLETED, case
            wf = web.get_workflow(wid)
            assert wf.status is S.FAILED and wf.error is not None, case
            assert wf.error.startswith("UnknownWorkflowType: no handler is registered for workflow type "), wf
            said[case] = wf.error
            worker = execution._worker_engine
            assert worker is not None
            worker.close()
    finally:
        execution.set_worker_engine(None)
        web.close()
        sys.modules[module].engine.close()
        sys.modules.pop(module, None)
    assert said["unset"].endswith(
        "(WORKFLOW_ENGINE_APP is not set: in a worker, current_engine() has the handlers of the app's "
        "engine it names as package.module:engine (or workflow-engine worker --app))"
    )
    assert said["loaded"].endswith(f"(nor has the app's engine {module}:engine (handlers: report))")
    assert said["set"].endswith(
        "(this engine has not taken the handlers of WORKFLOW_ENGINE_APP's engine: in a worker, the engine "
        "current_engine() returns has them)"
    )
    assert said["broken"].endswith(
        f"(WORKFLOW_ENGINE_APP could not be loaded: cannot load the app's engine '{module}:missing': "
        f"module '{module}' has no 'missing')"
    )
    assert web.list_workflows(workflow_type_id="nobody_registered") == []  # nothing half-made


def test_in_process_a_handler_starting_a_type_nobody_registered_fails_without_the_workers_advice(
    tmp_path: Path,
) -> None:
    """WORKFLOW_ENGINE_APP does nothing where the engine that enqueued runs the job (fakeredis)."""
    engine = file_engine(tmp_path, heartbeat_interval=5, stale_after=30, is_async=True)
    engine.register_handler("parent", parent_of_an_unknown_type, max_retries=0)
    wid = engine.create_workflow(workflow_type_id="parent", enqueue=True)
    rq.SimpleWorker([engine.queue], connection=engine.redis).work(burst=True)
    wf = engine.get_workflow(wid)
    assert wf.status is S.FAILED and wf.error is not None
    assert wf.error.startswith("UnknownWorkflowType: no handler is registered"), wf.error
    assert "WORKFLOW_ENGINE_APP" not in wf.error
    assert wf.error.endswith(
        "(on the engine running this handler: in a test, register it on the test's engine too)"
    )
    engine.close()


def test_a_worker_engine_shares_the_handlers_of_the_app_engine_that_workflow_engine_app_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = app_module(tmp_path, monkeypatch)
    worker = file_engine(tmp_path, heartbeat_interval=5, stale_after=30, is_async=True)
    try:
        assert execution.take_app_handlers(worker) is None  # WORKFLOW_ENGINE_APP unset: nothing
        assert worker.handler_types() == []
        monkeypatch.setenv("WORKFLOW_ENGINE_APP", f" {module}:engine\r")  # as a CRLF .env file gives it
        app = execution.take_app_handlers(worker)
        assert app is sys.modules[module].engine
        spec = worker.handler_for("report")
        assert spec is not None
        assert (spec.path, spec.max_retries, spec.timeout) == ("we_test_handlers:noop", 5, 9)
        # Registered on the app's engine later (by a handler module imported after): shared too.
        app.register_handler("later", "we_test_handlers:noop")
        assert sorted(worker.handler_types()) == ["later", "report"]
        worker.register_handler("report", "we_test_handlers:record_success")  # its own come first
        assert [e.handler_for("report").path for e in (worker, app)] == [  # type: ignore[union-attr]
            "we_test_handlers:record_success",
            "we_test_handlers:noop",
        ]
        execution.take_app_handlers(worker)  # again: shared once
        assert worker._shared == [app._handlers]
        assert worker.database_url != app.database_url  # only the registrations: the database stays
        for name, error in [
            (module, "must be named as 'package.module:engine'"),
            (f"{module}:", "must be named as 'package.module:engine'"),
            (
                f"{module}:missing",
                f"cannot load the app's engine '{module}:missing': module '{module}' has no",
            ),
            (
                "we_no_app:engine",
                "cannot load the app's engine 'we_no_app:engine': ModuleNotFoundError: No module named "
                "'we_no_app'; start the worker where it can import that module (--path <app dir>)",
            ),
            (
                "workflow_engine.engin:engine",
                "ModuleNotFoundError: No module named 'workflow_engine.engin'; package 'workflow_engine' "
                "has no module 'engin'",
            ),
            (  # a checkout named like its package, its parent on the path: a bare directory
                f"{module}_checkout.engine:engine",
                f"'{module}_checkout' was found as a bare directory ({tmp_path / (module + '_checkout')}), "
                "not the app's package: start the worker where it can import that module (--path <app dir>)",
            ),
            (f"{module}:not_an_engine", "is of type int, not a WorkflowEngine"),
            (
                f"{module}_exits:engine",
                f"SystemExit: SECRET_KEY is not set (importing '{module}_exits' raised it)",
            ),
        ]:
            with pytest.raises(ConfigurationError, match=re.escape(error)):
                execution.take_app_handlers(worker, name)
        app.close()
    finally:
        worker.close()
        sys.modules.pop(module, None)


def parent_that_waits_for_another_thread(wf: Workflow) -> dict[str, str]:
    """Enqueues a child, lets the test's other thread act on it, and reports what the child was then."""
    engine = _PARENTS["waits"]
    cid = engine.create_workflow(workflow_type_id="child", enqueue=True)
    _CHILD_QUEUED.put(cid)
    assert _OTHER_THREAD_DONE.wait(10)
    return {"child": cid, "child_then": engine.get_workflow(cid).status.value}


_CHILD_QUEUED: queue.Queue[str] = queue.Queue()
_OTHER_THREAD_DONE = threading.Event()


def test_a_job_waiting_in_one_threads_in_process_queue_is_live_to_every_other_thread(
    workflow_engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a job waiting in Redis is to every process: another thread's reconcile or enqueue leaves
    the child alone, and it runs once, after its parent's attempt, in the parent's thread."""
    monkeypatch.setattr(recovery, "REDELIVERY_GRACE", timedelta(0))
    _PARENTS["waits"] = workflow_engine
    _OTHER_THREAD_DONE.clear()
    workflow_engine.register_handler("child", child)
    workflow_engine.register_handler("parent", parent_that_waits_for_another_thread)
    seen: dict[str, Any] = {}

    def other_thread() -> None:
        cid = _CHILD_QUEUED.get(timeout=10)
        try:
            seen["reconcile"] = workflow_engine.reconcile()
            workflow_engine.enqueue_execution(cid)
            seen["status"] = workflow_engine.get_workflow(cid).status
        finally:
            _OTHER_THREAD_DONE.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    parent = workflow_engine.create_workflow(workflow_type_id="parent", enqueue=True)
    thread.join(10)
    result = workflow_engine.get_workflow(parent).result
    child_id = result["child"]  # type: ignore[index]
    assert seen["reconcile"].total == 0 and seen["reconcile"].undeliverable == []
    assert seen["status"] is S.QUEUED and result["child_then"] == "queued"  # type: ignore[index]
    trail = [(e.from_status, e.to_status) for e in workflow_engine.get_events(child_id)]
    assert trail == [
        (None, S.PENDING),
        (S.PENDING, S.QUEUED),
        (S.QUEUED, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
    ]
    # Done with, it is no longer live: a workflow whose job was lost is delivered again.
    child_job = str(workflow_engine.get_workflow(child_id).job_id)
    assert workflow_engine.transport.live_jobs([child_job]) == set()


def test_an_in_process_engine_takes_a_job_waiting_in_a_shared_redis_for_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script in the in-process mode beside a web app's engine, on one database and one Redis:
    its reconcile leaves the job a worker has still to take alone."""
    monkeypatch.setattr(recovery, "REDELIVERY_GRACE", timedelta(0))
    url, server = f"sqlite:///{tmp_path / 'w.db'}", fakeredis.FakeServer()
    web = WorkflowEngine(database_url=url, redis_connection=fakeredis.FakeRedis(server=server))
    script = WorkflowEngine(
        database_url=url, redis_connection=fakeredis.FakeRedis(server=server), is_async=False
    )
    for engine in (web, script):
        engine.register_handler("noop", "we_test_handlers:noop")
    wid = web.create_workflow(workflow_type_id="noop", enqueue=True)
    job = str(web.get_workflow(wid).job_id)
    assert script.transport.live_jobs([job]) == {job}
    assert script.reconcile().total == 0
    script.enqueue_execution(wid)  # queued, its job waiting: nothing to do
    assert [e.detail for e in script.get_events(wid)] == [None, "enqueued"]
    web.close()
    script.close()


def test_a_forked_child_never_waits_for_the_in_process_jobs_lock_as_it_came_across(
    workflow_engine: WorkflowEngine,
) -> None:
    from workflow_engine import transport

    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with transport._sync_pending_lock:
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    try:

        def free() -> bool:
            asked = threading.Thread(target=transport._sync_live, args=(["x"],), daemon=True)
            asked.start()
            asked.join(2)
            return not asked.is_alive()

        assert true_in_a_forked_child(free)
    finally:
        done.set()
        holder.join()


def test_a_forked_child_does_not_take_its_parents_pending_in_process_jobs_for_live() -> None:
    """The parent's threads perform them, not the child's: if the parent died, the child's
    reconcile must deliver their workflows again."""
    from workflow_engine import transport

    transport._pending(["parents-job"])
    try:
        assert transport._sync_live(["parents-job"]) == {"parents-job"}
        assert true_in_a_forked_child(lambda: transport._sync_live(["parents-job"]) == set())
    finally:
        transport._settled(["parents-job"])


def test_a_store_or_redis_connection_of_the_wrong_kind_is_refused_at_once() -> None:
    with pytest.raises(InvalidInput, match="store must be a workflow_engine store"):
        WorkflowEngine(store="sqlite:///w.db")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"redis_connection must be a redis\.Redis client"):
        WorkflowEngine(database_url="sqlite:///:memory:", redis_connection="redis://localhost:6379/0")
    with pytest.raises(ConfigurationError, match="decode_responses=True"):
        WorkflowEngine(
            database_url="sqlite:///:memory:", redis_connection=fakeredis.FakeRedis(decode_responses=True)
        )


def test_in_process_retries_run_at_once_and_count_every_attempt(
    workflow_engine: WorkflowEngine, effects: object
) -> None:
    workflow_engine.register_handler("flaky", we_test_handlers.flaky, max_retries=3, retry_backoff=30)
    wid = workflow_engine.create_workflow(workflow_type_id="flaky", inputs={"fail_times": 2})
    workflow_engine.enqueue_execution(wid)
    wf = workflow_engine.get_workflow(wid)
    assert (wf.status, wf.attempts, wf.result) == (S.COMPLETED, 3, {"attempts": 3})
    failures = [
        e for e in workflow_engine.get_events(wid) if e.from_status is S.RUNNING and e.to_status is S.QUEUED
    ]
    assert [e.attempt for e in failures] == [1, 2]
    assert all("flaky failure" in (e.detail or "") for e in failures)


def test_a_workflow_fails_after_one_plus_max_retries_attempts_and_requeue_runs_it_again(
    workflow_engine: WorkflowEngine, effects: object
) -> None:
    workflow_engine.register_handler("fail", we_test_handlers.always_fail, max_retries=2, retry_backoff=0)
    wid = create(workflow_engine, "fail")
    workflow_engine.enqueue_execution(wid)
    wf = workflow_engine.get_workflow(wid)
    assert (wf.status, wf.attempts) == (S.FAILED, 3)
    assert wf.error == "ValueError: this handler always fails"
    requeued = workflow_engine.requeue(wid)  # runs in-process before returning
    assert (requeued.status, requeued.attempts) == (S.FAILED, 6)


def test_a_result_that_is_not_json_fails_the_attempt_with_a_clear_error(
    workflow_engine: WorkflowEngine,
) -> None:
    workflow_engine.register_handler("bad", not_json, max_retries=0)
    wid = create(workflow_engine, "bad")
    workflow_engine.enqueue_execution(wid)
    wf = workflow_engine.get_workflow(wid)
    assert wf.status is S.FAILED and "result must be JSON-serialisable" in (wf.error or "")


def test_a_handler_past_its_timeout_fails_with_a_timeout_error_even_if_it_catches_exceptions(
    workflow_engine: WorkflowEngine, effects: object
) -> None:
    workflow_engine.register_handler("slow", we_test_handlers.swallow_everything, max_retries=0, timeout=0.3)
    wid = workflow_engine.create_workflow(workflow_type_id="slow", inputs={"seconds": 5})
    start = time.monotonic()
    workflow_engine.enqueue_execution(wid)
    assert time.monotonic() - start < 2
    wf = workflow_engine.get_workflow(wid)
    assert wf.status is S.FAILED and "timed out after 0.3 s" in (wf.error or "")


def swallow_even_its_timeout(wf: Workflow) -> str:
    try:
        time.sleep(5)
    except:  # noqa: E722 - a bare except, which catches HandlerTimeout too
        pass
    return "done anyway"


def test_a_handler_that_catches_its_own_timeout_and_returns_still_fails_as_timed_out(
    workflow_engine: WorkflowEngine,
) -> None:
    workflow_engine.register_handler("stubborn", swallow_even_its_timeout, max_retries=0, timeout=0.2)
    wid = create(workflow_engine, "stubborn")
    workflow_engine.enqueue_execution(wid)
    wf = workflow_engine.get_workflow(wid)
    assert (wf.status, wf.error, wf.result) == (S.FAILED, "handler timed out after 0.2 s", None)


def test_an_async_handler_is_refused_at_registration_or_fails_its_workflow_at_once_by_path(
    workflow_engine: WorkflowEngine,
) -> None:
    """Called and not awaited, its body never ran: each attempt failed on the coroutine its call
    made ("not JSON serializable"), and used up every retry."""
    with pytest.raises(InvalidInput, match="is an async function, and handlers are called, not awaited"):
        workflow_engine.register_handler("later", we_test_handlers.async_handler)
    workflow_engine.register_handler("later", "we_test_handlers:async_handler", max_retries=3)
    wid = create(workflow_engine, "later")
    workflow_engine.enqueue_execution(wid)
    wf = workflow_engine.get_workflow(wid)
    assert (wf.status, wf.attempts) == (S.FAILED, 1)  # at once: retrying cannot fix it
    assert "asyncio.run" in (wf.error or "")


def raise_a_huge_error(wf: Workflow) -> None:
    raise ValueError("x" * 1_000_000)


def test_a_huge_exception_is_recorded_cut_to_a_few_kilobytes_saying_how_much_was_cut(
    workflow_engine: WorkflowEngine,
) -> None:
    """Stored whole, a handler's ValueError(1 MB) was kept three times an attempt (the error, the
    traceback, the event), and read back with every listing."""
    from workflow_engine import handlers

    workflow_engine.register_handler("huge", raise_a_huge_error, max_retries=1, retry_backoff=0)
    wid = create(workflow_engine, "huge")
    workflow_engine.enqueue_execution(wid)
    wf = workflow_engine.get_workflow(wid)
    assert wf.status is S.FAILED and wf.error is not None and wf.traceback is not None
    assert wf.error.startswith("ValueError: xxx") and wf.error.endswith("characters cut)")
    assert len(wf.error) < handlers.MAX_ERROR_CHARS + 50
    assert len(wf.traceback) < handlers.MAX_TRACEBACK_CHARS + 50
    assert wf.traceback.startswith("… (") and "characters cut)" in wf.traceback.splitlines()[0]
    assert all(len(e.detail or "") < handlers.MAX_ERROR_CHARS + 100 for e in workflow_engine.get_events(wid))


def go_on_after_the_timeout(wf: Workflow) -> str:
    try:
        time.sleep(5)
    except:  # noqa: E722 - caught, and the handler goes on, as a ``with ThreadPoolExecutor()`` would
        time.sleep(30)
    return "done anyway"


def test_a_handler_that_catches_its_timeout_and_goes_on_is_interrupted_again_soon(
    workflow_engine: WorkflowEngine,
) -> None:
    """RQ's backstop is off while the engine's timer stands in for it: a timeout fired once and
    caught left the handler to run unbounded (on a SimpleWorker, for ever)."""
    workflow_engine.register_handler("stubborn", go_on_after_the_timeout, max_retries=0, timeout=0.2)
    wid = create(workflow_engine, "stubborn")
    started = time.monotonic()
    workflow_engine.enqueue_execution(wid)
    assert time.monotonic() - started < 0.2 + execution.TIMEOUT_REPEAT + 1
    wf = workflow_engine.get_workflow(wid)
    assert (wf.status, wf.error, wf.result) == (S.FAILED, "handler timed out after 0.2 s", None)


def test_rqs_backstop_leaves_the_claim_and_the_outcomes_write_the_whole_sqlite_busy_timeout(
    tmp_path: Path,
) -> None:
    """RQ's backstop (the timeout plus a grace) is put back once the handler ends, and runs from
    the job's start: a claim or an outcome's write that waited for SQLite's lock for longer than
    the grace was cut, and an attempt that ended in time was lost (``running`` for good, under a
    stock worker). The grace is longer than a write may wait."""
    from workflow_engine.stores.sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "w.db"))
    assert transport.TIMEOUT_GRACE >= store.busy_timeout + execution.STORE_CALL_GRACE
    store.close()


def test_a_callers_own_alarm_keeps_its_time_across_an_in_process_workflow_with_a_timeout(
    workflow_engine: WorkflowEngine,
) -> None:
    """Only RQ's backstop gets the grace for the outcome's write: a test's own alarm (pytest-timeout's
    signal method, say) is put back with the time it had left."""
    workflow_engine.register_handler("double", double, timeout=1)
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 3.0)
        workflow_engine.enqueue_execution(create(workflow_engine))
        left, _ = signal.getitimer(signal.ITIMER_REAL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert 0 < left <= 3.0 and not fired


def test_an_alarm_that_fires_as_the_handler_returns_still_restores_rqs_alarm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The handler's timer can fire between its return and its disarming. RQ's own handler and
    its (longer) backstop timer must come back all the same."""

    def rqs_handler(signum: int, frame: object) -> None:  # pragma: no cover - never fires here
        raise AssertionError("RQ's alarm fired")

    before = signal.signal(signal.SIGALRM, rqs_handler)
    signal.setitimer(signal.ITIMER_REAL, 100)
    real = signal.setitimer

    def setitimer(which: int, seconds: float, interval: float = 0.0) -> tuple[float, float]:
        if seconds == 0 and signal.getsignal(signal.SIGALRM) is not rqs_handler:
            real(which, 0)
            raise HandlerTimeout("the alarm fired just as the handler returned")
        return real(which, seconds, interval)

    monkeypatch.setattr(signal, "setitimer", setitimer)
    try:
        with pytest.raises(HandlerTimeout):
            execution._call_with_timeout(lambda wf: "done", None, 5)  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGALRM) is rqs_handler
        assert 90 < signal.getitimer(signal.ITIMER_REAL)[0] <= 100
    finally:
        real(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def test_enqueueing_a_type_without_a_handler_raises_and_writes_nothing(
    workflow_engine: WorkflowEngine,
) -> None:
    wid = create(workflow_engine, "nobody_handles_this")
    with pytest.raises(UnknownWorkflowType, match=r"nobody_handles_this.*@engine.handler"):
        workflow_engine.enqueue_execution(wid)
    assert workflow_engine.get_workflow(wid).status is S.PENDING
    assert len(workflow_engine.get_events(wid)) == 1


def test_a_handler_path_that_cannot_be_imported_fails_the_workflow_with_a_message(
    workflow_engine: WorkflowEngine,
) -> None:
    workflow_engine.register_handler("ghost", "no_such_module_xyz:handler")
    wid = create(workflow_engine, "ghost")
    workflow_engine.enqueue_execution(wid)
    wf = workflow_engine.get_workflow(wid)
    assert wf.status is S.FAILED
    assert "ghost" in (wf.error or "") and "no_such_module_xyz" in (wf.error or "")


def test_enqueueing_a_running_or_completed_workflow_never_starts_a_second_run(
    workflow_engine: WorkflowEngine,
) -> None:
    workflow_engine.register_handler("double", double)
    wid = create(workflow_engine)
    workflow_engine.enqueue_execution(wid)
    with pytest.raises(InvalidTransition, match="completed"):
        workflow_engine.enqueue_execution(wid)
    assert workflow_engine.get_workflow(wid).attempts == 1


# -- async mode over fakeredis, with a real SimpleWorker ---------------------------
@pytest.fixture
def async_engine(database_url: str) -> Iterator[WorkflowEngine]:
    """An engine with a real RQ queue on fakeredis, on every store: SQLite and PostgreSQL.

    Claims, retries, cancellation and reconcile are specified here once for both.
    """
    engine = WorkflowEngine(database_url=database_url, redis_url="fakeredis://", is_async=True)
    yield engine
    engine.close()


def work(engine: WorkflowEngine) -> None:
    rq.SimpleWorker([engine.queue], connection=engine.redis).work(burst=True)


def test_enqueue_in_async_mode_only_queues_the_job(async_engine: WorkflowEngine) -> None:
    async_engine.register_handler("double", double)
    wid = create(async_engine)
    async_engine.enqueue_execution(wid)
    wf = async_engine.get_workflow(wid)
    assert wf.status is S.QUEUED and wf.job_id is not None
    job = rq.job.Job.fetch(wf.job_id, connection=async_engine.redis)
    assert job.args == (
        wid,
        f"{__name__}:double",
        wf.job_id,
    )  # the id and the path: no inputs, no credentials
    assert job.timeout == -1  # no timeout means none, not RQ's 180 s default
    # The job names its function and its stopped-callback; both names import.
    assert job.func is execution.run_workflow and job.func_name == "workflow_engine.execution.run_workflow"
    assert job.stopped_callback is execution.on_job_stopped
    # Its meta is a marker that RQ's worker unpickles before it forks (next test); JSON sees a string.
    assert job.meta == {"workflow_engine": "preload"} and job.meta["workflow_engine"] is transport.PRELOAD
    assert json.loads(json.dumps(job.meta)) == {"workflow_engine": "preload"}
    work(async_engine)
    assert async_engine.get_workflow(wid).status is S.COMPLETED


@pytest.mark.parametrize(
    ("database_url", "driver"),
    [
        ("sqlite:///workflows.db", "sqlite3"),
        ("postgresql://app@db.example/app", "psycopg"),
        ("mysql://app@db.example/app", None),  # refused later, by the work-horse, on the workflow's job
    ],
)
def test_reading_a_jobs_meta_imports_workflow_engine_and_the_configured_stores_driver_and_never_fails(
    database_url: str, driver: str | None, tmp_path: Path
) -> None:
    """RQ's worker unpickles a job's meta as it takes the job (``Job.restore``), before it forks: a
    fresh process that does only that has the package loaded afterwards, the store's driver, and
    the worker's engine, built from the environment but not connected (no database file made)."""
    if driver == "psycopg":
        pytest.importorskip("psycopg")
    probe = (
        "import pickle, sys; meta = pickle.loads(bytes.fromhex(sys.argv[1])); "
        "print(type(meta['workflow_engine']).__name__, 'workflow_engine.execution' in sys.modules, "
        "'pydantic' in sys.modules, 'sqlite3' in sys.modules, 'psycopg' in sys.modules); "
        "from workflow_engine import execution; engine = execution._worker_engine; "
        "store = engine and engine.store; "
        "print(engine and engine.database_url, store and vars(store).get('_conn', vars(store).get('_pool')))"
    )
    raw = pickle.dumps({transport.META_KEY: transport.PRELOAD}, protocol=pickle.HIGHEST_PROTOCOL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_ENGINE_")}
    env["WORKFLOW_ENGINE_DATABASE_URL"] = database_url
    out = subprocess.run(
        [sys.executable, "-c", probe, raw.hex()],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
    )
    assert out.stdout.split() == [
        "Preload",
        "True",  # is workflow_engine.execution loaded?
        "True",  # is pydantic loaded?
        str(driver == "sqlite3"),  # is sqlite3 loaded?
        str(driver == "psycopg"),  # is psycopg loaded?
        str(database_url if driver else None),  # the worker's engine's database, if one was built
        "None",  # its connection (SQLite) or pool (PostgreSQL): none opened
    ]
    assert list(tmp_path.iterdir()) == []


def test_enqueueing_a_queued_workflow_again_adds_no_second_job(async_engine: WorkflowEngine) -> None:
    async_engine.register_handler("double", double)
    wid = create(async_engine)
    for _ in range(5):
        async_engine.enqueue_execution(wid)
    assert async_engine.queue.count == 1


def test_a_duplicate_rq_job_for_a_workflow_runs_its_handler_once(
    async_engine: WorkflowEngine, effects: object
) -> None:
    async_engine.register_handler("rec", "we_test_handlers:record_success")
    wid = create(async_engine, "rec")
    async_engine.enqueue_execution(wid)
    wf = async_engine.get_workflow(wid)
    for _ in range(3):  # the same job pushed again, as RQ does when one id is enqueued twice
        async_engine.transport.deliver([wf], engine_key=async_engine.key)
    work(async_engine)
    from support import successes

    assert successes(effects, wid) == 1  # type: ignore[arg-type]
    assert async_engine.get_workflow(wid).attempts == 1


def test_a_queued_workflow_cancelled_before_a_worker_starts_never_runs(
    async_engine: WorkflowEngine, effects: object
) -> None:
    async_engine.register_handler("rec", "we_test_handlers:record_success")
    wid = create(async_engine, "rec")
    async_engine.enqueue_execution(wid)
    assert async_engine.cancel(wid).status is S.CANCELLED
    work(async_engine)
    assert async_engine.get_workflow(wid).status is S.CANCELLED
    assert not list(effects.iterdir())  # type: ignore[attr-defined]


def test_retries_with_zero_backoff_are_run_by_the_same_burst_worker(
    async_engine: WorkflowEngine, effects: object
) -> None:
    async_engine.register_handler("flaky", "we_test_handlers:flaky", max_retries=3, retry_backoff=0)
    wid = async_engine.create_workflow(workflow_type_id="flaky", inputs={"fail_times": 2})
    async_engine.enqueue_execution(wid)
    work(async_engine)
    wf = async_engine.get_workflow(wid)
    assert (wf.status, wf.attempts) == (S.COMPLETED, 3)


def test_a_delayed_retry_waits_in_the_database_and_reconcile_delivers_it_when_due(
    async_engine: WorkflowEngine, effects: object
) -> None:
    async_engine.register_handler("flaky", "we_test_handlers:flaky", max_retries=1, retry_backoff=0.2)
    wid = async_engine.create_workflow(workflow_type_id="flaky", inputs={"fail_times": 1})
    async_engine.enqueue_execution(wid)
    work(async_engine)
    wf = async_engine.get_workflow(wid)
    assert wf.status is S.QUEUED and wf.job_id is None and wf.run_after is not None
    assert async_engine.queue.count == 0
    assert async_engine.reconcile().redelivered == []  # not due yet (the delay is 0.1 s to 0.2 s)
    time.sleep(0.25)
    assert async_engine.reconcile().redelivered == [wid]
    work(async_engine)
    assert async_engine.get_workflow(wid).status is S.COMPLETED


def test_a_reconcile_that_read_a_due_retry_before_another_process_delivered_it_keeps_the_next_backoff(
    async_engine: WorkflowEngine, effects: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process delivers a due retry (on SQLite, another `workflow-engine worker`'s reconcile,
    # which takes no lock there; here an enqueue), and its attempt fails into a new backoff, while a
    # reconcile still holds the row it read before: queued, no job, like the row now. Its
    # redelivery must miss, or the new backoff is skipped.
    async_engine.register_handler("flaky", "we_test_handlers:flaky", max_retries=2, retry_backoff=0.2)
    wid = async_engine.create_workflow(workflow_type_id="flaky", inputs={"fail_times": 2})
    async_engine.enqueue_execution(wid)
    work(async_engine)
    time.sleep(0.25)  # attempt 1's backoff (0.1 s to 0.2 s) is over
    deliverable_queued = async_engine.store.deliverable_queued

    def another_process_delivers_it_after_the_read(**kwargs: Any) -> list[Workflow]:
        rows = deliverable_queued(**kwargs)
        if rows:
            monkeypatch.setattr(async_engine.store, "deliverable_queued", deliverable_queued)
            async_engine.enqueue_execution(wid)
            work(async_engine)  # attempt 2 fails: a new backoff, 0.2 s to 0.4 s
        return rows

    monkeypatch.setattr(async_engine.store, "deliverable_queued", another_process_delivers_it_after_the_read)
    assert async_engine.reconcile().redelivered == []
    wf = async_engine.get_workflow(wid)
    assert (wf.status, wf.attempts, wf.job_id) == (S.QUEUED, 2, None)
    assert wf.run_after is not None and wf.run_after > utcnow()
    assert async_engine.queue.count == 0


# -- cancel, requeue, update_status -------------------------------------------------
def test_cancel_moves_pending_and_queued_workflows_to_cancelled(async_engine: WorkflowEngine) -> None:
    async_engine.register_handler("double", double)
    pending, queued = create(async_engine), create(async_engine)
    async_engine.enqueue_execution(queued)
    assert async_engine.cancel(pending).status is S.CANCELLED
    assert async_engine.cancel(queued, reason="user asked").status is S.CANCELLED
    assert async_engine.get_events(queued)[-1].detail == "cancelled: user asked"


def test_cancelling_a_finished_workflow_is_an_invalid_transition(workflow_engine: WorkflowEngine) -> None:
    workflow_engine.register_handler("double", double)
    wid = create(workflow_engine)
    workflow_engine.enqueue_execution(wid)
    with pytest.raises(InvalidTransition) as info:
        workflow_engine.cancel(wid)
    assert (info.value.workflow_id, info.value.from_status, info.value.to_status) == (
        wid,
        "completed",
        "cancelled",
    )


def test_cancelling_a_running_workflow_records_the_request_for_the_handler(
    async_engine: WorkflowEngine,
) -> None:
    async_engine.register_handler("double", double)
    wid = create(async_engine)
    async_engine.enqueue_execution(wid)
    wf = async_engine.get_workflow(wid)
    assert (
        async_engine.store.claim(
            wid,
            job_id=wf.job_id or "",
            worker="w1",
            now=utcnow(),
            lease_until=async_engine.lease_from(utcnow()),
        )
        is not None
    )
    stops: list[tuple[str, str | None]] = []
    async_engine.transport.stop = lambda job_id, worker=None: stops.append((job_id, worker)) or True  # type: ignore[method-assign]
    marked = async_engine.cancel(wid)
    assert marked.status is S.RUNNING and marked.cancel_requested_at is not None
    assert async_engine.get_events(wid)[-1].detail == "cancel requested"
    again = async_engine.cancel(wid)  # the first stop command may have been lost: it is sent again
    assert again.cancel_requested_at == marked.cancel_requested_at
    assert [e.detail for e in async_engine.get_events(wid)].count("cancel requested") == 1
    assert stops == [
        (wf.job_id, "w1"),
        (wf.job_id, "w1"),
    ]  # and the worker the claim recorded, if Redis lost the job


def test_requeue_only_accepts_failed_or_cancelled_workflows(workflow_engine: WorkflowEngine) -> None:
    workflow_engine.register_handler("double", double)
    wid = create(workflow_engine)
    with pytest.raises(InvalidTransition, match="only failed or cancelled"):
        workflow_engine.requeue(wid)
    workflow_engine.cancel(wid)
    assert workflow_engine.requeue(wid).status is S.COMPLETED  # in-process: runs before returning


def test_update_status_validates_against_the_transition_table(workflow_engine: WorkflowEngine) -> None:
    wid = create(workflow_engine)
    with pytest.raises(InvalidTransition, match=f"workflow '{wid}' cannot go from 'pending' to 'completed'"):
        workflow_engine.update_status(wid, "completed")
    assert workflow_engine.update_status(wid, "cancelled").status is S.CANCELLED
    with pytest.raises(InvalidTransition):
        workflow_engine.update_status(wid, S.RUNNING)


def test_update_status_rejects_an_unknown_status_naming_the_valid_ones(
    workflow_engine: WorkflowEngine,
) -> None:
    wid = create(workflow_engine)
    with pytest.raises(ValueError, match=r"unknown status 'done'.*pending, queued, running"):
        workflow_engine.update_status(wid, "done")
    assert len(workflow_engine.get_events(wid)) == 1


# -- bad input writes nothing ---------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workflow_type_id": "t", "inputs": {"when": object()}}, "inputs must be JSON-serialisable"),
        ({"workflow_type_id": "t", "inputs": {"x": float("nan")}}, "inputs must be JSON-serialisable"),
        ({"workflow_type_id": "t", "inputs": [1, 2]}, "inputs must be a dict"),
        ({"workflow_type_id": "t", "calculated_savings": {"s": {1, 2}}}, "calculated_savings must be JSON"),
        ({"workflow_type_id": ""}, "workflow_type_id must not be empty"),
        ({"workflow_type_id": "   "}, "workflow_type_id must not be empty"),
        ({"workflow_type_id": 42}, "workflow_type_id must be a string"),
        ({"workflow_type_id": "t", "created_by_agent": 7}, "created_by_agent must be a string"),
        ({"workflow_type_id": "t", "idempotency_key": ""}, "idempotency_key must not be empty"),
        ({"workflow_type_id": "t" * 256}, "workflow_type_id must be at most 255 characters"),
        ({"workflow_type_id": "t", "created_by_agent": "a" * 256}, "created_by_agent must be at most 255"),
        ({"workflow_type_id": "t", "idempotency_key": "k" * 6000}, "idempotency_key must be at most 255"),
        (
            {"workflow_type_id": "t", "created_by_agent": "bad\ud800"},
            "created_by_agent must be valid Unicode",
        ),
        ({"workflow_type_id": "t", "inputs": {"name": "bad\udc00"}}, "inputs must be valid Unicode"),
        (
            {"workflow_type_id": "t\nforged row"},
            r"workflow_type_id must not contain control characters, got '\\n' at 1",
        ),
        ({"workflow_type_id": "t", "created_by_agent": "a\x1b[2J"}, "created_by_agent must not contain"),
        ({"workflow_type_id": "t", "created_by_agent": "a\x85"}, "created_by_agent must not contain"),
        ({"workflow_type_id": "t", "assigned_council_id": "c\r"}, "assigned_council_id must not contain"),
        ({"workflow_type_id": " t "}, "workflow_type_id must not have whitespace around it, got ' t '"),
        ({"workflow_type_id": "t", "created_by_agent": "bot "}, "created_by_agent must not have whitespace"),
    ],
)
def test_bad_input_raises_a_clear_error_and_writes_nothing(
    workflow_engine: WorkflowEngine, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        workflow_engine.create_workflow(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert row_count(workflow_engine) == 0


def test_names_stored_before_control_characters_were_refused_are_still_found(
    workflow_engine: WorkflowEngine,
) -> None:
    """Only a name being written is refused: one already in the database stays listable."""
    legacy = a_workflow(id="legacy", workflow_type_id="t\tlegacy", created_by_agent="bot\n")
    workflow_engine.store.insert([legacy])
    assert [wf.id for wf in workflow_engine.list_workflows(workflow_type_id="t\tlegacy")] == ["legacy"]
    assert [wf.id for wf in workflow_engine.list_workflows(created_by_agent="bot\n")] == ["legacy"]
    wid = workflow_engine.create_workflow(workflow_type_id="t", idempotency_key="key\twith a tab")
    assert workflow_engine.get_workflow(wid).idempotency_key == "key\twith a tab"


def test_workflows_of_a_type_stored_before_control_characters_were_refused_still_run_and_requeue(
    workflow_engine: WorkflowEngine,
) -> None:
    """Enqueueing, requeueing and approving rebuild the handler policy from the stored workflow:
    a lookup of its type id, not a new name. Only registering such a type is refused."""
    legacy = "t\tlegacy"
    policy = {"workflow_type_id": legacy, "handler": "we_test_handlers:noop", "max_retries": 0}
    failed = a_workflow(id="f", status=WorkflowStatus.FAILED, **policy)
    workflow_engine.store.insert([a_workflow(id="a", **policy), a_workflow(id="b", **policy), failed])
    workflow_engine.enqueue_execution("a")
    assert workflow_engine.get_workflow("a").status is WorkflowStatus.COMPLETED
    workflow_engine.enqueue_many(["b"])
    assert workflow_engine.get_workflow("b").status is WorkflowStatus.COMPLETED
    workflow_engine.requeue("f")
    assert workflow_engine.get_workflow("f").status is WorkflowStatus.COMPLETED
    workflow_engine.configure_council("c", members=["ann"], quorum=1)
    waiting = a_workflow(id="w", status=WorkflowStatus.AWAITING_APPROVAL, assigned_council_id="c", **policy)
    workflow_engine.store.insert([waiting])
    workflow_engine.vote("w", voter_id="ann", approve=True)
    assert workflow_engine.get_workflow("w").status is WorkflowStatus.COMPLETED
    with pytest.raises(InvalidInput, match="must not contain control characters"):
        workflow_engine.register_handler(legacy, "we_test_handlers:noop")


def test_text_outside_the_basic_plane_is_accepted_and_read_back(workflow_engine: WorkflowEngine) -> None:
    wid = workflow_engine.create_workflow(
        workflow_type_id="t", created_by_agent="🤖", inputs={"name": "café 😀"}
    )
    wf = workflow_engine.get_workflow(wid)
    assert (wf.created_by_agent, wf.inputs) == ("🤖", {"name": "café 😀"})


def nul_in_message(wf: Workflow) -> None:
    raise ValueError("bad byte: 'ab\x00cd'")


def test_a_handler_error_with_a_nul_character_is_recorded_on_every_store(
    async_engine: WorkflowEngine,
) -> None:
    """PostgreSQL cannot store a NUL in text: the engine writes it out as \\x00, so the failure is
    recorded (not left running for reconcile to take for a lost worker)."""
    async_engine.register_handler("nul", nul_in_message, max_retries=0)
    wid = create(async_engine, "nul")
    async_engine.enqueue_execution(wid)
    work(async_engine)
    wf = async_engine.get_workflow(wid)
    assert wf.status is S.FAILED and wf.error == "ValueError: bad byte: 'ab\\x00cd'"
    assert wf.traceback is not None and "\x00" not in wf.traceback
    async_engine.register_handler("double", double)
    other = create(async_engine)
    assert async_engine.cancel(other, reason="no\x00reason").status is S.CANCELLED
    assert async_engine.get_events(other)[-1].detail == "cancelled: no\\x00reason"


def undecodable_file_name(wf: Workflow) -> None:
    name = b"/data/\xff.csv".decode("utf-8", "surrogateescape")  # as os.listdir() returns it
    raise RuntimeError(f"cannot parse {name}")


class _BrokenStr(Exception):
    def __str__(self) -> str:
        raise AttributeError("'_BrokenStr' object has no attribute 'code'")


def unprintable_error(wf: Workflow) -> None:
    raise _BrokenStr()


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (undecodable_file_name, "RuntimeError: cannot parse /data/\\udcff.csv"),
        (unprintable_error, "_BrokenStr: <_BrokenStr whose str() raised>"),
    ],
    ids=["lone-surrogate", "str-raises"],
)
def test_a_handler_error_no_store_could_hold_as_it_is_is_still_recorded_on_every_store(
    async_engine: WorkflowEngine, handler: Any, error: str
) -> None:
    """Left unrecorded, the workflow would stay running until reconcile took it for a lost worker."""
    async_engine.register_handler("odd", handler, max_retries=0)
    wid = create(async_engine, "odd")
    async_engine.enqueue_execution(wid)
    work(async_engine)
    wf = async_engine.get_workflow(wid)
    assert wf.status is S.FAILED and wf.error == error
    assert wf.traceback is not None and "Traceback" in wf.traceback
    assert async_engine.get_events(wid)[-1].to_status is S.FAILED


def test_a_detail_or_reason_that_is_not_text_is_refused(workflow_engine: WorkflowEngine) -> None:
    wid = create(workflow_engine)
    with pytest.raises(InvalidInput, match="detail must be a string"):
        workflow_engine.update_status(wid, "awaiting_approval", detail={"why": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="reason must be a string"):
        workflow_engine.cancel(wid, reason=3)  # type: ignore[arg-type]
    assert workflow_engine.get_workflow(wid).status is S.PENDING


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("we_no_such_module:run", ["no module named 'we_no_such_module'", "--path", "register_handler"]),
        ("we_test_handlers:nope", ["module 'we_test_handlers' has no 'nope'", "register_handler"]),
        ("we_broken_module:run", ["importing it raised FileNotFoundError", "/nonexistent/"]),
        (
            "we_lazy_handlers:send_report",
            ["importing it raised ModuleNotFoundError", "we_missing_pdf_library"],
        ),
    ],
    ids=[
        "missing-module",
        "missing-function",
        "module-raises-on-import",
        "lazy-getattr-raises",
    ],
)
def test_a_handler_that_cannot_be_imported_fails_at_once_saying_why_with_a_warning_and_the_traceback(
    workflow_engine: WorkflowEngine, path: str, says: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    workflow_engine.register_handler("report", path, max_retries=3)
    wid = workflow_engine.create_workflow(workflow_type_id="report", enqueue=True)
    wf = workflow_engine.get_workflow(wid)
    assert wf.status is S.FAILED and wf.attempts == 1, "retrying cannot fix an import"
    assert wf.error is not None and wf.error.startswith(
        f"cannot import handler {path!r} for workflow type 'report'"
    )
    for text in says:
        assert text in wf.error, wf.error
    assert "no handler is registered" not in wf.error, "it was registered: the worker cannot import it"
    assert wf.traceback is not None and "in import_handler" in wf.traceback
    warnings = [
        r for r in caplog.records if r.levelname == "WARNING" and r.name == "workflow_engine.execution"
    ]
    assert [r.getMessage() for r in warnings] == [f"attempt 1 failed: {wf.error}"]


def test_a_handler_path_that_names_something_not_callable_fails_at_once_saying_what_it_is(
    workflow_engine: WorkflowEngine,
) -> None:
    workflow_engine.register_handler("report", "we_import_probe:not_a_function", max_retries=3)
    wid = workflow_engine.create_workflow(workflow_type_id="report", enqueue=True)
    wf = workflow_engine.get_workflow(wid)
    assert wf.status is S.FAILED and wf.attempts == 1
    assert wf.error == (
        "cannot use handler 'we_import_probe:not_a_function' for workflow type 'report': it is a int, not a "
        "function; register the type with a function's path: "
        "engine.register_handler('report', 'package.module:function')"
    )


def test_a_worker_on_the_wrong_database_warns_at_start_and_at_each_job_it_cannot_find(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stock worker started without the web process's WORKFLOW_ENGINE_DATABASE_URL opens another
    database: its jobs' workflows are not there. It must say so, where a stock worker shows it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKFLOW_ENGINE_DATABASE_URL", raising=False)
    execution.set_worker_engine(None)
    try:
        result = execution.run_workflow("f00d", "we_test_handlers:noop", "f00d-1")
        assert result == {"workflow_id": "f00d", "status": "skipped (missing)"}
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warnings[0].startswith("WORKFLOW_ENGINE_DATABASE_URL is not set: this worker uses the default")
        assert warnings[1] == (
            f"job f00d-1 names workflow 'f00d', which is not in this worker's database, "
            f"sqlite:///{tmp_path / 'workflows.db'}: does the worker have the web process's "
            "WORKFLOW_ENGINE_DATABASE_URL?"
        )
    finally:
        engine = execution._worker_engine
        if engine is not None:
            engine.close()
        execution.set_worker_engine(None)


LONE_SURROGATE = "id\ud800"


def test_a_lookup_by_an_id_no_store_could_hold_finds_nothing_on_every_store(
    async_engine: WorkflowEngine,
) -> None:
    """A lone surrogate, a NUL or an overlong id cannot name a workflow: not found, never a driver error."""
    async_engine.configure_council("council", members=["ann"], quorum=1)
    for wid in (LONE_SURROGATE, "a\x00b", "x" * 300):
        for call in (
            async_engine.get_workflow,
            async_engine.get_events,
            async_engine.tally,
            async_engine.requeue,
            async_engine.enqueue_execution,
            async_engine.cancel,
            lambda w: async_engine.enqueue_many([w]),
            lambda w: async_engine.update_status(w, "cancelled"),
            lambda w: async_engine.vote(w, voter_id="ann", approve=True),
        ):
            with pytest.raises(WorkflowNotFound):
                call(wid)
        assert async_engine.get_council(wid) is None


def test_free_text_that_is_not_unicode_is_refused_before_anything_is_written(
    async_engine: WorkflowEngine,
) -> None:
    async_engine.register_handler("double", double)
    wid = create(async_engine)
    with pytest.raises(InvalidInput, match="reason must be valid Unicode"):
        async_engine.cancel(wid, reason=LONE_SURROGATE)
    with pytest.raises(InvalidInput, match="detail must be valid Unicode"):
        async_engine.update_status(wid, "awaiting_approval", detail=LONE_SURROGATE)
    async_engine.configure_council("council", members=["ann"], quorum=1)
    gated = async_engine.create_workflow(
        workflow_type_id="double", requires_approval=True, assigned_council_id="council"
    )
    with pytest.raises(InvalidInput, match="comment must be valid Unicode"):
        async_engine.vote(gated, voter_id="ann", approve=True, comment=LONE_SURROGATE)
    with pytest.raises(InvalidInput, match="change must be true or false"):
        async_engine.vote(gated, voter_id="ann", approve=True, change="no")  # type: ignore[arg-type]
    assert async_engine.get_workflow(wid).status is S.PENDING
    assert async_engine.tally(gated).votes == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: e.enqueue_many(None), "workflow_ids must be a list of workflow ids"),
        (lambda e: e.enqueue_many([["x"]]), "workflow ids must be strings"),
        (lambda e: e.create_workflows(None), "workflows must be a list of mappings"),
        (lambda e: e.create_workflows({"workflow_type_id": "t"}), "workflows must be a list of mappings"),
        (lambda e: e.list_workflows(before="x"), "before must be the last Workflow of a page"),
        (lambda e: e.reconcile(batch_size=2**64), "batch_size must be an integer from 1 to 10000"),
        (lambda e: e.reconcile(batch_size=None), "batch_size must be an integer"),
        (lambda e: e.create_workflow(workflow_type_id="t", inputs=_deep(100_000)), "nested too deeply"),
        (
            lambda e: e.register_handler("t", double, max_retries=2**63),
            "max_retries must be an integer from 0",
        ),
        (lambda e: e.register_handler("t", double, timeout=1e300), "timeout must be a number of seconds"),
        (lambda e: e.register_handler("t", double, retry_backoff=1e300), "retry_backoff must be a number"),
        (lambda e: e.register_handler("t", ":"), "must look like 'package.module:function'"),
        *(
            (lambda e, path=path: e.register_handler("t", path), "(dotted names without spaces)")
            for path in ("a:b c", "a b:c", " a:b", "a..b:c", "a:b\n", "a:", "a.:b")
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_arguments_of_the_wrong_type_or_size_raise_invalid_input_not_a_python_error(
    workflow_engine: WorkflowEngine, call: Any, message: str
) -> None:
    workflow_engine.register_handler("t", double)
    with pytest.raises(InvalidInput, match=re.escape(message)):
        call(workflow_engine)
    assert workflow_engine.list_workflows() == []


def test_a_handler_module_whose_file_name_is_not_an_identifier_can_be_registered(
    workflow_engine: WorkflowEngine,
) -> None:
    # importlib.import_module("my-handlers") imports my-handlers.py, as a worker would.
    assert workflow_engine.register_handler("t", "my-handlers:run").path == "my-handlers:run"


def test_keys_that_json_would_write_as_one_name_are_refused_since_one_value_would_be_lost(
    workflow_engine: WorkflowEngine,
) -> None:
    for inputs in (
        {1: "a", "1": "b"},
        {"x": [{None: 1, "null": 2}]},
        {True: 1, "true": 2},
        {1.5: 1, "1.5": 2},
    ):
        with pytest.raises(InvalidInput, match="two keys that JSON writes as the same name"):
            workflow_engine.create_workflow(workflow_type_id="t", inputs=inputs)
    with pytest.raises(InvalidInput, match="calculated_savings has two keys"):
        workflow_engine.create_workflow(workflow_type_id="t", calculated_savings={2: 1.0, "2": 3.0})
    assert workflow_engine.list_workflows() == []
    wid = workflow_engine.create_workflow(workflow_type_id="t", inputs={2: "a", None: "b", False: "c"})
    assert workflow_engine.get_workflow(wid).inputs == {"2": "a", "null": "b", "false": "c"}


def test_inputs_nest_at_most_max_json_depth_levels_and_brackets_inside_strings_do_not_count(
    workflow_engine: WorkflowEngine,
) -> None:
    limit = models.MAX_JSON_DEPTH
    deepest = _deep(limit - 2)  # the outer object, its list, and limit - 2 lists inside
    wid = workflow_engine.create_workflow(workflow_type_id="t", inputs=deepest, calculated_savings=deepest)
    assert workflow_engine.get_workflow(wid).inputs == deepest
    with pytest.raises(InvalidInput, match=f"inputs is nested too deeply: at most {limit} levels"):
        workflow_engine.create_workflow(workflow_type_id="t", inputs=_deep(limit - 1))
    with pytest.raises(InvalidInput, match="calculated_savings is nested too deeply"):
        workflow_engine.create_workflow(workflow_type_id="t", calculated_savings=_deep(limit - 1))
    brackets = {"text": "[{" * limit, "list": [["]}"] * limit]}
    wid = workflow_engine.create_workflow(workflow_type_id="t", inputs=brackets)
    assert workflow_engine.get_workflow(wid).inputs == brackets


def too_deep_a_result(wf: Workflow) -> dict[str, Any]:
    return _deep(models.MAX_JSON_DEPTH)


def test_a_result_nested_too_deeply_fails_the_attempt_with_a_message_saying_so(
    workflow_engine: WorkflowEngine,
) -> None:
    workflow_engine.register_handler("deep", too_deep_a_result)
    wf = workflow_engine.get_workflow(workflow_engine.create_workflow(workflow_type_id="deep", enqueue=True))
    assert wf.status is S.FAILED and wf.result is None
    assert wf.error is not None and "the handler's result is nested too deeply" in wf.error


def _deep(depth: int) -> dict[str, Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return {"deep": value}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"heartbeat_interval": 1, "stale_after": 1e300},
            "stale_after must be a number of seconds > 0 and at most",
        ),
        ({"is_async": "no"}, "is_async must be true or false"),
    ],
)
def test_engine_settings_out_of_range_are_refused_at_construction(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(WorkflowEngineError, match=re.escape(message)):
        WorkflowEngine(database_url="sqlite:///:memory:", redis_url="fakeredis://", **kwargs)


def failing(*, attempts: int, max_retries: int, max_attempts: int) -> Workflow:
    """A running workflow in its retry budget, with ``retry_backoff=1``: what ``retry_delay`` reads."""
    return a_workflow(
        id="w",
        status=S.RUNNING,
        attempts=attempts,
        max_retries=max_retries,
        max_attempts=max_attempts,
        retry_backoff=1.0,
    )


def test_a_handler_with_a_million_retries_backs_off_at_the_cap_without_overflowing() -> None:
    wf = failing(attempts=5000, max_retries=1_000_000, max_attempts=1_000_001)
    assert recovery.MAX_RETRY_DELAY / 2 <= recovery.retry_delay(wf) <= recovery.MAX_RETRY_DELAY


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://localhost/db", "unsupported database URL scheme 'mysql'"),
        ("workflows.db", "has no scheme"),
        ("sqlite://relative.db", "expected sqlite:///<path>"),
        ("", "non-empty string"),
        ("postgresql://[::1/db", "malformed PostgreSQL URL"),
    ],
)
def test_a_malformed_or_unsupported_database_url_is_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        WorkflowEngine(database_url=url, redis_url="fakeredis://")


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        (
            "sqlite:///:memory:",
            {"pool_size": 8},
            "'pool_size': not an option of a SQLite store, which takes busy_timeout and create",
        ),
        (
            "postgresql://app:secret@db/app",
            {"busy_timeout": 1, "poolsize": 8},
            r"'busy_timeout', 'poolsize': not an option of a PostgreSQL store, which takes pool_size, "
            r"connect_timeout and create \(the database URL is postgresql://app:\*\*\*@db/app\)",
        ),
    ],
    ids=["pool_size-on-sqlite", "a-typo-and-sqlites-option-on-postgresql"],
)
def test_open_store_refuses_an_option_its_store_does_not_take_naming_those_it_does(
    url: str, options: dict[str, object], message: str
) -> None:
    from workflow_engine.stores import open_store

    with pytest.raises(ConfigurationError, match=message):
        open_store(url, **options)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql:///app",  # no host: the local socket, or PGHOST, as for psql
        "postgresql://app@db1:5432,db2:5432/app?target_session_attrs=read-write",  # failover hosts
        "postgresql://app:s3cr#t@db/app",  # a '#' in the password: libpq's to judge
    ],
)
def test_postgresql_urls_that_libpq_takes_are_taken(url: str) -> None:
    from workflow_engine.stores.urls import parse_database_url

    assert parse_database_url(url).target == url


def test_a_malformed_postgresql_url_is_refused_without_quoting_its_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        WorkflowEngine(database_url="postgresql://app:s3cret@[::1/db", redis_url="fakeredis://")
    assert "s3cret" not in str(info.value)


def test_a_redis_url_asking_to_decode_responses_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="decode_responses=True"):
        WorkflowEngine(
            database_url="sqlite:///:memory:", redis_url="redis://127.0.0.1:6379/0?decode_responses=True"
        )


def test_an_unsupported_redis_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="unsupported Redis URL scheme 'http'"):
        WorkflowEngine(database_url="sqlite:///:memory:", redis_url="http://localhost")


def test_sql_metacharacters_are_plain_data(workflow_engine: WorkflowEngine) -> None:
    nasty = "x'); DROP TABLE workflows; --"
    wid = workflow_engine.create_workflow(
        workflow_type_id=nasty, created_by_agent=nasty, inputs={nasty: nasty}
    )
    wf = workflow_engine.get_workflow(wid)
    assert (wf.workflow_type_id, wf.created_by_agent, wf.inputs) == (nasty, nasty, {nasty: nasty})
    assert [w.id for w in workflow_engine.list_workflows(created_by_agent=nasty)] == [wid]
    assert [w.id for w in workflow_engine.list_workflows(created_by_agent="' OR '1'='1")] == []


def test_handlers_must_be_importable_by_a_worker() -> None:
    engine = WorkflowEngine(database_url="sqlite:///:memory:", redis_url="fakeredis://")
    with pytest.raises(InvalidInput, match="not a module-level function"):
        engine.register_handler("t", lambda wf: None)
    with pytest.raises(InvalidInput, match=r"must look like 'package\.module:function'"):
        engine.register_handler("t", "nodots")
    with pytest.raises(InvalidInput, match="max_retries must be an integer"):
        engine.register_handler("t", double, max_retries=-1)
    with pytest.raises(InvalidInput, match="timeout must be"):
        engine.register_handler("t", double, timeout=0)


class Mailer:
    def send(self, wf: Workflow) -> None: ...

    @classmethod
    def send_as_class(cls, wf: Workflow) -> None: ...

    @staticmethod
    def send_static(wf: Workflow) -> None: ...


def test_a_method_bound_to_an_instance_is_refused_as_a_handler() -> None:
    # In-process it would run; a worker would import test_engine:Mailer.send, the plain function,
    # and call it with the workflow as its self: every attempt would fail, in production only.
    engine = WorkflowEngine(database_url="sqlite:///:memory:", redis_url="fakeredis://")
    with pytest.raises(InvalidInput, match="a method bound to an instance"):
        engine.register_handler("t", Mailer().send)
    assert engine.register_handler("t", Mailer.send_as_class).path.endswith(":Mailer.send_as_class")
    assert engine.register_handler("t", Mailer.send_static).path.endswith(":Mailer.send_static")


# -- idempotency -------------------------------------------------------------------
def test_an_idempotency_key_returns_the_first_workflow_with_its_original_inputs(
    workflow_engine: WorkflowEngine,
) -> None:
    first = workflow_engine.create_workflow(workflow_type_id="t", inputs={"v": 1}, idempotency_key="order-42")
    again = workflow_engine.create_workflow(workflow_type_id="t", inputs={"v": 2}, idempotency_key="order-42")
    assert again == first
    assert workflow_engine.get_workflow(first).inputs == {"v": 1}
    assert create(workflow_engine, "t") != create(workflow_engine, "t")  # no key: always new
    assert row_count(workflow_engine) == 3


# -- Redis down ----------------------------------------------------------------------
def test_enqueue_with_redis_down_fails_fast_and_leaves_the_workflow_queued() -> None:
    from support import free_port

    engine = WorkflowEngine(database_url="sqlite:///:memory:", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    engine.register_handler("double", double)
    wid = create(engine)
    start = time.monotonic()
    with pytest.raises(QueueUnavailable, match="reconcile"):
        engine.enqueue_execution(wid)
    assert time.monotonic() - start < 5
    assert engine.get_workflow(wid).status is S.QUEUED


# -- reconcile -----------------------------------------------------------------------
def make_stale(engine: WorkflowEngine, wid: str) -> Workflow:
    """Claim the workflow as a worker would, then let its lease expire without a heartbeat."""
    wf = engine.get_workflow(wid)
    old = utcnow() - timedelta(seconds=engine.stale_after + 1)
    claimed = engine.store.claim(
        wid, job_id=wf.job_id or "", worker="dead-worker", now=old, lease_until=engine.lease_from(old)
    )
    assert claimed is not None
    aged = engine.get_workflow(wid)
    assert aged is not None
    return aged


def test_reconcile_requeues_a_running_workflow_whose_worker_stopped_heartbeating(
    async_engine: WorkflowEngine,
) -> None:
    async_engine.register_handler("double", double, max_retries=1, retry_backoff=0)
    wid = create(async_engine)
    async_engine.enqueue_execution(wid)
    async_engine.redis.flushall()
    make_stale(async_engine, wid)
    report = async_engine.reconcile()
    assert report.requeued_stale == [wid]
    wf = async_engine.get_workflow(wid)
    assert wf.status is S.QUEUED and "worker lost" in (wf.error or "") and "dead-worker" in (wf.error or "")
    work(async_engine)
    assert async_engine.get_workflow(wid).status is S.COMPLETED


def test_reconcile_fails_a_stale_workflow_with_no_attempts_left(async_engine: WorkflowEngine) -> None:
    async_engine.register_handler("double", double, max_retries=0)
    wid = create(async_engine)
    async_engine.enqueue_execution(wid)
    make_stale(async_engine, wid)
    assert async_engine.reconcile().failed_stale == [wid]
    assert async_engine.get_workflow(wid).status is S.FAILED


def test_reconcile_cancels_a_stale_workflow_whose_cancel_was_requested(async_engine: WorkflowEngine) -> None:
    async_engine.register_handler("double", double)
    wid = create(async_engine)
    async_engine.enqueue_execution(wid)
    make_stale(async_engine, wid)
    async_engine.cancel(wid)
    async_engine.store.compare_and_set(
        wid,
        expected_status=S.RUNNING,
        changes={"lease_until": utcnow() - timedelta(seconds=60)},
        event=None,
    )
    assert async_engine.reconcile().cancelled_stale == [wid]


def test_a_cancel_requested_while_a_failed_attempt_is_being_recorded_is_not_lost_to_a_retry(
    async_engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker reads the row, then decides to retry. A cancel that lands in between still wins:
    the attempt ends cancelled, never queued again with a new job."""
    async_engine.register_handler("boom", boom, max_retries=3, retry_backoff=0)
    wid = create(async_engine, "boom")
    async_engine.enqueue_execution(wid)
    job_id = async_engine.get_workflow(wid).job_id
    record = recovery.attempt_failed

    def cancel_first(engine: WorkflowEngine, wf: Workflow, **kwargs: Any) -> Workflow | None:
        async_engine.cancel(wid, reason="user")  # another process, after the worker's read
        return record(engine, wf, **kwargs)

    monkeypatch.setattr(recovery, "attempt_failed", cancel_first)
    status = execution.run_attempt(async_engine, wid, job_id=str(job_id), handler=None, worker="w1")
    wf = async_engine.get_workflow(wid)
    assert status == "cancelled" and wf.status is S.CANCELLED and wf.attempts == 1
    assert [e.to_status for e in async_engine.get_events(wid)][-2:] == [S.RUNNING, S.CANCELLED]


def test_a_cancel_requested_while_reconcile_recovers_a_stale_workflow_is_not_lost(
    async_engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async_engine.register_handler("boom", boom, max_retries=3, retry_backoff=0)
    wid = create(async_engine, "boom")
    async_engine.enqueue_execution(wid)
    make_stale(async_engine, wid)
    stale_running = async_engine.store.stale_running

    def cancel_after_read(**kwargs: Any) -> list[Workflow]:
        rows = stale_running(**kwargs)
        if rows:
            async_engine.cancel(wid)  # after reconcile read the stale list
        return rows

    monkeypatch.setattr(async_engine.store, "stale_running", cancel_after_read)
    report = async_engine.reconcile()
    assert report.cancelled_stale == [wid] and report.requeued_stale == []
    assert async_engine.get_workflow(wid).status is S.CANCELLED


def test_reconcile_redelivers_queued_workflows_that_redis_forgot(
    async_engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "REDELIVERY_GRACE", timedelta(0))
    async_engine.register_handler("double", double)
    ids = [create(async_engine) for _ in range(5)]
    for wid in ids:
        async_engine.enqueue_execution(wid)
    assert async_engine.reconcile().redelivered == []  # their jobs are still there
    async_engine.redis.flushall()
    assert sorted(async_engine.reconcile().redelivered) == sorted(ids)
    assert async_engine.reconcile().redelivered == []  # delivered once, not again
    work(async_engine)
    assert {async_engine.get_workflow(w).status for w in ids} == {S.COMPLETED}


def test_reconcile_leaves_recently_queued_workflows_alone() -> None:
    engine = WorkflowEngine(database_url="sqlite:///:memory:", redis_url="fakeredis://")
    engine.register_handler("double", double)
    wid = create(engine)
    engine.enqueue_execution(wid)
    engine.redis.flushall()
    assert engine.reconcile().redelivered == []  # inside the grace period an enqueue may be in flight


# -- configuration -------------------------------------------------------------------
def test_from_env_reads_the_documented_variables() -> None:
    engine = WorkflowEngine.from_env(
        {
            "WORKFLOW_ENGINE_DATABASE_URL": "sqlite:///:memory:",
            "REDIS_URL": "fakeredis://",
            "WORKFLOW_ENGINE_QUEUE": "wf2",
            "WORKFLOW_ENGINE_HEARTBEAT_INTERVAL": "2",
            "WORKFLOW_ENGINE_STALE_AFTER": "9",
        }
    )
    assert (engine.queue_name, engine.heartbeat_interval, engine.stale_after) == ("wf2", 2.0, 9.0)
    assert isinstance(engine.redis, fakeredis.FakeRedis)


def test_from_env_ignores_whitespace_around_values_as_a_crlf_env_file_leaves_it(tmp_path: Path) -> None:
    engine = WorkflowEngine.from_env(
        {
            "WORKFLOW_ENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}\r",
            "WORKFLOW_ENGINE_REDIS_URL": " fakeredis://\r\n",
            "WORKFLOW_ENGINE_QUEUE": "wf2\r",
        }
    )
    engine.create_workflow(workflow_type_id="x")
    assert engine.database_url == f"sqlite:///{tmp_path / 'app.db'}" and engine.queue_name == "wf2"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("app.db-")) == ["app.db"]
    assert WorkflowEngine.from_env({"WORKFLOW_ENGINE_QUEUE": " \r"}).queue_name == "workflows"
    timings = WorkflowEngine.from_env(
        {"WORKFLOW_ENGINE_STALE_AFTER": "\r", "WORKFLOW_ENGINE_HEARTBEAT_INTERVAL": " 2\r"}
    )
    assert (timings.stale_after, timings.heartbeat_interval) == (30.0, 2.0)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"database_url": "sqlite:///app.db\r"}, ConfigurationError, "whitespace around it or a control"),
        ({"database_url": "sqlite:///:memory: "}, ConfigurationError, "whitespace around it or a control"),
        ({"database_url": "sqlite:///a\nb.db"}, ConfigurationError, "whitespace around it or a control"),
        ({"redis_url": "redis://localhost/0\n"}, ConfigurationError, "whitespace around it or a control"),
        ({"redis_url": "redis://localhost:6379/workflows"}, ConfigurationError, "must be a database number"),
        ({"redis_url": "redis://:secret@localhost/1x"}, ConfigurationError, "must be a database number"),
        (
            {"redis_url": "redis://localhost/99999999999"},
            ConfigurationError,
            "'99999999999' is not a number from 0",
        ),
        (
            {"redis_url": "redis://localhost/?db=4294967296"},
            ConfigurationError,
            "'4294967296' is not a number from 0",
        ),
        ({"redis_url": "redis://localhost/" + "9" * 5000}, ConfigurationError, "is not a number from 0"),
        ({"redis_url": "redis://localhost/?db=²"}, ConfigurationError, "'²' is not a number from 0"),
        ({"queue_name": "workflows\r"}, InvalidInput, "whitespace around it or control characters"),
        ({"queue_name": " workflows"}, InvalidInput, "whitespace around it or control characters"),
    ],
)
def test_a_url_or_queue_name_that_would_silently_name_something_else_is_refused(
    arguments: dict[str, str], error: type[Exception], message: str
) -> None:
    settings = {"database_url": "sqlite:///:memory:", "redis_url": "fakeredis://", **arguments}
    with pytest.raises(error, match=message) as info:
        WorkflowEngine(**settings)  # type: ignore[arg-type]
    assert "secret" not in str(info.value)


def test_an_engine_given_a_store_reports_the_stores_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'given.db'}"
    engine = WorkflowEngine(store=open_store(url), redis_url="fakeredis://")
    assert engine.database_url == url and "given.db" in repr(engine)
    same = WorkflowEngine(database_url=url, store=open_store(url), redis_url="fakeredis://")
    assert same.database_url == url
    relative = WorkflowEngine(
        database_url=f"sqlite:///{os.path.relpath(tmp_path / 'given.db')}", store=open_store(url)
    )
    assert relative.database_url == url  # the same file, written another way
    from_env = WorkflowEngine.from_env({"REDIS_URL": "fakeredis://"}, store=open_store(url))
    assert from_env.database_url == url  # the variable is unset: no default to conflict with
    with pytest.raises(InvalidInput, match="is not the store's"):
        WorkflowEngine(database_url="sqlite:///other.db", store=open_store(url), redis_url="fakeredis://")


def test_a_listener_that_is_not_callable_is_refused(workflow_engine: WorkflowEngine) -> None:
    with pytest.raises(InvalidInput, match="a listener must be callable, got str"):
        workflow_engine.add_listener("metrics")  # type: ignore[arg-type]


def test_from_env_refuses_timings_that_are_not_numbers() -> None:
    with pytest.raises(ConfigurationError, match="WORKFLOW_ENGINE_STALE_AFTER must be a number"):
        WorkflowEngine.from_env({"WORKFLOW_ENGINE_STALE_AFTER": "soon"})
    for raw in ("0", "-1", "nan", "1e12"):  # refused naming the variable that was set, not the argument
        with pytest.raises(ConfigurationError, match=r"WORKFLOW_ENGINE_HEARTBEAT_INTERVAL must be .* > 0"):
            WorkflowEngine.from_env({"WORKFLOW_ENGINE_HEARTBEAT_INTERVAL": raw})
    with pytest.raises(ConfigurationError, match="at least twice heartbeat_interval"):
        WorkflowEngine(
            database_url="sqlite:///:memory:", redis_url="fakeredis://", heartbeat_interval=5, stale_after=6
        )


def test_reconcile_walks_a_backlog_longer_than_one_batch(
    async_engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "REDELIVERY_GRACE", timedelta(0))
    async_engine.register_handler("double", double)
    ids = [create(async_engine) for _ in range(12)]
    for wid in ids:
        async_engine.enqueue_execution(wid)
    async_engine.redis.flushall()
    report = async_engine.reconcile(batch_size=5)
    assert sorted(report.redelivered) == sorted(ids)


def test_a_reconcile_that_did_something_logs_its_counts_and_every_id_as_a_field(
    async_engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One line a pass: counts in the message, and the report under `reconcile` (an object in JSON logs)."""
    import json
    import logging

    from workflow_engine.logs import JsonFormatter

    monkeypatch.setattr(recovery, "REDELIVERY_GRACE", timedelta(0))
    async_engine.register_handler("double", double)
    ids = [async_engine.create_workflow(workflow_type_id="double", enqueue=True) for _ in range(2)]
    async_engine.redis.flushall()
    with caplog.at_level(logging.INFO, logger="workflow_engine"):
        report = async_engine.reconcile()
    assert sorted(report.redelivered) == sorted(ids), report
    [record] = [r for r in caplog.records if r.getMessage().startswith("reconcile:")]
    assert record.getMessage() == "reconcile: redelivered 2"
    line = json.loads(JsonFormatter().format(record))
    assert (
        sorted(line["reconcile"]["redelivered"]) == sorted(ids) and line["reconcile"]["requeued_stale"] == []
    )


def test_reconcile_redelivers_a_job_a_worker_took_but_never_claimed(
    async_engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async_engine.register_handler("double", double)
    wid = create(async_engine)
    async_engine.enqueue_execution(wid)
    wf = async_engine.get_workflow(wid)
    # a worker popped the job, marked it started in Redis, and died before claiming the workflow
    async_engine.redis.hset(rq.job.Job.key_for(wf.job_id or ""), "status", "started")
    monkeypatch.setattr(recovery, "REDELIVERY_GRACE", timedelta(0))
    assert async_engine.reconcile().redelivered == []  # it may be claiming right now
    old = utcnow() - timedelta(seconds=async_engine.stale_after + 1)
    async_engine.store.compare_and_set(wid, expected_status=S.QUEUED, changes={"updated_at": old}, event=None)
    assert async_engine.reconcile().redelivered == [wid]
    assert "never claimed" in (async_engine.get_events(wid)[-1].detail or "")


@pytest.mark.parametrize("requeues", [0, 1, 3])
def test_the_backoff_grows_within_a_retry_budget_and_a_requeue_starts_it_again(requeues: int) -> None:
    """retry_backoff=1: after the 1st, 2nd and 3rd failed attempt of a budget, 0.5-1 s, 1-2 s, 2-4 s,
    however many budgets (requeues) came before."""
    first = 1 + 4 * requeues  # each budget of max_retries=3 is 4 attempts
    for n, (low, high) in enumerate([(0.5, 1), (1, 2), (2, 4)], start=0):
        wf = failing(attempts=first + n, max_retries=3, max_attempts=first + 3)
        assert all(low <= recovery.retry_delay(wf) <= high for _ in range(50))


def test_a_worker_crash_is_retried_at_once_without_backoff(async_engine: WorkflowEngine) -> None:
    async_engine.register_handler("double", double, max_retries=1, retry_backoff=60)
    wid = create(async_engine)
    async_engine.enqueue_execution(wid)
    make_stale(async_engine, wid)
    assert async_engine.reconcile().requeued_stale == [wid]
    wf = async_engine.get_workflow(wid)
    assert wf.run_after is None and wf.job_id is not None and async_engine.queue.count >= 1


def slow(wf: Workflow) -> dict[str, Any]:
    time.sleep(float(wf.inputs["seconds"]))
    return {"attempt": wf.attempts}


def test_an_in_process_attempt_that_outlives_stale_after_is_not_taken_for_lost(tmp_path: Path) -> None:
    """In-process mode heartbeats as a worker does: a reconcile while a long handler runs in a
    request thread finds its lease renewed, and never runs the workflow a second time."""
    engine = file_engine(tmp_path, heartbeat_interval=0.1, stale_after=0.3)
    engine.register_handler("slow", slow, max_retries=3)
    wid = engine.create_workflow(workflow_type_id="slow", inputs={"seconds": 0.9})
    request = threading.Thread(target=engine.enqueue_execution, args=(wid,))
    request.start()
    wait_for(lambda: engine.get_workflow(wid).status is S.RUNNING, timeout=5, what="the attempt to start")
    time.sleep(0.5)  # past stale_after: only heartbeats keep the lease alive
    report = engine.reconcile()
    request.join()
    wf = engine.get_workflow(wid)
    assert report.requeued_stale == [] and report.failed_stale == [] and report.cancelled_stale == []
    assert (wf.status, wf.attempts, wf.result) == (S.COMPLETED, 1, {"attempt": 1})
    assert wf.heartbeat_at is not None and wf.started_at is not None and wf.heartbeat_at > wf.started_at
    engine.close()


_LOSING: dict[str, Any] = {}


def loses_its_workflow_then_asks(wf: Workflow) -> dict[str, int]:
    """First attempt: its lease is let expire and reconcile hands the workflow to a new job."""
    engine: WorkflowEngine = _LOSING["engine"]
    if wf.attempts == 1:
        _LOSING["before"] = cancel_requested()
        expired = utcnow() - timedelta(seconds=engine.stale_after + 60)
        engine.store.compare_and_set(
            wf.id, expected_status=S.RUNNING, changes={"lease_until": expired}, event=None
        )
        _LOSING["requeued"] = engine.reconcile().requeued_stale
        _LOSING["after"] = cancel_requested()
    return {"attempt": wf.attempts}


def test_cancel_requested_is_true_as_soon_as_the_attempt_has_lost_its_workflow(tmp_path: Path) -> None:
    """Each call reads the database: a handler learns it lost the workflow at its next check,
    not only at the next heartbeat (here a minute away)."""
    engine = file_engine(tmp_path, heartbeat_interval=60, stale_after=120)
    _LOSING["engine"] = engine
    engine.register_handler("losing", loses_its_workflow_then_asks, max_retries=3)
    wid = engine.create_workflow(workflow_type_id="losing", enqueue=True)
    assert (_LOSING["before"], _LOSING["requeued"], _LOSING["after"]) == (False, [wid], True)
    wf = engine.get_workflow(wid)
    assert (wf.status, wf.attempts, wf.result) == (S.COMPLETED, 2, {"attempt": 2})  # the new job's
    engine.close()


def test_sync_mode_with_a_real_redis_runs_on_this_engine(redis_server: object) -> None:
    engine = WorkflowEngine(
        database_url="sqlite:///:memory:",
        redis_url=redis_server.url,  # type: ignore[attr-defined]
        is_async=False,
    )
    engine.register_handler("double", double)
    wid = create(engine, n=2)
    engine.enqueue_execution(wid)
    assert engine.get_workflow(wid).result == {"doubled": 4}


def test_listeners_see_every_status_change_the_engine_makes(workflow_engine: WorkflowEngine) -> None:
    seen: list[tuple[str | None, str]] = []

    def listener(wf: Workflow, before: WorkflowStatus | None) -> None:
        seen.append((before.value if before else None, wf.status.value))

    def broken(wf: Workflow, before: WorkflowStatus | None) -> None:
        raise RuntimeError("a broken listener must not break the engine")

    workflow_engine.add_listener(listener)
    workflow_engine.add_listener(broken)
    workflow_engine.register_handler("double", double)
    wid = create(workflow_engine)
    workflow_engine.enqueue_execution(wid)
    assert seen == [(None, "pending"), ("pending", "queued"), ("queued", "running"), ("running", "completed")]
    assert workflow_engine.get_workflow(wid).status is S.COMPLETED


# -- bulk ----------------------------------------------------------------------------
def test_create_workflows_and_enqueue_many_use_one_transaction_and_one_pipeline(
    async_engine: WorkflowEngine,
) -> None:
    async_engine.register_handler("double", double)
    ids = async_engine.create_workflows(
        [{"workflow_type_id": "double", "inputs": {"n": i}, "created_by_agent": "bulk"} for i in range(50)]
    )
    assert len(set(ids)) == 50
    async_engine.enqueue_many(ids + ids[:5])  # duplicates and already queued ones are fine
    async_engine.enqueue_many(ids)
    assert async_engine.queue.count == 50
    work(async_engine)
    assert {async_engine.get_workflow(w).result["doubled"] for w in ids} == {2 * i for i in range(50)}


def test_bulk_calls_validate_everything_before_writing_anything(async_engine: WorkflowEngine) -> None:
    async_engine.register_handler("double", double)
    with pytest.raises(InvalidInput, match="item 1 must be"):
        async_engine.create_workflows([{"workflow_type_id": "double"}, "nope"])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="unknown arguments: colour"):
        async_engine.create_workflows([{"workflow_type_id": "double", "colour": "red"}])
    with pytest.raises(InvalidInput, match="inputs must be JSON"):
        async_engine.create_workflows(
            [{"workflow_type_id": "double"}, {"workflow_type_id": "d", "inputs": {"x": {1}}}]
        )
    assert row_count(async_engine) == 0
    good = create(async_engine)
    with pytest.raises(WorkflowNotFound):
        async_engine.enqueue_many([good, "missing"])
    other = create(async_engine, "nobody")
    with pytest.raises(UnknownWorkflowType):
        async_engine.enqueue_many([good, other])
    assert async_engine.get_workflow(good).status is S.PENDING and async_engine.queue.count == 0


def test_enqueue_many_in_process_runs_every_workflow(workflow_engine: WorkflowEngine) -> None:
    workflow_engine.register_handler("double", double)
    ids = workflow_engine.create_workflows([{"workflow_type_id": "double", "inputs": {"n": 1}}] * 3)
    workflow_engine.enqueue_many(ids)
    assert {workflow_engine.get_workflow(w).status for w in ids} == {S.COMPLETED}


_SIBLINGS: dict[str, WorkflowEngine] = {}


def cancel_sibling(wf: Workflow) -> dict[str, bool]:
    _SIBLINGS["engine"].cancel(wf.inputs["sibling"])
    return {"won": True}


@pytest.mark.parametrize("mode", ["in-process", "worker"])
def test_enqueue_many_queues_the_whole_batch_before_any_of_it_runs_in_both_modes(
    tmp_path: Path, mode: str
) -> None:
    """The first workflow's handler cancels the second: already queued, so the batch stands."""
    engine = WorkflowEngine(
        database_url=f"sqlite:///{tmp_path / 'batch.db'}", redis_url="fakeredis://", is_async=mode == "worker"
    )
    _SIBLINGS["engine"] = engine
    try:
        engine.register_handler("first", cancel_sibling)
        engine.register_handler("second", double)
        b = engine.create_workflow(workflow_type_id="second", inputs={"n": 1})
        a = engine.create_workflow(workflow_type_id="first", inputs={"sibling": b})
        engine.enqueue_many([a, b])
        if mode == "worker":
            work(engine)
        assert engine.get_workflow(a).status is S.COMPLETED
        assert engine.get_workflow(b).status is S.CANCELLED
        assert [e.to_status for e in engine.get_events(b)] == [S.PENDING, S.QUEUED, S.CANCELLED]
    finally:
        _SIBLINGS.clear()
        engine.close()


def test_enqueue_many_refuses_a_workflow_this_engine_cancelled_since_creating_it(
    async_engine: WorkflowEngine,
) -> None:
    async_engine.register_handler("double", double)
    a, b = async_engine.create_workflows([{"workflow_type_id": "double", "inputs": {"n": 1}}] * 2)
    async_engine.cancel(a)
    with pytest.raises(InvalidTransition, match="enqueue_many takes pending workflows"):
        async_engine.enqueue_many([a, b])
    assert [async_engine.get_workflow(w).status for w in (a, b)] == [S.CANCELLED, S.PENDING]
    with pytest.raises(InvalidInput, match="a list of workflow ids"):
        async_engine.enqueue_many(b)  # a string is not a list of ids


# -- creating and enqueueing in one call -----------------------------------------------
def history(engine: WorkflowEngine, wid: str) -> list[tuple[str | None, str, str | None]]:
    return [
        (e.from_status.value if e.from_status else None, e.to_status.value, e.detail)
        for e in engine.get_events(wid)
    ]


def test_a_new_workflow_shows_the_retry_budget_its_enqueue_will_set(async_engine: WorkflowEngine) -> None:
    """Not max_attempts 1 beside max_retries 2 until it is enqueued."""
    async_engine.register_handler("double", double, max_retries=2)
    wid = create(async_engine)
    new = async_engine.get_workflow(wid)
    assert (new.max_retries, new.max_attempts) == (2, 3)
    async_engine.enqueue_execution(wid)
    assert async_engine.get_workflow(wid).max_attempts == 3
    unknown = async_engine.get_workflow(async_engine.create_workflow(workflow_type_id="nobody-yet"))
    assert (unknown.max_retries, unknown.max_attempts) == (0, 1)


def test_create_with_enqueue_records_what_create_then_enqueue_records_in_one_transaction(
    async_engine: WorkflowEngine,
) -> None:
    async_engine.register_handler("double", double)
    two_calls = create(async_engine)
    async_engine.enqueue_execution(two_calls)
    one_call = async_engine.create_workflow(workflow_type_id="double", inputs={"n": 1}, enqueue=True)
    a, b = async_engine.get_workflow(two_calls), async_engine.get_workflow(one_call)
    assert b.status is S.QUEUED and b.job_id is not None
    keep = ("status", "handler", "max_retries", "max_attempts", "retry_backoff", "timeout", "attempts")
    assert {k: getattr(b, k) for k in keep} == {k: getattr(a, k) for k in keep}
    assert history(async_engine, one_call) == history(async_engine, two_calls)
    assert history(async_engine, one_call) == [(None, "pending", None), ("pending", "queued", "enqueued")]
    assert async_engine.queue.count == 2
    work(async_engine)
    assert async_engine.get_workflow(one_call).result == {"doubled": 2}


def test_create_with_enqueue_in_process_runs_the_workflow_before_returning(
    workflow_engine: WorkflowEngine,
) -> None:
    seen: list[tuple[str | None, str]] = []
    workflow_engine.add_listener(
        lambda wf, before: seen.append((before.value if before else None, wf.status.value))
    )
    workflow_engine.register_handler("double", double)
    wid = workflow_engine.create_workflow(workflow_type_id="double", inputs={"n": 4}, enqueue=True)
    assert workflow_engine.get_workflow(wid).result == {"doubled": 8}
    assert seen == [(None, "pending"), ("pending", "queued"), ("queued", "running"), ("running", "completed")]


def test_create_with_enqueue_refuses_what_enqueue_would_refuse_and_writes_nothing(
    async_engine: WorkflowEngine,
) -> None:
    with pytest.raises(UnknownWorkflowType):
        async_engine.create_workflow(workflow_type_id="nobody", enqueue=True)
    async_engine.register_handler("double", double)
    async_engine.configure_council("c1", members=["ana"], quorum=1)
    with pytest.raises(InvalidInput, match="approval queues it"):
        async_engine.create_workflow(
            workflow_type_id="double", assigned_council_id="c1", requires_approval=True, enqueue=True
        )
    with pytest.raises(UnknownWorkflowType):  # one bad item: none is written
        async_engine.create_workflows(
            [{"workflow_type_id": "double"}, {"workflow_type_id": "x"}], enqueue=True
        )
    with pytest.raises(InvalidInput, match="enqueue must be true or false"):
        async_engine.create_workflow(workflow_type_id="double", enqueue="yes")  # type: ignore[arg-type]
    assert row_count(async_engine) == 0 and async_engine.queue.count == 0


def test_create_with_enqueue_and_a_known_idempotency_key_changes_nothing(
    async_engine: WorkflowEngine,
) -> None:
    async_engine.register_handler("double", double)
    first = async_engine.create_workflow(workflow_type_id="double", idempotency_key="k", enqueue=True)
    again = async_engine.create_workflow(workflow_type_id="double", idempotency_key="k", enqueue=True)
    assert again == first and async_engine.queue.count == 1
    held = async_engine.create_workflow(workflow_type_id="double", idempotency_key="held")
    assert (
        async_engine.create_workflow(workflow_type_id="double", idempotency_key="held", enqueue=True) == held
    )
    assert async_engine.get_workflow(held).status is S.PENDING  # the first call's choice stands
    assert len(async_engine.get_events(first)) == 2


def test_create_with_enqueue_and_redis_down_names_the_workflow_it_left_queued(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from support import free_port

    engine = WorkflowEngine(database_url="sqlite:///:memory:", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    engine.register_handler("double", double)
    with caplog.at_level("INFO", logger="workflow_engine"):
        with pytest.raises(QueueUnavailable, match="reconcile") as raised:
            engine.create_workflow(workflow_type_id="double", enqueue=True)
    [wid] = raised.value.workflow_ids
    assert engine.get_workflow(wid).status is S.QUEUED  # durable; reconcile delivers it once Redis is back
    # The log says "enqueued" (recorded queued), then what became of the job, for a reader of the log.
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records] == [
        ("INFO", "workflow created"),
        ("INFO", "workflow enqueued"),
        ("WARNING", "1 workflow(s) recorded queued, but not put on the queue"),
    ]
    assert caplog.records[-1].workflow_ids == [wid]
    with pytest.raises(QueueUnavailable) as bulk:
        engine.create_workflows([{"workflow_type_id": "double"}] * 3, enqueue=True)
    assert {engine.get_workflow(w).status for w in bulk.value.workflow_ids} == {S.QUEUED}
    assert len(bulk.value.workflow_ids) == 3


def test_create_workflows_with_enqueue_queues_every_new_one_in_one_delivery(
    async_engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async_engine.register_handler("double", double)
    existing = async_engine.create_workflow(workflow_type_id="double", idempotency_key="old")
    deliveries: list[int] = []
    deliver = async_engine.transport.deliver
    monkeypatch.setattr(
        async_engine.transport, "deliver", lambda wfs, **kw: (deliveries.append(len(wfs)), deliver(wfs, **kw))
    )
    items = [{"workflow_type_id": "double", "inputs": {"n": i}} for i in range(20)]
    ids = async_engine.create_workflows(
        [*items, {"workflow_type_id": "double", "idempotency_key": "old"}], enqueue=True
    )
    assert ids[-1] == existing and async_engine.get_workflow(existing).status is S.PENDING
    assert async_engine.queue.count == 20 and deliveries == [20]
    work(async_engine)
    assert [async_engine.get_workflow(w).result for w in ids[:-1]] == [{"doubled": 2 * i} for i in range(20)]


def _rqs_own_hashes(connection: Any, jobs: list[dict[str, Any]]) -> dict[str, dict[bytes, bytes]]:
    """The hashes RQ's own bulk enqueue writes for these jobs, on a Redis of their own."""
    own = fakeredis.FakeRedis()
    rq.Queue("workflows", connection=own).enqueue_many(
        [rq.Queue.prepare_data(transport.RUN_WORKFLOW, **opts) for opts in jobs]
    )
    return {opts["job_id"]: own.hgetall(rq.job.Job.key_for(opts["job_id"])) for opts in jobs}


def _without_times(mapping: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {k: v for k, v in mapping.items() if k not in (b"created_at", b"enqueued_at")}


@pytest.fixture
def unlearnt(monkeypatch: pytest.MonkeyPatch) -> dict[Any, Any]:
    """No kind of job learnt yet in this process, and no refusal logged yet."""
    templates: dict[Any, Any] = {}
    monkeypatch.setattr(transport, "_templates", templates)
    monkeypatch.setattr(transport, "_copy_refused_logged", False)
    return templates


@pytest.mark.parametrize("engine_key", [None, "an-engine"])
def test_a_delivered_job_has_the_hash_rqs_own_enqueue_writes_and_the_queue_keeps_their_order(
    engine_key: str | None, unlearnt: dict[Any, Any]
) -> None:
    """Each job's hash is copied from its kind's, learnt from RQ; it is RQ's own, field for field,
    bar its times, and the jobs are queued in the order given, across deliveries and kinds."""
    connection = fakeredis.FakeRedis()
    tr = transport.Transport(connection, "workflows")
    timeouts = [None, 5.0, None, None, 5.0, 2.5, None]
    batches = [
        [a_workflow(job_id=f"{b}{i}", handler="h:f", timeout=t) for i, t in enumerate(timeouts)]
        for b in "xyz"
    ]
    for batch in batches:
        tr.deliver(batch, engine_key=engine_key)
    jobs = [transport._job_options(wf, engine_key=engine_key) for batch in batches for wf in batch]
    expected = _rqs_own_hashes(connection, jobs)
    assert len(unlearnt) == 3 and None not in unlearnt.values()  # copied, not written by RQ
    for opts in jobs:
        written = connection.hgetall(rq.job.Job.key_for(opts["job_id"]))
        assert _without_times(written) == _without_times(expected[opts["job_id"]])
        assert written[b"created_at"] and written[b"enqueued_at"]
        job = rq.job.Job.fetch(opts["job_id"], connection=connection)
        assert (job.func_name, job.args) == (transport.RUN_WORKFLOW, opts["args"])
        assert job.kwargs == (opts["kwargs"] or {})
        assert job.enqueued_at is not None and job.get_status() == "queued" and job.origin == "workflows"
    assert tr.queue.job_ids == [opts["job_id"] for opts in jobs]
    assert connection.smembers("rq:queues") == {b"rq:queue:workflows"}


def _a_mix_delivered(connection: Any) -> list[Workflow]:
    """Eight jobs of two kinds (no timeout; 5 s), interleaved, in two deliveries."""
    tr = transport.Transport(connection, "workflows")
    timeouts = [None, 5.0, None, 5.0, 5.0, None, None, 5.0]
    workflows = [a_workflow(job_id=f"j{i}", handler="h:f", timeout=t) for i, t in enumerate(timeouts)]
    tr.deliver(workflows[:2])
    tr.deliver(workflows[2:])
    assert tr.queue.job_ids == [wf.job_id for wf in workflows]
    return workflows


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "enqueues a job differently" in r.getMessage()]


@pytest.mark.parametrize("field", ["names the job", "differs from job to job", "is another type"])
def test_a_kind_of_job_whose_hash_rq_writes_differently_is_enqueued_by_rq_every_time(
    field: str, unlearnt: dict[Any, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A later RQ whose hash has a field of each job's own (naming the job, or not) is not copied
    wrongly: each job of that kind goes through RQ's own enqueue, with one warning. Other kinds
    are still copied, and the queue keeps the order given."""
    to_dict = rq.job.Job.to_dict

    def with_a_field_of_its_own(self: rq.job.Job, *args: Any, **kwargs: Any) -> dict[str, Any]:
        mapping = to_dict(self, *args, **kwargs)
        if self.timeout != -1:
            return mapping
        if field == "is another type":  # equal in Python (1 == 1.0), not as sent (b"1", b"1.0")
            return {**mapping, "extra": 1 if self.args[1] == "h:f" else 1.0}
        return {**mapping, "extra": f"from {self.id}" if field == "names the job" else uuid.uuid4().hex}

    monkeypatch.setattr(rq.job.Job, "to_dict", with_a_field_of_its_own)
    connection = fakeredis.FakeRedis()
    workflows = _a_mix_delivered(connection)
    assert [template is None for template in unlearnt.values()] == [True, False]
    extras = [connection.hget(rq.job.Job.key_for(wf.job_id or ""), "extra") for wf in workflows]
    assert [extra is not None for extra in extras] == [wf.timeout is None for wf in workflows]
    if field != "is another type":
        assert len(set(filter(None, extras))) == 4  # each job's own, as RQ wrote it
    [refusal] = _refusals(caplog)
    assert "extra" in refusal


def test_a_kind_of_job_for_which_rqs_enqueue_sends_another_command_is_enqueued_by_rq_every_time(
    unlearnt: dict[Any, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A later RQ that sends more than the job's hash and push (an expiry, a registry) is not
    copied either: only RQ would send it."""
    persist = rq.Queue._persist_job

    def and_an_expiry(self: rq.Queue, job: rq.job.Job, pipeline: Any, *args: Any, **kwargs: Any) -> None:
        persist(self, job, pipeline, *args, **kwargs)
        if job.timeout == -1:
            pipeline.expire(job.key, 3600)

    monkeypatch.setattr(rq.Queue, "_persist_job", and_an_expiry)
    connection = fakeredis.FakeRedis()
    workflows = _a_mix_delivered(connection)
    assert [template is None for template in unlearnt.values()] == [True, False]
    ttls = [connection.ttl(rq.job.Job.key_for(wf.job_id or "")) for wf in workflows]
    assert [ttl > 0 for ttl in ttls] == [wf.timeout is None for wf in workflows]
    [refusal] = _refusals(caplog)
    assert "EXPIRE" in refusal


def test_a_kind_of_job_for_which_rqs_enqueue_sends_a_command_outside_its_pipeline_is_enqueued_by_rq(
    unlearnt: dict[Any, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Learning a kind sends nothing: a command RQ would send on its connection, not in the
    pipeline, is seen there without being sent, and that kind is left to RQ."""
    persist = rq.Queue._persist_job

    def and_a_command_of_its_own(self: rq.Queue, job: rq.job.Job, *args: Any, **kwargs: Any) -> None:
        persist(self, job, *args, **kwargs)
        if job.timeout == -1:
            self.connection.incr("sideband")

    monkeypatch.setattr(rq.Queue, "_persist_job", and_a_command_of_its_own)
    connection = fakeredis.FakeRedis()
    workflows = _a_mix_delivered(connection)
    assert [template is None for template in unlearnt.values()] == [True, False]
    assert connection.get("sideband") == str(sum(wf.timeout is None for wf in workflows)).encode()
    [refusal] = _refusals(caplog)
    assert "outside the pipeline" in refusal


def test_a_kind_of_job_whose_rehearsal_fails_is_enqueued_by_rq(
    unlearnt: dict[Any, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Learning a kind never fails a delivery: if RQ's enqueue cannot be rehearsed (a later RQ that
    needs what the rehearsal lacks), that kind is left to RQ's own enqueue."""
    persist = rq.Queue._persist_job

    def fails_where_nothing_is_sent(self: rq.Queue, job: rq.job.Job, *args: Any, **kwargs: Any) -> None:
        if job.timeout == -1 and isinstance(self.connection.connection_pool, transport._NoConnections):
            raise RuntimeError("needs a real connection")
        persist(self, job, *args, **kwargs)

    monkeypatch.setattr(rq.Queue, "_persist_job", fails_where_nothing_is_sent)
    _a_mix_delivered(fakeredis.FakeRedis())
    assert [template is None for template in unlearnt.values()] == [True, False]
    [refusal] = _refusals(caplog)
    assert "RuntimeError: needs a real connection" in refusal


def test_a_kind_of_job_whose_hash_redis_py_cannot_send_fails_as_rqs_own_enqueue_would(
    unlearnt: dict[Any, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A field redis-py cannot encode is never copied; RQ's own enqueue then fails to send it, as before."""
    to_dict = rq.job.Job.to_dict

    def with_a_none(self: rq.job.Job, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**to_dict(self, *args, **kwargs), "broken": None}

    monkeypatch.setattr(rq.job.Job, "to_dict", with_a_none)
    wf = a_workflow(job_id="j1", handler="h:f")
    with pytest.raises(QueueUnavailable) as raised:
        transport.Transport(fakeredis.FakeRedis(), "workflows").deliver([wf])
    assert list(raised.value.workflow_ids) == [wf.id] and list(unlearnt.values()) == [None]
    [refusal] = _refusals(caplog)
    assert "cannot be encoded" in refusal


def test_jobs_of_two_queues_are_copied_each_from_its_own_queues_kind(unlearnt: dict[Any, Any]) -> None:
    connection = fakeredis.FakeRedis()
    for name in ("first", "second", "first"):
        transport.Transport(connection, name).deliver([a_workflow(job_id=f"{name}-{uuid.uuid4().hex}")])
    learnt = sorted(kind[0] for kind, template in unlearnt.items() if template is not None)
    assert learnt == ["first", "second"]
    for name in ("first", "second"):
        queue = rq.Queue(name, connection=connection)
        assert {queue.fetch_job(job_id).origin for job_id in queue.job_ids} == {name}  # type: ignore[union-attr]


def test_a_kind_learnt_while_redis_is_down_is_learnt_again_once_it_is_back(unlearnt: dict[Any, Any]) -> None:
    server = fakeredis.FakeServer()
    tr = transport.Transport(fakeredis.FakeRedis(server=server), "workflows")
    wf = a_workflow(job_id="j1", handler="h:f")
    server.connected = False
    with pytest.raises(QueueUnavailable) as raised:
        tr.deliver([wf])
    assert list(raised.value.workflow_ids) == [wf.id] and unlearnt == {}
    server.connected = True
    tr.deliver([wf])
    assert tr.queue.job_ids == ["j1"] and None not in unlearnt.values() and len(unlearnt) == 1


def test_a_delivery_with_a_job_id_twice_or_one_rq_refuses_sends_nothing(unlearnt: dict[Any, Any]) -> None:
    connection = fakeredis.FakeRedis()
    tr = transport.Transport(connection, "workflows")
    wf = a_workflow(job_id="j1", handler="h:f")
    with pytest.raises(ValueError, match="more than once"):
        tr.deliver([wf, a_workflow(job_id="j2", handler="h:f"), wf.model_copy(update={"id": "other"})])
    with pytest.raises(ValueError, match="letters, numbers"):
        tr.deliver([a_workflow(job_id="j3", handler="h:f"), a_workflow(job_id="j:4", handler="h:f")])
    assert connection.keys("*") == []


def test_jobs_copied_from_rqs_hash_run_in_a_stock_worker(
    async_engine: WorkflowEngine, unlearnt: dict[Any, Any]
) -> None:
    async_engine.register_handler("double", double)
    async_engine.register_handler("slow_double", double, timeout=30)
    items = [{"workflow_type_id": t, "inputs": {"n": i}} for i in range(6) for t in ("double", "slow_double")]
    ids = async_engine.create_workflows(items, enqueue=True)
    assert {kind[1] for kind, template in unlearnt.items() if template is not None} == {-1, 90}
    work(async_engine)
    results = [async_engine.get_workflow(w).result for w in ids]
    assert results == [{"doubled": 2 * i} for i in range(6) for _ in "ab"]


def test_reconcile_works_on_a_redis_without_lpos(
    async_engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RQ uses the intermediate list only from Redis 6.2, and older servers have no LPOS: it must not
    be sent there (fakeredis reports no version, so RQ takes it for 5.0)."""
    import redis.commands.core

    def unknown(*args: object, **kwargs: object) -> object:
        raise AssertionError("LPOS sent to a Redis older than 6.2")

    monkeypatch.setattr(redis.commands.core.ListCommands, "lpos", unknown)
    monkeypatch.setattr(recovery, "REDELIVERY_GRACE", timedelta(0))
    async_engine.register_handler("double", double)
    wid = async_engine.create_workflow(workflow_type_id="double", inputs={"n": 1}, enqueue=True)
    async_engine.redis.delete(rq.job.Job.key_for(async_engine.get_workflow(wid).job_id or ""))
    assert async_engine.reconcile().redelivered == [wid]


def test_on_a_redis_without_lpos_a_job_lost_from_the_queues_list_is_delivered_again_in_time(
    async_engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """There RQ pops a job outright (no intermediate list), so a job on no list may be one a worker
    is starting: it is given up on once a pass has seen it so for stale_after (fakeredis says no
    version, so RQ takes it for 5.0)."""
    from workflow_engine.transport import TAKEN_MARK

    monkeypatch.setattr(recovery, "REDELIVERY_GRACE", timedelta(0))
    async_engine.register_handler("double", double)
    wid = async_engine.create_workflow(workflow_type_id="double", inputs={"n": 1}, enqueue=True)
    job_id = async_engine.get_workflow(wid).job_id or ""
    async_engine.redis.delete(async_engine.queue.key)  # the job stays `queued`, on no list
    assert async_engine.reconcile().redelivered == []  # queued only just now
    old = utcnow() - timedelta(seconds=async_engine.stale_after + 1)
    async_engine.store.compare_and_set(wid, expected_status=S.QUEUED, changes={"updated_at": old}, event=None)
    assert async_engine.reconcile().redelivered == []  # seen off the queue for the first time
    async_engine.redis.set(TAKEN_MARK.format(job_id=job_id), old.timestamp())
    assert async_engine.reconcile().redelivered == [wid]
    assert async_engine.get_events(wid)[-1].detail == "redelivered: job not on the queue"
    work(async_engine)
    assert async_engine.get_workflow(wid).result == {"doubled": 2}


def test_a_workflow_recorded_with_a_policy_past_todays_bounds_can_still_be_requeued(
    async_engine: WorkflowEngine,
) -> None:
    """An earlier version accepted a ten-year-plus timeout; requeueing it without the handler registered
    (the CLI, a web process) takes the recorded policy, within today's bounds."""
    async_engine.register_handler("boom", boom, max_retries=0)
    wid = create(async_engine, "boom")
    async_engine.enqueue_execution(wid)
    work(async_engine)
    async_engine.store.compare_and_set(
        wid, expected_status=S.FAILED, changes={"timeout": 1e12, "max_retries": 10**8}, event=None
    )
    other = WorkflowEngine(database_url=async_engine.database_url, redis_url="fakeredis://")
    try:
        wf = other.requeue(wid)
        assert wf.status is S.QUEUED and wf.timeout == config.MAX_SECONDS and wf.max_retries == 1_000_000
    finally:
        other.close()


def test_the_package_exports_every_error_a_caller_of_its_methods_catches() -> None:
    import workflow_engine
    from workflow_engine import errors

    caught = {
        "WorkflowEngineError", "WorkflowNotFound", "InvalidTransition", "InvalidInput",
        "UnknownWorkflowType", "QueueUnavailable", "StoreError", "StoreUnavailable",
    }  # fmt: skip
    assert caught <= set(workflow_engine.__all__)
    assert all(getattr(workflow_engine, name) is getattr(errors, name) for name in caught)
