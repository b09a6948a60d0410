"""Where the time goes per workflow: milliseconds per stage, SQL statements and Redis commands.

    python benchmarks/profile_paths.py                 # every path, N=1000
    python benchmarks/profile_paths.py --only worker --cprofile 25

Paths:

- ``inprocess``: ``create_workflow`` + ``enqueue_execution`` with ``fakeredis://`` and
  ``is_async=False``, against RQ's own ``Queue(is_async=False)`` enqueue of a no-op;
- ``api``: the same two calls over a real (private) Redis and a SQLite WAL file, then the fused
  ``create_workflow(enqueue=True)``, against ``Queue.enqueue``;
- ``bulk``: ``create_workflows`` + ``enqueue_many`` in batches of 500, against
  ``Queue.enqueue_many`` of the same batches;
- ``floor``: what the pieces cost bare, without the engine's Python: the two durable SQLite
  transactions of create+enqueue (``BEGIN IMMEDIATE``; INSERT workflow; INSERT event; ``COMMIT``,
  then ``BEGIN IMMEDIATE``; UPDATE; INSERT event; ``COMMIT``) on the real schema, in WAL with
  ``synchronous=NORMAL``, with ``sqlite3`` and through ``sqlite_utils``; one Redis round trip (PING);
- ``worker``: an ``rq.SimpleWorker`` run in this process, burst, over N workflow jobs and then
  over N raw no-op jobs: what a stock ``rq worker -w rq.SimpleWorker`` does per job;
- ``horse``: what a forked work-horse of a stock ``rq worker`` pays for one workflow job when its
  parent never imported ``workflow_engine``: a fresh interpreter that has ``rq`` loaded imports
  ``workflow_engine.execution`` and runs one ``run_workflow``; then what a work-horse forked from a
  parent that preloaded the package (``-c workflow_engine.rq_preload``) pays: ``os.fork()``, one
  ``run_workflow`` in the child, exit, against the same fork for a raw no-op;
- ``pages``: what SQLite writes per workflow at each durable step of its life (the fused create,
  the claim, the completion): WAL frames (one per database page changed, written with two
  ``pwrite`` calls) by the table or index the page belongs to, read from the log itself and
  named by SQLite's ``dbstat`` table.

With ``--postgres-url`` (an admin URL) the ``api``, ``bulk`` and ``worker`` paths also run on
a scratch PostgreSQL database, created and dropped there.

Stage times come from thin wrappers around the named functions (a few microseconds each), not
from cProfile, whose overhead distorts fakeredis-heavy paths; ``--cprofile K`` also prints the
top K functions by cumulative time for each path. Redis commands are counted where redis-py
packs them, round trips where it sends them, SQL statements where the driver runs them
(``sqlite_utils.Database.execute`` and the SQLite store's ``fetch``, ``psycopg.Connection.execute``;
BEGIN and COMMIT included for SQLite, not for PostgreSQL, where psycopg sends them itself), and
transactions where a store opens one (a write is a durable commit: BEGIN IMMEDIATE … COMMIT in WAL
on SQLite).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_jobs
import harness
from harness import QUEUE, RedisServer

from workflow_engine import WorkflowEngine

PATHS = ("floor", "inprocess", "api", "bulk", "worker", "horse", "pages")
BATCH = 500
TYPE = "bench_noop"

_times: dict[str, float] = {}
_counts = {
    "redis commands": 0,
    "redis round trips": 0,
    "SQL statements": 0,
    "write transactions": 0,
    "read transactions": 0,
}


def _wrap(owner: Any, attr: str, label: str) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _times[label] = _times.get(label, 0.0) + time.perf_counter() - start

    setattr(owner, attr, timed)


def _count(owner: Any, attr: str, label: str) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)
    def counted(*args: Any, **kwargs: Any) -> Any:
        _counts[label] += 1
        return original(*args, **kwargs)

    setattr(owner, attr, counted)


def _count_transactions(owner: Any, *, begin_commit: bool = False) -> None:
    """Count the store's transactions; with ``begin_commit``, a write's BEGIN and COMMIT as statements."""
    original = owner.transaction

    @functools.wraps(original)
    def counted(self: Any, *, write: bool = True, single: bool = False) -> Any:
        _counts["write transactions" if write else "read transactions"] += 1
        if write and begin_commit:
            _counts["SQL statements"] += 2
        return original(self, write=write, single=single)

    owner.transaction = counted


def instrument() -> None:
    import redis.connection
    import sqlite_utils

    import workflow_engine.execution as execution
    from workflow_engine.stores.base import SQLStore
    from workflow_engine.stores.sqlite import SQLiteStore, _SQLiteTx
    from workflow_engine.transport import Transport

    _wrap(WorkflowEngine, "create_workflow", "create_workflow")
    _wrap(WorkflowEngine, "create_workflows", "create_workflows")
    _wrap(SQLStore, "insert", "  store.insert (INSERT workflow + event)")
    _wrap(WorkflowEngine, "enqueue_execution", "enqueue_execution")
    _wrap(WorkflowEngine, "enqueue_many", "enqueue_many")
    _wrap(SQLStore, "get", "  store.get")
    _wrap(SQLStore, "get_many", "  store.get_many")
    _wrap(SQLStore, "apply", "  store.apply (compare-and-set UPDATE + event)")
    _wrap(Transport, "live_jobs", "  transport.live_jobs")
    _wrap(Transport, "deliver", "  transport.deliver (one pipeline)")
    _wrap(execution, "run_workflow", "run_workflow (the job)")
    _wrap(SQLStore, "claim", "  store.claim")
    _wrap(execution, "_call_with_timeout", "  the handler")
    _count(redis.connection.PythonRespSerializer, "pack", "redis commands")
    _count(redis.connection.AbstractConnection, "send_packed_command", "redis round trips")
    _count(sqlite_utils.Database, "execute", "SQL statements")  # the floor's statements
    _count(_SQLiteTx, "fetch", "SQL statements")  # the store's statements, which go to sqlite3 directly
    _count(_SQLiteTx, "execute", "SQL statements")  # its INSERTs, which return no rows
    _count_transactions(SQLiteStore, begin_commit=True)  # its BEGIN IMMEDIATE and COMMIT, also sqlite3
    try:
        import psycopg

        from workflow_engine.stores.postgres import PostgresStore
    except ImportError:
        return
    _count(psycopg.Connection, "execute", "SQL statements")
    _count_transactions(PostgresStore)


@contextmanager
def measuring(label: str, n: int, profile_top: int) -> Iterator[None]:
    _times.clear()
    for key in _counts:
        _counts[key] = 0
    profiler = cProfile.Profile() if profile_top else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    yield
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start
    print(f"\n### {label}: {n / elapsed:,.0f}/s, {elapsed / n * 1000:.3f} ms each")
    for name, seconds in _times.items():
        print(f"    {name:60} {seconds / n * 1000:8.3f} ms")
    print("    " + ", ".join(f"{v / n:.3f} {k}" for k, v in _counts.items()) + " each")
    print("    (totals: " + ", ".join(f"{v} {k}" for k, v in _counts.items()) + ")")
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(profile_top)
        print("\n".join("    " + line for line in out.getvalue().splitlines()[6:]))


def run_engine(engine: WorkflowEngine, n: int) -> None:
    for _ in range(n):
        engine.enqueue_execution(engine.create_workflow(workflow_type_id=TYPE))


def inprocess(tmp: Path, n: int, top: int) -> None:
    from fakeredis import FakeRedis
    from rq import Queue

    engine = WorkflowEngine(
        database_url=f"sqlite:///{tmp / 'inproc.db'}", redis_url="fakeredis://", is_async=False
    )
    engine.register_handler(TYPE, bench_jobs.noop_workflow)
    engine.store.migrate()
    run_engine(engine, 20)  # warm up
    with measuring("in-process: create_workflow + enqueue_execution (runs it)", n, top):
        run_engine(engine, n)
    queue = Queue(QUEUE, is_async=False, connection=FakeRedis())
    with measuring("raw RQ: Queue(is_async=False, FakeRedis()).enqueue(noop)", n, top):
        for _ in range(n):
            queue.enqueue(bench_jobs.noop)
    engine.close()


def floor(tmp: Path, redis: RedisServer, n: int) -> None:
    """The bare cost of the SQL the engine runs per workflow, on the real schema, without the engine."""
    import sqlite3

    import bench_queries
    import redis as redis_lib
    import sqlite_utils

    from workflow_engine.stores import open_store
    from workflow_engine.stores import queries as q

    path = tmp / "floor.db"
    store = open_store(f"sqlite:///{path}")
    store.migrate()
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    rows = list(bench_queries.generate(2 * n + 40, "sqlite"))
    columns = ", ".join(q.WORKFLOW_COLUMNS)
    insert = f"INSERT INTO workflows ({columns}) VALUES ({', '.join('?' for _ in q.WORKFLOW_COLUMNS)})"
    event = (
        "INSERT INTO workflow_events (workflow_id, from_status, to_status, at, detail, attempt) "
        "VALUES (?, ?, ?, ?, ?, ?)"
    )
    update = "UPDATE workflows SET status = 'queued', job_id = ?, updated_at = ? WHERE id = ? AND status = ?"
    at = "2026-05-20T04:00:00.000000+00:00"

    def create(execute: Callable[..., Any], row: tuple[Any, ...]) -> None:
        execute("BEGIN IMMEDIATE")
        execute(insert, row)
        execute(event, (row[0], None, row[2], at, None, 0))
        execute("COMMIT")

    def enqueue(execute: Callable[..., Any], row: tuple[Any, ...]) -> None:
        execute("BEGIN IMMEDIATE")
        execute(update, (f"{row[0]}-0000", at, row[0], row[2]))
        execute(event, (row[0], row[2], "queued", at, "enqueued", 0))
        execute("COMMIT")

    for row in rows[-40:]:
        create(conn.execute, row)
        enqueue(conn.execute, row)
    with measuring("floor: sqlite3, the two transactions of create+enqueue on the real schema", n, 0):
        for row in rows[:n]:
            create(conn.execute, row)
            enqueue(conn.execute, row)
    db = sqlite_utils.Database(conn)

    def through(sql: str, params: tuple[Any, ...] = ()) -> Any:
        return db.execute(sql, params)

    with measuring("floor: the same through sqlite_utils.Database.execute", n, 0):
        for row in rows[n : 2 * n]:
            create(through, row)
            enqueue(through, row)
    conn.close()
    connection = redis_lib.Redis.from_url(redis.url)
    connection.ping()
    with measuring("floor: one Redis round trip (PING)", n, 0):
        for _ in range(n):
            connection.ping()


@contextmanager
def database(tmp: Path, name: str, postgres_url: str | None) -> Iterator[tuple[str, str]]:
    """A fresh database URL and its label: a SQLite file in ``tmp``, or a scratch PostgreSQL database."""
    if postgres_url is None:
        yield f"sqlite:///{tmp / f'{name}.db'}", "SQLite WAL"
    else:
        with harness.scratch_postgres(postgres_url) as url:
            yield url, "PostgreSQL"


def api(tmp: Path, redis: RedisServer, n: int, top: int, postgres_url: str | None = None) -> None:
    import redis as redis_lib
    from rq import Queue

    redis.flushall()
    with database(tmp, "api", postgres_url) as (url, label):
        engine = WorkflowEngine(database_url=url, redis_url=redis.url, queue_name=QUEUE)
        engine.register_handler(TYPE, "bench_jobs:noop_workflow")
        engine.store.migrate()
        run_engine(engine, 20)
        with measuring(f"API: create_workflow + enqueue_execution (real Redis, {label})", n, top):
            run_engine(engine, n)
        with measuring(f"API: create_workflow(enqueue=True) (real Redis, {label})", n, top):
            for _ in range(n):
                engine.create_workflow(workflow_type_id=TYPE, enqueue=True)
        engine.close()
    redis.flushall()
    queue = Queue(QUEUE, connection=redis_lib.Redis.from_url(redis.url))
    queue.enqueue(bench_jobs.noop)
    with measuring("raw RQ: Queue.enqueue(noop)", n, top):
        for _ in range(n):
            queue.enqueue(bench_jobs.noop)
    redis.flushall()


def bulk(tmp: Path, redis: RedisServer, n: int, top: int, postgres_url: str | None = None) -> None:
    import redis as redis_lib
    from rq import Queue

    n = max(n // BATCH, 1) * BATCH
    items = [{"workflow_type_id": TYPE}] * BATCH
    redis.flushall()
    with database(tmp, "bulk", postgres_url) as (url, label):
        engine = WorkflowEngine(database_url=url, redis_url=redis.url, queue_name=QUEUE)
        engine.register_handler(TYPE, "bench_jobs:noop_workflow")
        engine.store.migrate()
        engine.enqueue_many(engine.create_workflows(items))  # warm up
        with measuring(
            f"bulk: create_workflows + enqueue_many, batches of {BATCH} (real Redis, {label})", n, top
        ):
            for _ in range(n // BATCH):
                engine.enqueue_many(engine.create_workflows(items))
        engine.close()
    redis.flushall()
    queue = Queue(QUEUE, connection=redis_lib.Redis.from_url(redis.url))
    queue.enqueue_many([Queue.prepare_data(bench_jobs.noop) for _ in range(BATCH)])
    with measuring(f"raw RQ: Queue.enqueue_many(noop), batches of {BATCH}", n, top):
        for _ in range(n // BATCH):
            queue.enqueue_many([Queue.prepare_data(bench_jobs.noop) for _ in range(BATCH)])
    redis.flushall()


def worker(tmp: Path, redis: RedisServer, n: int, top: int, postgres_url: str | None = None) -> None:
    if postgres_url is None:
        _worker(f"sqlite:///{tmp / 'worker.db'}", "SQLite WAL", redis, n, top)
    else:
        with harness.scratch_postgres(postgres_url) as url:
            _worker(url, "PostgreSQL", redis, n, top)


def _worker(url: str, label: str, redis: RedisServer, n: int, top: int) -> None:
    import redis as redis_lib
    from rq import Queue, SimpleWorker

    import workflow_engine.execution as execution

    redis.flushall()
    # What a stock `rq worker` has: the engine comes from the environment, built by the first job.
    os.environ.update(harness.worker_env(url, redis.url))
    execution.set_worker_engine(None)
    connection = redis_lib.Redis.from_url(redis.url)
    queue = Queue(QUEUE, connection=connection)
    engine = WorkflowEngine(database_url=url, redis_url=redis.url, queue_name=QUEUE)
    engine.register_handler(TYPE, "bench_jobs:noop_workflow")
    run_engine(engine, 20)
    SimpleWorker([queue], connection=connection).work(burst=True, logging_level="WARNING")  # warm up
    run_engine(engine, n)
    with measuring(f"SimpleWorker (burst, in this process): workflow jobs ({label})", n, top):
        SimpleWorker([queue], connection=connection).work(burst=True, logging_level="WARNING")
    completed = len(engine.list_workflows(limit=10_000, status="completed"))
    if completed != n + 20:
        raise harness.BenchFailure(f"{completed} of {n + 20} workflows completed")
    engine.close()
    worker_engine = execution._worker_engine
    if worker_engine is not None:
        worker_engine.close()
    execution.set_worker_engine(None)
    redis.flushall()
    queue.enqueue_many([Queue.prepare_data(bench_jobs.noop) for _ in range(n)])
    with measuring("SimpleWorker (burst, in this process): raw no-op jobs", n, top):
        SimpleWorker([queue], connection=connection).work(burst=True, logging_level="WARNING")
    redis.flushall()


_HORSE = """
import sys, time
import rq, redis                      # the parent `rq worker` already has these
t0 = time.perf_counter()
from workflow_engine.execution import run_workflow
t1 = time.perf_counter()
result = run_workflow(sys.argv[1], "bench_jobs:noop_workflow", sys.argv[2])
t2 = time.perf_counter()
run_workflow(sys.argv[3], "bench_jobs:noop_workflow", sys.argv[4])
t3 = time.perf_counter()
assert result["status"] == "completed", result
print(f"{(t1 - t0) * 1000:.1f} {(t2 - t1) * 1000:.1f} {(t3 - t2) * 1000:.1f}")
"""


def horse(tmp: Path, redis: RedisServer, rounds: int = 5) -> None:
    redis.flushall()
    url = f"sqlite:///{tmp / 'horse.db'}"
    engine = WorkflowEngine(database_url=url, redis_url=redis.url, queue_name=QUEUE)
    engine.register_handler(TYPE, "bench_jobs:noop_workflow")
    env = harness.worker_env(url, redis.url)
    rows = []
    for _ in range(rounds):
        args = []
        for _ in range(2):
            wid = engine.create_workflow(workflow_type_id=TYPE)
            engine.enqueue_execution(wid)
            args += [wid, str(engine.get_workflow(wid).job_id)]
        out = subprocess.run(
            [sys.executable, "-c", _HORSE, *args], env=env, capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            raise harness.BenchFailure(f"horse emulation failed:\n{out.stderr[-2000:]}")
        rows.append([float(x) for x in out.stdout.split()])
    engine.close()
    med = [sorted(col)[len(col) // 2] for col in zip(*rows, strict=True)]
    print(f"\n### forked work-horse of a stock `rq worker` (fresh interpreter, median of {rounds})")
    print(f"    {'import workflow_engine.execution':44} {med[0]:8.1f} ms")
    print(f"    {'first run_workflow (builds the engine)':44} {med[1]:8.1f} ms")
    print(f"    {'a second run_workflow, same process':44} {med[2]:8.1f} ms")
    horse_forked(tmp, redis)


def pages(tmp: Path, redis: RedisServer, n: int) -> None:
    """WAL frames per workflow, by table and index, for each durable step of a workflow's life.

    The store's own connection stops checkpointing; before each step the log is emptied, after it
    the frames in it are counted by page, and each page is named by ``dbstat`` once checkpointed
    (by what owns it after the step: a page freed in the step shows as freed).
    """
    redis.flushall()
    path = tmp / "pages.db"
    engine = WorkflowEngine(database_url=f"sqlite:///{path}", redis_url=redis.url, queue_name=QUEUE)
    engine.register_handler(TYPE, "bench_jobs:noop_workflow")
    try:
        _count_pages(engine, path, n)
    finally:
        engine.close()
    redis.flushall()


def _count_pages(engine: WorkflowEngine, path: Path, n: int) -> None:
    import sqlite3

    import workflow_engine.execution as execution

    conn = engine.store._connect()  # type: ignore[attr-defined]  # the store's own: its commits are counted
    try:
        conn.execute("SELECT 1 FROM dbstat LIMIT 1").fetchall()
    except sqlite3.OperationalError:
        print("\n### pages: skipped, this SQLite has no dbstat table to name the pages")
        return
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # nothing leaves the log before it is counted
    for _ in range(20):  # warm up: the tables' first pages exist
        engine.create_workflow(workflow_type_id=TYPE, enqueue=True)
    ids: list[str] = []
    claimed: list[Any] = []
    outcome = execution.Outcome("completed", result=None, duration=0.001)

    def create() -> None:
        ids.extend(engine.create_workflow(workflow_type_id=TYPE, enqueue=True) for _ in range(n))

    def claim() -> None:
        for wid in ids:
            job_id = str(engine.get_workflow(wid).job_id)  # a read: writes nothing
            wf = execution.claim_attempt(engine, wid, job_id=job_id, worker="pages")
            if isinstance(wf, str):
                raise harness.BenchFailure(f"workflow {wid} was not claimed: {wf}")
            claimed.append(wf)

    def complete() -> None:
        for wf in claimed:
            if execution.record_outcome(engine, wf, str(wf.job_id), outcome, None) != "completed":
                raise harness.BenchFailure(f"workflow {wf.id} was not completed")

    def empty_the_log() -> int:
        """Checkpoint the whole log and truncate it; return how many frames it held."""
        _, logged, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # TRUNCATE reports 0
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:  # another connection reads: the log was not emptied, and the count would be wrong
            raise harness.BenchFailure("the WAL could not be checkpointed and emptied")
        return int(logged)

    print(f"\n### SQLite pages written per workflow (WAL frames, N={n}; a frame is two pwrite calls)")
    for label, step in (
        ("create_workflow(enqueue=True)", create),
        ("the claim (queued -> running + event)", claim),
        ("the completion (running -> completed + event)", complete),
    ):
        empty_the_log()
        step()
        frames, commits = _wal_frames(path.with_name(f"{path.name}-wal"))
        total = sum(frames.values())
        if empty_the_log() != total:  # now every page is where dbstat names it
            raise harness.BenchFailure("the frames read from the WAL are not those SQLite logged")
        owner = dict(conn.execute("SELECT pageno, name FROM dbstat").fetchall())
        by_name: dict[str, int] = {}
        for page, count in frames.items():
            name = owner.get(page, "(freed pages)")
            by_name[name] = by_name.get(name, 0) + count
        print(f"    {label:50} {total / n:6.2f} frames, {commits / n:.2f} commits")
        for name, count in sorted(by_name.items(), key=lambda item: -item[1]):
            print(f"      {name:48} {count / n:6.2f}")


def _wal_frames(wal: Path) -> tuple[dict[int, int], int]:
    """Frames in a WAL file by page number, and how many of them end a commit.

    SQLite's WAL format: a 32-byte header (the page size at bytes 8-12, the salts at 16-24), then
    frames of a 24-byte header (the page number, the database size after a commit frame or 0,
    the salts) and one page. Only frames of the log's current generation count: the first frame
    whose salts differ from the header's, or that is cut short, ends the log.
    """
    import struct

    data = wal.read_bytes()
    if len(data) < 32:
        return {}, 0
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    frames: dict[int, int] = {}
    commits = 0
    for offset in range(32, len(data) - (24 + page_size) + 1, 24 + page_size):
        if data[offset + 8 : offset + 16] != salts:
            break  # left over from an earlier generation of the log
        page, size_after_commit = struct.unpack(">II", data[offset : offset + 8])
        frames[page] = frames.get(page, 0) + 1
        commits += size_after_commit != 0
    return frames, commits


def _fork_and_time(child: Callable[[], str]) -> tuple[float, str]:
    """Fork; the child runs ``child`` and reports its text; return (ms from fork to child exit, text)."""
    read_end, write_end = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: like a work-horse, it leaves with os._exit
        code = 0
        try:
            os.close(read_end)
            os.write(write_end, child().encode())
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter() - start) * 1000
    with os.fdopen(read_end) as f:
        text = f.read()
    if status != 0:
        raise harness.BenchFailure(f"forked child failed with status {status}")
    return elapsed, text


def horse_forked(tmp: Path, redis: RedisServer, rounds: int = 30) -> None:
    """A work-horse forked from a parent that preloaded workflow_engine (``-c workflow_engine.rq_preload``).

    What each fork costs from ``fork()`` to the child's exit, and inside the child the time of
    ``run_workflow``; the same for a raw no-op job. RQ's own per-job bookkeeping is not included.
    """
    import workflow_engine.execution as execution

    redis.flushall()
    url = f"sqlite:///{tmp / 'forked.db'}"
    os.environ.update(harness.worker_env(url, redis.url))
    execution.set_worker_engine(None)
    parent = execution.preload()  # what -c workflow_engine.rq_preload does in the worker's parent
    creator = WorkflowEngine(database_url=url, redis_url=redis.url, queue_name=QUEUE)
    creator.register_handler(TYPE, "bench_jobs:noop_workflow")
    ids = creator.create_workflows([{"workflow_type_id": TYPE}] * rounds)
    creator.enqueue_many(ids)
    jobs = [(wid, str(creator.get_workflow(wid).job_id)) for wid in ids]

    def job(wid: str, job_id: str) -> Callable[[], str]:
        def child() -> str:
            t0 = time.perf_counter()
            result = execution.run_workflow(wid, "bench_jobs:noop_workflow", job_id)
            t1 = time.perf_counter()
            assert result["status"] == "completed", result
            return f"{(t1 - t0) * 1000:.3f}"

        return child

    def raw() -> str:
        t0 = time.perf_counter()
        bench_jobs.noop()
        return f"{(time.perf_counter() - t0) * 1000:.3f}"

    wf_total, wf_inside, raw_total = [], [], []
    for wid, job_id in jobs:
        total, inside = _fork_and_time(job(wid, job_id))
        wf_total.append(total)
        wf_inside.append(float(inside))
        raw_total.append(_fork_and_time(raw)[0])
    completed = len(creator.list_workflows(limit=rounds + 10, status="completed"))
    if completed != rounds:
        raise harness.BenchFailure(f"{completed} of {rounds} forked workflows completed")
    creator.close()
    parent.close()
    execution.set_worker_engine(None)

    def med(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    print(f"\n### a work-horse forked from a preloaded parent (median of {rounds} forks)")
    print(f"    {'fork + run_workflow + exit (workflow job)':44} {med(wf_total):8.2f} ms")
    print(f"    {'  of which run_workflow in the child':44} {med(wf_inside):8.2f} ms")
    print(f"    {'fork + no-op + exit (raw job)':44} {med(raw_total):8.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--only", default=None, help=f"comma-separated, from: {', '.join(PATHS)}")
    parser.add_argument(
        "--cprofile", type=int, default=0, metavar="K", help="print the top K cProfile entries"
    )
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="admin URL of a PostgreSQL server: also run api, bulk and worker on a scratch database",
    )
    args = parser.parse_args(argv)
    only = PATHS if args.only is None else tuple(p.strip() for p in args.only.split(","))
    if set(only) - set(PATHS):
        parser.error(f"choose paths from {', '.join(PATHS)}")
    print(harness.compile_bytecode())  # the horse path imports the package in fresh interpreters
    instrument()
    with tempfile.TemporaryDirectory(prefix="we-profile-") as tmp_name:
        tmp = Path(tmp_name)
        redis = RedisServer(tmp)
        try:
            redis.start()
            pg = args.postgres_url
            steps: dict[str, list[Callable[[], None]]] = {
                "floor": [lambda: floor(tmp, redis, args.n)],
                "inprocess": [lambda: inprocess(tmp, args.n, args.cprofile)],
                "api": [lambda: api(tmp, redis, args.n, args.cprofile)],
                "bulk": [lambda: bulk(tmp, redis, args.n, args.cprofile)],
                "worker": [lambda: worker(tmp, redis, args.n, args.cprofile)],
                "horse": [lambda: horse(tmp, redis)],
                "pages": [lambda: pages(tmp, redis, args.n)],
            }
            if pg:
                steps["api"].append(lambda: api(tmp, redis, args.n, args.cprofile, pg))
                steps["bulk"].append(lambda: bulk(tmp, redis, args.n, args.cprofile, pg))
                steps["worker"].append(lambda: worker(tmp, redis, args.n, args.cprofile, pg))
            for name in only:
                for step in steps[name]:
                    step()
        finally:
            redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
