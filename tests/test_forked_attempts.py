"""A forking ``WorkflowWorker``: the worker process claims and records, the work-horse runs the handler.

These tests do what the worker does for one job, in this process: ``ForkedAttempt.begin``,
a real ``os.fork()`` whose child runs the job's function (``run_workflow``) and exits, then
``end`` with the child's wait status. Unless a test needs it, the work-horse is forbidden
the database: it must run the handler and nothing else. The last test runs the real
``workflow-engine worker`` over a mix of outcomes.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rq.job import Job

from workflow_engine import execution
from workflow_engine.engine import WorkflowEngine
from workflow_engine.execution import OUTCOME_PIPE_LIMIT, ForkedAttempt
from workflow_engine.status import WorkflowStatus

from support import RedisServer, effects_of, start_worker, wait_for

S = WorkflowStatus
H = "we_test_handlers"


@pytest.fixture
def engine(tmp_path: Path, redis_server: RedisServer) -> Iterator[WorkflowEngine]:
    eng = WorkflowEngine(database_url=f"sqlite:///{tmp_path / 'workflows.db'}", redis_url=redis_server.url)
    execution.set_worker_engine(eng)
    try:
        yield eng
    finally:
        execution.set_worker_engine(None)
        eng.close()


def queued_job(engine: WorkflowEngine, handler: str, **inputs: Any) -> Job:
    type_id = handler.rpartition(":")[2]
    if engine.handler_for(type_id) is None:
        engine.register_handler(type_id, handler, max_retries=0)
    wid = engine.create_workflow(workflow_type_id=type_id, inputs=inputs, enqueue=True)
    return Job.fetch(str(engine.get_workflow(wid).job_id), connection=engine.redis)


def _forbidden(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the work-horse touched the database")


def run_forked(
    engine: WorkflowEngine,
    job: Job,
    *,
    horse_may_use_store: bool = False,
    worker_dies: bool = False,
) -> int:
    """One job as ``WorkflowWorker`` runs it; returns the work-horse's wait status."""
    attempt = ForkedAttempt.begin(job, "test-worker")
    assert attempt is not None
    pid = os.fork()
    if pid == 0:  # the work-horse
        code = 0
        try:
            if not horse_may_use_store:
                engine.store._connect = _forbidden  # type: ignore[method-assign]
            execution.run_workflow(*job.args)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    if worker_dies:  # its pipe's reading end is gone at once, as with a killed worker process
        os.close(attempt.read_fd)
        os.close(attempt.write_fd)
        execution._horse_claim = None
        _, status = os.waitpid(pid, 0)
        return status
    _, status = os.waitpid(pid, 0)
    attempt.end(status or None)  # RQ reports a status only for a work-horse that did not exit with 0
    return status


def horse_pids(effects: Path, wid: str) -> set[int]:
    return {int(line.split()[2]) for line in effects_of(effects, wid)}


def test_the_work_horse_runs_only_the_handler_and_the_worker_process_claims_and_records(
    engine: WorkflowEngine, effects: Path
) -> None:
    job = queued_job(engine, f"{H}:record_success", n=1)
    wid = job.args[0]

    assert run_forked(engine, job) == 0

    wf = engine.get_workflow(wid)
    assert wf.status is S.COMPLETED and wf.result == {"echo": {"n": 1}} and wf.worker == "test-worker"
    assert [e.to_status for e in engine.get_events(wid)] == [S.PENDING, S.QUEUED, S.RUNNING, S.COMPLETED]
    (horse,) = horse_pids(effects, wid)
    assert horse != os.getpid()  # the handler ran in the work-horse, once


def test_a_handler_error_is_recorded_with_its_traceback_and_retried_on_the_jobs_queue(
    engine: WorkflowEngine, effects: Path
) -> None:
    engine.register_handler("flaky", f"{H}:flaky", max_retries=1, retry_backoff=0)
    job = queued_job(engine, f"{H}:flaky")
    wid = job.args[0]

    run_forked(engine, job)

    wf = engine.get_workflow(wid)
    assert wf.status is S.QUEUED and wf.attempts == 1
    assert wf.error == "RuntimeError: flaky failure on attempt 1" and "Traceback" in (wf.traceback or "")
    retry = Job.fetch(str(wf.job_id), connection=engine.redis)
    assert retry.origin == job.origin and retry.args[0] == wid

    run_forked(engine, retry)
    assert engine.get_workflow(wid).status is S.COMPLETED
    assert [line.split()[0] for line in effects_of(effects, wid)] == ["failure", "success"]


