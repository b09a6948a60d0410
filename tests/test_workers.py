"""Integration tests with real processes: stock `rq worker`s, concurrent writers, the demo command.

Every test runs its own redis-server and a SQLite file in ``tmp_path``. The test
process registers handlers by import path only (``we_test_handlers:...``), so it
never needs the handler functions: the worker processes import them through
``rq worker --path tests/apps``. Tests count what handlers actually did (the
lines they append to ``$WE_TEST_EFFECTS/<workflow id>``), not only statuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import rq

from workflow_engine import recovery
from workflow_engine.engine import WorkflowEngine
from workflow_engine.models import WorkflowEvent, utcnow
from workflow_engine.status import WorkflowStatus
from workflow_engine.transport import TAKEN_MARK

from support import APPS, BIN, RedisServer, Worker, effects_of, free_port, start_worker, successes

S = WorkflowStatus
HANDLERS = "we_test_handlers"
N_WORKFLOWS = 100
WORKER_TIMEOUT = 60.0


# -- helpers -----------------------------------------------------------------
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'workflows.db'}"


def clean_env() -> dict[str, str]:
    """This process's environment without any WORKFLOW_ENGINE_* / RQ_* setting that could leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("WORKFLOW_ENGINE_", "RQ_"))}


def transitions(events: list[WorkflowEvent]) -> list[tuple[str | None, str]]:
    return [(e.from_status.value if e.from_status else None, e.to_status.value) for e in events]


@pytest.fixture
def engine(tmp_path: Path, redis_server: RedisServer) -> Iterator[WorkflowEngine]:
    """The web-process side: an engine on a SQLite file and the private Redis, handlers by path only."""
    eng = WorkflowEngine(database_url=sqlite_url(tmp_path), redis_url=redis_server.url)
    try:
        yield eng
    finally:
        eng.close()


def submit_many(engine: WorkflowEngine, type_id: str, n: int) -> list[str]:
    ids = [engine.create_workflow(workflow_type_id=type_id, inputs={"n": i}) for i in range(n)]
    for workflow_id in ids:
        engine.enqueue_execution(workflow_id)
    return ids


def run_burst_workers(
    tmp_path: Path,
    redis_server: RedisServer,
    effects: Path,
    worker_classes: list[str],
    names: list[str] | None = None,
) -> list[Worker]:
    """Start one stock burst `rq worker workflows` per class, wait for every one to exit 0, stop them all."""
    workers: list[Worker] = []
    try:
        for i, worker_class in enumerate(worker_classes):
            workers.append(
                start_worker(
                    tmp_path,
                    redis_url=redis_server.url,
                    database_url=sqlite_url(tmp_path),
                    effects=effects,
                    kind="rq",
                    worker_class=worker_class,
                    extra_args=["--name", names[i]] if names else None,
                )
            )
        for worker in workers:
            code = worker.wait(WORKER_TIMEOUT)
            assert code == 0, f"burst worker exited with {code}:\n{worker.output()[-4000:]}"
    finally:
        for worker in workers:
            worker.stop()
    return workers


def run_burst_worker(tmp_path: Path, redis_server: RedisServer, effects: Path, **options: Any) -> Worker:
    """Run one stock burst worker (``start_worker``'s options) on the SQLite file; it must exit 0."""
    worker = start_worker(
        tmp_path, redis_url=redis_server.url, database_url=sqlite_url(tmp_path), effects=effects, **options
    )
    try:
        assert worker.wait(WORKER_TIMEOUT) == 0, worker.output()[-4000:]
    finally:
        worker.stop()
    return worker


def assert_each_completed_exactly_once(engine: WorkflowEngine, effects: Path, ids: list[str]) -> None:
    statuses = {wid: engine.get_workflow(wid).status.value for wid in ids}
    not_completed = {wid: status for wid, status in statuses.items() if status != "completed"}
    assert not not_completed, f"{len(not_completed)} workflows did not complete: {not_completed}"
    wrong = {wid: effects_of(effects, wid) for wid in ids if successes(effects, wid) != 1}
    assert not wrong, f"{len(wrong)} workflows did not run their handler exactly once: {wrong}"


