"""Fault injection with real processes: a private redis-server, stock `rq worker`s, kill -9, FLUSHALL.

Every test runs its own Redis, a SQLite file in ``tmp_path`` and real worker
subprocesses, and counts what the handlers actually did (the lines they append
to ``$WE_TEST_EFFECTS/<workflow id>``), not only the statuses the engine wrote.
Timings are shortened (heartbeat every 0.5 s, stale after 2 s) so that the
whole file runs in about a minute.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rq.registry import FailedJobRegistry

from workflow_engine import recovery
from workflow_engine.engine import WorkflowEngine
from workflow_engine.errors import QueueUnavailable
from workflow_engine.execution import run_workflow
from workflow_engine.models import Workflow, utcnow
from workflow_engine.status import WorkflowStatus

from support import RedisServer, Worker, effects_of, start_worker, successes, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.services]

S = WorkflowStatus
HEARTBEAT_INTERVAL = 0.5
STALE_AFTER = 2.0
#: Handed to every worker process, which reads it through WorkflowEngine.from_env / the CLI options.
FAST_ENV = {
    "WORKFLOW_ENGINE_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
    "WORKFLOW_ENGINE_STALE_AFTER": f"{STALE_AFTER:g}",
}
HANDLERS = "we_test_handlers"


class Harness:
    """One test's world: an engine on a SQLite file, a private Redis, and the workers it started."""

    def __init__(self, tmp_path: Path, redis_server: RedisServer, effects: Path, kind: str = "rq") -> None:
        # The worker command: "rq" (a stock `rq worker`) or "engine" (`workflow-engine worker`).
        self.kind = kind
        self.tmp_path = tmp_path
        self.redis_server = redis_server
        self.effects = effects
        self.database_url = f"sqlite:///{tmp_path / 'workflows.db'}"
        self.engine = WorkflowEngine(
            database_url=self.database_url,
            redis_url=redis_server.url,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            stale_after=STALE_AFTER,
        )
        self.workers: list[Worker] = []

    def register(self, type_id: str, function: str, **policy: Any) -> None:
        self.engine.register_handler(type_id, f"{HANDLERS}:{function}", **policy)

    def create(self, type_id: str, inputs: dict[str, Any] | None = None) -> str:
        return self.engine.create_workflow(workflow_type_id=type_id, inputs=inputs or {})

    def submit(self, type_id: str, inputs: dict[str, Any] | None = None) -> str:
        workflow_id = self.create(type_id, inputs)
        self.engine.enqueue_execution(workflow_id)
        return workflow_id

    def get(self, workflow_id: str) -> Workflow:
        return self.engine.get_workflow(workflow_id)

    def worker(
        self, *, kind: str | None = None, worker_class: str = "fork", burst: bool = True, **kwargs: Any
    ) -> Worker:
        kind = kind or self.kind
        if kind == "engine" and "--reconcile-every" not in kwargs.get("extra_args", []):
            kwargs["extra_args"] = [*kwargs.get("extra_args", []), "--reconcile-every", "0"]  # as `rq worker`
        worker = start_worker(
            self.tmp_path,
            redis_url=self.redis_server.url,
            database_url=self.database_url,
            effects=self.effects,
            kind=kind,
            worker_class=worker_class,
            burst=burst,
            extra_env={**FAST_ENV, **kwargs.pop("extra_env", {})},
            **kwargs,
        )
        self.workers.append(worker)
        return worker

    def run_burst(self, *, worker_class: str = "fork", timeout: float = 60) -> Worker:
        """Start a burst `rq worker`, wait for it to drain the queue and exit cleanly."""
        worker = self.worker(worker_class=worker_class)
        code = worker.wait(timeout)
        assert code == 0, f"burst worker exited with {code}:\n{worker.output()}"
        return worker

    def wait_status(self, workflow_id: str, status: WorkflowStatus, timeout: float = 20) -> Workflow:
        try:
            wait_for(lambda: self.get(workflow_id).status is status, timeout=timeout)
        except AssertionError:
            wf = self.get(workflow_id)
            logs = "\n".join(w.output()[-2000:] for w in self.workers)
            raise AssertionError(
                f"{workflow_id} is {wf.status.value}, not {status.value}: {wf}\n{logs}"
            ) from None
        return self.get(workflow_id)

    def running_sleepy(self, seconds: float) -> tuple[Worker, str, int]:
        """A long-running workflow on a forking worker of its own: the worker, its id, its horse's pid."""
        self.register("sleepy", "sleepy", max_retries=3, retry_backoff=0)
        worker = self.worker(burst=False)
        wid = self.submit("sleepy", {"seconds": seconds})
        self.wait_status(wid, S.RUNNING)
        wait_for(lambda: self.lines(wid, "start"), timeout=10, what="the handler to start")
        [horse] = self.pids(wid, "start")
        return worker, wid, horse

    def lines(self, workflow_id: str, kind: str) -> list[str]:
        return [line for line in effects_of(self.effects, workflow_id) if line.split()[0] == kind]

    def pids(self, workflow_id: str, kind: str) -> list[int]:
        return [int(line.split()[2]) for line in self.lines(workflow_id, kind)]

    def close(self) -> None:
        try:
            for worker in self.workers:
                try:
                    worker.stop()
                except Exception:
                    if worker.proc.poll() is None:
                        worker.proc.kill()
                        worker.proc.wait(10)
        finally:
            self.engine.close()


