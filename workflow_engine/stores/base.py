"""The storage contract, and the SQL written once for every store.

:class:`Store` is the narrow contract the engine uses: persist a workflow,
read it, and change it with a compare-and-set. It holds no workflow logic:
the engine decides every transition and stamps every field, and a store only
writes what it is given if the row is still in the state the engine saw.

:class:`SQLStore` implements the contract once over named SQL
(:mod:`.queries`). A concrete store supplies a connection, a transaction,
and how its driver encodes JSON and timestamps.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from ..errors import ConfigurationError, StoreError, StoreUnavailable
from ..models import Council, Vote, Workflow, WorkflowEvent, utcnow
from ..status import WorkflowStatus
from . import queries as q
from .urls import shown

T = TypeVar("T")
#: The time columns in table order: a new workflow's equal stamps come one after another.
_TIME_COLUMNS_IN_ORDER = tuple(c for c in q.WORKFLOW_COLUMNS if c in q.TIME_COLUMNS)

#: Pass as ``expected_job_id`` to put no condition on the job id.
ANY_JOB: Any = False


@dataclass(frozen=True)
class NewEvent:
    """An event to record in the same transaction as a change."""

    from_status: WorkflowStatus | None
    to_status: WorkflowStatus
    detail: str | None = None


@dataclass(frozen=True)
class Change:
    """One compare-and-set: apply ``changes`` (and record ``event``) only if the row is still as expected."""

    workflow_id: str
    expected_status: WorkflowStatus
    changes: Mapping[str, Any]
    event: NewEvent | None
    #: ANY_JOB for no condition, None for "has no job", or the job id it must have.
    expected_job_id: str | bool | None = False
    #: Only if the workflow's lease expired before this time.
    lease_expired_at: datetime | None = None
    #: Only if nobody asked to cancel it: a retry or a failure decided on a row read before a
    #: cancel request must not overwrite that request.
    cancel_not_requested: bool = False
    #: Only if its attempts are still this many. Every claim counts one, so it tells a row read
    #: before an attempt from the same row after it, when status and job id are alike again (a
    #: retry waiting out its backoff, with no job, before and after an attempt that failed).
    expected_attempts: int | None = None


@dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat found: whether this worker still owns the workflow, and whether a cancel was asked."""

    owned: bool
    cancel_requested: bool


@dataclass(frozen=True)
class GaugeRows:
    """The present, for gauges read at every scrape: none of ``stats()``'s durations or savings."""

    counts: list[tuple[str, str, int]]  # (workflow_type_id, status, count), every workflow
    oldest_queued: datetime | None
    stale: int  # running workflows whose lease expired


@dataclass(frozen=True)
class StatsRows:
    """Aggregates computed in SQL; the engine shapes them into ``engine.stats()``."""

    counts: list[tuple[str, str, int]]  # (workflow_type_id, status, count)
    durations: dict[str, tuple[float, float]]  # workflow_type_id -> (p50, p95) in seconds
    oldest_queued: datetime | None
    running: int
    finished_recently: int
    savings: dict[str, float]


