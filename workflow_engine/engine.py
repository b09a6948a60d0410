"""WorkflowEngine: the one object an app holds.

It owns a store (the source of truth) and a transport (RQ, which only moves
work). Every status change goes through :meth:`WorkflowEngine._change`,
which checks the transition table, stamps the fields and has the store
apply it with a compare-and-set and record its event.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import redis
import rq

from . import analytics, approval, config, recovery
from .errors import (
    ConfigurationError,
    InvalidInput,
    InvalidTransition,
    QueueUnavailable,
    UnknownWorkflowType,
    WorkflowNotFound,
)
from .handlers import (
    MAX_RETRIES,
    HandlerFunc,
    HandlerSpec,
    async_handler_refused,
    check_id,
    check_new_id,
    check_text,
    import_handler,
    is_async_handler,
    path_of,
    storable_id,
    validate_type_id,
)
from .models import (
    Council,
    ReconcileReport,
    Tally,
    Workflow,
    WorkflowEvent,
    load_json,
    log_extra,
    storable_text,
    to_json,
    utcnow,
)
from .status import TERMINAL, WorkflowStatus, can_transition
from .stores import Store, open_store
from .stores.base import ANY_JOB, Change, NewEvent
from .stores.urls import parse_database_url, shown
from .transport import Transport, connect, new_job_id

log = logging.getLogger("workflow_engine")
S = WorkflowStatus
F = TypeVar("F", bound=Callable[[Workflow], Any])
Listener = Callable[[Workflow, "WorkflowStatus | None"], None]

#: Engines alive in this process, by key, so an in-process job can find the engine that enqueued it.
_ENGINES: weakref.WeakValueDictionary[str, WorkflowEngine] = weakref.WeakValueDictionary()
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


def new_workflow_id() -> str:
    """A new workflow's id: a random UUID (version 4) as 32 hex characters, ``uuid4().hex``
    without the ``UUID`` object around it, which cost a create four times as much."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return raw.hex()