@pytest.fixture
def h(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer, effects: Path
) -> Iterator[Harness]:
    harness = Harness(tmp_path, redis_server, effects, getattr(request, "param", "rq"))
    try:
        yield harness
    finally:
        harness.close()  # kill -9 every worker session this test started, by PID


@pytest.fixture
def no_redelivery_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let reconcile redeliver a queued workflow at once instead of after REDELIVERY_GRACE (5 s)."""
    monkeypatch.setattr(recovery, "REDELIVERY_GRACE", timedelta(0))


#: Both forking worker commands: a stock `rq worker`, and `workflow-engine worker` (its own class,
#: ``workflow_engine.workers.WorkflowWorker``, with the package preloaded and a reconcile thread).
both_forking_workers = pytest.mark.parametrize("h", ["rq", "engine"], indirect=True)


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for a reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def failure_events(h: Harness, workflow_id: str) -> list[str]:
    return [e.detail or "" for e in h.engine.get_events(workflow_id) if " failed: " in (e.detail or "")]


def claims(h: Harness, workflow_id: str) -> int:
    return sum(
        1 for e in h.engine.get_events(workflow_id) if e.to_status is S.RUNNING and e.from_status is S.QUEUED
    )


# -- retries -----------------------------------------------------------------
@both_forking_workers
def test_a_flaky_handler_is_retried_by_a_burst_worker_until_it_succeeds_once(h: Harness) -> None:
    h.register("flaky", "flaky", max_retries=3, retry_backoff=0)
    wid = h.submit("flaky", {"fail_times": 2})

    h.run_burst()

    wf = h.get(wid)
    assert wf.status is S.COMPLETED
    assert wf.attempts == 3
    assert wf.result == {"attempts": 3}
    assert len(h.lines(wid, "failure")) == 2
    assert successes(h.effects, wid) == 1
    events = failure_events(h, wid)
    assert len(events) == 2
    assert "RuntimeError: flaky failure on attempt 1" in events[0]
    assert "RuntimeError: flaky failure on attempt 2" in events[1]


@both_forking_workers
def test_a_workflow_that_always_fails_keeps_its_error_and_runs_again_with_a_fresh_budget_when_requeued(
    h: Harness,
) -> None:
    h.register("doomed", "always_fail", max_retries=2, retry_backoff=0)
    wid = h.submit("doomed")

    h.run_burst()

    wf = h.get(wid)
    assert wf.status is S.FAILED
    assert wf.attempts == 3
    assert wf.error == "ValueError: this handler always fails"
    assert wf.traceback is not None and "ValueError: this handler always fails" in wf.traceback
    assert "always_fail" in wf.traceback
    assert len(h.lines(wid, "failure")) == 3

    requeued = h.engine.requeue(wid)
    assert requeued.status is S.QUEUED
    h.run_burst()

    wf = h.get(wid)
    assert wf.status is S.FAILED
    assert wf.attempts == 6
    assert len(h.lines(wid, "failure")) == 6
    assert successes(h.effects, wid) == 0


# -- a worker lost -----------------------------------------------------------
@both_forking_workers
def test_a_workflow_whose_worker_and_work_horse_are_killed_is_requeued_after_stale_after_and_completes_once(
    h: Harness,
) -> None:
    h.register("sleepy", "sleepy", max_retries=3, retry_backoff=0)
    victim = h.worker(burst=False)
    wid = h.submit("sleepy", {"seconds": 3})
    h.wait_status(wid, S.RUNNING)
    wait_for(lambda: h.lines(wid, "start"), timeout=10, what="the handler to start")
    time.sleep(0.5)
    [horse] = h.pids(wid, "start")
    assert horse != victim.proc.pid, "a forking worker runs the handler in a work-horse"

    victim.kill_session()
    killed_at = time.monotonic()
    # kill_session must take the setpgrp()ed work-horse down too.
    wait_for(lambda: not process_alive(horse), timeout=5, what=f"the work-horse {horse} to die")

    requeued_after = None
    while time.monotonic() - killed_at < STALE_AFTER + 5:
        report = h.engine.reconcile()
        if wid in report.requeued_stale:
            requeued_after = time.monotonic() - killed_at
            break
        assert report.total == 0, report
        time.sleep(0.1)
    assert requeued_after is not None, f"reconcile never requeued the lost workflow: {h.get(wid)}"
    # Promptly: the last heartbeat was at most one interval before the kill.
    assert requeued_after < STALE_AFTER + 3, f"requeued {requeued_after:.1f} s after the kill"
    wf = h.get(wid)
    assert wf.status is S.QUEUED
    assert wf.error is not None and "worker lost" in wf.error
    # Never early: only once the last heartbeat (still recorded on the row) was stale_after old.
    [lost] = [e for e in h.engine.get_events(wid) if "worker lost" in (e.detail or "")]
    assert wf.heartbeat_at is not None
    assert (lost.at - wf.heartbeat_at).total_seconds() >= STALE_AFTER

    h.run_burst()

    wf = h.get(wid)
    assert wf.status is S.COMPLETED
    assert wf.attempts == 2
    assert len(h.lines(wid, "start")) == 2
    assert successes(h.effects, wid) == 1


def test_the_engine_worker_alone_recovers_a_workflow_whose_other_worker_was_killed(h: Harness) -> None:
    h.register("sleepy", "sleepy", max_retries=3, retry_backoff=0)
    victim = h.worker(burst=False)
    wid = h.submit("sleepy", {"seconds": 3})
    h.wait_status(wid, S.RUNNING)
    wait_for(lambda: h.lines(wid, "start"), timeout=10, what="the handler to start")
    # Only now, so that the victim (not this worker) claimed the workflow.
    rescuer = h.worker(
        kind="engine", burst=False, extra_args=["--reconcile-every", "0.5", "--name", "rescuer"]
    )
    time.sleep(0.5)

    victim.kill_session()
    killed_at = time.monotonic()

    wf = h.wait_status(wid, S.COMPLETED, timeout=STALE_AFTER + 15)
    took = time.monotonic() - killed_at
    assert rescuer.proc.poll() is None, rescuer.output()
    assert wf.attempts == 2
    assert wf.worker == "rescuer"
    # stale_after, then at most one reconcile period, then the 3 s rerun, plus slack.
    assert took < STALE_AFTER + 0.5 + 3 + 3, f"recovery took {took:.1f} s"
    assert successes(h.effects, wid) == 1
    first, second = h.pids(wid, "start")
    assert first != second
    assert any("worker lost" in d for d in failure_events(h, wid))


# -- Redis loses work, or is down --------------------------------------------
@pytest.mark.usefixtures("no_redelivery_grace")
def test_reconcile_redelivers_every_queued_workflow_after_redis_is_flushed(h: Harness) -> None:
    h.register("ok", "record_success")
    ids = [h.submit("ok", {"n": i}) for i in range(30)]
    assert h.engine.queue.count == 30

    h.redis_server.flushall()
    assert h.engine.queue.count == 0

    report = h.engine.reconcile()
    assert sorted(report.redelivered) == sorted(ids)
    assert report.requeued_stale == report.undeliverable == []
    assert h.engine.queue.count == 30
    assert h.engine.reconcile().redelivered == [], "a second pass must leave live jobs alone"

    h.run_burst(worker_class="simple")

    for wid in ids:
        wf = h.get(wid)
        assert wf.status is S.COMPLETED, wf
        assert wf.attempts == 1
        assert effects_of(h.effects, wid) == h.lines(wid, "success")
        assert successes(h.effects, wid) == 1


@pytest.mark.usefixtures("no_redelivery_grace")
def test_enqueue_with_redis_down_raises_quickly_keeps_the_workflow_queued_and_reconcile_delivers_it_later(
    h: Harness,
) -> None:
    h.register("ok", "record_success")
    wid = h.create("ok")
    h.redis_server.stop()

    started = time.monotonic()
    with pytest.raises(QueueUnavailable, match="stays queued"):
        h.engine.enqueue_execution(wid)
    assert time.monotonic() - started < 5
    assert h.get(wid).status is S.QUEUED

    report = h.engine.reconcile()
    assert report.undeliverable == [wid]
    assert report.redelivered == []

    h.redis_server.start()
    report = h.engine.reconcile()
    assert report.redelivered == [wid]

    h.run_burst()

    wf = h.get(wid)
    assert wf.status is S.COMPLETED
    assert wf.attempts == 1
    assert successes(h.effects, wid) == 1


def test_a_redis_that_accepts_connections_but_never_answers_fails_an_enqueue_within_its_socket_timeout(
    h: Harness,
) -> None:
    """A hung Redis (stopped, or a failover's old host): one socket timeout (5 s), not redis-py's
    retries of the handshake and then of the command, 4 x 5 s."""
    h.register("ok", "record_success")
    h.engine.redis.ping()
    assert h.redis_server.proc is not None
    h.redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(QueueUnavailable, match="stays queued"):
            h.engine.create_workflow(workflow_type_id="ok", enqueue=True)
        assert time.monotonic() - started < 9
    finally:
        h.redis_server.proc.send_signal(signal.SIGCONT)


def test_redis_connections_probe_a_quiet_peer_so_that_one_that_vanished_is_found_and_replaced(
    h: Harness,
) -> None:
    """TCP keepalives keep a NAT's entry for an idle connection, and turn a peer gone silent into a
    connection error, which is retried on a new connection (a timeout is not)."""
    import socket

    h.engine.redis.ping()
    connection = h.engine.redis.connection_pool.get_connection()
    try:
        sock = connection._sock  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        probes = [
            sock.getsockopt(socket.IPPROTO_TCP, o)
            for o in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
        ]
        assert probes == [30, 10, 3]
    finally:
        h.engine.redis.connection_pool.release(connection)


def test_a_stale_workflow_requeued_while_redis_is_down_is_also_reported_undeliverable(h: Harness) -> None:
    """Reconcile requeues it in the database, but its new job cannot reach Redis: the report says
    both, so that nobody reads "requeued" as "on its way"; the next pass delivers it."""
    h.register("ok", "record_success", retry_backoff=0)
    wid = h.submit("ok")
    job_id = h.get(wid).job_id or ""
    old = utcnow() - timedelta(seconds=STALE_AFTER + 1)
    assert h.engine.store.claim(wid, job_id=job_id, worker="dead", now=old, lease_until=old) is not None
    h.redis_server.stop()
    report = h.engine.reconcile()
    assert report.requeued_stale == report.undeliverable == [wid]
    assert h.get(wid).status is S.QUEUED


@pytest.mark.usefixtures("no_redelivery_grace")
def test_a_retry_that_comes_due_while_redis_is_down_is_left_as_it_is_until_redis_is_back(h: Harness) -> None:
    """It has no job to ask Redis about, but reconcile still asks Redis first: it writes no new
    job id and no "redelivered" event for a job that could not be delivered."""
    h.register("ok", "record_success")
    wid = h.submit("ok")
    due = utcnow() - timedelta(seconds=1)
    waiting = h.engine.store.compare_and_set(  # a retry whose backoff has just passed
        wid,
        expected_status=S.QUEUED,
        changes={"job_id": None, "run_after": due, "updated_at": due},
        event=None,
    )
    assert waiting is not None
    events = len(h.engine.get_events(wid))
    h.redis_server.stop()

    report = h.engine.reconcile()
    assert report.undeliverable == [wid] and report.redelivered == [] and report.total == 0
    assert h.get(wid).job_id is None and len(h.engine.get_events(wid)) == events

    h.redis_server.start()
    report = h.engine.reconcile()
    assert report.redelivered == [wid]
    assert h.engine.get_events(wid)[-1].detail == "redelivered: retry due"
    h.run_burst()
    assert h.get(wid).status is S.COMPLETED and successes(h.effects, wid) == 1


# -- duplicates --------------------------------------------------------------
@both_forking_workers
def test_duplicate_enqueues_and_duplicate_rq_jobs_run_each_handler_exactly_once(h: Harness) -> None:
    h.register("ok", "record_success")
    ids = [h.create("ok", {"n": i}) for i in range(10)]
    for _ in range(10):
        for wid in ids:
            h.engine.enqueue_execution(wid)
    assert h.engine.queue.count == 10, "enqueue_execution must not deliver a live workflow twice"
    for wid in ids:
        wf = h.get(wid)
        assert wf.job_id is not None
        raw: dict[str, Any] = {
            "args": (wf.id, wf.handler, wf.job_id),
            "timeout": -1,
            "result_ttl": 0,
            "on_stopped": None,
        }
        # The same RQ job id pushed again (RQ runs it twice), and a second RQ job carrying the same delivery.
        h.engine.queue.enqueue_call(run_workflow, job_id=wf.job_id, **raw)
        h.engine.queue.enqueue_call(run_workflow, job_id=wf.job_id, **raw)
        h.engine.queue.enqueue_call(run_workflow, **raw)
        h.engine.queue.enqueue_call(run_workflow, **raw)
    assert h.engine.queue.count >= 40

    a, b = h.worker(worker_class="fork"), h.worker(worker_class="simple")
    for worker in (a, b):
        assert worker.wait(60) == 0, worker.output()

    for wid in ids:
        assert h.get(wid).status is S.COMPLETED
        assert successes(h.effects, wid) == 1, effects_of(h.effects, wid)
        assert claims(h, wid) == 1
        assert h.get(wid).attempts == 1


# -- cancel ------------------------------------------------------------------
def test_a_workflow_cancelled_while_queued_never_runs(h: Harness) -> None:
    h.register("ok", "record_success")
    wid = h.submit("ok")
    keep = h.submit("ok")

    cancelled = h.engine.cancel(wid)
    assert cancelled.status is S.CANCELLED

    h.run_burst()

    assert h.get(wid).status is S.CANCELLED
    assert not (h.effects / wid).exists()
    assert h.get(wid).attempts == 0
    assert h.get(keep).status is S.COMPLETED, "the worker did run, and ran the other workflow"
    assert successes(h.effects, keep) == 1


@both_forking_workers
def test_cancelling_a_running_workflow_kills_its_work_horse_and_ends_it_cancelled(h: Harness) -> None:
    worker, wid, horse = h.running_sleepy(30)

    asked = time.monotonic()
    marked = h.engine.cancel(wid, reason="test")
    assert marked.cancel_requested_at is not None

    wf = h.wait_status(wid, S.CANCELLED, timeout=5)
    assert time.monotonic() - asked < 5
    wait_for(lambda: not process_alive(horse), timeout=5, what="the work-horse to die")
    assert wf.finished_at is not None
    assert wf.attempts == 1, "a cancelled workflow is not retried"
    assert worker.proc.poll() is None, "the worker itself survives and keeps serving"
    time.sleep(0.5)
    assert successes(h.effects, wid) == 0
    assert h.get(wid).status is S.CANCELLED


def test_cancelling_a_running_workflow_whose_job_redis_lost_still_kills_its_work_horse(h: Harness) -> None:
    """Redis restarted empty while the handler ran: RQ cannot find the job's worker in the job's
    hash any more, so the worker the database recorded at the claim is asked directly. RQ then
    records nothing (it finds no job to mark stopped): the attempt ends at its lease, `cancelled`."""
    worker, wid, horse = h.running_sleepy(60)
    h.redis_server.stop()
    h.redis_server.start()  # empty: the job's hash is gone

    def cancelled() -> bool:  # asked again until the worker, back on Redis, hears it
        h.engine.cancel(wid, reason="test")
        return not process_alive(horse)

    wait_for(cancelled, timeout=20, interval=0.5, what="the work-horse to be killed")
    assert worker.proc.poll() is None, "the worker itself survives and keeps serving"
    wait_for(lambda: bool(h.engine.reconcile().cancelled_stale), timeout=10, what="its lease to run out")
    wf = h.get(wid)
    assert wf.status is S.CANCELLED and wf.attempts == 1 and successes(h.effects, wid) == 0


# -- shutdown and timeouts ---------------------------------------------------
@both_forking_workers
def test_sigterm_lets_a_forking_worker_finish_its_current_workflow_before_exiting(h: Harness) -> None:
    h.register("sleepy", "sleepy", max_retries=3, retry_backoff=0)
    worker = h.worker(burst=False)
    wid = h.submit("sleepy", {"seconds": 2})
    h.wait_status(wid, S.RUNNING)
    wait_for(lambda: h.lines(wid, "start"), timeout=10, what="the handler to start")

    worker.proc.send_signal(signal.SIGTERM)

    assert worker.wait(20) == 0, worker.output()
    wf = h.get(wid)
    assert wf.status is S.COMPLETED
    assert wf.attempts == 1
    assert successes(h.effects, wid) == 1


@both_forking_workers
def test_a_handler_that_swallows_exceptions_is_still_stopped_at_its_timeout(h: Harness) -> None:
    h.register("stubborn", "swallow_everything", timeout=1, max_retries=0)
    wid = h.submit("stubborn", {"seconds": 20})

    started = time.monotonic()
    h.run_burst(timeout=40)
    took = time.monotonic() - started

    wf = h.get(wid)
    assert wf.status is S.FAILED
    assert wf.error is not None and "timed out" in wf.error
    assert wf.attempts == 1
    assert len(h.lines(wid, "start")) == 1
    assert successes(h.effects, wid) == 0
    assert took < 8, f"the run took {took:.1f} s"
    assert wf.started_at is not None and wf.finished_at is not None
    assert (wf.finished_at - wf.started_at).total_seconds() < 4


# -- load --------------------------------------------------------------------
def test_four_workers_complete_300_workflows_with_retries_each_exactly_once_without_locking_errors(
    h: Harness,
) -> None:
    h.register("ok", "record_success")
    h.register("flaky", "flaky", max_retries=3, retry_backoff=0)
    flaky = set()
    ids = []
    for i in range(300):
        if i % 5 == 0:
            wid = h.submit("flaky", {"fail_times": 1})
            flaky.add(wid)
        else:
            wid = h.submit("ok", {"n": i})
        ids.append(wid)

    workers = [h.worker(worker_class=cls) for cls in ("fork", "simple", "fork", "simple")]
    for worker in workers:
        assert worker.wait(90) == 0, worker.output()

    not_done = [h.get(w) for w in ids if h.get(w).status is not S.COMPLETED]
    assert not_done == []
    for wid in ids:
        assert successes(h.effects, wid) == 1, (wid, effects_of(h.effects, wid))
        expected_failures = 1 if wid in flaky else 0
        assert len(h.lines(wid, "failure")) == expected_failures, (wid, effects_of(h.effects, wid))
        assert h.get(wid).attempts == 1 + expected_failures
    for worker in workers:
        assert "database is locked" not in worker.output()
    failed_jobs = FailedJobRegistry(queue=h.engine.queue)
    assert failed_jobs.count == 0, "no RQ job may fail: handler errors are recorded, never raised"
