"""RQ worker classes with fewer Redis round trips per job, for ``workflow-engine worker``.

RQ's ``Worker.heartbeat()``, called without a pipeline, sends its three commands
(``HSET`` the worker's ``last_heartbeat``, ``EXPIRE`` its key, ``EXPIRE`` its
executions key) as three round trips, and a worker calls it that way about three
times a job: 6 of RQ's 22 round trips a job. These classes send the same three
commands in one pipeline. Nothing else changes: the commands, their order, the keys,
the TTLs, and what ``rq info`` and ``workflow-engine health`` see. The three
commands were never atomic, so a pipeline without ``MULTI`` keeps their meaning.

``workflow-engine worker`` uses them. A stock ``rq worker`` can too:
``rq worker workflows -w workflow_engine.workers.SimpleWorkflowWorker``.

One thing they add: a heartbeat that finds the worker's key gone (Redis restarted without
persistence, or was flushed) registers the worker again, so that ``rq info`` and
``workflow-engine health`` see it. RQ's own classes register a worker only when it starts,
and stay invisible until they restart.
"""

from __future__ import annotations

from typing import Any

from rq import SimpleWorker, Worker
from rq.worker_registration import register


class _OneTripHeartbeat:
    """Send a heartbeat made outside a pipeline as one pipeline: one round trip instead of three."""

    connection: Any

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:  # already part of RQ's own pipeline
            super().heartbeat(timeout, pipeline=pipeline)  # type: ignore[misc]
            return
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.exists(self.key)  # type: ignore[attr-defined]
            super().heartbeat(timeout, pipeline=pipe)  # type: ignore[misc]
            existed = pipe.execute()[0]
        if not existed and getattr(self, "birth_date", None) is not None:
            # Redis lost the worker's key, and the worker sets with it (a restart without persistence,
            # a flush): the heartbeat made a key of one field. Write the whole record and register
            # the worker again, as at its start (RQ's own heartbeats do the first, not the second).
            worker: Any = self
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.hset(worker.key, mapping={**worker.serialize(), "state": worker.get_state()})
                pipe.expire(worker.key, timeout or worker.worker_ttl + 60)
                register(worker, pipe)
                pipe.execute()


class WorkflowWorker(_OneTripHeartbeat, Worker):
    """``rq.Worker`` (a forked work-horse per job), with one-round-trip heartbeats."""


class SimpleWorkflowWorker(_OneTripHeartbeat, SimpleWorker):
    """``rq.SimpleWorker`` (jobs in the worker's own process), with one-round-trip heartbeats."""
