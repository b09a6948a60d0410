"""WorkflowEngine: the one object an app holds.

It owns a store (the source of truth) and a transport (RQ, which only moves
work). Every status change goes through :meth:`WorkflowEngine._change`,
which checks the transition table, stamps the fields and has the store
apply it with a compare-and-set and record its event.
"""

from __future__ import annotations

import logging
import random
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from . import config
from .errors import (
    DuplicateVote,
    InvalidInput,
    InvalidTransition,
    InvalidVote,
    NotACouncilMember,
    QueueUnavailable,
    UnknownWorkflowType,
    WorkflowNotFound,
)
from .handlers import HandlerFunc, HandlerSpec, import_handler, path_of, validate_type_id
from .models import Council, ReconcileReport, Tally, Vote, Workflow, WorkflowEvent, to_json, utcnow
from .status import TERMINAL, WorkflowStatus, can_transition
from .stores import Store, open_store
from .stores.base import ANY_JOB, Change, NewEvent
from .transport import LIVE_JOB_STATUSES, Transport, connect, new_job_id

log = logging.getLogger("workflow_engine")
S = WorkflowStatus
F = TypeVar("F", bound=Callable[..., Any])
Listener = Callable[[Workflow, "WorkflowStatus | None"], None]

#: Engines alive in this process, by key, so an in-process job can find the engine that enqueued it.
_ENGINES: weakref.WeakValueDictionary[str, WorkflowEngine] = weakref.WeakValueDictionary()
#: A queued workflow whose job is not in Redis this long after it was queued is delivered again.
REDELIVERY_GRACE = timedelta(seconds=5)
#: The longest delay between two attempts.
MAX_RETRY_DELAY = 3600.0
_RACE_RETRIES = 5
#: How many just-created workflows an engine remembers (see ``_remember``).
_RECENT_SIZE = 1024
_CREATE_ARGUMENTS = frozenset(
    {
        "workflow_type_id",
        "created_by_agent",
        "inputs",
        "calculated_savings",
        "assigned_council_id",
        "idempotency_key",
        "requires_approval",
    }
)
#: The window of ``stats()["throughput_per_min"]``.
STATS_WINDOW_MINUTES = 15
#: One reconcile pass looks at most at this many batches of each kind.
MAX_RECONCILE_BATCHES = 200


def _log_extra(wf: Workflow) -> dict[str, Any]:
    return {"workflow_id": wf.id, "workflow_type_id": wf.workflow_type_id, "attempt": wf.attempts}


