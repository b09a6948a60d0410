"""RQ worker classes for ``workflow-engine worker``: fewer Redis round trips, and warm attempts.

RQ's ``Worker.heartbeat()``, called without a pipeline, sends its three commands
(``HSET`` the worker's ``last_heartbeat``, ``EXPIRE`` its key, ``EXPIRE`` its
executions key) as three round trips, and a worker calls it that way about three
times a job: 6 of RQ's 22 round trips a job. These classes send the same three
commands in one pipeline. Nothing else changes: the commands, their order, the keys,
the TTLs, and what ``rq info`` and ``workflow-engine health`` see. The three
commands were never atomic, so a pipeline without ``MULTI`` keeps their meaning.

``WorkflowWorker`` (forking) also claims each workflow in the worker process before
it forks, and records the outcome there after the work-horse exits; the work-horse
only runs the handler (:class:`workflow_engine.execution.ForkedAttempt`). A stock
forking worker's work-horse does all of it in a new process each job.

``workflow-engine worker`` uses them. A stock ``rq worker`` can too:
``rq worker workflows -w workflow_engine.workers.SimpleWorkflowWorker``, or
``-w workflow_engine.workers.WorkflowWorker -c workflow_engine.rq_preload``.
"""

from __future__ import annotations

from typing import Any

from rq import Queue, SimpleWorker, Worker
from rq.job import Job

from .execution import ForkedAttempt


class _OneTripHeartbeat:
    """Send a heartbeat made outside a pipeline as one pipeline: one round trip instead of three."""

    connection: Any

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:  # already part of RQ's own pipeline
            super().heartbeat(timeout, pipeline=pipeline)  # type: ignore[misc]
            return
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipeline=pipe)  # type: ignore[misc]
            pipe.execute()


class WorkflowWorker(_OneTripHeartbeat, Worker):
    """``rq.Worker`` (a forked work-horse per job), with one-round-trip heartbeats, that claims
    each workflow before the fork and records its outcome after the work-horse exits."""

    _horse_status: int | None = None

    def execute_job(self, job: Job, queue: Queue) -> None:
        attempt = ForkedAttempt.begin(job, self.name)
        if attempt is None:
            super().execute_job(job, queue)
            return
        self._horse_status = None
        try:
            super().execute_job(job, queue)
        except BaseException:  # the work-horse may still run: record only what it reported
            attempt.end(None, horse_exited=False)
            raise
        attempt.end(self._horse_status)

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        self._horse_status = ret_val  # RQ calls this when a work-horse ended other than with 0
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)  # type: ignore[no-untyped-call]


class SimpleWorkflowWorker(_OneTripHeartbeat, SimpleWorker):
    """``rq.SimpleWorker`` (jobs in the worker's own process), with one-round-trip heartbeats."""