# -- many workflows through stock workers -------------------------------------
@pytest.mark.slow
@pytest.mark.services
def test_two_forking_workers_run_each_of_100_workflows_exactly_once(
    tmp_path: Path, redis_server: RedisServer, effects: Path, engine: WorkflowEngine
) -> None:
    engine.register_handler("echo", f"{HANDLERS}:record_success")
    ids = submit_many(engine, "echo", N_WORKFLOWS)

    run_burst_workers(tmp_path, redis_server, effects, ["fork", "fork"])

    assert_each_completed_exactly_once(engine, effects, ids)


@pytest.mark.slow
@pytest.mark.services
def test_two_simple_workers_run_each_of_100_workflows_exactly_once(
    tmp_path: Path, redis_server: RedisServer, effects: Path, engine: WorkflowEngine
) -> None:
    engine.register_handler("echo", f"{HANDLERS}:record_success")
    ids = submit_many(engine, "echo", N_WORKFLOWS)

    run_burst_workers(tmp_path, redis_server, effects, ["simple", "simple"])

    assert_each_completed_exactly_once(engine, effects, ids)


@pytest.mark.slow
@pytest.mark.services
def test_a_forking_and_a_simple_worker_run_each_workflow_once_and_record_who_ran_it(
    tmp_path: Path, redis_server: RedisServer, effects: Path, engine: WorkflowEngine
) -> None:
    engine.register_handler("echo", f"{HANDLERS}:record_success")
    ids = submit_many(engine, "echo", N_WORKFLOWS)
    names = ["we-test-fork-worker", "we-test-simple-worker"]

    run_burst_workers(tmp_path, redis_server, effects, ["fork", "simple"], names=names)

    assert_each_completed_exactly_once(engine, effects, ids)
    for wid in ids:
        events = engine.get_events(wid)
        assert transitions(events) == [
            (None, "pending"),
            ("pending", "queued"),
            ("queued", "running"),
            ("running", "completed"),
        ], f"workflow {wid}: {[e.to_dict() for e in events]}"
        running = events[2]
        wf = engine.get_workflow(wid)
        assert wf.worker in names, f"workflow {wid} ran on {wf.worker!r}"
        assert running.detail is not None and wf.worker in running.detail, running.to_dict()
        assert running.attempt == 1 and wf.attempts == 1


# -- failures ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.services
def test_a_handler_the_worker_cannot_import_fails_the_workflow_with_a_message_saying_how_to_register_it(
    tmp_path: Path, redis_server: RedisServer, effects: Path, engine: WorkflowEngine
) -> None:
    # A missing function in an importable module, and a module that does not exist at all.
    engine.register_handler("missing_function", f"{HANDLERS}:does_not_exist", max_retries=3)
    engine.register_handler("missing_module", "we_no_such_module:handler", max_retries=3)
    ids = {type_id: submit_many(engine, type_id, 1)[0] for type_id in ("missing_function", "missing_module")}

    run_burst_workers(tmp_path, redis_server, effects, ["fork"])

    for type_id, wid in ids.items():
        wf = engine.get_workflow(wid)
        assert wf.status is S.FAILED, f"{type_id}: {wf.status.value} ({wf.error})"
        assert wf.error is not None
        assert repr(type_id) in wf.error, wf.error
        assert "register_handler" in wf.error, wf.error
        assert "--path" in wf.error, wf.error  # says where the worker must be able to import it from
        assert wf.attempts == 1, "retrying cannot fix a missing handler"
        assert wf.finished_at is not None
        assert transitions(engine.get_events(wid))[-1] == ("running", "failed")
        assert effects_of(effects, wid) == []
    assert engine.list_workflows(status="running") == []
    assert engine.list_workflows(status="queued") == []


