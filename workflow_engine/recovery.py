"""Failures and recovery: the retry policy, and reconcile.

An attempt that fails (a handler error, a timeout, a worker that died) goes
through :func:`attempt_failed`: retried now, retried later, cancelled as
requested, or failed for good. :func:`reconcile` finds what Redis forgot and
what dead workers left behind, using only the database.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import QueueUnavailable
from .models import ReconcileReport, Workflow, log_extra, utcnow
from .status import WorkflowStatus
from .transport import LIVE_JOB_STATUSES, OFF_THE_QUEUE, TAKEN_STATUSES, Transport, new_job_id

if TYPE_CHECKING:
    from .engine import WorkflowEngine

log = logging.getLogger("workflow_engine")
S = WorkflowStatus

#: A queued workflow whose job is not in Redis this long after it was queued is delivered again.
REDELIVERY_GRACE = timedelta(seconds=5)
#: The longest delay between two attempts.
MAX_RETRY_DELAY = 3600.0
#: Where a stale workflow's recovery is reported, by the status it ended in.
_STALE_OUTCOME = {S.QUEUED: "requeued_stale", S.FAILED: "failed_stale", S.CANCELLED: "cancelled_stale"}
#: One reconcile pass looks at most at this many batches of each kind.
MAX_RECONCILE_BATCHES = 200


def retry_delay(wf: Workflow) -> float:
    """Exponential backoff with jitter: base * 2**(n-1), then between half and all of that.

    ``n`` counts the attempts of the current retry budget: a requeue grants a fresh budget,
    and its first retry waits as the workflow's first one did, not hours.
    """
    if wf.retry_backoff <= 0:
        return 0.0
    first_of_budget = wf.max_attempts - wf.max_retries  # max_attempts = attempts so far + 1 + max_retries
    n = max(wf.attempts - first_of_budget + 1, 1)
    delay = min(wf.retry_backoff * 2.0 ** min(n - 1, 64), MAX_RETRY_DELAY)  # 2**64: far past the cap
    return float(delay / 2 + random.uniform(0, delay / 2))


def attempt_failed(
    engine: WorkflowEngine,
    wf: Workflow,
    *,
    error: str,
    traceback: str | None,
    transport: Transport | None = None,
    lease_expired_at: datetime | None = None,
    immediate: bool = False,
    undelivered: list[str] | None = None,
) -> Workflow | None:
    """A running attempt failed: retry it, or fail the workflow.

    None if another process changed the workflow first. A retry whose job Redis would not take
    stays queued for reconcile; its id goes to ``undelivered`` when that is given."""
    now = utcnow()
    changes: dict[str, Any] = {"error": error, "traceback": traceback, "updated_at": now}
    fail_detail = f"attempt {wf.attempts} failed: {error}"
    if wf.cancel_requested_at is not None:
        to, outcome = S.CANCELLED, "cancelled as requested"
        changes["finished_at"] = now
    elif wf.attempts < wf.max_attempts:
        to = S.QUEUED
        delay = retry_delay(wf) if engine.is_async and not immediate else 0.0
        if delay > 0:  # no job until the delay has passed: reconcile delivers it
            changes.update(job_id=None, run_after=now + timedelta(seconds=delay))
            outcome = f"retry in {delay:.1f} s"
        else:
            changes.update(job_id=new_job_id(wf.id), run_after=None)
            outcome = "retrying now"
    else:
        to, outcome = S.FAILED, "no retries left"
        changes["finished_at"] = now
    new = engine._change(
        wf,
        to,
        changes,
        detail=f"{fail_detail}; {outcome}",
        expected_job_id=wf.job_id,
        lease_expired_at=lease_expired_at,
        cancel_not_requested=to is not S.CANCELLED,
    )
    if new is None and to is not S.CANCELLED:
        # A cancel request may have landed after ``wf`` was read: then the attempt ends cancelled.
        current = engine.store.get(wf.id)
        if (
            current is not None
            and current.status is S.RUNNING
            and current.job_id == wf.job_id
            and current.cancel_requested_at is not None
        ):
            return attempt_failed(
                engine,
                current,
                error=error,
                traceback=traceback,
                transport=transport,
                lease_expired_at=lease_expired_at,
                immediate=immediate,
                undelivered=undelivered,
            )
    if new is not None and new.status is S.QUEUED and new.job_id is not None:
        try:
            engine._deliver(new, transport=transport)
        except QueueUnavailable:  # the engine logged it; reconcile delivers it
            if undelivered is not None:
                undelivered.append(new.id)
    if new is not None:
        log.warning("%s -> %s", fail_detail, new.status.value, extra=log_extra(new))
    return new


#: Why a queued workflow's job is delivered again, by what Redis said of it (anything else live: it
#: was taken from the queue, and never started or never claimed).
_LOST_JOB = {None: "job missing", OFF_THE_QUEUE: "job not on the queue"}


def reconcile(engine: WorkflowEngine, batch_size: int) -> ReconcileReport:
    report: dict[str, list[str]] = {
        "requeued_stale": [],
        "failed_stale": [],
        "cancelled_stale": [],
        "redelivered": [],
        "undeliverable": [],
    }
    now = utcnow()
    for _ in range(MAX_RECONCILE_BATCHES):
        stale = engine.store.stale_running(now=now, limit=batch_size)
        for wf in stale:
            last = wf.heartbeat_at.isoformat(timespec="seconds") if wf.heartbeat_at else "never"
            new = attempt_failed(
                engine,
                wf,
                error=f"worker lost: worker {wf.worker or 'unknown'} stopped heartbeating "
                f"(last heartbeat {last}; its lease expired)",
                traceback=None,
                lease_expired_at=now,
                immediate=True,  # a crash is not a handler error: no backoff, keep the recovery bound
                undelivered=report["undeliverable"],  # requeued in the database, its job not in Redis yet
            )
            if new is not None:
                report[_STALE_OUTCOME[new.status]].append(new.id)
        if len(stale) < batch_size:
            break
    after: tuple[datetime, str] | None = None
    on_queue: frozenset[str] | None = None  # None: not read (too long), no job is judged by it
    scanned = False
    for _ in range(MAX_RECONCILE_BATCHES):
        candidates = engine.store.deliverable_queued(
            now=now, queued_before=now - REDELIVERY_GRACE, limit=batch_size, after=after
        )
        if not candidates:
            break
        after = (candidates[-1].created_at, candidates[-1].id)
        job_ids = [wf.job_id for wf in candidates if wf.job_id]
        try:
            # What is on the queue's list, read once a pass and before any job's status: every
            # candidate's job was pushed at least REDELIVERY_GRACE before the pass began, so it is
            # on that list, or a worker took it from there, or Redis lost it.
            if job_ids and not scanned:
                on_queue, scanned = engine.transport.queued_ids(), True
            statuses = engine.transport.job_statuses(job_ids, on_queue=on_queue)
            if not job_ids:  # only due retries, no job to ask about: still change nothing while Redis is down
                engine.transport.ping()
        except QueueUnavailable:
            report["undeliverable"].extend(wf.id for wf in candidates)
            break
        # A job a worker took (started, moved to the intermediate list, or popped outright) while
        # its workflow is still queued: the worker has not claimed it yet, or died before it could;
        # or a job on no list because Redis lost the list. Only a job seen so for longer than
        # stale_after counts as abandoned; under a backlog a workflow has often been queued that
        # long when a worker takes its job, and must not lose its turn.
        started_before = now - timedelta(seconds=engine.stale_after)
        by_job = {wf.job_id: wf.id for wf in candidates if wf.job_id}
        maybe_abandoned = {
            wf.job_id: status
            for wf in candidates
            if wf.job_id
            and (status := statuses.get(wf.job_id)) in TAKEN_STATUSES
            and wf.updated_at < started_before
        }
        try:
            # Kept while sighted, and a little past a pass that would give up on it.
            keep = 2 * engine.stale_after + 60
            taken_at = engine.transport.taken_at(maybe_abandoned, now, keep=keep) if maybe_abandoned else {}
        except QueueUnavailable:
            report["undeliverable"].extend(wf.id for wf in candidates)
            break
        redeliveries = []
        for wf in candidates:
            status = statuses.get(wf.job_id) if wf.job_id else None
            if status in LIVE_JOB_STATUSES and not (
                wf.job_id in maybe_abandoned and (taken_at.get(wf.job_id) or wf.updated_at) < started_before
            ):
                continue  # waiting in the queue, or being picked up right now
            why = "retry due" if wf.job_id is None else _LOST_JOB.get(status, "job never claimed")
            changes = {"job_id": new_job_id(wf.id), "run_after": None}
            # The attempts too: a due retry has no job, and neither has the same workflow after another
            # reconciler redelivered it and its attempt failed into a new backoff (read before that,
            # it would be delivered again at once, its backoff skipped).
            redeliveries.append(
                engine._transition(
                    wf,
                    S.QUEUED,
                    changes,
                    detail=f"redelivered: {why}",
                    expected_job_id=wf.job_id,
                    expected_attempts=wf.attempts,
                )
            )
        # One transaction and one Redis pipeline for the whole batch.
        queued = [new for new in engine.store.apply(redeliveries) if new is not None]
        for new in queued:
            engine.notify(new, S.QUEUED)
        try:
            engine._deliver(*queued)
        except QueueUnavailable:  # they stay queued in the database; the next pass tries again
            report["undeliverable"].extend(new.id for new in queued)
        else:
            report["redelivered"].extend(new.id for new in queued)
            replaced = {new.id for new in queued}
            engine.transport.forget_taken([j for j in maybe_abandoned if by_job[j] in replaced])
        if len(candidates) < batch_size:
            break
    result = ReconcileReport(**report)
    if result.total:  # the counts as the message; every id in `reconcile`, a JSON object in JSON logs
        counts = ", ".join(f"{kind} {len(ids)}" for kind, ids in report.items() if ids)
        log.info("reconcile: %s", counts, extra={"reconcile": result.to_dict()})
    return result