@pytest.mark.parametrize(
    ("handler", "inputs", "error"),
    [
        (f"{H}:kill_own_process", {}, "the work-horse was killed by signal 9 before it reported the outcome"),
        (
            f"{H}:exit_own_process",
            {"code": 3},
            "the work-horse exited with status 3 before it reported the outcome",
        ),
        (f"{H}:exit_own_process", {"code": 0}, "the work-horse exited before it reported the outcome"),
    ],
)
def test_a_work_horse_that_died_before_it_reported_fails_the_attempt_at_once_saying_how(
    engine: WorkflowEngine, effects: Path, handler: str, inputs: dict[str, Any], error: str
) -> None:
    job = queued_job(engine, handler, **inputs)

    run_forked(engine, job)

    wf = engine.get_workflow(job.args[0])  # no lease to wait for: failed as the work-horse ended
    assert (wf.status, wf.error, wf.traceback) == (S.FAILED, error, None)
    assert [line.split()[0] for line in effects_of(effects, wf.id)] == ["start"]


def test_a_missing_handler_fails_the_workflow_at_once_with_the_message_saying_how_to_fix_it(
    engine: WorkflowEngine,
) -> None:
    engine.register_handler("gone", f"{H}:no_such_handler", max_retries=3)
    job = queued_job(engine, f"{H}:no_such_handler")

    run_forked(engine, job)

    wf = engine.get_workflow(job.args[0])
    assert wf.status is S.FAILED and wf.attempts == 1
    assert "cannot import handler 'we_test_handlers:no_such_handler'" in str(wf.error)


def test_a_result_json_cannot_hold_fails_the_attempt_naming_it(engine: WorkflowEngine) -> None:
    job = queued_job(engine, f"{H}:unserializable")

    run_forked(engine, job)

    wf = engine.get_workflow(job.args[0])
    assert wf.status is S.FAILED and "the handler's result must be JSON-serialisable" in str(wf.error)


def test_a_result_too_large_for_the_pipe_is_recorded_whole_by_the_work_horse_itself(
    engine: WorkflowEngine,
) -> None:
    job = queued_job(engine, f"{H}:big_result", size=4 * OUTCOME_PIPE_LIMIT)

    run_forked(engine, job, horse_may_use_store=True)

    wf = engine.get_workflow(job.args[0])
    assert wf.status is S.COMPLETED and wf.result == {"text": "x" * 4 * OUTCOME_PIPE_LIMIT}
    assert [e.to_status for e in engine.get_events(wf.id)] == [S.PENDING, S.QUEUED, S.RUNNING, S.COMPLETED]


def test_a_work_horse_whose_worker_process_is_gone_records_the_outcome_itself(
    engine: WorkflowEngine, effects: Path
) -> None:
    job = queued_job(engine, f"{H}:sleepy", seconds=0.3)

    run_forked(engine, job, horse_may_use_store=True, worker_dies=True)

    wf = engine.get_workflow(job.args[0])
    assert wf.status is S.COMPLETED and wf.result == {"slept": 0.3}
    assert [line.split()[0] for line in effects_of(effects, wf.id)] == ["start", "success"]


def test_a_cancel_requested_while_the_handler_runs_reaches_it_and_ends_the_workflow_cancelled(
    engine: WorkflowEngine, effects: Path, tmp_path: Path
) -> None:
    job = queued_job(engine, f"{H}:sleepy", seconds=20, watch_cancel=True)
    wid = job.args[0]
    attempt = ForkedAttempt.begin(job, "test-worker")
    assert attempt is not None
    engine.cancel(wid)  # recorded as requested: the workflow runs (it was claimed before the fork)
    pid = os.fork()
    if pid == 0:
        try:
            execution.run_workflow(*job.args)  # cancel_requested() reads the database in the work-horse
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    attempt.end(status or None)

    wf = engine.get_workflow(wid)
    assert wf.status is S.CANCELLED and wf.finished_at is not None
    assert [line.split()[0] for line in effects_of(effects, wid)] == ["start", "cancelled"]


def test_a_job_whose_workflow_is_not_queued_for_it_is_skipped_and_its_handler_never_runs(
    engine: WorkflowEngine, effects: Path
) -> None:
    job = queued_job(engine, f"{H}:record_success")
    engine.cancel(job.args[0])

    run_forked(engine, job)

    assert engine.get_workflow(job.args[0]).status is S.CANCELLED
    assert effects_of(effects, job.args[0]) == []