class Store(abc.ABC):
    """What the engine needs from a database. Every method is atomic."""

    url: str

    # -- lifecycle --------------------------------------------------------
    @abc.abstractmethod
    def migrate(self) -> int:
        """Apply pending numbered migrations under a lock; return the schema version."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. The store reconnects if used again."""

    # -- writing ----------------------------------------------------------
    @abc.abstractmethod
    def insert(
        self, workflows: Sequence[Workflow], history: Sequence[Sequence[NewEvent]] | None = None
    ) -> list[tuple[Workflow, bool]]:
        """Insert workflows, each with its events, in one transaction.

        ``history[i]`` holds the events recorded with ``workflows[i]``; by default
        one, its creation (None to its status). A workflow whose ``idempotency_key``
        is already taken is not inserted: the existing workflow comes back instead,
        with ``False``, and no event is recorded for it.
        """

    @abc.abstractmethod
    def apply(self, changes: Sequence[Change]) -> list[Workflow | None]:
        """Apply every compare-and-set in one transaction; each result is the updated workflow,
        or None where the row was no longer as expected (that change alone is skipped).

        Each change must set ``updated_at``; its event is stamped with it.
        """

    def compare_and_set(
        self,
        workflow_id: str,
        *,
        expected_status: WorkflowStatus,
        changes: Mapping[str, Any],
        event: NewEvent | None,
        expected_job_id: str | bool | None = ANY_JOB,
        lease_expired_at: datetime | None = None,
    ) -> Workflow | None:
        """One :class:`Change`: the updated workflow, or None if the row was not as expected."""
        change = Change(workflow_id, expected_status, changes, event, expected_job_id, lease_expired_at)
        return self.apply([change])[0]

    @abc.abstractmethod
    def claim(
        self, workflow_id: str, *, job_id: str, worker: str | None, now: datetime, lease_until: datetime
    ) -> Workflow | None:
        """queued -> running for the job that carries the workflow; count the attempt. None if lost.

        ``now`` and ``lease_until`` are the caller's; a store that waited for its lock for more than
        ``LEASE_WAIT_SLACK`` seconds moves both forward by that wait (so does :meth:`heartbeat`)."""

    @abc.abstractmethod
    def heartbeat(self, workflow_id: str, *, job_id: str, now: datetime, lease_until: datetime) -> Heartbeat:
        """Stamp ``heartbeat_at`` and extend the lease if ``job_id`` still runs the workflow."""

    @abc.abstractmethod
    def gauges(self, *, now: datetime) -> GaugeRows:
        """Counts by type and status, the oldest queued, and the running workflows whose lease
        expired before ``now``: what a metrics scrape reads, a fraction of :meth:`stats`."""

    @abc.abstractmethod
    def stats(self, *, since: datetime | None, recent: datetime) -> StatsRows:
        """Counts by type and status, durations, savings (for workflows created since ``since``),
        and the present: running, oldest queued, finished after ``recent``."""

    # -- councils ---------------------------------------------------------
    @abc.abstractmethod
    def save_council(self, council: Council) -> Council:
        """Create or replace a council."""

    @abc.abstractmethod
    def get_council(self, council_id: str) -> Council | None: ...

    @abc.abstractmethod
    def record_vote(self, vote: Vote, *, change: bool, detail: str, changed_detail: str | None = None) -> str:
        """Record ``vote`` and its event in one transaction, only while the workflow awaits approval.

        The event's detail is ``detail``, or ``changed_detail`` (when given) where ``change``
        replaced the voter's earlier vote.

        Returns ``"recorded"``, ``"duplicate"`` (the voter already voted and ``change`` is false)
        or the workflow's status when it is not awaiting approval (``"missing"`` if there is none).
        """

    @abc.abstractmethod
    def apply_if_voted(
        self, change: Change, *, members: Sequence[str], quorum: int, approve: bool
    ) -> Workflow | None:
        """:meth:`apply` for the vote that decides: ``change`` only if the votes of ``members`` for
        ``approve`` (approvals, or rejections) still reach ``quorum``, counted under the lock that
        :meth:`record_vote` takes, so that no vote changes between the count and the change.
        None if they no longer do, or if the row is no longer as expected."""

    @abc.abstractmethod
    def votes(self, workflow_id: str) -> list[Vote]: ...

    def exclusive(self, name: str) -> AbstractContextManager[bool]:
        """Try to take a lock named ``name`` across processes; yield whether it was taken.

        Reconcile uses it so that reconcilers on many machines take turns instead of
        racing. It is an optimisation: every change is a compare-and-set anyway. The
        default (SQLite, one machine) takes no lock.
        """
        return nullcontext(True)

    # -- reading ----------------------------------------------------------
    @abc.abstractmethod
    def get(self, workflow_id: str) -> Workflow | None: ...

    @abc.abstractmethod
    def get_many(self, workflow_ids: Sequence[str]) -> dict[str, Workflow]:
        """The workflows with these ids that exist, by id."""

    @abc.abstractmethod
    def find(
        self,
        *,
        limit: int,
        filters: Mapping[str, str],
        cursor: tuple[datetime, str] | None = None,
    ) -> list[Workflow]:
        """Newest first, filtered by equality on FILTER_COLUMNS, after ``cursor`` (created_at, id)."""

    @abc.abstractmethod
    def events(self, workflow_id: str) -> list[WorkflowEvent]: ...

    @abc.abstractmethod
    def stale_running(self, *, now: datetime, limit: int) -> list[Workflow]:
        """Running workflows whose lease expired before ``now``."""

    @abc.abstractmethod
    def deliverable_queued(
        self,
        *,
        now: datetime,
        queued_before: datetime,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[Workflow]:
        """Queued workflows with no job whose retry is due, and those queued before ``queued_before``;
        oldest first, after the (created_at, id) cursor ``after``."""


#: A claim or a heartbeat that waited longer than this, in seconds, for the store to let it write
#: (SQLite's writer lock, up to its busy timeout; a pool's connection; a migration's lock) runs its
#: lease from when it could write, not from when it was asked for: see :func:`_held_from`.
LEASE_WAIT_SLACK = 1.0


def _held_from(asked: float, now: datetime, lease_until: datetime) -> tuple[datetime, datetime]:
    """``now`` and ``lease_until`` as a claim or a heartbeat writes them, once it may write.

    The caller stamped them before the store call (``asked`` is ``time.monotonic()`` then). If the
    store waited more than ``LEASE_WAIT_SLACK`` for its lock, both move forward by that wait: a
    claim that waited 29 s for SQLite's writer lock would otherwise start running with 1 s of a
    30 s lease left, and a reconcile would take the live attempt for lost and run it again
    alongside. A shorter wait keeps the caller's exact stamps."""
    waited = time.monotonic() - asked
    if waited <= LEASE_WAIT_SLACK:
        return now, lease_until
    shift = timedelta(seconds=waited)
    return now + shift, lease_until + shift


def _lock_order(items: Sequence[T], key: Callable[[T], str]) -> list[int]:
    """The positions of ``items`` in the order their rows are locked: by key, so that two batches
    over the same rows lock them in the same order and never deadlock (PostgreSQL). Items with
    the same key keep their order: of two with one idempotency key, the first is the one stored."""
    if len(items) == 1:
        return [0]
    return sorted(range(len(items)), key=lambda i: (key(items[i]), i))


#: The claim's compare-and-set, as ``_changed`` takes it (a data-modifying CTE wraps it on PostgreSQL).
_CLAIM = q.CLAIM.strip()

_calls = threading.local()


class _StoreCall:
    """The context of :func:`store_call`: a class, not a generator, as it wraps every store call."""

    __slots__ = ()

    def __enter__(self) -> None:
        _calls.depth = getattr(_calls, "depth", 0) + 1

    def __exit__(self, *exc_info: object) -> None:
        _calls.depth -= 1
        if not _calls.depth:
            pending, _calls.pending = getattr(_calls, "pending", None), None
            if pending is not None:
                pending()


_STORE_CALL = _StoreCall()


def store_call() -> _StoreCall:
    """Mark a store call (a transaction, a migration) running in this thread.

    A handler's timeout is an exception raised from a signal handler, wherever the main thread
    is: inside a connection pool's bookkeeping it could leave a connection checked out for good
    (after a few dozen, no store call gets one). So while a store call runs, the timeout is
    handed to :func:`after_store_call`, and raised here once the outermost call has ended."""
    return _STORE_CALL


def in_store_call() -> bool:
    """Whether this thread is inside a store call (see :func:`store_call`)."""
    return bool(getattr(_calls, "depth", 0))


def after_store_call(action: Callable[[], None] | None) -> None:
    """Run ``action`` (which raises) when this thread's store call ends; None forgets it."""
    _calls.pending = action


class Tx(Protocol):
    """The one thing a SQLStore needs from a driver inside a transaction."""

    def fetch(self, sql: str, params: Mapping[str, Any], *, prepare: bool = True) -> list[dict[str, Any]]:
        """Run ``sql``. ``prepare=False`` asks a server-side database to plan it for these very
        values each time, instead of reusing a generic plan."""
        ...

    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        """Run ``sql``, which returns no rows (an INSERT without RETURNING); how many rows it wrote.
        Cheaper than ``fetch`` of a RETURNING clause: SQLite gathers those rows first."""
        ...

    def fetch_each(self, statements: Sequence[tuple[str, Mapping[str, Any]]]) -> list[list[dict[str, Any]]]:
        """Run each ``(sql, params)`` in order, as ``fetch`` would; each one's rows. A server-side
        database is sent them all before their replies are read: one round trip, not one each."""
        ...


class StoreBusy(StoreUnavailable):
    """The database answers, but what a call needs stayed in use for the whole of its wait
    (every connection of the store's pool; a table a migration changes): nothing was done, and
    a retry at once would only wait as long again, so ``_once_more`` does not retry it."""


class SQLStore(Store):
    """The contract written once over named SQL. Subclasses supply the driver."""

    dialect: str
    #: Retry a compare-and-set or a read once when the connection failed (e.g. a terminated backend).
    retry_unavailable: bool = False

    def _once_more(self, op: Callable[[], T], committed: Callable[[], T | None] | None = None) -> T:
        """Run ``op``; if the connection failed, try once more (when the store retries at all).

        A write may have committed with only its reply lost. Retried blindly, its compare-and-set
        would then miss (a claim that did succeed would look lost) or match again (one change,
        two events). So ``committed`` looks first: it returns what the write did if the rows
        carry its exact stamp, and None if it never landed.

        The first attempt may also still be running on the server, its connection lost on this
        side only (a proxy or a network between them failed): it lands after that look. The
        retry's compare-and-set then waits on the row lock it holds, and misses once it commits.
        So a retry that missed looks once more.
        """
        if not self.retry_unavailable:
            return op()
        try:
            return op()
        except StoreBusy:
            raise
        except StoreUnavailable:
            if committed is not None:
                done = committed()
                if done is not None:
                    return done
            result = op()
            if committed is not None and (result is None or (isinstance(result, list) and None in result)):
                done = committed()
                if done is not None:
                    return done
            return result

    def _landed(self, changes: Sequence[Change]) -> list[Workflow | None] | None:
        """The rows of ``changes`` if their transaction committed, else None.

        A change's row carries its ``updated_at``, to the microsecond, and its ``status``; no other
        writer stamps the same instant. One change found means the transaction committed, and
        the others missed their condition in it.
        """
        found = self.get_many([c.workflow_id for c in changes])
        rows: list[Workflow | None] = []
        for change in changes:
            wf = found.get(change.workflow_id)
            stamped = wf is not None and wf.updated_at == change.changes.get("updated_at")
            status = change.changes.get("status", wf.status if wf is not None else None)
            rows.append(wf if stamped and wf is not None and wf.status == status else None)
        return rows if any(row is not None for row in rows) else None

    # -- the driver hooks -------------------------------------------------
    @abc.abstractmethod
    def transaction(self, *, write: bool = True, single: bool = False) -> AbstractContextManager[Tx]:
        """A transaction that commits on exit, rolls back on error, and wraps driver errors.

        ``write=False`` marks a read, which a store may run without taking a write lock.
        ``single=True`` promises one statement: a store may send it without BEGIN and COMMIT,
        since a database runs a lone statement atomically and commits it durably.
        """

    @abc.abstractmethod
    def encode_json(self, value: Any) -> Any: ...

    @abc.abstractmethod
    def encode_time(self, value: datetime) -> Any: ...

    @abc.abstractmethod
    def decode_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Turn a raw row into model-ready values (JSON decoded, timestamps as datetimes)."""

    @abc.abstractmethod
    def sql(self, text: str) -> str:
        """Adapt named SQL to the driver's parameter style."""

    @abc.abstractmethod
    def decode_json(self, value: Any) -> Any:
        """A JSON column's value as the driver returned it, decoded."""

    #: Appended to a SELECT that must lock the row it reads, where the database can.
    row_lock: str = ""
    #: True where a compare-and-set and its event can be one statement (a data-modifying CTE):
    #: one round trip less per change on a client-server database.
    event_in_update: bool = False
    #: What :meth:`_savings` reads; ``{since}`` as in STATS_COUNTS. Here, the sum of every numeric
    #: top-level field of calculated_savings, by key (SQLite's store reads the documents instead).
    #: Its ``calculated_savings IS NOT NULL`` keeps the JSON function from being called on the rows
    #: without savings (two thirds of the benchmark's): on PostgreSQL at 1M rows, 419 against 623 ms
    #: (medians of 8, alternating).
    savings_sql: str

    def list_index(self, filters: Mapping[str, str]) -> str | None:
        """The index a listing with these filters must read, where the database needs telling."""
        return None

    def duration_index(self, window: int | None) -> str | None:
        """The index a duration rank must read, where the database needs telling: over all completed
        workflows of a type (``window`` None), or over the ``window`` of them created since a time."""
        return None

    # -- shared ----------------------------------------------------------
    def encode(self, values: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                out[key] = None
            elif key in q.JSON_COLUMNS:
                out[key] = self.encode_json(value)
            elif key in q.TIME_COLUMNS or isinstance(value, datetime):
                out[key] = self.encode_time(value)
            elif isinstance(value, WorkflowStatus):
                out[key] = value.value
            else:
                out[key] = value
        return out

    def _workflow(self, row: Mapping[str, Any]) -> Workflow:
        return self._read("workflow", "id", row, Workflow.from_row)

    def _read(self, kind: str, key: str, row: Mapping[str, Any], build: Callable[[dict[str, Any]], T]) -> T:
        """``build(decode_row(row))``, or StoreError naming the row (``kind`` and its ``key`` column)
        if the row holds what this version cannot read."""
        try:
            return build(self.decode_row(row))
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            raise _unreadable(kind, row.get(key), exc) from exc

    def _workflow_params(self, wf: Workflow) -> dict[str, Any]:
        """The parameters of ``queries.INSERT_WORKFLOW``: ``encode(wf.model_dump())``, without
        building the dump (this runs on every create's path): the fields as they are, then the
        few that need encoding. A new workflow's timestamps are mostly one value, encoded once."""
        params: dict[str, Any] = wf.__dict__.copy()  # pydantic keeps every field there: its columns
        for column in q.JSON_COLUMNS:
            if params[column] is not None:
                params[column] = self.encode_json(params[column])
        last: datetime | None = None
        for column in _TIME_COLUMNS_IN_ORDER:
            value = params[column]
            if value is not None:
                if value is not last:
                    last, encoded = value, self.encode_time(value)
                params[column] = encoded
        params["status"] = wf.status.value
        return params

    def _event_params(self, wf: Workflow, event: NewEvent) -> dict[str, Any]:
        """The parameters of ``queries.INSERT_EVENT``: ``event`` of ``wf``, stamped with its update."""
        return {
            "workflow_id": wf.id,
            "from_status": None if event.from_status is None else event.from_status.value,
            "to_status": event.to_status.value,
            "at": self.encode_time(wf.updated_at),
            "detail": event.detail,
            "attempt": wf.attempts,
        }

    def _events_params(self, wf: Workflow, events: Sequence[NewEvent]) -> dict[str, Any]:
        """Parameters of ``queries.insert_events_sql(len(events))``: what differs is numbered."""
        params: dict[str, Any] = {
            "workflow_id": wf.id,
            "at": self.encode_time(wf.updated_at),
            "attempt": wf.attempts,
        }
        for k, event in enumerate(events):
            params[f"from_status_{k}"] = None if event.from_status is None else event.from_status.value
            params[f"to_status_{k}"] = event.to_status.value
            params[f"detail_{k}"] = event.detail
        return params

    def migration_scripts(self) -> list[tuple[int, str]]:
        """(version, script) for every numbered migration of this dialect, in order."""
        folder = resources.files("workflow_engine.stores") / "migrations" / self.dialect
        scripts = []
        for entry in folder.iterdir():
            if entry.name.endswith(".sql"):
                scripts.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
        numbers = [number for number, _ in scripts]
        if len(set(numbers)) != len(numbers):  # a version is recorded by number alone
            raise ConfigurationError(f"two {self.dialect} migrations share a number: {sorted(numbers)}")
        return sorted(scripts)

    def insert(
        self, workflows: Sequence[Workflow], history: Sequence[Sequence[NewEvent]] | None = None
    ) -> list[tuple[Workflow, bool]]:
        if history is not None and len(history) != len(workflows):
            raise ValueError("history needs one sequence of events per workflow")

        # Where the database has data-modifying CTEs, a workflow and its events are one statement, a
        # batch's statements go out together, and a lone workflow needs no BEGIN and COMMIT around it.
        one_statement = self.event_in_update

        def events_of(i: int) -> Sequence[NewEvent]:
            return history[i] if history is not None else (NewEvent(None, workflows[i].status),)

        def op() -> list[tuple[Workflow, bool]]:
            inserted = [False] * len(workflows)
            order = _lock_order(workflows, lambda wf: wf.idempotency_key or "")
            with self.transaction(single=one_statement and len(workflows) == 1) as tx:
                if one_statement:  # every workflow's statement sent at once, then their replies read
                    statements = [self._insert_statement(workflows[i], events_of(i)) for i in order]
                    for i, rows in zip(order, tx.fetch_each(statements), strict=True):
                        inserted[i] = bool(rows)
                else:
                    insert_sql, event_sql = self.sql(q.INSERT_WORKFLOW), self.sql(q.INSERT_EVENT)
                    for i in order:
                        wf, events = workflows[i], events_of(i)
                        # As given: not read back.
                        inserted[i] = bool(tx.execute(insert_sql, self._workflow_params(wf)))
                        if inserted[i] and len(events) == 1:
                            tx.execute(event_sql, self._event_params(wf, events[0]))
                        elif inserted[i] and events:
                            tx.execute(
                                self.sql(q.insert_events_sql(len(events))), self._events_params(wf, events)
                            )
                missed = [i for i in order if not inserted[i]]
                kept = (
                    dict(zip(missed, self._kept(tx, [workflows[i] for i in missed]), strict=True))
                    if missed
                    else {}
                )
            return [(wf, True) if inserted[i] else kept[i] for i, wf in enumerate(workflows)]

        # Safe to run again: a row that an attempt whose reply was lost did insert is found by its
        # id (ids are new and random), with the events that attempt wrote, and nothing is repeated.
        return self._once_more(op)

    def _insert_statement(self, wf: Workflow, events: Sequence[NewEvent]) -> tuple[str, dict[str, Any]]:
        """``wf`` and its ``events`` as one statement (``event_in_update`` databases), which
        returns the workflow's id only if it was inserted (not on a conflict)."""
        params = self._workflow_params(wf)
        if not events:
            return self.sql(f"{q.INSERT_WORKFLOW} RETURNING id"), params
        params.update(self._events_params(wf, events))
        return self.sql(q.insert_with_events_sql(len(events))), params

    def _kept(self, tx: Tx, workflows: Sequence[Workflow]) -> list[tuple[Workflow, bool]]:
        """For each of ``workflows``, which were not inserted, the row that kept it out: another
        workflow with its idempotency key (not created), or the workflow itself, inserted by an
        earlier attempt of this very insert whose reply was lost (created). The INSERT waited
        for that attempt's transaction if it was still open on the server. The reads of a
        batch go out together, as its inserts did: a batch retried whole is two round trips."""
        kept: list[tuple[Workflow, bool] | None] = [None] * len(workflows)
        keyed = [i for i, wf in enumerate(workflows) if wf.idempotency_key is not None]
        by_key = self.sql(q.GET_BY_IDEMPOTENCY_KEY)
        found = tx.fetch_each([(by_key, {"idempotency_key": workflows[i].idempotency_key}) for i in keyed])
        for i, rows in zip(keyed, found, strict=True):
            if rows and rows[0]["id"] != workflows[i].id:
                kept[i] = (self._workflow(rows[0]), False)
        rest = [i for i, row in enumerate(kept) if row is None]
        by_id = self.sql(q.GET_WORKFLOW)
        found = tx.fetch_each([(by_id, {"id": workflows[i].id}) for i in rest])
        for i, rows in zip(rest, found, strict=True):
            if not rows:
                raise StoreError(f"workflow {workflows[i].id!r} was neither inserted nor found")
            kept[i] = (self._workflow(rows[0]), True)
        return [row for row in kept if row is not None]

    def apply(self, changes: Sequence[Change]) -> list[Workflow | None]:
        if not changes:
            return []

        # One change whose event goes in the same statement (or that has none) is one statement.
        single = len(changes) == 1 and (self.event_in_update or changes[0].event is None)

        def op() -> list[Workflow | None]:
            out: list[Workflow | None] = [None] * len(changes)
            order = _lock_order(changes, lambda change: change.workflow_id)
            with self.transaction(single=single) as tx:
                if self.event_in_update and len(changes) > 1:  # each change one statement: all sent at once
                    statements = [
                        self._one_statement(*self._update(changes[i]), changes[i].event) for i in order
                    ]
                    for i, rows in zip(order, tx.fetch_each(statements), strict=True):
                        out[i] = self._workflow(rows[0]) if rows else None
                    return out
                for i in order:
                    out[i] = self._changed(tx, *self._update(changes[i]), changes[i].event)
            return out

        return self._once_more(op, committed=lambda: self._landed(changes))

    def _one_statement(
        self, sql: str, params: dict[str, Any], event: NewEvent | None
    ) -> tuple[str, dict[str, Any]]:
        """A compare-and-set (``sql`` ends in RETURNING the workflow's columns) that records ``event``
        in the same statement, if it matches (``event_in_update`` databases only)."""
        if event is None:
            return self.sql(sql), params
        params["event_from"] = event.from_status.value if event.from_status is not None else None
        params["event_to"] = event.to_status.value
        params["event_detail"] = event.detail
        return self.sql(q.with_event(sql)), params

    def _changed(self, tx: Tx, sql: str, params: dict[str, Any], event: NewEvent | None) -> Workflow | None:
        """Run one compare-and-set (``sql`` ends in RETURNING the workflow's columns) and record its
        event if it matched."""
        if self.event_in_update:
            rows = tx.fetch(*self._one_statement(sql, params, event))
            return self._workflow(rows[0]) if rows else None
        rows = tx.fetch(self.sql(sql), params)
        if not rows:
            return None
        wf = self._workflow(rows[0])
        if event is not None:
            tx.execute(self.sql(q.INSERT_EVENT), self._event_params(wf, event))
        return wf

    def _update(self, change: Change) -> tuple[str, dict[str, Any]]:
        expected = change.expected_job_id
        job_cond: str | bool | None = False if expected is ANY_JOB else (None if expected is None else True)
        lease = change.lease_expired_at
        sql = q.update_sql(
            change.changes,
            job_id=job_cond,
            lease_expired=lease is not None,
            cancel_not_requested=change.cancel_not_requested,
            attempts=change.expected_attempts is not None,
        )
        params = {f"set_{k}": v for k, v in self.encode(change.changes).items()}
        params["id"] = change.workflow_id
        params["expected_status"] = change.expected_status.value
        if job_cond is True:
            params["expected_job_id"] = expected
        if lease is not None:
            params["lease_expired_at"] = self.encode_time(lease)
        if change.expected_attempts is not None:
            params["expected_attempts"] = change.expected_attempts
        return sql, params

    def claim(
        self, workflow_id: str, *, job_id: str, worker: str | None, now: datetime, lease_until: datetime
    ) -> Workflow | None:
        stamps: list[datetime] = []  # what each try wrote into heartbeat_at
        asked = time.monotonic()  # once: a second try (_once_more) counts the first one's wait too
        event = NewEvent(
            WorkflowStatus.QUEUED, WorkflowStatus.RUNNING, f"claimed by {worker}" if worker else None
        )

        def op() -> Workflow | None:
            with self.transaction(single=self.event_in_update) as tx:
                stamp, until = _held_from(asked, now, lease_until)
                stamps.append(stamp)
                until_text = self.encode_time(until)  # before the stamp, which the event encodes again
                params = {
                    "id": workflow_id,
                    "job_id": job_id,
                    "worker": worker,
                    "now": self.encode_time(stamp),
                    "lease_until": until_text,
                }
                return self._changed(tx, _CLAIM, params, event)

        def committed() -> Workflow | None:
            # The claim stamps heartbeat_at (updated_at too, but a cancel request may have stamped
            # that since), and only this attempt's own heartbeats, not begun yet, move it.
            wf = self.get(workflow_id)
            won = wf is not None and wf.status is WorkflowStatus.RUNNING and wf.job_id == job_id
            return wf if won and wf is not None and wf.heartbeat_at in stamps else None

        return self._once_more(op, committed)

    def heartbeat(self, workflow_id: str, *, job_id: str, now: datetime, lease_until: datetime) -> Heartbeat:
        asked = time.monotonic()

        def op() -> Heartbeat:
            with self.transaction(single=True) as tx:
                stamp, until = _held_from(asked, now, lease_until)
                params = {
                    "id": workflow_id,
                    "job_id": job_id,
                    "now": self.encode_time(stamp),
                    "lease_until": self.encode_time(until),
                }
                rows = tx.fetch(self.sql(q.HEARTBEAT), params)
            if not rows:
                return Heartbeat(owned=False, cancel_requested=False)
            return Heartbeat(owned=True, cancel_requested=rows[0]["cancel_requested_at"] is not None)

        return self._once_more(op)

    def get(self, workflow_id: str) -> Workflow | None:
        def op() -> Workflow | None:
            with self.transaction(write=False, single=True) as tx:
                rows = tx.fetch(self.sql(q.GET_WORKFLOW), {"id": workflow_id})
            return self._workflow(rows[0]) if rows else None

        return self._once_more(op)

    def get_many(self, workflow_ids: Sequence[str]) -> dict[str, Workflow]:
        def op() -> dict[str, Workflow]:
            found: dict[str, Workflow] = {}
            with self.transaction(write=False) as tx:
                for chunk in iter_chunks(list(workflow_ids), 500):
                    names = [f"id{i}" for i in range(len(chunk))]
                    sql = q.GET_MANY.format(ids=", ".join(":" + n for n in names))
                    for row in tx.fetch(self.sql(sql), dict(zip(names, chunk, strict=True))):
                        wf = self._workflow(row)
                        found[wf.id] = wf
            return found

        return self._once_more(op)

    def find(
        self,
        *,
        limit: int,
        filters: Mapping[str, str],
        cursor: tuple[datetime, str] | None = None,
    ) -> list[Workflow]:
        def op() -> list[Workflow]:
            params: dict[str, Any] = dict(filters)
            params["limit"] = limit
            if cursor is not None:
                params["cursor_at"] = self.encode_time(cursor[0])
                params["cursor_id"] = cursor[1]
            sql = q.list_sql(filters, cursor=cursor is not None, index=self.list_index(filters))
            with self.transaction(write=False, single=True) as tx:
                # Planned for these values: which index is best depends on how common each one is.
                rows = tx.fetch(self.sql(sql), params, prepare=False)
            return [self._workflow(r) for r in rows]

        return self._once_more(op)

    def events(self, workflow_id: str) -> list[WorkflowEvent]:
        def op() -> list[WorkflowEvent]:
            with self.transaction(write=False, single=True) as tx:
                rows = tx.fetch(self.sql(q.GET_EVENTS), {"workflow_id": workflow_id})
            return [self._read("event of workflow", "workflow_id", r, WorkflowEvent.from_row) for r in rows]

        return self._once_more(op)

    def stale_running(self, *, now: datetime, limit: int) -> list[Workflow]:
        def op() -> list[Workflow]:
            with self.transaction(write=False, single=True) as tx:
                rows = tx.fetch(self.sql(q.STALE_RUNNING), {"now": self.encode_time(now), "limit": limit})
            return [self._workflow(r) for r in rows]

        return self._once_more(op)

    def deliverable_queued(
        self,
        *,
        now: datetime,
        queued_before: datetime,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[Workflow]:
        def op() -> list[Workflow]:
            params = {
                "now": self.encode_time(now),
                "queued_before": self.encode_time(queued_before),
                "limit": limit,
            }
            if after is not None:
                params.update(after_at=self.encode_time(after[0]), after_id=after[1])
            sql = q.DELIVERABLE_QUEUED.format(after=q.DELIVERABLE_AFTER if after is not None else "")
            with self.transaction(write=False, single=True) as tx:
                rows = tx.fetch(self.sql(sql), params)
            return [self._workflow(r) for r in rows]

        return self._once_more(op)

    def stats(self, *, since: datetime | None, recent: datetime) -> StatsRows:
        return self._once_more(lambda: self._stats(since=since, recent=recent))

    def gauges(self, *, now: datetime) -> GaugeRows:
        def op() -> GaugeRows:
            with self.transaction(write=False) as tx:
                counts, oldest = self._counts_and_oldest_queued(tx, "", {})
                stale = tx.fetch(self.sql(q.STATS_STALE), {"now": self.encode_time(now)})[0]["n"]
            return GaugeRows(counts=counts, oldest_queued=oldest, stale=int(stale))

        return self._once_more(op)

    def _counts_and_oldest_queued(
        self, tx: Tx, cond: str, params: Mapping[str, Any]
    ) -> tuple[list[tuple[str, str, int]], datetime | None]:
        """(workflow_type_id, status, count) of the workflows ``cond`` selects (STATS_COUNTS'
        ``{since}``), and when the oldest queued one came due: what stats() and gauges() share."""
        counts = tx.fetch(self.sql(q.STATS_COUNTS.format(since=cond)), params)
        oldest = tx.fetch(self.sql(q.STATS_OLDEST_QUEUED), {})[0]["oldest"]
        return (
            [(r["workflow_type_id"], r["status"], int(r["n"])) for r in counts],
            self.decode_row({"at": oldest})["at"] if oldest is not None else None,
        )

    def _stats(self, *, since: datetime | None, recent: datetime) -> StatsRows:
        params: dict[str, Any] = {"recent": self.encode_time(recent)}
        cond = ""
        if since is not None:
            params["since"] = self.encode_time(since)
            cond = "AND created_at >= :since"
        with self.transaction(write=False) as tx:
            counts, oldest = self._counts_and_oldest_queued(tx, cond, params)
            running = tx.fetch(self.sql(q.STATS_RUNNING), {})[0]["n"]
            finished = tx.fetch(self.sql(q.STATS_FINISHED_SINCE), params)[0]["n"]
            savings = self._savings(tx, cond, params)
            durations: dict[str, tuple[float, float]] = {}
            for type_id, status, n in counts:
                if status != WorkflowStatus.COMPLETED.value or n == 0:
                    continue
                at = []
                rank_index = self.duration_index(None if since is None else n)
                for pct in (50, 95):
                    offset = (n * pct + 99) // 100 - 1  # nearest rank, counted from 0
                    row = tx.fetch(
                        self.sql(q.duration_at_sql(windowed=since is not None, index=rank_index)),
                        {**params, "workflow_type_id": type_id, "offset": offset},
                    )
                    if row and row[0]["duration_s"] is not None:
                        at.append(float(row[0]["duration_s"]))
                if len(at) == 2:
                    durations[type_id] = (at[0], at[1])
        return StatsRows(
            counts=counts,
            durations=durations,
            oldest_queued=oldest,
            running=int(running),
            finished_recently=int(finished),
            savings=savings,
        )

    def _savings(self, tx: Tx, cond: str, params: Mapping[str, Any]) -> dict[str, float]:
        """The total of each numeric top-level field of the calculated_savings ``cond`` selects."""
        rows = tx.fetch(self.sql(self.savings_sql.format(since=cond)), params)
        return {r["key"]: float(r["total"]) for r in rows}

    def save_council(self, council: Council) -> Council:
        params = self.encode(council.model_dump())
        params["members"] = self.encode_json(council.members)

        def op() -> Council:  # an upsert of the whole row: the same if it runs twice
            with self.transaction(single=True) as tx:
                [row] = tx.fetch(self.sql(q.SAVE_COUNCIL), params)
            return self._council(row)

        return self._once_more(op)

    def get_council(self, council_id: str) -> Council | None:
        def op() -> Council | None:
            with self.transaction(write=False, single=True) as tx:
                rows = tx.fetch(self.sql(q.GET_COUNCIL), {"id": council_id})
            return self._council(rows[0]) if rows else None

        return self._once_more(op)

    def _council(self, row: Mapping[str, Any]) -> Council:
        def build(data: dict[str, Any]) -> Council:
            data["members"] = self.decode_json(row["members"])
            return Council.model_validate(data)

        return self._read("council", "id", row, build)

    def record_vote(self, vote: Vote, *, change: bool, detail: str, changed_detail: str | None = None) -> str:
        params = self.encode(vote.model_dump())
        with self.transaction() as tx:
            found = tx.fetch(
                self.sql(q.VOTE_STATUS.format(lock=self.row_lock)), {"workflow_id": vote.workflow_id}
            )
            if not found:
                return "missing"
            status = str(found[0]["status"])
            if status != WorkflowStatus.AWAITING_APPROVAL.value:
                return status
            voter = {"workflow_id": vote.workflow_id, "voter_id": vote.voter_id}
            replaced = change and changed_detail is not None and bool(tx.fetch(self.sql(q.HAS_VOTED), voter))
            if not tx.fetch(self.sql(q.CHANGE_VOTE if change else q.INSERT_VOTE), params):
                return "duplicate"
            event = {
                "workflow_id": vote.workflow_id,
                "from_status": status,
                "to_status": status,
                "at": vote.at,
                "detail": changed_detail if replaced else detail,
                "attempt": found[0]["attempts"],
            }
            tx.execute(self.sql(q.INSERT_EVENT), self.encode(event))
        return "recorded"

    def apply_if_voted(
        self, change: Change, *, members: Sequence[str], quorum: int, approve: bool
    ) -> Workflow | None:
        voters = frozenset(members)

        def op() -> Workflow | None:
            with self.transaction() as tx:
                # record_vote's lock first (the row's on PostgreSQL; SQLite's write lock is the
                # transaction's): a vote recorded or changed from here on waits for this change.
                if not tx.fetch(
                    self.sql(q.VOTE_STATUS.format(lock=self.row_lock)), {"workflow_id": change.workflow_id}
                ):
                    return None
                rows = tx.fetch(self.sql(q.GET_VOTES), {"workflow_id": change.workflow_id})
                if sum(r["voter_id"] in voters and bool(r["approve"]) is approve for r in rows) < quorum:
                    return None
                return self._changed(tx, *self._update(change), change.event)

        return self._once_more(op, committed=lambda: (self._landed([change]) or [None])[0])

    def votes(self, workflow_id: str) -> list[Vote]:
        def op() -> list[Vote]:
            with self.transaction(write=False, single=True) as tx:
                rows = tx.fetch(self.sql(q.GET_VOTES), {"workflow_id": workflow_id})
            return [self._read("vote on workflow", "workflow_id", r, Vote.model_validate) for r in rows]

        return self._once_more(op)

    #: Finds the ``schema_version`` table: one row, ``found``, true if the database has it.
    schema_table_sql: str

    def _migrated_already(self, tx: Tx) -> int | None:
        """The schema version if no migration is pending, read without a lock and without DDL;
        None if one is (or the database is new). A database newer than this code is refused.

        Every process start but the first after an upgrade ends here: it need not wait behind a
        migration lock, nor have the right to create tables, which a role that only reads and
        writes the rows may lack."""
        if not tx.fetch(self.sql(self.schema_table_sql), {})[0]["found"]:
            return None
        current = int(tx.fetch(self.sql(q.SCHEMA_VERSION), {})[0]["version"])
        scripts = self.migration_scripts()
        if scripts and current < scripts[-1][0]:
            return None
        return self._apply_migrations(tx, current, scripts)  # applies nothing; refuses a newer schema

    def _require_schema(self, tx: Tx) -> None:
        """For a store opened with ``create=False``: ConfigurationError if the database has no
        tables of ours (a mistyped URL that names another database), read without DDL."""
        if not tx.fetch(self.sql(self.schema_table_sql), {})[0]["found"]:
            raise ConfigurationError(
                f"no workflow_engine tables in the database at {shown(self.url)}: check the database "
                "URL (`workflow-engine migrate` creates them)"
            )

    def _apply_migrations(self, tx: Tx, current: int, scripts: list[tuple[int, str]] | None = None) -> int:
        """Apply the ``scripts`` (by default :meth:`migration_scripts`) newer than ``current``."""
        version = current
        scripts = self.migration_scripts() if scripts is None else scripts
        if scripts and current > scripts[-1][0]:
            # Rows of a newer schema would not fit this code's models: say so, once, at the start.
            raise ConfigurationError(
                f"the database is at schema version {current}, newer than this workflow_engine knows "
                f"({scripts[-1][0]}): upgrade workflow_engine here, as on the machines that migrated it"
            )
        for number, script in scripts:
            if number <= current:
                continue
            self.run_script(tx, script)
            tx.fetch(
                self.sql(q.RECORD_VERSION), {"version": number, "applied_at": self.encode_time(utcnow())}
            )
            version = number
        return version

    @abc.abstractmethod
    def run_script(self, tx: Tx, script: str) -> None:
        """Run a multi-statement migration script inside ``tx``."""


def _unreadable(kind: str, key: Any, exc: Exception) -> StoreError:
    """The error for a row this version cannot turn into a model: one written by hand (a column
    of the wrong shape, a status of a newer version). It names the row, and the first problem."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        reason = f"{where}: {first['msg']}" if where else first["msg"]
    else:
        reason = f"{type(exc).__name__}: {exc}"
    reason = " ".join(reason.split())[:300]
    return StoreError(
        f"the {kind} {str(key)[:200]!r} has a row this workflow_engine cannot read ({reason}): "
        "was it written by hand, or by a newer version?"
    )


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