class WorkflowEngine:
    """Durable workflows: a database row per workflow, RQ to run them.

    >>> engine = WorkflowEngine(database_url="sqlite:///:memory:", redis_url="fakeredis://", is_async=False)

    ``is_async=False`` with ``fakeredis://`` is the in-process mode:
    ``enqueue_execution`` runs the workflow to its end before it returns.
    """

    def __init__(
        self,
        *,
        database_url: str = config.DEFAULT_DATABASE_URL,
        redis_url: str = config.DEFAULT_REDIS_URL,
        queue_name: str = config.DEFAULT_QUEUE,
        is_async: bool = True,
        heartbeat_interval: float = config.DEFAULT_HEARTBEAT_INTERVAL,
        stale_after: float = config.DEFAULT_STALE_AFTER,
        store: Store | None = None,
        redis_connection: Any = None,
    ) -> None:
        if not isinstance(queue_name, str) or not queue_name.strip():
            raise InvalidInput(f"queue_name must be a non-empty string, got {queue_name!r}")
        config.check_timing(heartbeat_interval, stale_after)
        self.database_url = database_url
        self.redis_url = redis_url
        self.queue_name = queue_name
        self.is_async = is_async
        self.heartbeat_interval = float(heartbeat_interval)
        self.stale_after = float(stale_after)
        self.store: Store = store if store is not None else open_store(database_url)
        connection = redis_connection if redis_connection is not None else connect(redis_url)
        # Only this process can run the jobs: with fakeredis, or in sync mode (RQ runs them inline).
        in_process = not is_async or type(connection).__module__.startswith("fakeredis")
        self.transport = Transport(connection, queue_name, is_async=is_async, in_process=in_process)
        self._handlers: dict[str, HandlerSpec] = {}
        self._listeners: list[Listener] = []
        self._recent: dict[str, Workflow] = {}
        self.key = uuid.uuid4().hex
        _ENGINES[self.key] = self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> WorkflowEngine:
        """An engine configured from ``WORKFLOW_ENGINE_*`` variables (see :data:`config.ENVIRONMENT`)."""
        settings = config.Settings.from_env(environ)
        kwargs: dict[str, Any] = {
            "database_url": settings.database_url,
            "redis_url": settings.redis_url,
            "queue_name": settings.queue_name,
            "heartbeat_interval": settings.heartbeat_interval,
            "stale_after": settings.stale_after,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    def __repr__(self) -> str:
        mode = "async" if self.is_async else "in-process"
        return f"<WorkflowEngine {self.database_url!r} queue={self.queue_name!r} {mode}>"

    def close(self) -> None:
        self.store.close()

    def lease_from(self, now: datetime) -> datetime:
        """Until when a heartbeat at ``now`` keeps a running workflow from being taken for lost."""
        return now + timedelta(seconds=self.stale_after)

    @property
    def redis(self) -> Any:
        """The Redis connection RQ uses."""
        return self.transport.connection

    @property
    def queue(self) -> Any:
        """The ``rq.Queue`` workflows are put on."""
        return self.transport.queue

    # -- handlers ----------------------------------------------------------
    def handler(
        self,
        workflow_type_id: str,
        *,
        max_retries: int = 3,
        retry_backoff: float = 1.0,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated module-level function as the handler of ``workflow_type_id``.

        The function takes the :class:`Workflow` and returns a JSON-serialisable result.
        """

        def decorate(func: F) -> F:
            self.register_handler(
                workflow_type_id, func, max_retries=max_retries, retry_backoff=retry_backoff, timeout=timeout
            )
            return func

        return decorate

    def register_handler(
        self,
        workflow_type_id: str,
        handler: str | HandlerFunc,
        *,
        max_retries: int = 3,
        retry_backoff: float = 1.0,
        timeout: float | None = None,
    ) -> HandlerSpec:
        """Register a handler by import path (``"package.module:function"``) or by function."""
        if isinstance(handler, str):
            if ":" not in handler and "." not in handler:
                raise InvalidInput(f"handler path {handler!r} must look like 'package.module:function'")
            path, func = handler, None
        elif callable(handler):
            path, func = path_of(handler), handler
            if path.startswith("__main__:") and self.is_async:
                raise InvalidInput(
                    f"handler {path!r} is defined in __main__, which an rq worker cannot import; "
                    "move it into a module"
                )
        else:
            raise InvalidInput(f"handler must be a function or an import path, got {type(handler).__name__}")
        spec = HandlerSpec(workflow_type_id, path, func, max_retries, retry_backoff, timeout)
        self._handlers[workflow_type_id] = spec
        return spec

    def handler_for(self, workflow_type_id: str) -> HandlerSpec | None:
        return self._handlers.get(workflow_type_id)

    def resolve_handler(self, path: str, workflow_type_id: str) -> HandlerFunc:
        """The function behind ``path``: a registered one if this engine has it, else imported."""
        spec = self._handlers.get(workflow_type_id)
        if spec is not None and spec.path == path and spec.func is not None:
            return spec.func
        return import_handler(path, workflow_type_id)

    # -- creating and reading ----------------------------------------------
    def create_workflow(
        self,
        *,
        workflow_type_id: str,
        created_by_agent: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        calculated_savings: Mapping[str, Any] | None = None,
        assigned_council_id: str | None = None,
        idempotency_key: str | None = None,
        requires_approval: bool = False,
    ) -> str:
        """Record a new ``pending`` workflow and return its id.

        With ``requires_approval=True`` it starts ``awaiting_approval`` instead, and
        runs only once its council (``assigned_council_id``, set up with
        :meth:`configure_council`) approves it by :meth:`vote`.

        With ``idempotency_key``, a second call with the same key returns the
        first workflow's id and changes nothing.
        """
        wf = self._new_workflow(
            workflow_type_id=workflow_type_id,
            created_by_agent=created_by_agent,
            inputs=inputs,
            calculated_savings=calculated_savings,
            assigned_council_id=assigned_council_id,
            idempotency_key=idempotency_key,
            requires_approval=requires_approval,
        )
        [(stored, created)] = self.store.insert([wf])
        if created:
            log.info("workflow created", extra=_log_extra(stored))
            self.notify(stored, None)
            self._remember(stored)
        return stored.id

    def create_workflows(self, workflows: Iterable[Mapping[str, Any]]) -> list[str]:
        """Create many workflows in one transaction; return their ids in order.

        Each mapping holds ``create_workflow``'s keyword arguments. Every one is
        validated before anything is written: one bad item writes nothing.
        """
        built = []
        for i, item in enumerate(workflows):
            if not isinstance(item, Mapping):
                raise InvalidInput(f"item {i} must be a mapping of create_workflow arguments")
            unknown = set(item) - _CREATE_ARGUMENTS
            if unknown:
                raise InvalidInput(f"item {i} has unknown arguments: {', '.join(sorted(map(str, unknown)))}")
            if "workflow_type_id" not in item:
                raise InvalidInput(f"item {i} needs a workflow_type_id")
            arguments: dict[str, Any] = {k: item[k] for k in _CREATE_ARGUMENTS if k in item}
            built.append(self._new_workflow(**arguments))
        ids = []
        for stored, created in self.store.insert(built):
            if created:
                self.notify(stored, None)
                self._remember(stored)
            ids.append(stored.id)
        return ids

    def _remember(self, wf: Workflow) -> None:
        """Keep a just-created workflow, so that enqueueing it next needs no read.

        Only a hint: enqueueing still compare-and-sets on its status and job id.
        """
        self._recent[wf.id] = wf
        if len(self._recent) > _RECENT_SIZE:
            self._recent.pop(next(iter(self._recent)), None)

    def _new_workflow(
        self,
        *,
        workflow_type_id: str,
        created_by_agent: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        calculated_savings: Mapping[str, Any] | None = None,
        assigned_council_id: str | None = None,
        idempotency_key: str | None = None,
        requires_approval: bool | None = False,
    ) -> Workflow:
        wf = self._build_workflow(
            workflow_type_id=workflow_type_id,
            created_by_agent=created_by_agent,
            inputs=inputs,
            calculated_savings=calculated_savings,
            assigned_council_id=assigned_council_id,
            idempotency_key=idempotency_key,
        )
        requires_approval = bool(requires_approval) if requires_approval is None else requires_approval
        if not isinstance(requires_approval, bool):
            raise InvalidInput(f"requires_approval must be true or false, got {requires_approval!r}")
        if requires_approval:
            if assigned_council_id is None:
                raise InvalidInput("requires_approval needs an assigned_council_id")
            if self.store.get_council(assigned_council_id) is None:
                raise InvalidInput(
                    f"council {assigned_council_id!r} is not configured; "
                    "call engine.configure_council() first"
                )
            if wf.handler is None:
                raise UnknownWorkflowType(workflow_type_id, "a workflow awaiting approval must be runnable")
            wf = wf.model_copy(update={"status": S.AWAITING_APPROVAL})
        return wf

    def _build_workflow(
        self,
        *,
        workflow_type_id: str,
        created_by_agent: str | None,
        inputs: Mapping[str, Any] | None,
        calculated_savings: Mapping[str, Any] | None,
        assigned_council_id: str | None,
        idempotency_key: str | None,
    ) -> Workflow:
        validate_type_id(workflow_type_id)
        inputs = {} if inputs is None else inputs
        if not isinstance(inputs, Mapping):
            raise InvalidInput(f"inputs must be a dict (a JSON object), got {type(inputs).__name__}")
        if calculated_savings is not None and not isinstance(calculated_savings, Mapping):
            raise InvalidInput(
                "calculated_savings must be a dict (a JSON object) or None, "
                f"got {type(calculated_savings).__name__}"
            )
        for name, value in (
            ("created_by_agent", created_by_agent),
            ("assigned_council_id", assigned_council_id),
            ("idempotency_key", idempotency_key),
        ):
            if value is not None and not isinstance(value, str):
                raise InvalidInput(f"{name} must be a string or None, got {type(value).__name__}")
            if value is not None and "\x00" in value:
                raise InvalidInput(f"{name} must not contain NUL characters")
        if idempotency_key is not None and not idempotency_key:
            raise InvalidInput("idempotency_key must not be empty")
        # Round-trip through JSON so that what is stored is exactly what a reader gets back.
        import json

        inputs_value = json.loads(to_json(dict(inputs), "inputs"))
        savings_value = (
            None
            if calculated_savings is None
            else json.loads(to_json(dict(calculated_savings), "calculated_savings"))
        )
        spec = self._handlers.get(workflow_type_id)
        now = utcnow()
        return Workflow(
            id=uuid.uuid4().hex,
            workflow_type_id=workflow_type_id,
            status=S.PENDING,
            created_by_agent=created_by_agent,
            inputs=inputs_value,
            calculated_savings=savings_value,
            assigned_council_id=assigned_council_id,
            idempotency_key=idempotency_key,
            handler=spec.path if spec else None,
            max_retries=spec.max_retries if spec else 0,
            retry_backoff=spec.retry_backoff if spec else 0.0,
            timeout=spec.timeout if spec else None,
            created_at=now,
            updated_at=now,
        )

    def get_workflow(self, workflow_id: str) -> Workflow:
        """The workflow with that id; WorkflowNotFound if there is none."""
        if not isinstance(workflow_id, str):
            raise WorkflowNotFound(str(workflow_id))
        wf = self.store.get(workflow_id)
        if wf is None:
            raise WorkflowNotFound(workflow_id)
        return wf

    def list_workflows(
        self,
        limit: int = 50,
        status: str | WorkflowStatus | None = None,
        workflow_type_id: str | None = None,
        created_by_agent: str | None = None,
        *,
        before: Workflow | None = None,
    ) -> list[Workflow]:
        """Workflows newest first, filtered by any of status, type and agent.

        Page with ``before=<last workflow of the previous page>`` (keyset paging).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InvalidInput(f"limit must be an integer from 1 to 10000, got {limit!r}")
        filters: dict[str, str] = {}
        if status is not None:
            filters["status"] = WorkflowStatus.parse(status).value
        for name, value in (("workflow_type_id", workflow_type_id), ("created_by_agent", created_by_agent)):
            if value is not None:
                if not isinstance(value, str):
                    raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
                if "\x00" in value:
                    raise InvalidInput(f"{name} must not contain NUL characters")
                filters[name] = value
        cursor = (before.created_at, before.id) if before is not None else None
        return self.store.find(limit=limit, filters=filters, cursor=cursor)

    def get_events(self, workflow_id: str) -> list[WorkflowEvent]:
        """The audit trail, oldest first: one event per status change, plus notes such as redeliveries."""
        events = self.store.events(workflow_id)
        if not events:
            self.get_workflow(workflow_id)  # raises WorkflowNotFound
        return events

    # -- changing ----------------------------------------------------------
    def _change(
        self,
        wf: Workflow,
        to: WorkflowStatus,
        changes: Mapping[str, Any],
        *,
        detail: str | None,
        expected_job_id: str | bool | None = ANY_JOB,
        lease_expired_at: datetime | None = None,
        event: bool = True,
    ) -> Workflow | None:
        """Move ``wf`` to ``to`` if it is still as read. None if another process changed it first."""
        change = self._transition(
            wf,
            to,
            changes,
            detail=detail,
            expected_job_id=expected_job_id,
            lease_expired_at=lease_expired_at,
            event=event,
        )
        [new] = self.store.apply([change])
        if new is not None and event:
            self.notify(new, wf.status)
        return new

    @staticmethod
    def _transition(
        wf: Workflow,
        to: WorkflowStatus,
        changes: Mapping[str, Any],
        *,
        detail: str | None,
        expected_job_id: str | bool | None = ANY_JOB,
        lease_expired_at: datetime | None = None,
        event: bool = True,
    ) -> Change:
        """The compare-and-set that moves ``wf`` to ``to``: checked against the table, stamped."""
        if not can_transition(wf.status, to):
            raise InvalidTransition(wf.id, wf.status.value, to.value)
        fields = dict(changes)
        fields["status"] = to
        fields.setdefault("updated_at", utcnow())
        return Change(
            wf.id,
            wf.status,
            fields,
            NewEvent(wf.status, to, detail) if event else None,
            expected_job_id,
            lease_expired_at,
        )

    # -- listeners ---------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(workflow, from_status)`` after every status change this engine makes.

        ``from_status`` is None for a new workflow. Listeners run in the process that
        made the change (a web process, a worker, a work-horse); an exception in one is
        logged and never fails the change. Metrics use this.
        """
        self._listeners.append(listener)

    def notify(self, workflow: Workflow, from_status: WorkflowStatus | None) -> None:
        for listener in self._listeners:
            try:
                listener(workflow, from_status)
            except Exception:
                log.exception("workflow listener %r failed", listener, extra=_log_extra(workflow))

    def enqueue_execution(self, workflow_id: str) -> None:
        """Mark the workflow ``queued`` in the database, then put its job on the RQ queue.

        A queued workflow whose job is still in Redis is left alone, so calling
        this again never runs a workflow twice. Raises UnknownWorkflowType if no
        handler is known for its type, InvalidTransition if it is running or
        finished (use :meth:`requeue` for failed or cancelled ones), and
        QueueUnavailable if Redis is down: the workflow then stays queued and
        :meth:`reconcile` delivers it later.
        """
        recent = self._recent.pop(workflow_id, None)
        if recent is not None and recent.status is S.PENDING and self._queue(recent, detail="enqueued"):
            return  # the workflow was as this engine created it: no read needed
        for _ in range(_RACE_RETRIES):
            wf = self.get_workflow(workflow_id)
            if wf.status is S.QUEUED:
                if wf.job_id is not None and wf.job_id in self.transport.live_jobs([wf.job_id]):
                    return
                if wf.job_id is None and wf.run_after is not None and wf.run_after > utcnow():
                    return  # a retry waiting for its delay
            elif wf.status is not S.PENDING:
                hint = {
                    S.RUNNING: "it is already running",
                    S.AWAITING_APPROVAL: "it is awaiting its council's approval (engine.vote)",
                    S.REJECTED: "its council rejected it",
                    S.COMPLETED: "a completed workflow never runs again",
                }.get(wf.status, "use engine.requeue() to run a failed or cancelled workflow again")
                raise InvalidTransition(wf.id, wf.status.value, S.QUEUED.value, hint)
            if self._queue(wf, detail="enqueued" if wf.status is S.PENDING else "redelivered"):
                return
        raise InvalidTransition(workflow_id, None, S.QUEUED.value, "it kept changing while being enqueued")

    def requeue(self, workflow_id: str) -> Workflow:
        """Send a ``failed`` or ``cancelled`` workflow back to ``queued`` with a fresh retry budget."""
        for _ in range(_RACE_RETRIES):
            wf = self.get_workflow(workflow_id)
            if wf.status not in (S.FAILED, S.CANCELLED):
                raise InvalidTransition(
                    wf.id,
                    wf.status.value,
                    S.QUEUED.value,
                    "only failed or cancelled workflows can be requeued",
                )
            if self._queue(wf, detail="requeued", reset=True):
                return self.get_workflow(workflow_id)
        raise InvalidTransition(workflow_id, None, S.QUEUED.value, "it kept changing while being requeued")

    def _queue(self, wf: Workflow, *, detail: str, reset: bool = False) -> bool:
        """pending/failed/cancelled/queued -> queued with a new job, then deliver. False if we lost a race."""
        [queued] = self.store.apply([self._queue_change(wf, detail=detail, reset=reset)])
        if queued is None:
            return False
        self.notify(queued, wf.status)
        log.info("workflow %s", detail, extra=_log_extra(queued))
        self._deliver(queued)
        return True

    def _queue_change(self, wf: Workflow, *, detail: str, reset: bool = False) -> Change:
        spec = self._handlers.get(wf.workflow_type_id)
        if spec is None and wf.handler is None:
            raise UnknownWorkflowType(wf.workflow_type_id)
        changes: dict[str, Any] = {"job_id": new_job_id(wf.id), "run_after": None}
        if wf.status is not S.QUEUED or reset:
            policy = spec or HandlerSpec(
                wf.workflow_type_id, wf.handler or "", None, wf.max_retries, wf.retry_backoff, wf.timeout
            )
            changes.update(
                handler=policy.path,
                max_retries=policy.max_retries,
                retry_backoff=policy.retry_backoff,
                timeout=policy.timeout,
                max_attempts=wf.attempts + 1 + policy.max_retries,
                cancel_requested_at=None,
            )
        if reset:
            changes.update(finished_at=None)
        return self._transition(wf, S.QUEUED, changes, detail=detail, expected_job_id=wf.job_id)

    def enqueue_many(self, workflow_ids: Sequence[str]) -> None:
        """Enqueue many pending workflows: one database transaction and one Redis pipeline.

        Every id is checked first (WorkflowNotFound, UnknownWorkflowType, InvalidTransition),
        so a bad one writes nothing. Already queued workflows are left alone. In sync mode
        each runs before this returns, as with :meth:`enqueue_execution`.
        """
        ids = list(dict.fromkeys(workflow_ids))
        found = self.store.get_many(ids)
        for wid in ids:
            wf = found.get(wid)
            if wf is None:
                raise WorkflowNotFound(wid)
            if wf.status not in (S.PENDING, S.QUEUED):
                raise InvalidTransition(
                    wid, wf.status.value, S.QUEUED.value, "enqueue_many takes pending workflows"
                )
            if self._handlers.get(wf.workflow_type_id) is None and wf.handler is None:
                raise UnknownWorkflowType(wf.workflow_type_id)
        pending = [found[wid] for wid in ids if found[wid].status is S.PENDING]
        if not self.is_async:
            for wf in pending:
                self.enqueue_execution(wf.id)
            return
        changes = [self._queue_change(wf, detail="enqueued") for wf in pending]
        queued = [new for new in self.store.apply(changes) if new is not None]
        for new in queued:
            self.notify(new, S.PENDING)
        self.transport.deliver_many(queued, engine_key=self.key if self.transport.in_process else None)

    def _deliver(self, wf: Workflow, transport: Transport | None = None) -> None:
        transport = transport or self.transport
        assert wf.job_id is not None
        transport.deliver(wf, wf.job_id, engine_key=self.key if transport.in_process else None)

    def cancel(self, workflow_id: str, *, reason: str | None = None) -> Workflow:
        """Cancel a workflow.

        A ``pending`` or ``queued`` workflow becomes ``cancelled`` and its handler
        never runs. For a ``running`` one the request is recorded (the handler
        sees it through :func:`workflow_engine.cancel_requested`) and a forking
        worker is told to kill its work-horse. It becomes ``cancelled`` when its
        attempt ends by being killed or by raising; it is never retried. A
        handler that returns normally anyway (a ``SimpleWorker`` cannot be
        interrupted) ends ``completed``, since its work was done.
        """
        detail = f"cancelled: {reason}" if reason else "cancelled"
        for _ in range(_RACE_RETRIES):
            wf = self.get_workflow(workflow_id)
            if wf.status in (S.PENDING, S.QUEUED, S.AWAITING_APPROVAL):
                now = utcnow()
                done = self._change(wf, S.CANCELLED, {"finished_at": now, "updated_at": now}, detail=detail)
                if done is not None:
                    log.info("workflow cancelled", extra=_log_extra(done))
                    return done
            elif wf.status is S.RUNNING:
                if wf.cancel_requested_at is not None:
                    return wf
                now = utcnow()
                marked = self.store.compare_and_set(
                    wf.id,
                    expected_status=S.RUNNING,
                    changes={"cancel_requested_at": now, "updated_at": now},
                    event=NewEvent(
                        S.RUNNING, S.RUNNING, f"cancel requested{': ' + reason if reason else ''}"
                    ),
                    expected_job_id=wf.job_id,
                )
                if marked is not None:
                    if marked.job_id:
                        self.transport.stop(marked.job_id)
                    log.info("workflow cancel requested", extra=_log_extra(marked))
                    return self.get_workflow(workflow_id)
            else:
                raise InvalidTransition(wf.id, wf.status.value, S.CANCELLED.value, "it has already finished")
        raise InvalidTransition(
            workflow_id, None, S.CANCELLED.value, "it kept changing while being cancelled"
        )

    def update_status(
        self, workflow_id: str, status: str | WorkflowStatus, *, detail: str | None = None
    ) -> Workflow:
        """Move a workflow to ``status`` if the transition table allows it.

        ``queued`` enqueues (or requeues) it and ``cancelled`` cancels it, with
        the same rules as those methods; other targets are recorded as given.
        """
        target = WorkflowStatus.parse(status)
        if target is S.QUEUED:
            wf = self.get_workflow(workflow_id)
            if wf.status in (S.FAILED, S.CANCELLED):
                return self.requeue(workflow_id)
            self.enqueue_execution(workflow_id)
            return self.get_workflow(workflow_id)
        if target is S.CANCELLED:
            return self.cancel(workflow_id, reason=detail)
        for _ in range(_RACE_RETRIES):
            wf = self.get_workflow(workflow_id)
            now = utcnow()
            changes: dict[str, Any] = {"updated_at": now}
            if target in TERMINAL:
                changes["finished_at"] = now
            if target is S.RUNNING:
                changes.update(
                    started_at=wf.started_at or now,
                    heartbeat_at=now,
                    lease_until=self.lease_from(now),
                )
            done = self._change(wf, target, changes, detail=detail or "status updated")
            if done is not None:
                return done
        raise InvalidTransition(workflow_id, None, target.value, "it kept changing while being updated")

    # -- statistics --------------------------------------------------------
    def stats(self, since: datetime | None = None) -> dict[str, Any]:
        """Analytics computed in SQL, as a JSON-safe dict.

        ``total``, ``by_status`` (every status, zeros included), ``by_type`` (counts by
        status, ``success_rate``, ``duration_p50_s``, ``duration_p95_s``) and
        ``calculated_savings`` (each numeric field summed) cover the workflows created
        since ``since`` (all when None). ``queue_depth`` (from Redis; None when Redis is
        down), ``oldest_queued_age_s``, ``running`` and ``throughput_per_min`` (workflows
        finished over the last 15 minutes) describe the present.
        """
        if since is not None and (not isinstance(since, datetime) or since.tzinfo is None):
            raise InvalidInput("since must be a timezone-aware datetime or None")
        now = utcnow()
        rows = self.store.stats(since=since, recent=now - timedelta(minutes=STATS_WINDOW_MINUTES))
        by_status = {status.value: 0 for status in WorkflowStatus}
        by_type: dict[str, dict[str, Any]] = {}
        for type_id, status, count in rows.counts:
            by_status[status] = by_status.get(status, 0) + count
            entry = by_type.setdefault(
                type_id, {"total": 0, "by_status": {st.value: 0 for st in WorkflowStatus}}
            )
            entry["total"] += count
            entry["by_status"][status] = entry["by_status"].get(status, 0) + count
        for type_id, entry in by_type.items():
            done, failed = entry["by_status"]["completed"], entry["by_status"]["failed"]
            entry["success_rate"] = round(done / (done + failed), 4) if done + failed else None
            p50, p95 = rows.durations.get(type_id, (None, None))
            entry["duration_p50_s"], entry["duration_p95_s"] = p50, p95
        try:
            depth: int | None = self.transport.depth()
        except QueueUnavailable:
            depth = None
        oldest = rows.oldest_queued
        return {
            "since": since.isoformat() if since else None,
            "generated_at": now.isoformat(),
            "total": sum(by_status.values()),
            "by_status": by_status,
            "by_type": dict(sorted(by_type.items())),
            "queue_depth": depth,
            "oldest_queued_age_s": round(max((now - oldest).total_seconds(), 0.0), 3) if oldest else None,
            "running": rows.running,
            "throughput_per_min": round(rows.finished_recently / STATS_WINDOW_MINUTES, 3),
            "calculated_savings": dict(sorted(rows.savings.items())),
        }

    # -- council approval --------------------------------------------------
    def configure_council(self, council_id: str, *, members: list[str], quorum: int) -> Council:
        """Create or replace a council.

        ``quorum`` approvals approve a workflow; ``quorum`` rejections reject it.
        """
        if not isinstance(council_id, str) or not council_id.strip():
            raise InvalidInput("council_id must be a non-empty string")
        if (
            not isinstance(members, (list, tuple))
            or not members
            or not all(isinstance(m, str) and m.strip() for m in members)
        ):
            raise InvalidInput("members must be a non-empty list of non-empty strings")
        if len(set(members)) != len(members):
            raise InvalidInput("members must not repeat")
        if isinstance(quorum, bool) or not isinstance(quorum, int) or not 1 <= quorum <= len(members):
            raise InvalidInput(f"quorum must be an integer from 1 to {len(members)} (the number of members)")
        return self.store.save_council(
            Council(id=council_id, members=list(members), quorum=quorum, updated_at=utcnow())
        )

    def get_council(self, council_id: str) -> Council | None:
        return self.store.get_council(council_id)

    def vote(
        self,
        workflow_id: str,
        *,
        voter_id: str,
        approve: bool,
        comment: str | None = None,
        change: bool = False,
    ) -> Tally:
        """Cast a council member's vote on a workflow awaiting approval, and return the tally.

        The vote that reaches the quorum decides: approval queues the workflow and
        enqueues it (a compare-and-set, so two deciding votes at once enqueue it once);
        rejection makes it ``rejected``. Raises NotACouncilMember, DuplicateVote (unless
        ``change=True``), or InvalidTransition when the workflow is not awaiting approval.
        """
        if not isinstance(voter_id, str) or not voter_id.strip():
            raise InvalidInput("voter_id must be a non-empty string")
        if not isinstance(approve, bool):
            raise InvalidInput(f"approve must be true or false, got {approve!r}")
        if comment is not None and not isinstance(comment, str):
            raise InvalidInput("comment must be a string or None")
        if "\x00" in voter_id or (comment and "\x00" in comment):
            raise InvalidInput("voter_id and comment must not contain NUL characters")
        wf = self.get_workflow(workflow_id)
        council = self.store.get_council(wf.assigned_council_id) if wf.assigned_council_id else None
        if wf.status is not S.AWAITING_APPROVAL:
            raise InvalidTransition(
                wf.id,
                wf.status.value,
                S.AWAITING_APPROVAL.value,
                "votes are taken only while it awaits approval",
            )
        if council is None:
            raise InvalidVote(f"workflow {wf.id!r} has no configured council to vote")
        if voter_id not in council.members:
            raise NotACouncilMember(f"{voter_id!r} is not a member of council {council.id!r}")
        verb = "approves" if approve else "rejects"
        detail = (
            f"vote: {voter_id} {verb}"
            + (" (changed)" if change else "")
            + (f": {comment}" if comment else "")
        )
        vote = Vote(workflow_id=wf.id, voter_id=voter_id, approve=approve, comment=comment, at=utcnow())
        outcome = self.store.record_vote(vote, change=change, detail=detail)
        if outcome == "duplicate":
            raise DuplicateVote(
                f"{voter_id!r} has already voted on workflow {wf.id!r}; pass change=True to change the vote"
            )
        if outcome != "recorded":
            raise InvalidTransition(
                wf.id, outcome, S.AWAITING_APPROVAL.value, "votes are taken only while it awaits approval"
            )
        return self._decide(wf.id, council)

    def tally(self, workflow_id: str) -> Tally:
        """Where the vote on a workflow stands, without voting. InvalidVote if it has no council."""
        wf = self.get_workflow(workflow_id)
        council = self.store.get_council(wf.assigned_council_id) if wf.assigned_council_id else None
        if council is None:
            raise InvalidVote(f"workflow {wf.id!r} has no configured council")
        votes = [v for v in self.store.votes(workflow_id) if v.voter_id in council.members]
        approvals = sum(v.approve for v in votes)
        return Tally(
            workflow_id=wf.id,
            council_id=council.id,
            status=wf.status,
            quorum=council.quorum,
            approvals=approvals,
            rejections=len(votes) - approvals,
            votes=votes,
        )

    def _decide(self, workflow_id: str, council: Council) -> Tally:
        votes = [v for v in self.store.votes(workflow_id) if v.voter_id in council.members]
        approvals = sum(v.approve for v in votes)
        rejections = len(votes) - approvals
        wf = self.get_workflow(workflow_id)
        if wf.status is S.AWAITING_APPROVAL and approvals >= council.quorum:
            try:
                self._queue(wf, detail=f"approved by council {council.id} ({approvals} of {council.quorum})")
            except QueueUnavailable:
                log.warning("approved, but Redis is down; reconcile will deliver it", extra=_log_extra(wf))
        elif wf.status is S.AWAITING_APPROVAL and rejections >= council.quorum:
            now = utcnow()
            self._change(
                wf,
                S.REJECTED,
                {"finished_at": now, "updated_at": now},
                detail=f"rejected by council {council.id} ({rejections} of {council.quorum})",
            )
        return Tally(
            workflow_id=workflow_id,
            council_id=council.id,
            status=self.get_workflow(workflow_id).status,
            quorum=council.quorum,
            approvals=approvals,
            rejections=rejections,
            votes=votes,
        )

    # -- failures and recovery ---------------------------------------------
    def retry_delay(self, wf: Workflow) -> float:
        """Exponential backoff with jitter: base * 2**(attempt-1), then between half and all of that."""
        if wf.retry_backoff <= 0:
            return 0.0
        delay = min(wf.retry_backoff * 2 ** max(wf.attempts - 1, 0), MAX_RETRY_DELAY)
        return float(delay / 2 + random.uniform(0, delay / 2))

    def _attempt_failed(
        self,
        wf: Workflow,
        *,
        error: str,
        traceback: str | None,
        transport: Transport | None = None,
        lease_expired_at: datetime | None = None,
        immediate: bool = False,
    ) -> Workflow | None:
        """A running attempt failed: retry it, or fail the workflow.

        None if another process changed the workflow first."""
        now = utcnow()
        base: dict[str, Any] = {"error": error, "traceback": traceback, "updated_at": now}
        fail_detail = f"attempt {wf.attempts} failed: {error}"
        if wf.cancel_requested_at is not None:
            base["finished_at"] = now
            new = self._change(
                wf,
                S.CANCELLED,
                base,
                detail=f"{fail_detail}; cancelled as requested",
                expected_job_id=wf.job_id,
                lease_expired_at=lease_expired_at,
            )
        elif wf.attempts < wf.max_attempts:
            delay = self.retry_delay(wf) if self.is_async and not immediate else 0.0
            if delay > 0:
                base.update(job_id=None, run_after=now + timedelta(seconds=delay))
                detail = f"{fail_detail}; retry in {delay:.1f} s"
            else:
                base.update(job_id=new_job_id(wf.id), run_after=None)
                detail = f"{fail_detail}; retrying now"
            new = self._change(
                wf,
                S.QUEUED,
                base,
                detail=detail,
                expected_job_id=wf.job_id,
                lease_expired_at=lease_expired_at,
            )
            if new is not None and new.job_id is not None:
                try:
                    self._deliver(new, transport)
                except QueueUnavailable:
                    log.warning("retry not delivered, Redis is down; reconcile will", extra=_log_extra(new))
        else:
            base["finished_at"] = now
            new = self._change(
                wf,
                S.FAILED,
                base,
                detail=f"{fail_detail}; no retries left",
                expected_job_id=wf.job_id,
                lease_expired_at=lease_expired_at,
            )
        if new is not None:
            log.warning("%s -> %s", fail_detail, new.status.value, extra=_log_extra(new))
        return new

    def reconcile(self, *, batch_size: int = 500) -> ReconcileReport:
        """Recover from whatever Redis forgot and whatever workers died. Safe to run in many processes.

        - a ``running`` workflow whose lease expired (its worker stopped heartbeating for the
          worker's ``stale_after``) counts as a failed
          attempt: it is requeued, or ``failed`` when it has no attempts left;
        - a ``queued`` workflow whose RQ job is gone (Redis flushed or restarted) is delivered again;
        - a retry whose delay has passed is delivered.

        Every change is a compare-and-set, so two reconcilers never both act on one workflow;
        on PostgreSQL they also take turns under an advisory lock (a pass that finds the lock
        taken does nothing and reports nothing).
        """
        with self.store.exclusive("workflow_engine.reconcile") as mine:
            if not mine:
                return ReconcileReport()
            return self._reconcile(batch_size)

    def _reconcile(self, batch_size: int) -> ReconcileReport:
        report: dict[str, list[str]] = {
            "requeued_stale": [],
            "failed_stale": [],
            "cancelled_stale": [],
            "redelivered": [],
            "undeliverable": [],
        }
        now = utcnow()
        for _ in range(MAX_RECONCILE_BATCHES):
            stale = self.store.stale_running(now=now, limit=batch_size)
            for wf in stale:
                last = wf.heartbeat_at.isoformat(timespec="seconds") if wf.heartbeat_at else "never"
                new = self._attempt_failed(
                    wf,
                    error=f"worker lost: worker {wf.worker or 'unknown'} stopped heartbeating "
                    f"(last heartbeat {last}; its lease expired)",
                    traceback=None,
                    lease_expired_at=now,
                    immediate=True,  # a crash is not a handler error: no backoff, keep the recovery bound
                )
                if new is not None:
                    key = {
                        S.QUEUED: "requeued_stale",
                        S.FAILED: "failed_stale",
                        S.CANCELLED: "cancelled_stale",
                    }
                    report[key[new.status]].append(new.id)
            if len(stale) < batch_size:
                break
        after: tuple[datetime, str] | None = None
        for _ in range(MAX_RECONCILE_BATCHES):
            candidates = self.store.deliverable_queued(
                now=now, queued_before=now - REDELIVERY_GRACE, limit=batch_size, after=after
            )
            if not candidates:
                break
            after = (candidates[-1].created_at, candidates[-1].id)
            try:
                statuses = self.transport.job_statuses([wf.job_id for wf in candidates if wf.job_id])
            except QueueUnavailable:
                report["undeliverable"].extend(wf.id for wf in candidates)
                break
            started_before = now - timedelta(seconds=self.stale_after)
            for wf in candidates:
                status = statuses.get(wf.job_id) if wf.job_id else None
                if status in LIVE_JOB_STATUSES and not (
                    status == b"started" and wf.updated_at < started_before
                ):
                    continue  # waiting in the queue, or being picked up right now
                why = "retry due" if wf.job_id is None else f"job {'never claimed' if status else 'missing'}"
                changes = {"job_id": new_job_id(wf.id), "run_after": None}
                new = self._change(
                    wf, S.QUEUED, changes, detail=f"redelivered: {why}", expected_job_id=wf.job_id
                )
                if new is None:
                    continue
                try:
                    self._deliver(new)
                except QueueUnavailable:
                    report["undeliverable"].append(new.id)
                    continue
                report["redelivered"].append(new.id)
            if len(candidates) < batch_size:
                break
        result = ReconcileReport(**report)
        if result.total:
            log.info("reconcile: %s", result.to_dict())
        return result