def test_a_job_that_is_not_a_workflow_job_runs_as_in_a_stock_worker(engine: WorkflowEngine) -> None:
    from rq import Queue

    job = Queue("workflows", connection=engine.redis).enqueue(f"{H}:noop")
    assert ForkedAttempt.begin(job, "test-worker") is None
    assert execution._horse_claim is None


def test_an_unreadable_report_counts_as_none_and_the_attempt_fails(engine: WorkflowEngine) -> None:
    job = queued_job(engine, f"{H}:noop")
    attempt = ForkedAttempt.begin(job, "test-worker")
    assert attempt is not None
    os.write(attempt.write_fd, b'["completed", {"trunc')

    attempt.end(None)

    wf = engine.get_workflow(job.args[0])
    assert (wf.status, wf.error) == (S.FAILED, "the work-horse exited before it reported the outcome")
    assert execution._horse_claim is None


@pytest.mark.slow
@pytest.mark.services
def test_workflow_engine_worker_runs_a_mix_of_outcomes_to_their_ends_with_its_forking_class(
    tmp_path: Path, redis_server: RedisServer, effects: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'workflows.db'}"
    client = WorkflowEngine(database_url=url, redis_url=redis_server.url)
    try:
        client.register_handler("ok", f"{H}:record_success")
        client.register_handler("flaky", f"{H}:flaky", max_retries=1, retry_backoff=0)
        client.register_handler("killed", f"{H}:kill_own_process", max_retries=1, retry_backoff=0)
        client.register_handler("gone", f"{H}:no_such_handler")
        ids = {
            t: client.create_workflow(workflow_type_id=t, enqueue=True)
            for t in ("ok", "flaky", "killed", "gone")
        }

        worker = start_worker(
            tmp_path, redis_url=redis_server.url, database_url=url, effects=effects, kind="engine"
        )
        try:
            assert worker.wait(60) == 0, worker.output()[-4000:]
        finally:
            worker.stop()

        wfs = {t: client.get_workflow(wid) for t, wid in ids.items()}
        assert {t: wf.status for t, wf in wfs.items()} == {
            "ok": S.COMPLETED,
            "flaky": S.COMPLETED,
            "killed": S.FAILED,
            "gone": S.FAILED,
        }
        assert (wfs["flaky"].attempts, wfs["killed"].attempts) == (2, 2)
        assert wfs["killed"].error == "the work-horse was killed by signal 9 before it reported the outcome"
        assert horse_pids(effects, ids["ok"]).isdisjoint({worker.proc.pid})
        assert len({wf.worker for wf in wfs.values()}) == 1  # the worker's name, recorded by its own process
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.services
def test_a_work_horse_whose_workflow_engine_worker_was_killed_keeps_its_lease_and_records_its_outcome(
    tmp_path: Path, redis_server: RedisServer, effects: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'workflows.db'}"
    client = WorkflowEngine(database_url=url, redis_url=redis_server.url)
    worker = start_worker(
        tmp_path,
        redis_url=redis_server.url,
        database_url=url,
        effects=effects,
        kind="engine",
        burst=False,
        extra_args=["--reconcile-every", "0"],
        extra_env={"WORKFLOW_ENGINE_HEARTBEAT_INTERVAL": "0.2", "WORKFLOW_ENGINE_STALE_AFTER": "1"},
    )
    try:
        client.register_handler("sleepy", f"{H}:sleepy")
        wid = client.create_workflow(workflow_type_id="sleepy", inputs={"seconds": 3}, enqueue=True)
        wait_for(lambda: effects_of(effects, wid), 30, what="the handler to start")

        os.kill(worker.proc.pid, signal.SIGKILL)  # the worker process alone: its work-horse runs on
        worker.proc.wait(10)
        time.sleep(1.5)  # past stale_after: the work-horse's heartbeat keeps the lease
        assert client.reconcile().total == 0 and client.get_workflow(wid).status is S.RUNNING
        wait_for(lambda: client.get_workflow(wid).status is S.COMPLETED, 20, what="the work-horse to record")
        wf = client.get_workflow(wid)
        assert (wf.attempts, wf.result) == (1, {"slept": 3})
        assert [line.split()[0] for line in effects_of(effects, wid)] == ["start", "success"]
    finally:
        worker.stop()
        client.close()
