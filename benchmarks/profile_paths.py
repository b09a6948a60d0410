"""Where the time goes per workflow: milliseconds per stage, SQL statements and Redis commands.

    python benchmarks/profile_paths.py                 # every path, N=1000
    python benchmarks/profile_paths.py --only worker --cprofile 25

Paths:

- ``inprocess``: ``create_workflow`` + ``enqueue_execution`` with ``fakeredis://`` and
  ``is_async=False``, against RQ's own ``Queue(is_async=False)`` enqueue of a no-op;
- ``api``: the same two calls over a real (private) Redis and a SQLite WAL file, against
  ``Queue.enqueue``;
- ``worker``: an ``rq.SimpleWorker`` run in this process, burst, over N workflow jobs and then
  over N raw no-op jobs: what a stock ``rq worker -w rq.SimpleWorker`` does per job;
- ``horse``: what a forked work-horse of a stock ``rq worker`` pays for one workflow job when its
  parent never imported ``workflow_engine``: a fresh interpreter that has ``rq`` loaded imports
  ``workflow_engine.execution`` and runs one ``run_workflow``.

Stage times come from thin wrappers around the named functions (a few microseconds each), not
from cProfile, whose overhead distorts fakeredis-heavy paths; ``--cprofile K`` also prints the
top K functions by cumulative time for each path. Redis commands are counted where redis-py
packs them, round trips where it sends them, SQL statements at ``sqlite_utils.Database.execute``.
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

PATHS = ("inprocess", "api", "worker", "horse")
TYPE = "bench_noop"

_times: dict[str, float] = {}
_counts = {"redis commands": 0, "redis round trips": 0, "SQL statements": 0}


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


def instrument() -> None:
    import redis.connection
    import sqlite_utils

    import workflow_engine.execution as execution
    from workflow_engine.stores.base import SQLStore
    from workflow_engine.transport import Transport

    _wrap(WorkflowEngine, "create_workflow", "create_workflow")
    _wrap(SQLStore, "insert", "  store.insert (INSERT workflow + event)")
    _wrap(WorkflowEngine, "enqueue_execution", "enqueue_execution")
    _wrap(SQLStore, "get", "  store.get")
    _wrap(SQLStore, "compare_and_set", "  store.compare_and_set")
    _wrap(Transport, "live_jobs", "  transport.live_jobs")
    _wrap(Transport, "deliver", "  transport.deliver (RQ enqueue_call)")
    _wrap(execution, "run_workflow", "run_workflow (the job)")
    _wrap(SQLStore, "claim", "  store.claim")
    _wrap(execution, "_call_with_timeout", "  the handler")
    _count(redis.connection.PythonRespSerializer, "pack", "redis commands")
    _count(redis.connection.AbstractConnection, "send_packed_command", "redis round trips")
    _count(sqlite_utils.Database, "execute", "SQL statements")


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
        print(f"    {name:44} {seconds / n * 1000:8.3f} ms")
    print("    " + ", ".join(f"{v / n:.1f} {k}" for k, v in _counts.items()) + " each")
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


def api(tmp: Path, redis: RedisServer, n: int, top: int) -> None:
    import redis as redis_lib
    from rq import Queue

    redis.flushall()
    engine = WorkflowEngine(database_url=f"sqlite:///{tmp / 'api.db'}", redis_url=redis.url, queue_name=QUEUE)
    engine.register_handler(TYPE, "bench_jobs:noop_workflow")
    engine.store.migrate()
    run_engine(engine, 20)
    with measuring("API: create_workflow + enqueue_execution (real Redis, SQLite WAL)", n, top):
        run_engine(engine, n)
    engine.close()
    redis.flushall()
    queue = Queue(QUEUE, connection=redis_lib.Redis.from_url(redis.url))
    queue.enqueue(bench_jobs.noop)
    with measuring("raw RQ: Queue.enqueue(noop)", n, top):
        for _ in range(n):
            queue.enqueue(bench_jobs.noop)
    redis.flushall()


def worker(tmp: Path, redis: RedisServer, n: int, top: int) -> None:
    import redis as redis_lib
    from rq import Queue, SimpleWorker

    import workflow_engine.execution as execution

    redis.flushall()
    url = f"sqlite:///{tmp / 'worker.db'}"
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
    with measuring("SimpleWorker (burst, in this process): workflow jobs", n, top):
        SimpleWorker([queue], connection=connection).work(burst=True, logging_level="WARNING")
    completed = len(engine.list_workflows(limit=10_000, status="completed"))
    if completed != n + 20:
        raise harness.BenchFailure(f"{completed} of {n + 20} workflows completed")
    engine.close()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--only", default=None, help=f"comma-separated, from: {', '.join(PATHS)}")
    parser.add_argument(
        "--cprofile", type=int, default=0, metavar="K", help="print the top K cProfile entries"
    )
    args = parser.parse_args(argv)
    only = PATHS if args.only is None else tuple(p.strip() for p in args.only.split(","))
    if set(only) - set(PATHS):
        parser.error(f"choose paths from {', '.join(PATHS)}")
    instrument()
    with tempfile.TemporaryDirectory(prefix="we-profile-") as tmp_name:
        tmp = Path(tmp_name)
        redis = RedisServer(tmp)
        try:
            redis.start()
            steps: dict[str, Callable[[], None]] = {
                "inprocess": lambda: inprocess(tmp, args.n, args.cprofile),
                "api": lambda: api(tmp, redis, args.n, args.cprofile),
                "worker": lambda: worker(tmp, redis, args.n, args.cprofile),
                "horse": lambda: horse(tmp, redis),
            }
            for name in only:
                steps[name]()
        finally:
            redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
