"""workflow_engine against raw RQ, side by side in one run, plus queries and recovery.

    python benchmarks/bench.py                        # the default suite: N=2000, 3 rounds, 100k and 1M rows
    python benchmarks/bench.py --n 200 --rounds 1     # the CI smoke run: checks that everything works
    python benchmarks/bench.py --only api,bulk,inprocess
    python benchmarks/bench.py --only queries --rows 100000,1000000
    python benchmarks/bench.py --postgres-url postgresql://postgres@127.0.0.1:5432/postgres

Every comparison runs A (workflow_engine) and B (raw RQ) in the same run,
alternating which goes first from round to round, and reports the median of
the rounds. A private redis-server is started on a free port and stopped by
PID at the end. The exit code is non-zero if anything did not run as it
must (a workflow not completed, a job failed, a worker that failed); no
timing is ever asserted.

A run with --n below 1000 is a smoke run: the queries use tables of 2,000
rows (unless --rows says otherwise) and recovery uses its fast setting.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import api_floor
import bench_jobs
import bench_queries
import e2e_floor
import harness
import peers
import recovery
from harness import QUEUE, BenchFailure, RedisServer

from workflow_engine import WorkflowEngine

TYPE = "bench_noop"
HANDLER_PATH = "bench_jobs:noop_workflow"
SECTIONS = ("inprocess", "api", "bulk", "e2e", "postgres", "peers", "queries", "recovery")
#: Below this --n a run is a smoke run: small tables for the queries, the fast recovery setting.
SMOKE_BELOW = 1000
FULL_ROWS = (100_000, 1_000_000)
SMOKE_ROWS = (2_000,)
LABEL = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
#: Raw RQ's turn in an e2e round (see Bench.e2e).
RAW = "raw"
#: The floor's turn in an e2e round: the same workers over jobs that run only the SQL of a claim and
#: a completion (``bench_jobs.sql_floor_job``), on SQLite.
FLOOR = "floor"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


#: Extra `rq worker` options of the workflow side: its parent preloads the package, or it runs
#: the one-round-trip heartbeat class.
PRELOAD = ("-c", "workflow_engine.rq_preload")
ONETRIP = ("-w", "workflow_engine.workers.SimpleWorkflowWorker")
#: The key suffix of an e2e row whose workflow side runs with extra `rq worker` options.
EXTRA_KEYS = {PRELOAD: "-preload", ONETRIP: "-onetrip"}


@dataclass
class Row:
    measure: str
    unit_a: str
    unit_b: str
    key: str = ""
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    #: The same-run floor's rates (the e2e rows of stock workers and the API rows, on SQLite), in B's unit.
    floor: list[float] = field(default_factory=list)

    @property
    def median_a(self) -> float:
        return statistics.median(self.a)

    @property
    def median_b(self) -> float:
        return statistics.median(self.b)

    @property
    def ratio(self) -> float:
        return self.median_a / self.median_b

    @property
    def floor_ratio(self) -> float | None:
        """The floor ÷ raw RQ, measured in the same rounds; None where no floor ran."""
        return statistics.median(self.floor) / self.median_b if self.floor else None


def compare(
    measure: str,
    rounds: int,
    run_a: Callable[[], float],
    run_b: Callable[[], float],
    unit_a: str,
    unit_b: str,
    key: str = "",
    run_floor: Callable[[], float] | None = None,
) -> Row:
    """Run A and B ``rounds`` times each, alternating which goes first (ABBA…); keep every rate.
    ``run_floor``: A's floor, run in the same rounds after B (A B floor, then floor B A, …)."""
    row = Row(measure, unit_a, unit_b, key)
    for r in range(rounds):
        turns = [(run_a, row.a), (run_b, row.b), *([(run_floor, row.floor)] if run_floor else [])]
        for run, into in turns if r % 2 == 0 else reversed(turns):
            into.append(run())
        floor = f", the floor {row.floor[-1]:,.0f} {unit_b}" if run_floor else ""
        say(
            f"  {measure} round {r + 1}/{rounds}: workflow_engine {row.a[-1]:,.0f} {unit_a}, "
            f"raw RQ {row.b[-1]:,.0f} {unit_b}{floor}"
        )
    return row


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, redis: RedisServer) -> None:
        self.n: int = args.n
        self.fork_n: int = args.fork_n if args.fork_n is not None else max(args.n // 80, 10)
        self.simple_procs: list[int] = args.simple_procs
        self.rounds: int = args.rounds
        self.batch: int = args.batch
        self.smoke: bool = args.n < SMOKE_BELOW
        self.rows_list: list[int] = args.rows
        self.recovery_setting = recovery.FAST if args.recovery == "fast" else recovery.DEFAULT
        self.recovery_rounds: int = args.recovery_rounds
        self.postgres_url: str | None = args.postgres_url
        self.tmp = tmp
        self.redis = redis
        self.rows: list[Row] = []
        self.queries: list[bench_queries.QueryResult] = []
        self.recoveries: list[recovery.Result] = []
        self.peers: list[peers.PeerResult] = []
        self.notes: list[str] = []
        self.timings: list[tuple[str, float]] = []

    @contextmanager
    def section(self, title: str) -> Iterator[None]:
        say(title)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings.append((title, time.perf_counter() - start))
            say(f"  ({title}: {self.timings[-1][1]:.0f} s)")

    # -- databases ---------------------------------------------------------
    @contextmanager
    def database(self, backend: str) -> Iterator[str]:
        """A fresh, empty database URL for one round."""
        if backend == "sqlite":
            path = self.tmp / f"wf-{uuid.uuid4().hex[:8]}.db"
            try:
                yield f"sqlite:///{path}"
            finally:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
        else:
            assert self.postgres_url is not None
            with harness.scratch_postgres(self.postgres_url) as url:
                yield url

    def backends(self) -> list[str]:
        return ["sqlite"] + (["postgres"] if self.postgres_url else [])

    @staticmethod
    def check_completed(engine: WorkflowEngine, n: int, status: str = "completed") -> None:
        """Every one of the ``n`` workflows is ``status``, counted from the database."""
        found = len(harness.workflows_in(engine, status, n + 1))  # one more: too many is wrong too
        if found != n:
            others = {
                s: len(engine.list_workflows(limit=10_000, status=s))
                for s in ("pending", "queued", "running", "completed", "failed", "cancelled")
            }
            failed = engine.list_workflows(limit=1, status="failed")
            why = f"; a failed one says: {failed[0].error}" if failed else ""
            raise BenchFailure(f"{found} of {n} workflows are {status}; by status: {others}{why}")

    def api_engine(self, url: str) -> WorkflowEngine:
        """An engine on a fresh database and the private Redis, its SQLite file checked to be in WAL mode."""
        engine = WorkflowEngine(database_url=url, redis_url=self.redis.url, queue_name=QUEUE)
        engine.register_handler(TYPE, HANDLER_PATH)
        engine.store.migrate()
        if url.startswith("sqlite:///"):
            check = sqlite3.connect(url[len("sqlite:///") :])
            mode = check.execute("PRAGMA journal_mode").fetchone()[0]
            check.close()
            if mode != "wal":
                raise BenchFailure(f"the SQLite file is in journal_mode={mode}, not WAL")
        engine.transport.ping()
        return engine

    # -- a. in-process -----------------------------------------------------
    def inprocess(self) -> None:
        from fakeredis import FakeRedis
        from rq import Queue

        n = self.n

        def engine_run(n: int = n) -> float:
            with self.database("sqlite") as url:
                engine = WorkflowEngine(database_url=url, redis_url="fakeredis://", is_async=False)
                engine.register_handler(TYPE, bench_jobs.noop_workflow)
                engine.store.migrate()
                start = time.perf_counter()
                for _ in range(n):
                    engine.enqueue_execution(engine.create_workflow(workflow_type_id=TYPE))
                elapsed = time.perf_counter() - start
                self.check_completed(engine, n)
                engine.close()
            return n / elapsed

        def rq_run(n: int = n) -> float:
            queue = Queue(QUEUE, is_async=False, connection=FakeRedis())
            start = time.perf_counter()
            jobs = [queue.enqueue(bench_jobs.noop) for _ in range(n)]
            elapsed = time.perf_counter() - start
            bad = [j.id for j in jobs if j.get_status(refresh=True) != "finished"]
            if bad:
                raise BenchFailure(f"{len(bad)} of {n} RQ sync jobs did not finish")
            return n / elapsed

        # Warm up: first-use imports and caches are not what is measured.
        engine_run(20)
        rq_run(20)
        self.rows.append(
            compare(
                f"in-process: create+enqueue+run, N={n} (SQLite file / fakeredis, is_async=False)",
                self.rounds,
                engine_run,
                rq_run,
                "wf/s",
                "jobs/s",
                key="inprocess",
            )
        )

    # -- b. API side -------------------------------------------------------
    def raw_queue(self):  # type: ignore[no-untyped-def]
        import redis as redis_lib
        from rq import Queue

        queue = Queue(QUEUE, connection=redis_lib.Redis.from_url(self.redis.url))
        queue.connection.ping()
        return queue

    def queued_by_engine(self, backend: str, n: int, fill: Callable[[WorkflowEngine, int], None]) -> float:
        """Workflows/s of ``fill(engine, n)`` on a fresh database, which must leave n jobs queued."""
        self.redis.flushall()
        with self.database(backend) as url:
            engine = self.api_engine(url)
            start = time.perf_counter()
            fill(engine, n)
            elapsed = time.perf_counter() - start
            self.check_completed(engine, n, status="queued")
            if engine.transport.depth() != n:
                raise BenchFailure(f"{engine.transport.depth()} jobs on the queue, expected {n}")
            engine.close()
        return n / elapsed

    def queued_by_rq(self, n: int, fill: Callable[[Any, int], None]) -> float:
        """Jobs/s of ``fill(queue, n)`` on a raw RQ queue, checked to leave n jobs queued."""
        self.redis.flushall()
        queue = self.raw_queue()
        start = time.perf_counter()
        fill(queue, n)
        elapsed = time.perf_counter() - start
        if queue.count != n:
            raise BenchFailure(f"{queue.count} jobs on the queue, expected {n}")
        return n / elapsed

    def api(self, backend: str) -> None:
        """Single calls: ``create_workflow`` then ``enqueue_execution`` (two commits), or the fused
        ``create_workflow(enqueue=True)`` (one commit), against ``Queue.enqueue``."""

        def two_calls(engine: WorkflowEngine, n: int) -> None:
            for _ in range(n):
                engine.enqueue_execution(engine.create_workflow(workflow_type_id=TYPE))

        def fused(engine: WorkflowEngine, n: int) -> None:
            for _ in range(n):
                engine.create_workflow(workflow_type_id=TYPE, enqueue=True)

        def raw(queue: Any, n: int) -> None:
            for _ in range(n):
                queue.enqueue(bench_jobs.noop)

        # On SQLite, each row's floor in the same rounds: the same delivery after only the SQL of the
        # call's durable transactions (api_floor.py: two for the two calls, one for the fused call).
        floors = api_floor.Floor(self.tmp, self.redis, self.n) if backend == "sqlite" else None

        def floor_of(kind: str) -> Callable[[], float] | None:
            if floors is None:
                return None
            api_floor.Floor(self.tmp, self.redis, 20).run(kind)  # a warm-up, as the rows have
            measured = floors
            return lambda: measured.run(kind)  # on a flushed Redis and a fresh SQLite file

        for calls, fill, key, floor in (
            ("create_workflow+enqueue_execution", two_calls, "api", floor_of("two-call floor")),
            ("create_workflow(enqueue=True)", fused, "api-fused", floor_of("sql floor")),
        ):
            measure = f"API: {calls} vs Queue.enqueue"
            self.compare_queued(backend, measure, key, fill, raw, warm_up=20, run_floor=floor)

    def bulk(self, backend: str) -> None:
        """``create_workflows`` + ``enqueue_many`` (two transactions a batch), or the fused
        ``create_workflows(..., enqueue=True)`` (one), in batches against raw ``Queue.enqueue_many``."""
        from rq import Queue

        batch = self.batch
        items = [{"workflow_type_id": TYPE}] * batch

        def two_calls(engine: WorkflowEngine, n: int) -> None:
            for done in range(0, n, batch):
                engine.enqueue_many(engine.create_workflows(items[: min(batch, n - done)]))

        def fused(engine: WorkflowEngine, n: int) -> None:
            for done in range(0, n, batch):
                engine.create_workflows(items[: min(batch, n - done)], enqueue=True)

        def raw(queue: Any, n: int) -> None:
            for done in range(0, n, batch):
                queue.enqueue_many([Queue.prepare_data(bench_jobs.noop) for _ in range(min(batch, n - done))])

        for calls, fill, key in (
            ("create_workflows+enqueue_many", two_calls, "bulk"),
            ("create_workflows(enqueue=True)", fused, "bulk-fused"),
        ):
            measure = f"bulk: {calls} vs Queue.enqueue_many, batches of {batch}"
            self.compare_queued(backend, measure, key, fill, raw, warm_up=min(self.n, batch))

    def compare_queued(
        self,
        backend: str,
        measure: str,
        key: str,
        fill: Callable[[WorkflowEngine, int], None],
        raw: Callable[[Any, int], None],
        *,
        warm_up: int,
        run_floor: Callable[[], float] | None = None,
    ) -> None:
        """One API row: ``fill`` against ``raw``, after a warm-up of each (first-use imports and caches);
        ``run_floor``: its floor, run in the same rounds."""
        self.queued_by_engine(backend, warm_up, fill)
        self.queued_by_rq(warm_up, raw)
        what = "SQLite WAL" if backend == "sqlite" else "PostgreSQL"
        self.rows.append(
            compare(
                f"{measure}, N={self.n} (real Redis, {what})",
                self.rounds,
                lambda: self.queued_by_engine(backend, self.n, fill),
                lambda: self.queued_by_rq(self.n, raw),
                "wf/s",
                "jobs/s",
                key=f"{key}-{backend}",
                run_floor=run_floor,
            )
        )
        self.redis.flushall()

    # -- c./d. end to end --------------------------------------------------
    def run_workers(
        self, n: int, worker_class: str, procs: int, database_url: str | None, extra: tuple[str, ...] = ()
    ) -> float:
        """Run ``procs`` stock ``rq worker workflows --burst``: seconds from the first start to the end
        of the last job, as RQ recorded it (``ended_at``), or to the last exit if no job ran.

        Not to the last exit: a burst worker's exit waits up to 1 s, at random, for its pub/sub
        thread (RQ's ``unsubscribe`` joins it with ``timeout=1``), which is not work and, in
        either arm, moved a round of 2,000 jobs by 10 % or one of 25 forked jobs by half."""
        env = harness.worker_env(database_url, self.redis.url)
        cmd = harness.rq_worker_cmd(self.redis.url, worker_class) + list(extra)
        wall_start, start = time.time(), time.perf_counter()
        workers = [harness.start(cmd, env, self.tmp) for _ in range(procs)]
        try:
            codes = [w.wait(timeout=max(120.0, n * 0.1)) for w in workers]
        finally:
            for w in workers:
                w.stop()
        elapsed = time.perf_counter() - start
        for w, code in zip(workers, codes, strict=True):
            if code != 0:
                raise BenchFailure(f"worker exited with code {code}\n{w.tail()}")
        for w in workers:
            w.log.unlink(missing_ok=True)
        last_end = self.last_job_end()
        return elapsed if last_end is None else last_end - wall_start

    def last_job_end(self) -> float | None:
        """When the queue's last finished job ended (``time.time()`` scale), by RQ's ``ended_at``."""
        from rq.utils import utcparse

        queue = self.raw_queue()
        ids = queue.finished_job_registry.get_job_ids()
        with queue.connection.pipeline() as pipe:
            for job_id in ids:
                pipe.hget(queue.job_class.key_for(job_id), "ended_at")
            ends = [utcparse(raw.decode()).timestamp() for raw in pipe.execute() if raw]
        return max(ends, default=None)

    def e2e(self, backends: Sequence[str]) -> None:
        """Stock ``rq worker --burst`` over N workflows on each of ``backends``, and over N raw no-ops.

        Each worker configuration runs every backend and raw RQ in one alternating sequence:
        (SQLite, raw, PostgreSQL), then (PostgreSQL, raw, SQLite), … Both backends' rows share
        raw RQ's rounds, which are measured once instead of once per backend (about 1.5 minutes
        of a slow instance's suite), and each workflow round still runs next to a raw one.

        The stock SimpleWorker rows and the preloaded forking row also run their floor on SQLite, in
        the same sequence (SQLite, raw, the floor, PostgreSQL): the same workers over N workflows whose
        jobs run only the SQL of a claim and a completion (two durable transactions,
        ``bench_jobs.sql_floor_job``), what an engine that keeps those guarantees with no Python of its
        own would reach in this run."""
        from rq import Queue

        configs: list[tuple[str, int, int, tuple[str, ...], tuple[str, ...]]] = [
            *(("simple", procs, self.n, (), ("sqlite", "postgres")) for procs in self.simple_procs),
            ("fork", 1, self.fork_n, (), ("sqlite", "postgres")),
            ("fork", 2, self.fork_n, (), ("sqlite", "postgres")),
        ]
        if importlib.util.find_spec("workflow_engine.rq_preload") is not None:
            # The workflow side's forking worker preloads workflow_engine in its parent (RQ's -c settings
            # module), so that a work-horse does not import it per job; raw RQ runs the plain command.
            configs.append(("fork", 1, self.fork_n, PRELOAD, ("sqlite", "postgres")))
        if importlib.util.find_spec("workflow_engine.workers") is not None:
            # The workflow side's SimpleWorker with one-round-trip heartbeats (what `workflow-engine
            # worker -w simple` runs), against raw RQ's stock SimpleWorker: beyond RQ's own ceiling.
            # SQLite only and at N/2, to keep the suite under 10 minutes; on PostgreSQL the engine's
            # own database round trips weigh more than the heartbeats' (docs/performance.md).
            configs.append(("simple", 1, max(self.n // 2, 10), ONETRIP, ("sqlite",)))
        later: list[Row] = []  # PostgreSQL's rows, listed after SQLite's
        try:
            for worker_class, procs, n, extra, on in configs:
                arms = [backend for backend in backends if backend in on]
                if not arms:
                    continue

                def engine_run(
                    backend: str,
                    worker_class: str = worker_class,
                    procs: int = procs,
                    n: int = n,
                    extra: tuple[str, ...] = extra,
                    floor: bool = False,
                ) -> float:
                    """N workflows run by the workers; ``floor``: their jobs replaced by jobs that run only
                    the SQL of their claim and completion (``bench_jobs.sql_floor_job``)."""
                    self.redis.flushall()
                    with self.database(backend) as url:
                        engine = WorkflowEngine(database_url=url, redis_url=self.redis.url, queue_name=QUEUE)
                        engine.register_handler(TYPE, HANDLER_PATH)
                        if floor:
                            workflows = e2e_floor.queue_workflows(engine, n, TYPE)
                            e2e_floor.reshape(self.raw_queue(), bench_jobs.sql_floor_job, workflows, TYPE)
                        else:
                            for done in range(0, n, self.batch):
                                engine.enqueue_many(
                                    engine.create_workflows(
                                        [{"workflow_type_id": TYPE}] * min(self.batch, n - done)
                                    )
                                )
                        elapsed = self.run_workers(n, worker_class, procs, url, extra)
                        self.check_completed(engine, n)
                        engine.close()
                    return n / elapsed

                def rq_run(worker_class: str = worker_class, procs: int = procs, n: int = n) -> float:
                    self.redis.flushall()
                    queue = self.raw_queue()
                    queue.enqueue_many([Queue.prepare_data(bench_jobs.noop) for _ in range(n)])
                    elapsed = self.run_workers(n, worker_class, procs, None)
                    done, failed = queue.finished_job_registry.count, queue.failed_job_registry.count
                    if done != n or failed or queue.count:
                        raise BenchFailure(
                            f"raw RQ: {done} of {n} jobs finished, {failed} failed, "
                            f"{queue.count} still queued"
                        )
                    return n / elapsed

                kind = "SimpleWorker" if worker_class == "simple" else "forking Worker"
                options = f" ({' '.join(extra)} on the workflow side)" if extra else ""
                rows = {
                    backend: Row(
                        f"e2e {LABEL[backend]}: `rq worker --burst` {kind} x{procs}{options}, N={n}",
                        "wf/s",
                        "jobs/s",
                        key=f"e2e-{backend}-{worker_class}-{procs}{EXTRA_KEYS.get(extra, '')}",
                    )
                    for backend in arms
                }
                raw: list[float] = []
                # A floor for the stock SimpleWorker rows and the preloaded forking one, on SQLite.
                floored = "sqlite" in arms and extra == (() if worker_class == "simple" else PRELOAD)
                for r in range(self.rounds):
                    order = [arms[0], RAW, *([FLOOR] if floored else []), *arms[1:]]
                    for who in order if r % 2 == 0 else reversed(order):
                        if who == RAW:
                            raw.append(rq_run())
                        elif who == FLOOR:
                            rows["sqlite"].floor.append(engine_run("sqlite", floor=True))
                        else:
                            rows[who].a.append(engine_run(who))
                    figures = ", ".join(f"{LABEL[b]} {rows[b].a[-1]:,.0f} wf/s" for b in arms)
                    floor = f", the floor {rows['sqlite'].floor[-1]:,.0f} jobs/s" if floored else ""
                    say(
                        f"  e2e {kind} x{procs}{options}, N={n}, round {r + 1}/{self.rounds}: "
                        f"{figures}, raw RQ {raw[-1]:,.0f} jobs/s{floor}"
                    )
                for backend in arms:
                    rows[backend].b = list(raw)
                    (self.rows if backend == "sqlite" else later).append(rows[backend])
        finally:  # the rows measured before a failure are reported with it
            self.rows.extend(later)
        self.redis.flushall()

    def worker_startup(self) -> None:
        """How long a burst worker takes to start and exit on an empty queue (e2e times include the start)."""
        self.redis.flushall()
        times = []
        for worker_class in ("simple", "fork"):
            times.append(self.run_workers(0, worker_class, 1, None))
        self.notes.append(
            f"an `rq worker --burst` on an empty queue takes {statistics.median(times):.2f} s to start and "
            "exit; every e2e time runs from the workers' start to the end of the last job (RQ's `ended_at`), "
            "so it includes their start-up but not their exit"
        )

    # -- peers -------------------------------------------------------------
    def run_peers(self) -> None:
        """Celery, Dramatiq and Huey on the same N no-ops, in their own venv (benchmarks/peers.py)."""
        self.peers = peers.run_peers(self.n, self.rounds, say)

    # -- e. queries --------------------------------------------------------
    def run_queries(self) -> None:
        self.queries = bench_queries.run(
            self.backends(),
            self.rows_list,
            tmp=self.tmp,
            redis_url=self.redis.url,
            postgres_url=self.postgres_url,
            reps=100 * self.rounds,
            stats_rounds=max(self.rounds, 3),
        )

    # -- f. recovery -------------------------------------------------------
    def run_recovery(self) -> None:
        setting = self.recovery_setting
        for r in range(self.recovery_rounds):
            result = recovery.measure(setting, self.redis, self.tmp)
            self.recoveries.append(result)
            say(
                f"  [{setting.name}] round {r + 1}/{self.recovery_rounds}: requeued {result.seconds:.2f} s "
                f"after the kill, running again after {result.rerun_seconds:.2f} s"
            )
        self.redis.flushall()


# -- output ------------------------------------------------------------------
def format_table(rows: list[Row]) -> str:
    lines = ["| measure | workflow_engine | raw RQ | ratio |", "|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row.measure} | {row.median_a:,.0f} {row.unit_a} | {row.median_b:,.0f} {row.unit_b} | "
            f"{row.ratio:.2f} |"
        )
    return "\n".join(lines)


def format_floors(rows: list[Row]) -> str:
    """The rows that ran their floor beside them (e2e and API, on SQLite), with it."""
    floored = [row for row in rows if row.floor]
    if not floored:
        return ""
    lines = [
        "Floors in this run, measured in the same rounds on SQLite: what an engine that keeps the "
        "guarantees with no Python of its own would reach. End to end: the same workers over N "
        "workflows whose jobs run only the SQL of a claim and a completion (two durable transactions; "
        "bench_jobs.sql_floor_job). API: the same delivery as the engine's after only the SQL of the "
        "call's durable transactions (one for the fused call, two for the two calls; api_floor.py):",
        "",
        "| row | workflow_engine | the floor | raw RQ | workflow_engine ÷ raw | the floor ÷ raw |",
        "|---|---|---|---|---|---|",
    ]
    for row in floored:
        lines.append(
            f"| {row.measure} | {row.median_a:,.0f} {row.unit_a} | {statistics.median(row.floor):,.0f} "
            f"{row.unit_b} | {row.median_b:,.0f} {row.unit_b} | {row.ratio:.2f} | {row.floor_ratio:.2f} |"
        )
    return "\n".join(lines)


def format_scaling(rows: list[Row]) -> str:
    """SimpleWorker e2e by process count: SQLite against PostgreSQL (and raw RQ) from the rows above."""
    by_key = {row.key: row for row in rows}
    backends = [b for b in ("sqlite", "postgres") if any(k.startswith(f"e2e-{b}-simple-") for k in by_key)]
    procs = [p for p in (1, 2, 4) if any(f"e2e-{b}-simple-{p}" in by_key for b in backends)]
    if not procs:
        return ""
    header = " | ".join(f"{LABEL[b]} wf/s" for b in backends)
    lines = [
        f"| `rq worker -w rq.SimpleWorker` processes | {header} | raw RQ jobs/s |",
        "|---|" + "---|" * (len(backends) + 1),
    ]
    for p in procs:
        cells, raw = [], []
        for backend in backends:
            row = by_key.get(f"e2e-{backend}-simple-{p}")
            cells.append(f"{row.median_a:,.0f}" if row else "not run")
            if row and not raw:
                raw = list(row.b)  # one set of raw rounds, shared by both backends' rows (Bench.e2e)
        raw_cell = f"{statistics.median(raw):,.0f}" if raw else "not run"
        lines.append(f"| {p} | {' | '.join(cells)} | {raw_cell} |")
    return "\n".join(lines)


def format_peers(bench: Bench) -> str:
    """The peers beside this run's end-to-end figures for one SimpleWorker process."""
    by_key = {row.key: row for row in bench.rows}
    ours = by_key.get("e2e-sqlite-simple-1")
    lines = [
        f"Peers on the same no-op, N={bench.n}, from worker start to the last task done "
        "(benchmarks/peers.py, their own venv):",
        "",
        "| system | tasks/s | rounds | workflow_engine ÷ it | note |",
        "|---|---|---|---|---|",
    ]
    if ours is not None:
        lines.append(
            f"| workflow_engine, `rq worker` SimpleWorker x1, SQLite (this run) | {ours.median_a:,.0f} | "
            f"{', '.join(f'{a:,.0f}' for a in ours.a)} | 1.00 | durable: every status change committed |"
        )
        lines.append(
            f"| raw RQ, `rq worker` SimpleWorker x1 (this run) | {ours.median_b:,.0f} | "
            f"{', '.join(f'{b:,.0f}' for b in ours.b)} | {ours.ratio:.2f} | results in Redis |"
        )
    for res in bench.peers:
        median = res.median
        ratio = f"{ours.median_a / median:.2f}" if ours is not None and median else "—"
        rates = ", ".join(f"{rate:,.0f}" for rate in res.rates) or "—"
        shown = "—" if median is None else f"{median:,.0f}"
        lines.append(f"| {res.name} | {shown} | {rates} | {ratio} | {res.note} |")
    return "\n".join(lines)


def format_recovery(results: list[recovery.Result]) -> str:
    if not results:
        return ""
    s = results[0].setting
    low, high = s.stale_after - s.heartbeat_interval, s.stale_after + s.reconcile_every
    seconds = [r.seconds for r in results]
    rerun = [r.rerun_seconds for r in results]
    lines = [
        "| recovery setting | heartbeat | stale after | reconcile every | kill -9 → queued | expected window "
        "| kill -9 → running again | rounds |",
        "|---|---|---|---|---|---|---|---|",
        f"| {s.name} | {s.heartbeat_interval:g} s | {s.stale_after:g} s | {s.reconcile_every:g} s | "
        f"{statistics.median(seconds):.2f} s | {low:g}-{high:g} s | {statistics.median(rerun):.2f} s | "
        f"{', '.join(f'{x:.2f}' for x in seconds)} s |",
    ]
    return "\n".join(lines)


def targets(bench: Bench) -> list[tuple[str, str, str, str]]:
    """(measure, target, result, met) for every target of the issue that this run measured."""
    by_key = {row.key: row for row in bench.rows}
    out: list[tuple[str, str, str, str]] = []

    def ratio(key: str, what: str, goal: float) -> None:
        row = by_key.get(key)
        if row is not None:
            result = f"{row.ratio:.2f}"
            if row.floor_ratio is not None:
                result += f" (the floor in this run: {row.floor_ratio:.2f})"
            out.append((what, f"≥ {goal:.2f}", result, "yes" if row.ratio >= goal else "**no**"))

    for row in bench.rows:
        if row.key.startswith("e2e-sqlite-"):
            what = row.measure.split(": ", 1)[1].split(", N=")[0]
            ratio(row.key, f"e2e ÷ raw RQ, SQLite, {what}", 0.85)
    ratio("api-sqlite", "create_workflow+enqueue_execution ÷ Queue.enqueue (SQLite)", 0.75)
    ratio("api-fused-sqlite", "create_workflow(enqueue=True) ÷ Queue.enqueue (SQLite)", 0.75)
    for key, what in (
        ("bulk-sqlite", "bulk create_workflows+enqueue_many (SQLite)"),
        ("bulk-fused-sqlite", "bulk create_workflows(enqueue=True) (SQLite)"),
    ):
        bulk = by_key.get(key)
        if bulk is not None:
            met = "yes" if bulk.median_a >= 5000 else "**no**"
            out.append((what, "≥ 5,000 wf/s", f"{bulk.median_a:,.0f} wf/s", met))
    ratio("inprocess", "in-process ÷ RQ's own sync mode", 1.0)
    for backend in ("SQLite", "PostgreSQL"):
        mine = [r for r in bench.queries if r.backend == backend]
        if not mine:
            continue
        largest = max(mine, key=lambda r: r.rows)
        worst = max(largest.queries, key=lambda x: bench_queries.percentile(x.samples, 50))
        p50 = bench_queries.percentile(worst.samples, 50) * 1000
        at = f"{largest.rows:,} rows" + ("" if largest.rows >= 1_000_000 else " (the target is at 1M)")
        out.append(
            (
                f"`list_workflows` p50, worst filter/page, {backend}, {at}",
                "≤ 2 ms",
                f"{p50:.2f} ms ({worst.label})",
                "yes" if p50 <= 2 else "**no**",
            )
        )
        stats = statistics.median(largest.stats_seconds)
        out.append(
            (
                f"`engine.stats()`, {backend}, {at}",
                "< 1 s (issue 6)",
                f"{stats:.2f} s",
                "yes" if stats < 1 else "**no**",
            )
        )
    if bench.recoveries:
        s = bench.recoveries[0].setting
        low, high = s.stale_after - s.heartbeat_interval, s.stale_after + s.reconcile_every
        got = statistics.median(r.seconds for r in bench.recoveries)
        out.append(
            (
                f"kill -9 → queued, {s.name} settings",
                f"within {low:g}-{high:g} s",
                f"{got:.2f} s",
                "yes" if got <= high + 1 else "**no**",
            )
        )
    return out


def versions(postgres_url: str | None) -> str:
    parts = [f"Python {platform.python_version()}", f"rq {version('rq')}", f"redis-py {version('redis')}"]
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
        parts.append("redis-server " + out.stdout.split("v=")[1].split()[0])
    except (OSError, IndexError):
        pass
    parts.append(f"SQLite {sqlite3.sqlite_version}")
    if postgres_url:
        try:
            import psycopg

            with psycopg.connect(postgres_url, connect_timeout=5) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                parts.append(f"PostgreSQL {row[0] if row else '?'}")
        except Exception:
            pass
    return ", ".join(parts)


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def cpu_check() -> str:
    """How fast this machine runs plain Python right now: the best of 3 loops of 3M integer adds.

    Only ratios are compared within a run; this tells runs on a throttled or busy machine apart.
    """
    best = float("inf")
    for _ in range(3):
        start, total = time.perf_counter(), 0
        for i in range(3_000_000):
            total += i
        best = min(best, time.perf_counter() - start)
    return f"3M Python integer adds in {best * 1000:.0f} ms"


def io_check(tmp: Path, redis_url: str) -> str:
    """What this machine's two kinds of round trip cost right now: a durable SQLite commit (WAL,
    ``synchronous=NORMAL``, autocheckpoint on) and a Redis PING; medians and means of 2,000 each."""
    import redis as redis_lib

    db = sqlite3.connect(tmp / "io-check.db", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    commits = []
    for i in range(2000):
        start = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}" * 20,))
        db.execute("COMMIT")
        commits.append(time.perf_counter() - start)
    db.close()
    client = redis_lib.Redis.from_url(redis_url)
    pings = []
    for _ in range(2000):
        start = time.perf_counter()
        client.ping()
        pings.append(time.perf_counter() - start)
    client.close()
    return (
        f"SQLite insert+commit {statistics.median(commits) * 1000:.3f} ms median, "
        f"{statistics.mean(commits) * 1000:.3f} ms mean; "
        f"Redis PING {statistics.median(pings) * 1000:.3f} ms median"
    )


def parse_procs(text: str) -> list[int]:
    try:
        procs = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        message = f"--simple-procs takes integers, such as 1,2,4; got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not procs or min(procs) < 1:
        raise argparse.ArgumentTypeError("--simple-procs values must be at least 1")
    return procs


def parse_rows(text: str) -> list[int]:
    try:
        rows = [int(x.strip().replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rows takes comma-separated integers, got {text!r}") from None
    if not rows or min(rows) < bench_queries.MIN_ROWS:
        raise argparse.ArgumentTypeError(f"every --rows value must be at least {bench_queries.MIN_ROWS:,}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="workflows/jobs per measurement (default 2000)")
    parser.add_argument(
        "--fork-n",
        type=int,
        default=None,
        help="workflows/jobs per forking-worker measurement (default N/80, at least 10): "
        "a work-horse per job makes these slow",
    )
    parser.add_argument(
        "--simple-procs",
        type=parse_procs,
        default=[1, 2],
        help="SimpleWorker process counts of the e2e rows (default 1,2; the machine has 2 cores)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per comparison; the median is reported")
    parser.add_argument(
        "--batch", type=int, default=500, help="batch size of the bulk API section (default 500)"
    )
    parser.add_argument(
        "--rows",
        type=parse_rows,
        default=None,
        help="comma-separated table sizes of the queries section (default 100000,1000000; "
        "2000 in a smoke run). SQLite tables of 50,000 rows or more are cached under "
        f"{bench_queries.CACHE}",
    )
    parser.add_argument(
        "--recovery",
        choices=("default", "fast"),
        default=None,
        help="recovery setting: default (heartbeat 5 s, stale after 30 s, reconcile every 10 s) or fast "
        "(1 s, 5 s, 2 s). Default: default, or fast in a smoke run",
    )
    parser.add_argument("--recovery-rounds", type=int, default=1, help="kill -9 measurements (default 1)")
    parser.add_argument(
        "--only", default=None, help=f"comma-separated sections to run, from: {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="admin URL of a PostgreSQL server (e.g. postgresql://postgres@127.0.0.1:5432/postgres):"
        " also run the API, bulk, e2e and queries sections on scratch databases created and dropped there",
    )
    args = parser.parse_args(argv)
    if (
        args.n < 1
        or args.rounds < 1
        or args.batch < 1
        or args.recovery_rounds < 1
        or (args.fork_n is not None and args.fork_n < 1)
    ):
        parser.error("--n, --fork-n, --rounds, --batch and --recovery-rounds must be at least 1")
    smoke = args.n < SMOKE_BELOW
    if args.rows is None:
        args.rows = list(SMOKE_ROWS if smoke else FULL_ROWS)
    if args.recovery is None:
        args.recovery = "fast" if smoke else "default"
    only = set(SECTIONS) if args.only is None else {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if args.postgres_url is None:
        if args.only is not None and "postgres" in only:
            parser.error("the postgres section needs --postgres-url")
        only.discard("postgres")

    started = time.perf_counter()
    load_before = load_average()
    times_before = harness.cpu_times()
    speed = harness.compile_bytecode() + "; " + cpu_check()
    failure: BaseException | None = None
    with tempfile.TemporaryDirectory(prefix="we-bench-") as tmp_name:
        tmp = Path(tmp_name)
        redis = RedisServer(tmp)
        bench = Bench(args, tmp, redis)
        try:
            redis.start()
            say(f"private redis-server on port {redis.port} (pid {redis.proc.pid if redis.proc else '?'})")
            speed += "; " + io_check(tmp, redis.url)
            if "inprocess" in only:
                with bench.section("a. in-process"):
                    bench.inprocess()
            if "api" in only:
                for backend in bench.backends():
                    with bench.section(f"b. API, {LABEL[backend]}"):
                        bench.api(backend)
            if "bulk" in only:
                for backend in bench.backends():
                    with bench.section(f"b. bulk API, {LABEL[backend]}"):
                        bench.bulk(backend)
            if "e2e" in only or "postgres" in only:
                bench.worker_startup()
            e2e = [backend for backend, name in (("sqlite", "e2e"), ("postgres", "postgres")) if name in only]
            if e2e:
                with bench.section(f"c. end to end, {' and '.join(LABEL[b] for b in e2e)}"):
                    bench.e2e(e2e)
            if "peers" in only:
                with bench.section("g. peers: Celery, Dramatiq, Huey"):
                    bench.run_peers()
            if "queries" in only:
                with bench.section(f"e. queries: {', '.join(f'{r:,}' for r in args.rows)} rows"):
                    bench.run_queries()
            if "recovery" in only:
                with bench.section(f"f. recovery, {args.recovery} setting"):
                    bench.run_recovery()
        except Exception as exc:
            failure = exc
        except KeyboardInterrupt:
            failure = KeyboardInterrupt()
        finally:
            redis.stop()

    print(
        f"\nworkflow_engine vs raw RQ: N={args.n}, median of {args.rounds} round(s); "
        f"{versions(args.postgres_url)}; {os.cpu_count()} CPUs; load average {load_before} at the start, "
        f"{load_average()} at the end; CPU check at the start: {speed}; CPU stolen by the hypervisor "
        f"over the run: {harness.steal_percent(times_before, harness.cpu_times())}; "
        f"total {time.perf_counter() - started:.0f} s\n"
    )
    if bench.rows:
        print(format_table(bench.rows))
        for table in (format_floors(bench.rows), format_scaling(bench.rows)):
            if table:
                print(f"\n{table}")
    if bench.peers:
        print(f"\n{format_peers(bench)}")
    if bench.queries:
        print(f"\n{bench_queries.format_tables(bench.queries)}")
    if bench.recoveries:
        print(f"\n{format_recovery(bench.recoveries)}")
    goals = targets(bench)
    if goals:
        print("\n| target | goal | result | met |\n|---|---|---|---|")
        for what, goal, result, met in goals:
            print(f"| {what} | {goal} | {result} | {met} |")
    if bench.rows:
        print("\nEvery round (workflow_engine / raw RQ):")
        for row in bench.rows:
            pairs = ", ".join(f"{a:,.0f}/{b:,.0f}" for a, b in zip(row.a, row.b, strict=False))
            floor = f"; the floor {', '.join(f'{x:,.0f}' for x in row.floor)}" if row.floor else ""
            print(f"- {row.measure}: {pairs}{floor}")
    for note in bench.notes:
        print(f"\nNote: {note}")
    if bench.timings:
        print(
            "\nTime per section: " + "; ".join(f"{title} {seconds:.0f} s" for title, seconds in bench.timings)
        )
    if failure is not None:
        if isinstance(failure, BenchFailure):
            print(f"\nFAILED: {failure}", file=sys.stderr)
        else:
            import traceback

            traceback.print_exception(type(failure), failure, failure.__traceback__)
            print(f"\nFAILED: {type(failure).__name__}: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
