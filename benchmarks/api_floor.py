"""What bounds the API ratio: creating and enqueueing one workflow a call, eight ways, side by side.

    python benchmarks/api_floor.py [--n 2000] [--rounds 5] [--steps]

Each round makes N calls of each kind, in turn, on a private Redis and a fresh SQLite WAL file:

- ``raw``: RQ's ``Queue.enqueue`` of a no-op, as raw RQ runs in ``bench.py``'s API rows;
- ``delivery``: the workflow job as the engine delivers it (its hash as RQ writes it, copied
  from the first job of its kind, and the push, in one pipeline, one round trip), with no
  database and no model: what putting that job on the queue costs;
- ``sql floor``: the same delivery after exactly the SQL of a fused create, one durable
  transaction with the store's own statements and PRAGMAs (``BEGIN IMMEDIATE``; INSERT the
  workflow, already ``queued``; INSERT both of its events; ``COMMIT``), checkpointed as the
  store checkpoints (a thread every 100 commits, SQLite's own at the store's backstop), and
  nothing else: the cost of the guarantee that a workflow is in the database before its job
  is in Redis;
- ``workflow``: ``engine.create_workflow(workflow_type_id=..., enqueue=True)``;
- ``two-call floor``: the same delivery after exactly the SQL of the two calls, two durable
  transactions: ``create_workflow``'s (the workflow, ``pending``, and its event) and
  ``enqueue_execution``'s (the compare-and-set to ``queued``, which reads the row back, and its
  event), with the store's own statements, and nothing else: the cost of the guarantees that
  ``create_workflow`` returns a durable workflow and that ``queued`` is durable before the job is
  in Redis;
- ``two calls``: ``engine.create_workflow(...)``, then ``engine.enqueue_execution(id)``;
- ``lean fused`` and ``lean two calls``: the floors' SQL and delivery with the least an engine must
  add to them, and nothing else: the workflow type looked up among the registered handlers, a new
  workflow id and job id, the timestamps, and (for the second call) the id checked and the type of the
  workflow just created remembered instead of read back, as the engine does. No model, no state
  machine, no store in between, no logging: what a lean engine keeping the same guarantees would cost.

It prints each kind's median rate and its ratio to ``raw``. ``sql floor`` ÷ ``raw`` is the highest
ratio that any engine writing the workflow durably before delivering its job, as this engine
delivers it, could reach on this machine; ``workflow`` ÷ ``sql floor`` is what the engine's own Python
(validation, the model, encoding, the state machine, logging) keeps of it. ``two-call floor`` and
``two calls`` are the same for the two calls; ``lean fused`` and ``lean two calls`` say how close to
each floor an engine could come without the engine's own design (its validated immutable models, its
state machine's changes, its one store contract, its log records). It exits non-zero if a
kind did not leave N jobs queued (and, with a database, N workflows queued); it asserts no timing.

With ``--steps`` it runs the floor's loop again and again, with the engine's pieces put in one at a
time in place of the floor's own (building the workflow, its queued change, the store's insert, the
transport's delivery), then the whole call: what each piece adds, measured where it runs, between a
commit and a round trip, rather than in a tight loop of its own. ``--steps two`` does the same for the
two calls (building the workflow, its queued change, the store's insert and compare-and-set together,
the delivery), then ``create_workflow`` and ``enqueue_execution`` themselves.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import redis as redis_lib
from rq import Queue

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_jobs
import harness
from harness import QUEUE, BenchFailure, RedisServer

from workflow_engine import WorkflowEngine
from workflow_engine.engine import new_workflow_id
from workflow_engine.handlers import storable_id, validate_type_id
from workflow_engine.models import utcnow
from workflow_engine.status import WorkflowStatus as S
from workflow_engine.stores import queries as q
from workflow_engine.stores.base import NewEvent
from workflow_engine.stores.sqlite import SQLiteStore
from workflow_engine.transport import Transport, _job_options, new_job_id

TYPE = "bench"
HANDLER = "bench_jobs:noop_workflow"
KINDS = (
    "raw",
    "delivery",
    "sql floor",
    "lean fused",
    "workflow",
    "two-call floor",
    "lean two calls",
    "two calls",
)
#: ``--steps``: the floor's loop, then each of the engine's pieces in turn in place of the floor's own.
STEPS = (
    "the floor",
    "+ _new_workflow",
    "+ the queued change and model_copy",
    "+ store.insert",
    "+ transport.deliver",
)
#: ``--steps two``: the two calls' floor, then the engine's pieces of ``create_workflow`` and
#: ``enqueue_execution`` in turn in place of the floor's own. The store's insert and compare-and-set
#: come in together: with one of them on the store's connection and the other on the floor's, each
#: commit would find the other connection's cache stale (about 0.1 ms a call, measured), which no
#: real call pays.
TWO_CALL_STEPS = (
    "the two-call floor",
    "+ create's _new_workflow",
    "+ enqueue's queued change",
    "+ the store's insert and apply",
    "+ enqueue's transport.deliver",
)


def _stamp() -> str:
    """Now, as the SQLite store writes a timestamp."""
    return utcnow().isoformat(timespec="microseconds")


class Floor:
    def __init__(self, tmp: Path, redis: RedisServer, n: int) -> None:
        self.tmp, self.redis, self.n = tmp, redis, n
        self.connection = redis_lib.Redis.from_url(redis.url)
        self.queue = Queue(QUEUE, connection=self.connection)
        self.transport = Transport(self.connection, QUEUE)

    def database(self) -> str:
        """A fresh SQLite file with the store's schema; its path."""
        path = str(self.tmp / f"floor-{uuid.uuid4().hex[:8]}.db")
        store = SQLiteStore(path)
        store.migrate()
        store.close()
        return path

    def deliver(self, workflow_id: str, job_id: str) -> None:
        """The workflow job, as ``Transport.deliver`` puts it on the queue (its hash copied from
        RQ's, ``Transport._write_jobs``): one pipeline, no model built."""
        fields = SimpleNamespace(
            id=workflow_id, handler=HANDLER, job_id=job_id, timeout=None, workflow_type_id=TYPE
        )
        with self.connection.pipeline() as pipe:
            self.transport._write_jobs(pipe, [_job_options(fields, engine_key=None)])  # type: ignore[arg-type]
            pipe.execute()

    def timed(self, calls: Callable[[], None]) -> float:
        start = time.perf_counter()
        calls()
        rate = self.n / (time.perf_counter() - start)
        if self.queue.count != self.n:
            raise BenchFailure(f"{self.queue.count} jobs on the queue, expected {self.n}")
        return rate

    def raw(self) -> float:
        def calls() -> None:
            for _ in range(self.n):
                self.queue.enqueue(bench_jobs.noop)

        return self.timed(calls)

    def delivery(self) -> float:
        def calls() -> None:
            for _ in range(self.n):
                workflow_id = uuid.uuid4().hex
                self.deliver(workflow_id, f"{workflow_id}-00000000")

        return self.timed(calls)

    @staticmethod
    def insert(
        conn: sqlite3.Connection,
        *,
        queued: bool = True,
        workflow_id: str | None = None,
        job_id: str | None = None,
        now: str | None = None,
    ) -> tuple[str, str]:
        """Exactly the fused call's SQL: the workflow row, already queued, and both of its events,
        in one durable transaction with the store's own statements. Its id and job id. With
        ``queued=False``, ``create_workflow``'s: the row ``pending``, with no job, and its one event."""
        workflow_id = workflow_id or uuid.uuid4().hex
        job_id = job_id or f"{workflow_id}-00000000"
        now = now or _stamp()
        row = dict.fromkeys(q.WORKFLOW_COLUMNS)
        row.update(
            id=workflow_id,
            workflow_type_id=TYPE,
            status="queued" if queued else "pending",
            inputs="{}",
            attempts=0,
            max_retries=3,
            max_attempts=4,
            retry_backoff=1.0,
            handler=HANDLER,
            job_id=job_id if queued else None,
            created_at=now,
            updated_at=now,
            queued_at=now if queued else None,
        )
        events = {"workflow_id": workflow_id, "at": now, "attempt": 0}
        events.update(from_status_0=None, to_status_0="pending", detail_0=None)
        events.update(from_status_1="pending", to_status_1="queued", detail_1="enqueued")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(q.INSERT_WORKFLOW, row)
        if queued:
            conn.execute(q.insert_events_sql(2), events)
        else:
            del events["from_status_1"], events["to_status_1"], events["detail_1"]
            conn.execute(q.insert_events_sql(1), events)
        bench_jobs.floor_commit(conn)
        return workflow_id, job_id

    #: What ``enqueue_execution`` sets on a pending workflow (``WorkflowEngine._queue_change``).
    QUEUE_COLUMNS = (
        "job_id",
        "run_after",
        "handler",
        "max_retries",
        "retry_backoff",
        "timeout",
        "max_attempts",
        "cancel_requested_at",
        "status",
        "updated_at",
        "queued_at",
    )

    @classmethod
    def enqueue(cls, conn: sqlite3.Connection, workflow_id: str, job_id: str, now: str | None = None) -> None:
        """Exactly ``enqueue_execution``'s SQL for a pending workflow: its compare-and-set to
        ``queued`` (the row read back, as the store reads it), and its event, in one durable transaction."""
        now = now or _stamp()
        values = (job_id, None, HANDLER, 3, 1.0, None, 4, None, "queued", now, now)
        params = {f"set_{c}": v for c, v in zip(cls.QUEUE_COLUMNS, values, strict=True)}
        params.update(id=workflow_id, expected_status="pending", expected_attempts=0)
        event = {"workflow_id": workflow_id, "attempt": 0, "detail": "enqueued", "at": now}
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(
            q.update_sql(cls.QUEUE_COLUMNS, job_id=None, lease_expired=False, attempts=True), params
        ).fetchall()
        if len(rows) != 1:
            conn.execute("ROLLBACK")
            raise BenchFailure(f"workflow {workflow_id} was not pending")
        conn.execute(q.INSERT_EVENT, {**event, "from_status": "pending", "to_status": "queued"})
        bench_jobs.floor_commit(conn)

    def two_call_floor(self) -> float:
        def call(engine: WorkflowEngine, conn: sqlite3.Connection) -> None:
            workflow_id, job_id = self.insert(conn, queued=False)
            self.enqueue(conn, workflow_id, job_id)
            self.deliver(workflow_id, job_id)

        return self.on_floor(call)

    def lean_two_calls(self) -> float:
        recent: dict[str, str] = {}  # the engine's hint: a workflow it just created needs no read

        def call(engine: WorkflowEngine, conn: sqlite3.Connection) -> None:
            # create_workflow(workflow_type_id=TYPE): the type known, or a valid new one
            if engine.handler_for(TYPE) is None:
                validate_type_id(TYPE)
            workflow_id = new_workflow_id()
            self.insert(conn, queued=False, workflow_id=workflow_id, now=_stamp())
            recent[workflow_id] = TYPE
            # enqueue_execution(workflow_id): an id a store could hold, a handler for its type
            if not storable_id(workflow_id) or engine.handler_for(recent.pop(workflow_id)) is None:
                raise BenchFailure(f"workflow {workflow_id} cannot be enqueued")
            job_id = new_job_id(workflow_id)
            self.enqueue(conn, workflow_id, job_id, _stamp())
            self.deliver(workflow_id, job_id)

        return self.on_floor(call)

    def lean_fused(self) -> float:
        def call(engine: WorkflowEngine, conn: sqlite3.Connection) -> None:
            if engine.handler_for(TYPE) is None:  # create_workflow(..., enqueue=True) needs a handler
                raise BenchFailure(f"no handler for {TYPE}")
            workflow_id = new_workflow_id()
            job_id = new_job_id(workflow_id)
            self.insert(conn, workflow_id=workflow_id, job_id=job_id, now=_stamp())
            self.deliver(workflow_id, job_id)

        return self.on_floor(call)

    def two_calls(self) -> float:
        return self.on_engine(
            lambda engine: engine.enqueue_execution(engine.create_workflow(workflow_type_id=TYPE))
        )

    def sql_floor(self) -> float:
        return self.steps(0)

    def steps(self, level: int) -> float:
        """The floor's loop with the engine's first ``level`` pieces in place of its own (``STEPS``)."""
        history = (NewEvent(None, S.PENDING), NewEvent(S.PENDING, S.QUEUED, "enqueued"))

        def call(engine: WorkflowEngine, conn: sqlite3.Connection) -> None:
            if level >= 1:
                wf = engine._new_workflow(workflow_type_id=TYPE)
            if level >= 2:
                wf = wf.model_copy(update=engine._queue_change(wf, detail="enqueued").changes)
            if level >= 3:
                engine.store.insert([wf], [history])
                workflow_id, job_id = wf.id, str(wf.job_id)
            else:
                workflow_id, job_id = self.insert(conn)
            if level >= 4:
                engine._deliver(wf)
            else:
                self.deliver(workflow_id, job_id)

        return self.on_floor(call)

    def two_call_steps(self, level: int) -> float:
        """The two calls' floor with the engine's first ``level`` pieces in place of its own
        (``TWO_CALL_STEPS``)."""

        def call(engine: WorkflowEngine, conn: sqlite3.Connection) -> None:
            if level >= 1:
                wf = engine._new_workflow(workflow_type_id=TYPE)
            if level >= 3:
                engine.store.insert([wf])
                workflow_id = wf.id
            else:
                workflow_id, _ = self.insert(conn, queued=False, workflow_id=wf.id if level else None)
            if level >= 2:
                change = engine._queue_change(wf, detail="enqueued")
                job_id = str(change.changes["job_id"])
            else:
                job_id = f"{workflow_id}-00000000"
            if level >= 3:
                applied = engine.store.apply([change])[0]
                if applied is None:
                    raise BenchFailure(f"workflow {workflow_id} was not pending")
                queued = applied
            else:
                self.enqueue(conn, workflow_id, job_id)
            if level >= 4:
                engine._deliver(queued)
            else:
                self.deliver(workflow_id, job_id)

        return self.on_floor(call)

    def on_floor(self, call: Callable[[WorkflowEngine, sqlite3.Connection], None]) -> float:
        """N calls of ``call(engine, conn)``, ``conn`` a bare connection (``bench_jobs.floor_connection``)
        to the engine's fresh database; the rate, once N rows are queued there."""
        engine = self.engine()
        conn = bench_jobs.floor_connection(engine.store.path)  # type: ignore[attr-defined]

        def calls() -> None:
            for _ in range(self.n):
                call(engine, conn)

        try:
            rate = self.timed(calls)
            queued = conn.execute("SELECT COUNT(*) FROM workflows WHERE status = 'queued'").fetchone()[0]
        finally:
            bench_jobs.floor_close(conn)
            engine.close()
        if queued != self.n:
            raise BenchFailure(f"{queued} of {self.n} rows queued")
        return rate

    def on_engine(self, call: Callable[[WorkflowEngine], object]) -> float:
        """N calls of ``call(engine)`` on an engine with a fresh database; the rate, once N workflows
        are queued there."""
        engine = self.engine()

        def calls() -> None:
            for _ in range(self.n):
                call(engine)

        try:
            rate = self.timed(calls)
            queued = len(harness.workflows_in(engine, "queued", self.n + 1))
        finally:
            engine.close()
        if queued != self.n:
            raise BenchFailure(f"{queued} of {self.n} workflows queued")
        return rate

    def engine(self) -> WorkflowEngine:
        engine = WorkflowEngine(
            database_url=f"sqlite:///{self.database()}", redis_url=self.redis.url, queue_name=QUEUE
        )
        engine.register_handler(TYPE, HANDLER)
        engine.transport.ping()
        return engine

    def workflow(self) -> float:
        return self.on_engine(lambda engine: engine.create_workflow(workflow_type_id=TYPE, enqueue=True))

    def run(self, kind: str) -> float:
        self.redis.flushall()
        if kind in STEPS:
            return self.steps(STEPS.index(kind))
        if kind in TWO_CALL_STEPS:
            return self.two_call_steps(TWO_CALL_STEPS.index(kind))
        return {
            "raw": self.raw,
            "delivery": self.delivery,
            "sql floor": self.sql_floor,
            "workflow": self.workflow,
            "two-call floor": self.two_call_floor,
            "two calls": self.two_calls,
            "lean fused": self.lean_fused,
            "lean two calls": self.lean_two_calls,
        }[kind]()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="calls per run (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported (default 5)")
    parser.add_argument(
        "--steps",
        nargs="?",
        const="fused",
        choices=("fused", "two"),
        help="instead of the eight kinds: the fused call's floor (or with 'two' the two calls' floor) "
        "with the engine's pieces put in one at a time",
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        parser.error("--n and --rounds must be at least 1")
    print(harness.compile_bytecode())
    times_before = harness.cpu_times()
    if args.steps == "two":
        kinds: tuple[str, ...] = (*TWO_CALL_STEPS, "two calls")
    else:
        kinds = (*STEPS, "workflow") if args.steps else KINDS
    with tempfile.TemporaryDirectory(prefix="we-api-floor-") as tmp_name:
        redis = RedisServer(Path(tmp_name))
        try:
            redis.start()
            floor = Floor(Path(tmp_name), redis, args.n)
            for kind in kinds:  # warm up: first-use imports and caches are not what is measured
                Floor(Path(tmp_name), redis, 20).run(kind)
            rates = harness.alternating(kinds, args.rounds, floor.run, lambda rate: f"{rate:,.0f}/s")
        finally:
            redis.stop()
    stolen = harness.steal_percent(times_before, harness.cpu_times())
    print(
        f"\nOne call a workflow (or job), real Redis, SQLite WAL, N={args.n}, median of {args.rounds}; "
        f"CPU stolen by the hypervisor over the run: {stolen}.\n"
    )
    medians = {kind: statistics.median(rates[kind]) for kind in kinds}
    if args.steps:
        which = "the two calls'" if args.steps == "two" else "the fused call's"
        print(f"| {which} floor's loop | ms a call | + |")
        print("|---|---|---|")
        previous = None
        for kind in kinds:
            ms = 1000 / medians[kind]
            added = "" if previous is None else f"{ms - previous:+.3f}"
            print(f"| {kind} | {ms:.3f} | {added} |")
            previous = ms
        print("\nEvery round, calls/s:")
        for kind in kinds:
            print(f"- {kind}: " + ", ".join(f"{rate:,.0f}" for rate in rates[kind]))
        return 0
    print("| kind | calls/s | ms a call | ÷ raw | ÷ its floor |")
    print("|---|---|---|---|---|")
    for kind in kinds:
        rate = medians[kind]
        floor = medians["two-call floor" if "two" in kind else "sql floor"]
        print(
            f"| {kind} | {rate:,.0f} | {1000 / rate:.3f} | {rate / medians['raw']:.2f} | {rate / floor:.2f} |"
        )
    print("\nEvery round, calls/s (÷ raw):")
    for kind in kinds:
        rounds = zip(rates[kind], rates["raw"], strict=True)
        print(f"- {kind}: " + ", ".join(f"{rate:,.0f} ({rate / raw:.2f})" for rate, raw in rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
