"""workflow_engine against raw RQ, side by side in one run.

    python benchmarks/bench.py                        # the default suite, N=2000, 3 rounds
    python benchmarks/bench.py --n 200 --rounds 1     # the CI smoke run: checks that everything works
    python benchmarks/bench.py --only api,inprocess
    python benchmarks/bench.py --postgres-url postgresql://postgres@127.0.0.1:5432/postgres

Every comparison runs A (workflow_engine) and B (raw RQ) in the same run,
alternating which goes first from round to round, and reports the median of
the rounds. A private redis-server is started on a free port and stopped by
PID at the end. The exit code is non-zero if anything did not run as it
must (a workflow not completed, a job failed, a worker that failed); no
timing is ever asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_jobs
import harness
from harness import QUEUE, BenchFailure, RedisServer

from workflow_engine import WorkflowEngine

TYPE = "bench_noop"
HANDLER_PATH = "bench_jobs:noop_workflow"
SECTIONS = ("inprocess", "api", "e2e", "postgres")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Row:
    measure: str
    unit_a: str
    unit_b: str
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)

    @property
    def median_a(self) -> float:
        return statistics.median(self.a)

    @property
    def median_b(self) -> float:
        return statistics.median(self.b)


def compare(
    measure: str,
    rounds: int,
    run_a: Callable[[], float],
    run_b: Callable[[], float],
    unit_a: str,
    unit_b: str,
) -> Row:
    """Run A and B ``rounds`` times each, alternating which goes first (ABBA…); keep every rate."""
    row = Row(measure, unit_a, unit_b)
    for r in range(rounds):
        pair = [(run_a, row.a), (run_b, row.b)]
        for run, into in pair if r % 2 == 0 else reversed(pair):
            into.append(run())
        say(
            f"  {measure} round {r + 1}/{rounds}: workflow_engine {row.a[-1]:,.0f} {unit_a}, "
            f"raw RQ {row.b[-1]:,.0f} {unit_b}"
        )
    return row


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, redis: RedisServer) -> None:
        self.n: int = args.n
        self.fork_n: int = args.fork_n if args.fork_n is not None else max(args.n // 20, 10)
        self.rounds: int = args.rounds
        self.postgres_url: str | None = args.postgres_url
        self.tmp = tmp
        self.redis = redis
        self.rows: list[Row] = []
        self.notes: list[str] = []

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

    @staticmethod
    def check_completed(engine: WorkflowEngine, n: int, status: str = "completed") -> None:
        """Every one of the ``n`` workflows is ``status``, counted from the database."""
        found, before = 0, None
        while True:
            page = engine.list_workflows(limit=min(max(n, 1), 10_000), status=status, before=before)
            found += len(page)
            if len(page) < min(max(n, 1), 10_000):
                break
            before = page[-1]
        if found != n:
            others = {
                s: len(engine.list_workflows(limit=10_000, status=s))
                for s in ("pending", "queued", "running", "completed", "failed", "cancelled")
            }
            failed = engine.list_workflows(limit=1, status="failed")
            why = f"; a failed one says: {failed[0].error}" if failed else ""
            raise BenchFailure(f"{found} of {n} workflows are {status}; by status: {others}{why}")

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
            )
        )

    # -- b. API side -------------------------------------------------------
    def api(self) -> None:
        import redis as redis_lib
        from rq import Queue

        n = self.n

        def engine_run(n: int = n) -> float:
            self.redis.flushall()
            with self.database("sqlite") as url:
                engine = WorkflowEngine(database_url=url, redis_url=self.redis.url, queue_name=QUEUE)
                engine.register_handler(TYPE, HANDLER_PATH)
                engine.store.migrate()
                path = url[len("sqlite:///") :]
                check = sqlite3.connect(path)
                mode = check.execute("PRAGMA journal_mode").fetchone()[0]
                check.close()
                if mode != "wal":
                    raise BenchFailure(f"the SQLite file is in journal_mode={mode}, not WAL")
                engine.transport.ping()
                start = time.perf_counter()
                for _ in range(n):
                    engine.enqueue_execution(engine.create_workflow(workflow_type_id=TYPE))
                elapsed = time.perf_counter() - start
                self.check_completed(engine, n, status="queued")
                if engine.transport.depth() != n:
                    raise BenchFailure(f"{engine.transport.depth()} jobs on the queue, expected {n}")
                engine.close()
            return n / elapsed

        def rq_run(n: int = n) -> float:
            self.redis.flushall()
            queue = Queue(QUEUE, connection=redis_lib.Redis.from_url(self.redis.url))
            queue.connection.ping()
            start = time.perf_counter()
            for _ in range(n):
                queue.enqueue(bench_jobs.noop)
            elapsed = time.perf_counter() - start
            if queue.count != n:
                raise BenchFailure(f"{queue.count} jobs on the queue, expected {n}")
            return n / elapsed

        engine_run(20)  # warm up
        rq_run(20)
        self.rows.append(
            compare(
                f"API: create_workflow+enqueue_execution vs Queue.enqueue, N={n} (real Redis, SQLite WAL)",
                self.rounds,
                engine_run,
                rq_run,
                "wf/s",
                "jobs/s",
            )
        )
        self.redis.flushall()

    # -- c./d. end to end --------------------------------------------------
    def run_workers(
        self, n: int, worker_class: str, procs: int, database_url: str | None, extra: tuple[str, ...] = ()
    ) -> float:
        """Run ``procs`` stock ``rq worker workflows --burst``; seconds from first start to last exit."""
        env = harness.worker_env(database_url, self.redis.url)
        cmd = harness.rq_worker_cmd(self.redis.url, worker_class) + list(extra)
        start = time.perf_counter()
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
        return elapsed

    def e2e(self, backend: str) -> None:
        import redis as redis_lib
        from rq import Queue

        label = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[backend]
        configs: list[tuple[str, int, int, tuple[str, ...]]] = [
            ("simple", 1, self.n, ()),
            ("simple", 2, self.n, ()),
            ("fork", 1, self.fork_n, ()),
            ("fork", 2, self.fork_n, ()),
        ]
        if importlib.util.find_spec("workflow_engine.rq_preload") is not None:
            # The workflow side's forking worker preloads workflow_engine in its parent (RQ's -c settings
            # module), so that a work-horse does not import it per job; raw RQ runs the plain command.
            configs.append(("fork", 1, self.fork_n, ("-c", "workflow_engine.rq_preload")))
        for worker_class, procs, n, extra in configs:

            def engine_run(
                worker_class: str = worker_class,
                procs: int = procs,
                n: int = n,
                extra: tuple[str, ...] = extra,
            ) -> float:
                self.redis.flushall()
                with self.database(backend) as url:
                    engine = WorkflowEngine(database_url=url, redis_url=self.redis.url, queue_name=QUEUE)
                    engine.register_handler(TYPE, HANDLER_PATH)
                    for _ in range(n):
                        engine.enqueue_execution(engine.create_workflow(workflow_type_id=TYPE))
                    elapsed = self.run_workers(n, worker_class, procs, url, extra)
                    self.check_completed(engine, n)
                    engine.close()
                return n / elapsed

            def rq_run(worker_class: str = worker_class, procs: int = procs, n: int = n) -> float:
                self.redis.flushall()
                queue = Queue(QUEUE, connection=redis_lib.Redis.from_url(self.redis.url))
                queue.enqueue_many([Queue.prepare_data(bench_jobs.noop) for _ in range(n)])
                elapsed = self.run_workers(n, worker_class, procs, None)
                done, failed = queue.finished_job_registry.count, queue.failed_job_registry.count
                if done != n or failed or queue.count:
                    raise BenchFailure(
                        f"raw RQ: {done} of {n} jobs finished, {failed} failed, {queue.count} still queued"
                    )
                return n / elapsed

            kind = "SimpleWorker" if worker_class == "simple" else "forking Worker"
            options = f" ({' '.join(extra)} on the workflow side)" if extra else ""
            self.rows.append(
                compare(
                    f"e2e {label}: `rq worker --burst` {kind} x{procs}{options}, N={n}",
                    self.rounds,
                    engine_run,
                    rq_run,
                    "wf/s",
                    "jobs/s",
                )
            )
        self.redis.flushall()

    def worker_startup(self) -> None:
        """How long a burst worker takes to start and exit on an empty queue: included in every e2e time."""
        self.redis.flushall()
        times = []
        for worker_class in ("simple", "fork"):
            times.append(self.run_workers(0, worker_class, 1, None))
        self.notes.append(
            f"an `rq worker --burst` on an empty queue takes {statistics.median(times):.2f} s to start and "
            "exit; every e2e time includes it once per process"
        )


def format_table(rows: list[Row]) -> str:
    lines = ["| measure | workflow_engine | raw RQ | ratio |", "|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row.measure} | {row.median_a:,.0f} {row.unit_a} | {row.median_b:,.0f} {row.unit_b} | "
            f"{row.median_a / row.median_b:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="workflows/jobs per measurement (default 2000)")
    parser.add_argument(
        "--fork-n",
        type=int,
        default=None,
        help="workflows/jobs per forking-worker measurement (default N/20, at least 10): "
        "a work-horse per job makes these slow",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per comparison; the median is reported")
    parser.add_argument(
        "--only", default=None, help=f"comma-separated sections to run, from: {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="admin URL of a PostgreSQL server (e.g. postgresql://postgres@127.0.0.1:5432/postgres):"
        " also run the e2e section on a scratch database created and dropped there",
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1 or (args.fork_n is not None and args.fork_n < 1):
        parser.error("--n, --fork-n and --rounds must be at least 1")
    only = set(SECTIONS) if args.only is None else {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if args.postgres_url is None:
        if args.only is not None and "postgres" in only:
            parser.error("the postgres section needs --postgres-url")
        only.discard("postgres")

    started = time.perf_counter()
    failure: BaseException | None = None
    with tempfile.TemporaryDirectory(prefix="we-bench-") as tmp_name:
        tmp = Path(tmp_name)
        redis = RedisServer(tmp)
        bench = Bench(args, tmp, redis)
        try:
            redis.start()
            say(f"private redis-server on port {redis.port} (pid {redis.proc.pid if redis.proc else '?'})")
            if "inprocess" in only:
                say("a. in-process")
                bench.inprocess()
            if "api" in only:
                say("b. API")
                bench.api()
            if "e2e" in only or "postgres" in only:
                bench.worker_startup()
            if "e2e" in only:
                say("c. end to end, SQLite")
                bench.e2e("sqlite")
            if "postgres" in only:
                say("d. end to end, PostgreSQL")
                bench.e2e("postgres")
        except Exception as exc:
            failure = exc
        except KeyboardInterrupt:
            failure = KeyboardInterrupt()
        finally:
            redis.stop()

    print(
        f"\nworkflow_engine vs raw RQ: N={args.n}, median of {args.rounds} round(s); "
        f"rq {version('rq')}, redis-server private, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; total {time.perf_counter() - started:.0f} s\n"
    )
    if bench.rows:
        print(format_table(bench.rows))
        print("\nEvery round (workflow_engine / raw RQ):")
        for row in bench.rows:
            pairs = ", ".join(f"{a:,.0f}/{b:,.0f}" for a, b in zip(row.a, row.b, strict=False))
            print(f"- {row.measure}: {pairs}")
    for note in bench.notes:
        print(f"\nNote: {note}")
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