@pytest.mark.services
@pytest.mark.parametrize(
    ("kind", "worker_class", "app"),
    [
        (
            "rq",
            "fork",
            {
                "extra_env": {
                    "WORKFLOW_ENGINE_APP": "we_child_app:engine",
                    "WORKFLOW_ENGINE_PRELOAD": "we_child_handlers",
                },
                "extra_args": ["-c", "workflow_engine.rq_preload"],
            },
        ),
        (
            "rq",
            "simple",
            {
                # The environment's Redis is not the worker's --url: children go where the job came from.
                "extra_env": {
                    "WORKFLOW_ENGINE_APP": "we_child_app:engine",
                    "WORKFLOW_ENGINE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                }
            },
        ),
        ("engine", "simple", {"extra_args": ["--app", "we_child_app:engine"]}),
    ],
    ids=[
        "preloaded-rq-worker-with-WORKFLOW_ENGINE_APP",
        "plain-rq-worker-whose-environment-names-another-redis",
        "workflow-engine-worker-with---app",
    ],
)
def test_a_handler_on_a_worker_starts_a_child_workflow_with_the_registrations_of_the_apps_engine(
    tmp_path: Path,
    redis_server: RedisServer,
    effects: Path,
    engine: WorkflowEngine,
    kind: str,
    worker_class: str,
    app: dict[str, Any],
) -> None:
    engine.register_handler(
        "parent", "we_child_handlers:start_child"
    )  # by path: this process never imports it
    ids = submit_many(engine, "parent", 3)

    run_burst_worker(tmp_path, redis_server, effects, kind=kind, worker_class=worker_class, **app)

    children = engine.list_workflows(workflow_type_id="child")
    assert sorted(wf.inputs["parent"] for wf in children) == sorted(ids)  # one child each
    for wid in ids:
        parent = engine.get_workflow(wid)
        assert parent.status is S.COMPLETED, parent.error
        child = engine.get_workflow(parent.result["child"])  # type: ignore[index]
        assert (child.status, child.handler) == (S.COMPLETED, "we_child_handlers:child")
        assert successes(effects, child.id) == 1


@pytest.mark.services
def test_without_the_apps_engine_a_worker_handler_cannot_start_a_child_and_says_what_to_set(
    tmp_path: Path, redis_server: RedisServer, effects: Path, engine: WorkflowEngine
) -> None:
    engine.register_handler("parent", "we_child_handlers:start_child", max_retries=0)
    [wid] = submit_many(engine, "parent", 1)

    run_burst_worker(tmp_path, redis_server, effects, kind="rq", worker_class="simple")

    parent = engine.get_workflow(wid)
    assert parent.status is S.FAILED
    assert parent.error is not None and "UnknownWorkflowType" in parent.error, parent.error
    assert "WORKFLOW_ENGINE_APP" in parent.error, parent.error
    assert engine.list_workflows(workflow_type_id="child") == []


@pytest.mark.services
def test_a_stock_rq_worker_with_the_preload_and_json_logs_writes_only_json_lines(
    tmp_path: Path, redis_server: RedisServer, effects: Path, engine: WorkflowEngine
) -> None:
    """RQ's own records included: a log shipper reads the worker's output one JSON object a line."""
    engine.register_handler("echo", f"{HANDLERS}:record_success")
    ids = submit_many(engine, "echo", 2)
    worker = run_burst_worker(
        tmp_path,
        redis_server,
        effects,
        extra_args=["-c", "workflow_engine.rq_preload"],
        extra_env={"WORKFLOW_ENGINE_LOG_FORMAT": "json"},
    )
    assert_each_completed_exactly_once(engine, effects, ids)
    records = [json.loads(line) for line in worker.output().splitlines() if line.strip()]
    loggers = {r["logger"] for r in records}
    assert {"rq.worker", "workflow_engine.execution"} <= loggers, loggers
    assert any(r.get("workflow_id") == ids[0] for r in records)


def imports_of(output: str, module: str) -> int:
    """How many processes imported ``module`` by an import statement, from ``-X importtime``'s lines."""
    lines = [line for line in output.splitlines() if line.startswith("import time:")]
    return sum(1 for line in lines if line.split("|")[-1].strip() == module)


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.parametrize(
    ("kind", "extra_args", "extra_env", "preloaded"),
    [
        ("rq", [], {}, False),
        ("rq", ["-c", "workflow_engine.rq_preload"], {"WORKFLOW_ENGINE_PRELOAD": "we_import_probe"}, True),
        ("engine", ["--preload", "we_import_probe:record_pid", "--reconcile-every", "0"], {}, True),
        ("engine", ["--reconcile-every", "0"], {"WORKFLOW_ENGINE_PRELOAD": "we_import_probe"}, True),
    ],
    ids=["rq-plain", "rq-preload-from-env", "engine-preload-option", "engine-preload-from-env"],
)
def test_a_forking_worker_imports_the_package_once_and_the_handler_module_once_if_preloaded_else_per_horse(
    tmp_path: Path,
    redis_server: RedisServer,
    effects: Path,
    engine: WorkflowEngine,
    kind: str,
    extra_args: list[str],
    extra_env: dict[str, str],
    preloaded: bool,
) -> None:
    engine.register_handler("probe", "we_import_probe:record_pid")
    ids = submit_many(engine, "probe", 4)
    worker = run_burst_worker(
        tmp_path,
        redis_server,
        effects,
        kind=kind,
        extra_args=[*extra_args, *(["--path", str(APPS)] if kind == "engine" else [])],
        extra_env={**extra_env, "PYTHONPROFILEIMPORTTIME": "1"},  # every process logs its imports
    )

    assert_each_completed_exactly_once(engine, effects, ids)
    horses = {int(effects_of(effects, wid)[0].split()[2]) for wid in ids}
    assert worker.proc.pid not in horses and len(horses) == 4, "each workflow ran in a work-horse of its own"
    importers = [int(line.split()[1]) for line in (effects / "imports").read_text().splitlines()]
    if preloaded:
        assert importers == [worker.proc.pid], "imported once, by the worker before it forked"
        assert "INFO workflow_engine.execution: attempt 1 started [workflow_id=" in worker.output(), (
            "the engine's logs show, naming the workflow"
        )
    else:
        assert sorted(importers) == sorted(horses), "a plain worker's every work-horse imports it again"
    # The package, pydantic and the driver are imported once, by the worker: a plain one as it reads its
    # first job's meta. Had any work-horse imported them, all four would have.
    for module in ("pydantic", "workflow_engine.execution", "sqlite3"):
        assert imports_of(worker.output(), module) == 1, f"{module} is imported once, by the worker"


@pytest.mark.slow
@pytest.mark.services
def test_a_worker_told_to_preload_a_module_it_cannot_import_stops_at_once_saying_why(
    tmp_path: Path, redis_server: RedisServer, effects: Path, engine: WorkflowEngine
) -> None:
    engine.register_handler("untouched", f"{HANDLERS}:noop")
    [wid] = submit_many(engine, "untouched", 1)
    for extra_args in (["--preload", "we_no_such_module"], ["--preload", "we_import_probe:not_a_function"]):
        worker = start_worker(
            tmp_path,
            redis_url=redis_server.url,
            database_url=sqlite_url(tmp_path),
            kind="engine",
            extra_args=[*extra_args, "--path", str(APPS)],
        )
        try:
            code = worker.wait(WORKER_TIMEOUT)
        finally:
            worker.stop()
        output = worker.output()
        assert code == 1, output
        assert f"Error: cannot preload {extra_args[1]!r}" in output and "Traceback" not in output, output
    assert engine.get_workflow(wid).status is S.QUEUED, "the worker took no job"


@pytest.mark.services
def test_workflows_whose_jobs_redis_kept_but_whose_queue_list_it_lost_are_delivered_again(
    tmp_path: Path,
    engine: WorkflowEngine,
    redis_server: RedisServer,
    effects: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `DEL` of the queue's key or an eviction leaves each job `queued` in Redis and on no list:
    no worker takes them. A job that a worker on several queues popped outright looks the same
    until it is marked started, a moment later; so, as a taken job, one is given up on only once
    a pass has seen it so for stale_after. Then it is delivered again, and each runs once."""
    engine.register_handler("ok", f"{HANDLERS}:record_success")
    lost = submit_many(engine, "ok", 3)
    engine.redis.delete(engine.queue.key)  # the jobs' hashes stay, `queued`
    waiting = submit_many(engine, "ok", 2)  # pushed after the loss: on the list
    jobs = {w: engine.get_workflow(w).job_id or "" for w in lost}
    assert {rq.job.Job.fetch(j, engine.redis).get_status() for j in jobs.values()} == {"queued"}
    engine.enqueue_execution(lost[0])  # maybe being taken right now: left to reconcile
    assert engine.get_events(lost[0])[-1].detail == "enqueued"
    monkeypatch.setattr(recovery, "REDELIVERY_GRACE", timedelta(0))
    old = utcnow() - timedelta(seconds=engine.stale_after + 1)
    for w in lost + waiting:  # all queued longer than stale_after: a backlog
        engine.store.compare_and_set(w, expected_status=S.QUEUED, changes={"updated_at": old}, event=None)
    assert engine.reconcile().redelivered == []  # first seen off the queue now
    marks = [TAKEN_MARK.format(job_id=job_id) for job_id in jobs.values()]
    assert all(0 < engine.redis.ttl(mark) <= 2 * engine.stale_after + 60 for mark in marks)  # not a day
    for mark in marks:  # ... as if stale_after ago
        engine.redis.set(mark, old.timestamp())
    assert sorted(engine.reconcile().redelivered) == sorted(lost)  # the waiting two stay as they are
    assert engine.redis.exists(*marks) == 0, "the notes of the replaced jobs are dropped"
    assert {engine.get_events(w)[-1].detail for w in lost} == {"redelivered: job not on the queue"}
    assert engine.queue.count == 5 and engine.reconcile().redelivered == []
    run_burst_workers(tmp_path, redis_server, effects, ["rq.SimpleWorker"])
    assert {engine.get_workflow(w).status for w in lost + waiting} == {S.COMPLETED}
    assert [successes(effects, w) for w in lost + waiting] == [1] * 5  # each ran once


@pytest.mark.services
def test_a_queue_too_long_to_read_whole_is_not_read_and_no_job_is_taken_for_lost(
    engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past QUEUE_SCAN_LIMIT jobs a pass does not read the list (it would copy megabytes every
    pass): a job lost from it waits until the queue is shorter."""
    from workflow_engine import transport

    monkeypatch.setattr(transport, "QUEUE_SCAN_LIMIT", 1)
    engine.register_handler("ok", f"{HANDLERS}:record_success")
    ids = submit_many(engine, "ok", 3)
    lost = engine.get_workflow(ids[0]).job_id or ""
    assert engine.redis.lrem(engine.queue.key, 1, lost) == 1  # two jobs left on the list
    assert engine.transport.queued_ids() is None
    monkeypatch.setattr(recovery, "REDELIVERY_GRACE", timedelta(0))
    old = utcnow() - timedelta(seconds=engine.stale_after + 1)
    engine.store.compare_and_set(ids[0], expected_status=S.QUEUED, changes={"updated_at": old}, event=None)
    engine.redis.set(TAKEN_MARK.format(job_id=lost), old.timestamp())
    assert engine.reconcile().redelivered == [], "the list was not read, so no job is judged by it"
    monkeypatch.setattr(transport, "QUEUE_SCAN_LIMIT", 2)
    assert engine.reconcile().redelivered == [ids[0]]


@pytest.mark.services
def test_reconcile_redelivers_a_job_a_worker_moved_off_the_queue_and_died_before_starting(
    engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Redis 6.2 and later, RQ's worker first moves a job onto the queue's intermediate list,
    still `queued` in Redis, and marks it started later. A worker killed in between leaves it
    there, in no queue. (fakeredis does not say its version, so RQ pops instead: a real Redis.)"""
    engine.register_handler("probe", f"{HANDLERS}:noop")
    wid = engine.create_workflow(workflow_type_id="probe", enqueue=True)
    job, _ = rq.Queue.dequeue_any([engine.queue], timeout=None, connection=engine.redis)  # then kill -9
    assert job.get_status(refresh=True) == "queued" and engine.queue.count == 0
    assert engine.redis.lrange(engine.queue.intermediate_queue_key, 0, -1) == [job.id.encode()]
    engine.enqueue_execution(wid)  # it may be starting right now: left alone
    monkeypatch.setattr(recovery, "REDELIVERY_GRACE", timedelta(0))
    assert engine.reconcile().redelivered == []
    # Queued longer than stale_after (a backlog), but only just taken: still left alone.
    old = utcnow() - timedelta(seconds=engine.stale_after + 1)
    engine.store.compare_and_set(wid, expected_status=S.QUEUED, changes={"updated_at": old}, event=None)
    assert engine.reconcile().redelivered == []
    # Taken longer than stale_after ago, and never started: its worker died.
    engine.redis.set(TAKEN_MARK.format(job_id=job.id), old.timestamp())
    assert engine.reconcile().redelivered == [wid]
    assert engine.get_events(wid)[-1].detail == "redelivered: job never claimed"
    assert engine.queue.count == 1 and engine.get_workflow(wid).job_id != job.id


def test_reconcile_leaves_alone_a_job_a_worker_has_just_started_though_its_workflow_waited_long(
    tmp_path: Path,
) -> None:
    """Under a backlog a workflow has been queued longer than stale_after by the time a worker
    takes its job. A reconcile pass between RQ marking the job started and the worker's claim must
    not take it for abandoned: the workflow would lose its turn and go to the back of the queue."""
    engine = WorkflowEngine(database_url=f"sqlite:///{tmp_path / 'w.db'}", redis_url="fakeredis://")
    engine.register_handler("probe", f"{HANDLERS}:noop")
    wid = engine.create_workflow(workflow_type_id="probe", enqueue=True)
    behind = engine.create_workflow(workflow_type_id="probe", enqueue=True)
    old = utcnow() - timedelta(seconds=engine.stale_after * 2)
    for queued in (wid, behind):
        engine.store.compare_and_set(
            queued, expected_status=S.QUEUED, changes={"updated_at": old}, event=None
        )
    reports = []

    class ReconcileWhileStarting(rq.SimpleWorker):
        def prepare_job_execution(self, job: rq.job.Job, *args: Any, **kwargs: Any) -> None:
            super().prepare_job_execution(job, *args, **kwargs)  # RQ marks the job started
            reports.append(engine.reconcile())  # another process's pass, right now

    ReconcileWhileStarting([engine.queue], connection=engine.redis).work(burst=True, max_jobs=1)
    assert reports[0].redelivered == []
    assert engine.get_workflow(wid).status is S.COMPLETED
    assert engine.queue.job_ids == [engine.get_workflow(behind).job_id]


@pytest.mark.slow
@pytest.mark.services
def test_a_handler_that_always_raises_fails_after_one_plus_max_retries_attempts_on_a_stock_worker(
    tmp_path: Path, redis_server: RedisServer, effects: Path, engine: WorkflowEngine
) -> None:
    engine.register_handler("doomed", f"{HANDLERS}:always_fail", max_retries=2, retry_backoff=0)
    [wid] = submit_many(engine, "doomed", 1)

    run_burst_workers(tmp_path, redis_server, effects, ["fork"])

    wf = engine.get_workflow(wid)
    assert wf.status is S.FAILED, f"{wf.status.value}: {wf.error}"
    assert wf.attempts == 3
    assert wf.error is not None and "ValueError: this handler always fails" in wf.error
    assert wf.traceback is not None and "always_fail" in wf.traceback
    failures = [line for line in effects_of(effects, wid) if line.split()[0] == "failure"]
    assert [line.split()[1] for line in failures] == ["1", "2", "3"], failures
    events = engine.get_events(wid)
    failure_events = [e for e in events if e.from_status is S.RUNNING and "failed" in (e.detail or "")]
    assert [(e.to_status, e.attempt) for e in failure_events] == [
        (S.QUEUED, 1),
        (S.QUEUED, 2),
        (S.FAILED, 3),
    ], [e.to_dict() for e in events]
    assert transitions(events) == [
        (None, "pending"),
        ("pending", "queued"),
        ("queued", "running"),
        ("running", "queued"),
        ("queued", "running"),
        ("running", "queued"),
        ("queued", "running"),
        ("running", "failed"),
    ]


@pytest.mark.services
@pytest.mark.parametrize("worker_class", ["fork", "simple"])
def test_a_handler_that_calls_sys_exit_fails_its_attempt_at_once_and_its_retry_runs(
    tmp_path: Path, redis_server: RedisServer, effects: Path, engine: WorkflowEngine, worker_class: str
) -> None:
    engine.register_handler("exiting", f"{HANDLERS}:exits_first", max_retries=1, retry_backoff=0)
    [wid] = submit_many(engine, "exiting", 1)

    run_burst_workers(tmp_path, redis_server, effects, [worker_class])

    wf = engine.get_workflow(wid)
    assert wf.status is S.COMPLETED and wf.attempts == 2, f"{wf.status.value}: {wf.error}"
    assert [line.split()[:2] for line in effects_of(effects, wid)] == [["exit", "1"], ["success", "2"]]
    [failure] = [e for e in engine.get_events(wid) if e.from_status is S.RUNNING and e.to_status is S.QUEUED]
    assert failure.attempt == 1 and failure.detail is not None and "SystemExit: 3" in failure.detail


# -- several processes writing one SQLite file --------------------------------
WRITER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from workflow_engine.engine import WorkflowEngine

    database_url, redis_url, go_file, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    engine = WorkflowEngine(database_url=database_url, redis_url=redis_url)
    engine.register_handler("written", "we_test_handlers:record_success")
    while not os.path.exists(go_file):  # start together, so that the writes really contend
        time.sleep(0.005)
    created, cancelled = [], []
    for i in range(n):
        wid = engine.create_workflow(workflow_type_id="written", inputs={"pid": os.getpid(), "i": i})
        engine.enqueue_execution(wid)
        created.append(wid)
        if i % 3 == 0:
            engine.update_status(wid, "cancelled")
            cancelled.append(wid)
    engine.close()
    print(json.dumps({"created": created, "cancelled": cancelled}))
    """
)


@pytest.mark.slow
@pytest.mark.services
def test_four_processes_writing_one_sqlite_file_never_hit_database_is_locked_and_lose_no_row_or_event(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    processes, per_process = 4, 100
    database_url = sqlite_url(tmp_path)
    go_file = tmp_path / "go"
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(APPS), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-c", WRITER_SCRIPT, database_url, redis_server.url, str(go_file)]
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(processes):
            procs.append(
                subprocess.Popen(
                    [*command, str(per_process)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        go_file.touch()
        outputs = [proc.communicate(timeout=WORKER_TIMEOUT) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert "database is locked" not in err, err[-4000:]
        assert proc.returncode == 0, err[-4000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    created = [wid for r in results for wid in r["created"]]
    cancelled = {wid for r in results for wid in r["cancelled"]}
    assert len(created) == len(set(created)) == processes * per_process
    assert len(cancelled) == processes * len(range(0, per_process, 3))

    reader = WorkflowEngine(database_url=database_url, redis_url=redis_server.url)
    try:
        stored = reader.list_workflows(limit=10_000)
        assert sorted(wf.id for wf in stored) == sorted(created)
        assert sum(1 for wf in stored if wf.status is S.CANCELLED) == len(cancelled)
        assert sum(1 for wf in stored if wf.status is S.QUEUED) == len(created) - len(cancelled)
        for wid in created:
            expected = [(None, "pending"), ("pending", "queued")]
            if wid in cancelled:
                expected.append(("queued", "cancelled"))
            assert transitions(reader.get_events(wid)) == expected, wid
        # Every workflow left queued really has its job waiting in Redis.
        queued = [wf for wf in stored if wf.status is S.QUEUED]
        job_ids = [wf.job_id for wf in queued if wf.job_id is not None]
        assert len(job_ids) == len(queued)
        assert reader.transport.live_jobs(job_ids) == set(job_ids)
    finally:
        reader.close()


# -- the demo ----------------------------------------------------------------
@pytest.mark.slow
def test_the_demo_command_runs_in_an_empty_directory_and_leaves_a_sqlite_file_there(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    env = clean_env()
    env.pop("REDIS_URL", None)
    proc = subprocess.run(
        [str(BIN / "workflow-engine"), "demo"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "completed" in proc.stdout, proc.stdout
    database = folder / "workflow_engine_demo.db"
    assert database.is_file(), sorted(p.name for p in folder.iterdir())
    assert database.read_bytes()[:16] == b"SQLite format 3\x00"
    assert str(database) in proc.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"WORKFLOW_ENGINE_PRELOAD": "myapp.workflowz"},
            "Error: cannot preload 'myapp.workflowz': ModuleNotFound",
        ),
        ({"WORKFLOW_ENGINE_DATABASE_URL": "mysql://x"}, "Error: unsupported database URL scheme 'mysql'"),
        (
            {"WORKFLOW_ENGINE_APP": "myapp.engine"},
            "Error: the app's engine 'myapp.engine' must be named as 'package.module:engine'",
        ),
        (
            {"WORKFLOW_ENGINE_APP": "myapp.engine:engine"},
            "Error: cannot load the app's engine 'myapp.engine:engine': ModuleNotFoundError",
        ),
    ],
    ids=["a-module-it-cannot-import", "a-database-url-it-cannot-use", "an-app-unnamed", "an-app-missing"],
)
def test_a_stock_worker_with_a_bad_setting_stops_at_start_with_one_line_not_a_traceback(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    """`rq worker -c workflow_engine.rq_preload` reads its settings module before it touches Redis:
    the setting's error is all it prints (production.md quotes it)."""
    environ = {**os.environ, "WORKFLOW_ENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}", **env}
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: never reached
    done = subprocess.run(
        [
            str(BIN / "rq"),
            "worker",
            "workflows",
            "-c",
            "workflow_engine.rq_preload",
            "--burst",
            "--url",
            nowhere,
        ],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith(message)
