"""Experiment: how fast could a worker run workflows if it skipped RQ's own bookkeeping?

    python benchmarks/lean_worker.py [--n 2000]

It enqueues N no-op workflows with the engine (SQLite WAL, a private redis-server), then
runs them two ways in this process, alternating, median of 3 rounds:

- ``rq.SimpleWorker(...).work(burst=True)``: what ``rq worker -w rq.SimpleWorker`` does;
- a lean loop: pop a job id from the RQ queue list, read the job's arguments, call
  ``execution.run_attempt`` (the same claim, handler call and completion), delete the job.

The lean loop is NOT shipped: it would keep every database guarantee (claims and
completions are the same compare-and-sets, and reconcile redelivers whatever it drops),
but RQ's registries, ``rq info``, job statuses, RQ's callbacks and its stop command would no
longer describe these jobs. This script only measures what RQ's bookkeeping costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import rq
from rq.job import Job

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import RedisServer

from workflow_engine import WorkflowEngine
from workflow_engine.execution import run_attempt, set_worker_engine


def fill(engine: WorkflowEngine, n: int) -> list[str]:
    ids = engine.create_workflows([{"workflow_type_id": "noop"}] * n)
    engine.enqueue_many(ids)
    return ids


def lean(engine: WorkflowEngine) -> int:
    redis, key = engine.redis, engine.queue.key
    done = 0
    while True:
        raw = redis.lpop(key)
        if raw is None:
            return done
        job_id = raw.decode()
        job = Job.fetch(job_id, connection=redis)
        workflow_id, handler, carried = job.args[:3]
        run_attempt(engine, workflow_id, job_id=carried, handler=handler, worker="lean")
        redis.delete(Job.key_for(job_id))
        done += 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="we-lean-"))
    server = RedisServer(tmp)
    server.start()
    results: dict[str, list[float]] = {"rq.SimpleWorker": [], "lean loop": []}
    try:
        for r in range(args.rounds):
            order = ["rq.SimpleWorker", "lean loop"] if r % 2 == 0 else ["lean loop", "rq.SimpleWorker"]
            for name in order:
                db = tmp / f"{name.replace(' ', '_')}-{r}.db"
                engine = WorkflowEngine(database_url=f"sqlite:///{db}", redis_url=server.url)
                engine.register_handler("noop", "bench_jobs:noop_workflow", max_retries=0)
                set_worker_engine(engine)  # jobs in this process run with this engine, as in a worker
                ids = fill(engine, args.n)
                start = time.perf_counter()
                if name == "lean loop":
                    lean(engine)
                else:
                    worker = rq.SimpleWorker([engine.queue], connection=engine.redis)
                    worker.work(burst=True, logging_level="WARNING")
                elapsed = time.perf_counter() - start
                done = sum(1 for w in engine.list_workflows(limit=10_000) if w.status.value == "completed")
                if done != len(ids):
                    print(f"{name}: only {done} of {len(ids)} completed", file=sys.stderr)
                    return 1
                results[name].append(args.n / elapsed)
                engine.close()
    finally:
        server.stop()
    print("| worker | workflows/s (median) | rounds |\n|---|---|---|")
    for name, rates in results.items():
        print(f"| {name} | {statistics.median(rates):,.0f} | {', '.join(f'{x:,.0f}' for x in rates)} |")
    ratio = statistics.median(results["lean loop"]) / statistics.median(results["rq.SimpleWorker"])
    print(f"\nlean loop ÷ rq.SimpleWorker: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