def _check_count(name: str, value: object) -> None:
    """How many rows a query takes at a time: an integer from 1 to 10,000."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise InvalidInput(f"{name} must be an integer from 1 to 10000, got {value!r}")


def _check_redis_connection(connection: Any) -> None:
    """A connection the engine can use: a redis-py client (or fakeredis) that returns bytes."""
    if not all(callable(getattr(connection, name, None)) for name in ("pipeline", "hget", "get_encoder")):
        raise InvalidInput(
            "redis_connection must be a redis.Redis client (or a fakeredis one), "
            f"got {type(connection).__name__}; pass a URL as redis_url instead"
        )
    if connection.get_encoder().decode_responses:
        raise ConfigurationError(
            "the Redis connection decodes responses (decode_responses=True, in redis_connection "
            "or in the URL), which RQ cannot use: its jobs are pickled bytes"
        )


def _same_database(a: str, b: str) -> bool:
    """Whether two database URLs name one database: a SQLite file by its absolute path."""
    first, second = parse_database_url(a), parse_database_url(b)
    if first.backend == second.backend == "sqlite" and ":memory:" not in (first.target, second.target):
        return os.path.abspath(first.target) == os.path.abspath(second.target)
    return first == second


class WorkflowEngine:
    """Durable workflows: a database row per workflow, RQ to run them.

    >>> engine = WorkflowEngine(database_url="sqlite:///:memory:", redis_url="fakeredis://", is_async=False)

    ``is_async=False`` with ``fakeredis://`` is the in-process mode:
    ``enqueue_execution`` runs the workflow to its end before it returns.
    """

    def __init__(
        self,
        *,
        database_url: str | None = None,
        redis_url: str = config.DEFAULT_REDIS_URL,
        queue_name: str = config.DEFAULT_QUEUE,
        is_async: bool = True,
        heartbeat_interval: float = config.DEFAULT_HEARTBEAT_INTERVAL,
        stale_after: float = config.DEFAULT_STALE_AFTER,
        store: Store | None = None,
        redis_connection: redis.Redis | None = None,
    ) -> None:
        if not isinstance(queue_name, str) or not queue_name.strip():
            raise InvalidInput(f"queue_name must be a non-empty string, got {queue_name!r}")
        if config.unclean(queue_name):  # "workflows\r" is a queue no worker listens on
            raise InvalidInput(
                "queue_name must not have whitespace around it or control characters in it, "
                f"got {queue_name!r}"
            )
        if not isinstance(is_async, bool):
            raise InvalidInput(f"is_async must be true or false, got {is_async!r}")
        config.check_timing(heartbeat_interval, stale_after)
        if store is not None and not isinstance(store, Store):
            raise InvalidInput(
                f"store must be a workflow_engine store (from stores.open_store), got {type(store).__name__}"
            )
        if store is not None and database_url is not None and not _same_database(database_url, store.url):
            raise InvalidInput(
                f"database_url {shown(database_url)!r} is not the store's {shown(store.url)!r}; "
                "pass one of them"
            )
        if store is not None:
            database_url = store.url
        #: The database's URL: the store's own when a store is given.
        self.database_url = config.DEFAULT_DATABASE_URL if database_url is None else database_url
        self.redis_url = redis_url
        self.queue_name = queue_name
        self.is_async = is_async
        self.heartbeat_interval = float(heartbeat_interval)
        self.stale_after = float(stale_after)
        self.store: Store = store if store is not None else open_store(self.database_url)
        connection = redis_connection if redis_connection is not None else connect(redis_url)
        _check_redis_connection(connection)  # given, or made from a URL (?decode_responses=true)
        # Only this process can run the jobs: with fakeredis, or in sync mode (RQ runs them inline).
        in_process = not is_async or type(connection).__module__.startswith("fakeredis")
        self.transport = Transport(connection, queue_name, is_async=is_async, in_process=in_process)
        # This engine's own registrations; then, for a type it has none for, those of the engines
        # it shares (share_handlers), looked at only then: a dict lookup on every create and job.
        self._handlers: dict[str, HandlerSpec] = {}
        self._shared: list[dict[str, HandlerSpec]] = []
        #: Set on a worker's engine: the app's engine it shares handlers with, by name, or why
        #: that could not be loaded (said when a handler starts a workflow of a type it lacks).
        self._app_name: str | None = None
        self._app_error: str | None = None
        self._listeners: list[Listener] = []
        self._recent: dict[str, Workflow] = {}
        self._recent_lock = threading.Lock()
        self.key = uuid.uuid4().hex
        _ENGINES[self.key] = self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> WorkflowEngine:
        """An engine configured from ``WORKFLOW_ENGINE_*`` variables (see :data:`config.ENVIRONMENT`)."""
        settings = config.Settings.from_env(environ)
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {
            "database_url": settings.database_url,
            "redis_url": settings.redis_url,
            "queue_name": settings.queue_name,
            "heartbeat_interval": settings.heartbeat_interval,
            "stale_after": settings.stale_after,
        }
        if overrides.get("store") is not None and not (env.get("WORKFLOW_ENGINE_DATABASE_URL") or "").strip():
            del kwargs["database_url"]  # the store's own, not the default the variable would give
        kwargs.update(overrides)
        return cls(**kwargs)

    def __repr__(self) -> str:
        mode = "async" if self.is_async else "in-process"
        return f"<WorkflowEngine {shown(self.database_url)!r} queue={self.queue_name!r} {mode}>"

    def close(self) -> None:
        self.store.close()

    def lease_from(self, now: datetime) -> datetime:
        """Until when a heartbeat at ``now`` keeps a running workflow from being taken for lost."""
        return now + timedelta(seconds=self.stale_after)

    @property
    def redis(self) -> redis.Redis:
        """The Redis connection RQ uses."""
        return self.transport.connection

    @property
    def queue(self) -> rq.Queue:
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
            module, _, attr = handler.partition(":") if ":" in handler else handler.rpartition(".")
            # An empty part ('a..b:c'), whitespace or a control character ('a:b c', a line break)
            # could never be imported, and would fail every workflow of the type instead of this call.
            # (A module file's name need not be an identifier: import_module takes 'my-handlers'.)
            parts = (*module.split("."), *attr.split("."))
            if not all(part.isprintable() and part and not any(c.isspace() for c in part) for part in parts):
                raise InvalidInput(
                    f"handler path {handler!r} must look like 'package.module:function' "
                    "(dotted names without spaces)"
                )
            path, func = handler, None
        elif callable(handler):
            path, func = path_of(handler), handler
            if is_async_handler(handler):
                raise InvalidInput(async_handler_refused(path, workflow_type_id))
            if path.startswith("__main__:") and self.is_async:
                raise InvalidInput(
                    f"handler {path!r} is defined in __main__, which an rq worker cannot import; "
                    "move it into a module"
                )
        else:
            raise InvalidInput(f"handler must be a function or an import path, got {type(handler).__name__}")
        spec = HandlerSpec(workflow_type_id, path, func, max_retries, retry_backoff, timeout)
        check_new_id("workflow_type_id", workflow_type_id)
        self._handlers[workflow_type_id] = spec
        return spec

    def handler_for(self, workflow_type_id: str) -> HandlerSpec | None:
        spec = self._handlers.get(workflow_type_id)
        if spec is None and self._shared:
            for shared in self._shared:
                spec = shared.get(workflow_type_id)
                if spec is not None:
                    break
        return spec

    def handler_types(self) -> list[str]:
        """The workflow types this engine has a handler registered for (shared ones included)."""
        return list(dict.fromkeys([*self._handlers, *(t for shared in self._shared for t in shared)]))

    def share_handlers(self, other: WorkflowEngine) -> None:
        """Use every handler registered on ``other`` too, now and later, with its options; this
        engine's own registrations come first. A worker's engine shares the app's this way."""
        if not isinstance(other, WorkflowEngine):
            raise InvalidInput(f"share_handlers needs a WorkflowEngine, got {type(other).__name__}")
        own = other._handlers  # not what other shares in turn
        if other is not self and not any(m is own for m in self._shared):
            self._shared.append(own)

    def _using(self, transport: Transport) -> WorkflowEngine:
        """This engine (its store, handlers and listeners), putting jobs on ``transport``: a
        worker's job's own connection and queue, which the environment's may not be."""
        if transport is self.transport:
            return self
        view = copy.copy(self)
        view.transport, view.queue_name = transport, transport.queue_name
        return view

    def _no_handler(self, workflow_type_id: str) -> UnknownWorkflowType:
        from .execution import in_handler

        detail = None
        if not in_handler():
            pass
        elif self.transport.in_process:  # a test's handler: @engine.handler registered on the app's engine
            detail = "on the engine running this handler: in a test, register it on the test's engine too"
        elif self._app_error is not None:  # a handler starting a workflow, in a worker
            detail = f"WORKFLOW_ENGINE_APP could not be loaded: {self._app_error}"
        elif self._app_name is not None:
            known = ", ".join(sorted(self.handler_types())) or "none"
            detail = f"nor has the app's engine {self._app_name} (handlers: {known})"
        elif config.app_name():  # set, but this is not the engine that took it: not current_engine()'s
            detail = (
                "this engine has not taken the handlers of WORKFLOW_ENGINE_APP's engine: in a worker, "
                "the engine current_engine() returns has them"
            )
        else:
            detail = (
                "WORKFLOW_ENGINE_APP is not set: in a worker, current_engine() has the handlers of the "
                "app's engine it names as package.module:engine (or workflow-engine worker --app)"
            )
        return UnknownWorkflowType(workflow_type_id, detail)

    def resolve_handler(self, path: str, workflow_type_id: str) -> HandlerFunc:
        """The function behind ``path``: a registered one if this engine has it, else imported."""
        spec = self.handler_for(workflow_type_id)
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
        enqueue: bool = False,
    ) -> str:
        """Record a new ``pending`` workflow and return its id.

        With ``enqueue=True`` it is recorded ``queued`` instead and its job put on
        the queue: what :meth:`enqueue_execution` would do next, with both events
        in the same transaction (one durable commit instead of two). If Redis is
        down, QueueUnavailable names the workflow in ``workflow_ids``: it stays
        queued, and :meth:`reconcile` delivers it.

        With ``requires_approval=True`` it starts ``awaiting_approval`` instead, and
        runs only once its council (``assigned_council_id``, set up with
        :meth:`configure_council`) approves it by :meth:`vote`.

        With ``idempotency_key``, a second call with the same key returns the
        first workflow's id and changes nothing (it enqueues nothing either).
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
        [workflow_id] = self._create([wf], enqueue=enqueue)
        return workflow_id

    def create_workflows(self, workflows: Iterable[Mapping[str, Any]], *, enqueue: bool = False) -> list[str]:
        """Create many workflows in one transaction; return their ids in order.

        Each mapping holds ``create_workflow``'s keyword arguments. Every one is
        validated before anything is written: one bad item writes nothing. With
        ``enqueue=True`` they are recorded ``queued`` in that transaction and their
        jobs go to Redis in one pipeline, as :meth:`create_workflow` does with it.
        """
        if isinstance(workflows, (str, bytes, Mapping)) or not isinstance(workflows, Iterable):
            raise InvalidInput(f"workflows must be a list of mappings, got {type(workflows).__name__}")
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
        return self._create(built, enqueue=enqueue)

    def _create(self, built: Sequence[Workflow], *, enqueue: bool) -> list[str]:
        """Insert validated new workflows; with ``enqueue``, already queued, then deliver them."""
        if not isinstance(enqueue, bool):
            raise InvalidInput(f"enqueue must be true or false, got {enqueue!r}")
        rows, history = list(built), None
        if enqueue:
            history = []
            for i, wf in enumerate(built):
                if wf.status is not S.PENDING:
                    raise InvalidInput(
                        "a workflow that requires approval cannot be enqueued when it is created: "
                        "its council's approval queues it"
                    )
                change = self._queue_change(wf, detail="enqueued")  # UnknownWorkflowType if no handler
                rows[i] = wf.model_copy(update=change.changes)
                history.append((NewEvent(None, S.PENDING), change.event or NewEvent(S.PENDING, S.QUEUED)))
        ids, queued = [], []
        for wf, (stored, created) in zip(built, self.store.insert(rows, history), strict=True):
            ids.append(stored.id)
            if not created:
                continue
            log.info("workflow created", extra=log_extra(stored))
            self.notify(wf, None)
            if enqueue:
                log.info("workflow enqueued", extra=log_extra(stored))
                self.notify(stored, S.PENDING)
                queued.append(stored)
            else:
                self._remember(stored)
        self._deliver(*queued)
        return ids

    def _remember(self, wf: Workflow) -> None:
        """Keep a just-created workflow, so that enqueueing it next needs no read.

        Only a hint: enqueueing still compare-and-sets on its status and job id.
        """
        with self._recent_lock:  # a web app's threads share one engine
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
        spec = self.handler_for(workflow_type_id) if isinstance(workflow_type_id, str) else None
        if spec is None or type(workflow_type_id) is not str:  # a registered id was checked then
            check_new_id("workflow_type_id", validate_type_id(workflow_type_id))
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
            if value is not None:  # an idempotency key is never printed: any text but NUL will do
                (check_id if name == "idempotency_key" else check_new_id)(name, value)
        if idempotency_key is not None and not idempotency_key:
            raise InvalidInput("idempotency_key must not be empty")
        # Round-trip through JSON so that what is stored is exactly what a reader gets back
        # (no inputs need none: {} is what a reader gets back).
        inputs_value = load_json(to_json(dict(inputs), "inputs")) if inputs else {}
        savings_value = (
            None
            if calculated_savings is None
            else load_json(to_json(dict(calculated_savings), "calculated_savings"))
        )
        requires_approval = False if requires_approval is None else requires_approval
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
            if spec is None:
                raise UnknownWorkflowType(workflow_type_id, "a workflow awaiting approval must be runnable")
        now = utcnow()
        return Workflow(
            id=new_workflow_id(),
            workflow_type_id=workflow_type_id,
            status=S.AWAITING_APPROVAL if requires_approval else S.PENDING,
            created_by_agent=created_by_agent,
            inputs=inputs_value,
            calculated_savings=savings_value,
            assigned_council_id=assigned_council_id,
            idempotency_key=idempotency_key,
            handler=spec.path if spec else None,
            max_retries=spec.max_retries if spec else 0,
            max_attempts=1 + spec.max_retries if spec else 1,  # as an enqueue now would set it
            retry_backoff=spec.retry_backoff if spec else 0.0,
            timeout=spec.timeout if spec else None,
            created_at=now,
            updated_at=now,
        )

    def get_workflow(self, workflow_id: str) -> Workflow:
        """The workflow with that id; WorkflowNotFound if there is none."""
        if not storable_id(workflow_id):  # not a string, or text no store could hold: no such workflow
            raise WorkflowNotFound(workflow_id)
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
        _check_count("limit", limit)
        filters: dict[str, str] = {}
        if status is not None:
            filters["status"] = WorkflowStatus.parse(status).value
        for name, value in (("workflow_type_id", workflow_type_id), ("created_by_agent", created_by_agent)):
            if value is not None:
                if not isinstance(value, str):
                    raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
                filters[name] = check_id(name, value)
        if before is not None and not isinstance(before, Workflow):
            raise InvalidInput(f"before must be the last Workflow of a page, got {type(before).__name__}")
        cursor = (before.created_at, before.id) if before is not None else None
        return self.store.find(limit=limit, filters=filters, cursor=cursor)

    def get_events(self, workflow_id: str) -> list[WorkflowEvent]:
        """The audit trail, oldest first: one event per status change, plus notes such as redeliveries."""
        events = self.store.events(workflow_id) if storable_id(workflow_id) else []
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
        cancel_not_requested: bool = False,
        apply: Callable[[Change], Workflow | None] | None = None,
    ) -> Workflow | None:
        """Move ``wf`` to ``to`` if it is still as read. None if another process changed it first.

        ``apply``: what applies the change, if not ``store.apply`` (a deciding vote's guard)."""
        change = self._transition(
            wf,
            to,
            changes,
            detail=detail,
            expected_job_id=expected_job_id,
            lease_expired_at=lease_expired_at,
            event=event,
            cancel_not_requested=cancel_not_requested,
        )
        self._recent.pop(wf.id, None)  # no longer as created: a later enqueue must read it
        new = apply(change) if apply is not None else self.store.apply([change])[0]
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
        cancel_not_requested: bool = False,
        expected_attempts: int | None = None,
    ) -> Change:
        """The compare-and-set that moves ``wf`` to ``to``: checked against the table, stamped."""
        if not can_transition(wf.status, to):
            raise InvalidTransition(wf.id, wf.status.value, to.value)
        fields = dict(changes)
        for text in ("error", "traceback"):  # an exception's own text may hold a NUL or a lone surrogate
            if fields.get(text):
                fields[text] = storable_text(fields[text])
        fields["status"] = to
        fields.setdefault("updated_at", utcnow())
        if to is S.QUEUED:  # when the wait in the queue started, for its age (stats, health)
            if wf.status is not S.QUEUED:
                fields.setdefault("queued_at", fields["updated_at"])
            elif wf.run_after is not None and fields.get("run_after", wf.run_after) is None:
                fields.setdefault("queued_at", wf.run_after)  # a retry's delay over: due since then
            # Otherwise a redelivery: the workflow has been waiting all along.
        if "finished_at" in fields:  # the duration is stamped once, with the finish
            finished, started = fields["finished_at"], fields.get("started_at", wf.started_at)
            fields["duration_s"] = (finished - started).total_seconds() if finished and started else None
        return Change(
            wf.id,
            wf.status,
            fields,
            NewEvent(wf.status, to, storable_text(detail)) if event else None,
            expected_job_id,
            lease_expired_at,
            cancel_not_requested,
            expected_attempts,
        )

    # -- listeners ---------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(workflow, from_status)`` after every status change this engine makes.

        ``from_status`` is None for a new workflow. Listeners run in the process that
        made the change (a web process, a worker, a work-horse); an exception in one is
        logged and never fails the change. Metrics use this.
        """
        if not callable(listener):
            raise InvalidInput(f"a listener must be callable, got {type(listener).__name__}")
        self._listeners.append(listener)

    def notify(self, workflow: Workflow, from_status: WorkflowStatus | None) -> None:
        for listener in self._listeners:
            try:
                listener(workflow, from_status)
            except Exception:
                log.exception("workflow listener %r failed", listener, extra=log_extra(workflow))

    def enqueue_execution(self, workflow_id: str) -> None:
        """Mark the workflow ``queued`` in the database, then put its job on the RQ queue.

        A queued workflow whose job is still in Redis is left alone, so calling
        this again never runs a workflow twice. Raises UnknownWorkflowType if no
        handler is known for its type, InvalidTransition if it is running or
        finished (use :meth:`requeue` for failed or cancelled ones), and
        QueueUnavailable if Redis is down: the workflow then stays queued and
        :meth:`reconcile` delivers it later.
        """
        if not storable_id(workflow_id):  # not a string (a list would not even hash), or no stored id
            raise WorkflowNotFound(workflow_id)
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
                }.get(
                    wf.status,
                    "use engine.requeue() (or `workflow-engine requeue <id>`) to run a failed or "
                    "cancelled workflow again",
                )
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
            if wf.status is S.CANCELLED and self._cancelled_before_approval(wf):
                raise InvalidTransition(
                    wf.id,
                    wf.status.value,
                    S.QUEUED.value,
                    "it was cancelled while awaiting its council's approval and was never approved, "
                    "and a council votes only on a workflow awaiting approval: it can never run; "
                    "create a new workflow to ask the council again",
                )
            if self._queue(wf, detail="requeued", reset=True):
                return self.get_workflow(workflow_id)
        raise InvalidTransition(workflow_id, None, S.QUEUED.value, "it kept changing while being requeued")

    def _cancelled_before_approval(self, wf: Workflow) -> bool:
        """Whether ``wf`` awaited its council's approval and was never approved: requeueing it
        would run it without the vote it was created to wait for."""
        events = self.store.events(wf.id)
        awaited = any(e.to_status is S.AWAITING_APPROVAL for e in events)
        approved = any(e.from_status is S.AWAITING_APPROVAL and e.to_status is S.QUEUED for e in events)
        return awaited and not approved

    def _queue(
        self,
        wf: Workflow,
        *,
        detail: str,
        reset: bool = False,
        apply: Callable[[Change], Workflow | None] | None = None,
    ) -> bool:
        """pending/failed/cancelled/queued -> queued with a new job, then deliver. False if we lost a race.

        ``apply``: what applies the change, if not ``store.apply`` (a deciding vote's guard)."""
        self._recent.pop(wf.id, None)  # no longer as created: a later enqueue must read it
        change = self._queue_change(wf, detail=detail, reset=reset)
        queued = apply(change) if apply is not None else self.store.apply([change])[0]
        if queued is None:
            return False
        self.notify(queued, wf.status)
        log.info("workflow %s", detail, extra=log_extra(queued))
        self._deliver(queued)
        return True

    def _queue_change(self, wf: Workflow, *, detail: str, reset: bool = False) -> Change:
        spec = self.handler_for(wf.workflow_type_id)
        if spec is None and wf.handler is None:
            raise self._no_handler(wf.workflow_type_id)
        changes: dict[str, Any] = {"job_id": new_job_id(wf.id), "run_after": None}
        if wf.status is not S.QUEUED or reset:
            policy = spec or HandlerSpec(  # the recorded policy, within today's bounds
                wf.workflow_type_id,
                wf.handler or "",
                None,
                min(wf.max_retries, MAX_RETRIES),
                min(wf.retry_backoff, config.MAX_SECONDS),
                None if wf.timeout is None else min(wf.timeout, config.MAX_SECONDS),
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
        # The attempts too: a retry waiting out its backoff has no job before an attempt and after it.
        return self._transition(
            wf, S.QUEUED, changes, detail=detail, expected_job_id=wf.job_id, expected_attempts=wf.attempts
        )

    def enqueue_many(self, workflow_ids: Sequence[str]) -> None:
        """Enqueue many pending workflows: one database transaction and one Redis pipeline.

        Every id is checked first (WorkflowNotFound, UnknownWorkflowType, InvalidTransition),
        so a bad one writes nothing. Already queued workflows are left alone. In sync mode
        all are queued first, then each runs before this returns, in order.
        """
        if isinstance(workflow_ids, (str, bytes)) or not isinstance(workflow_ids, Iterable):
            got = type(workflow_ids).__name__
            raise InvalidInput(f"workflow_ids must be a list of workflow ids, got {got}")
        ids = list(workflow_ids)
        for wid in ids:
            if not isinstance(wid, str):
                raise InvalidInput(f"workflow ids must be strings, got {type(wid).__name__}")
            if not storable_id(wid):
                raise WorkflowNotFound(wid)
        ids = list(dict.fromkeys(ids))
        # Workflows this engine just created need no read: the compare-and-set checks them anyway.
        found = {wid: wf for wid in ids if (wf := self._recent.pop(wid, None)) is not None}
        missing = [wid for wid in ids if wid not in found]
        if missing:
            found.update(self.store.get_many(missing))
        for wid in ids:
            wf = found.get(wid)
            if wf is None:
                raise WorkflowNotFound(wid)
            if wf.status not in (S.PENDING, S.QUEUED):
                raise InvalidTransition(
                    wid, wf.status.value, S.QUEUED.value, "enqueue_many takes pending workflows"
                )
            if self.handler_for(wf.workflow_type_id) is None and wf.handler is None:
                raise self._no_handler(wf.workflow_type_id)
        pending = [found[wid] for wid in ids if found[wid].status is S.PENDING]
        # In-process too: all are queued in one transaction first, then run one by one, as workers would.
        changes = [self._queue_change(wf, detail="enqueued") for wf in pending]
        queued = [new for new in self.store.apply(changes) if new is not None]
        for new in queued:
            self.notify(new, S.PENDING)
        self._deliver(*queued)

    def _deliver(self, *workflows: Workflow, transport: Transport | None = None) -> None:
        """Put each workflow's job (its ``job_id``) on the queue, naming this engine when only
        this process can run it."""
        transport = transport or self.transport
        try:
            transport.deliver(workflows, engine_key=self.key if transport.in_process else None)
        except QueueUnavailable as exc:
            # The log said "workflow enqueued" (recorded queued, in the database): say what
            # became of the job too, for whoever reads the log and not the exception.
            log.warning(
                "%d workflow(s) recorded queued, but not put on the queue: %s",
                len(workflows),
                exc,
                extra={"workflow_ids": list(exc.workflow_ids)},
            )
            raise

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
        reason = storable_text(check_text("reason", reason))
        detail = f"cancelled: {reason}" if reason else "cancelled"
        for _ in range(_RACE_RETRIES):
            wf = self.get_workflow(workflow_id)
            if wf.status in (S.PENDING, S.QUEUED, S.AWAITING_APPROVAL):
                now = utcnow()
                done = self._change(wf, S.CANCELLED, {"finished_at": now, "updated_at": now}, detail=detail)
                if done is not None:
                    log.info("workflow cancelled", extra=log_extra(done))
                    return done
            elif wf.status is S.RUNNING:
                if wf.cancel_requested_at is not None:
                    if wf.job_id:  # asked again: the first stop command may have been lost
                        self.transport.stop(wf.job_id, wf.worker)
                    return wf
                now = utcnow()
                # Only if no cancel was requested yet: a request is recorded once, even when a
                # retry after a lost connection meets its own first attempt, landed meanwhile.
                request = Change(
                    wf.id,
                    S.RUNNING,
                    {"cancel_requested_at": now, "updated_at": now},
                    NewEvent(S.RUNNING, S.RUNNING, f"cancel requested{': ' + reason if reason else ''}"),
                    expected_job_id=wf.job_id,
                    cancel_not_requested=True,
                )
                [marked] = self.store.apply([request])
                if marked is not None:
                    if marked.job_id:
                        self.transport.stop(marked.job_id, marked.worker)
                    log.info("workflow cancel requested", extra=log_extra(marked))
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
        check_text("detail", detail)
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
            if wf.status is S.AWAITING_APPROVAL:  # its council decides (a cancel was taken above)
                raise InvalidTransition(
                    wf.id,
                    wf.status.value,
                    target.value,
                    "it awaits its council's approval: only the council's votes move it on, or a cancel",
                )
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
    def stats(self, since: datetime | None = None) -> analytics.Stats:
        """Analytics computed in SQL, as a JSON-safe dict (see :func:`analytics.compute_stats`).

        ``total``, ``by_status`` (every status, zeros included), ``by_type`` (counts by
        status, ``success_rate``, ``duration_p50_s``, ``duration_p95_s``) and
        ``calculated_savings`` (each numeric field summed) cover the workflows created
        since ``since`` (all when None). ``queue_depth`` (from Redis; None when Redis is
        down), ``oldest_queued_age_s``, ``running`` and ``throughput_per_min`` (workflows
        finished over the last 15 minutes) describe the present.
        """
        return analytics.compute_stats(self, since)

    # -- council approval --------------------------------------------------
    def configure_council(self, council_id: str, *, members: Sequence[str], quorum: int) -> Council:
        """Create or replace a council.

        ``quorum`` approvals approve a workflow; ``quorum`` rejections reject it.
        """
        return approval.configure_council(self, council_id, members=members, quorum=quorum)

    def get_council(self, council_id: str) -> Council | None:
        return self.store.get_council(council_id) if storable_id(council_id) else None

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
        return approval.vote(
            self, workflow_id, voter_id=voter_id, approve=approve, comment=comment, change=change
        )

    def tally(self, workflow_id: str) -> Tally:
        """Where the vote on a workflow stands, without voting. InvalidVote if it has no council."""
        return approval.tally(self, workflow_id)

    # -- failures and recovery ---------------------------------------------
    def reconcile(self, *, batch_size: int = 500) -> ReconcileReport:
        """Recover from whatever Redis forgot and whatever workers died. Safe to run in many processes.

        - a ``running`` workflow whose lease expired (its worker stopped heartbeating for the
          worker's ``stale_after``) counts as a failed attempt: it is requeued at once, or
          ``failed`` when it has no attempts left (``cancelled`` if a cancel was requested);
        - a ``queued`` workflow whose RQ job is gone (Redis flushed or restarted), or was
          taken by a worker that never claimed it, is delivered again;
        - a retry whose delay has passed is delivered.

        Every change is a compare-and-set, so two reconcilers never both act on one workflow;
        on PostgreSQL they also take turns under an advisory lock (a pass that finds the lock
        taken does nothing and reports nothing). ``batch_size`` (1 to 10,000) is how many
        workflows each query takes at a time.
        """
        _check_count("batch_size", batch_size)
        with self.store.exclusive("workflow_engine.reconcile") as mine:
            if not mine:
                return ReconcileReport()
            return recovery.reconcile(self, batch_size)
