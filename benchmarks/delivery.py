"""Putting workflow jobs on the queue: RQ's own enqueue against the engine's copied hash, side by side.

    python benchmarks/delivery.py [--n 2000] [--batch 500] [--rounds 5]

Each round puts N jobs on a private Redis with each of four kinds, in turn, with no database:

- ``raw``: RQ's ``Queue.enqueue_many`` of bare no-ops, as raw RQ runs in ``bench.py``'s bulk rows;
- ``rq``: the workflow job (its function, arguments, timeout, result TTL, description, stop
  callback and meta) through RQ's ``Queue.enqueue_many`` into one pipeline, as the engine
  delivered it before the twenty-sixth session;
- ``copied``: the same jobs as ``Transport.deliver`` writes them now: each job's hash copied from
  the one RQ writes for its kind, one ``HSET`` a job and one ``RPUSH`` a batch, in one pipeline;

in batches of ``--batch`` (500, as ``bench.py``'s bulk rows), and then one job a pipeline (as
``create_workflow(enqueue=True)`` delivers). It prints each kind's median in ms a job and its
ratio to ``rq``, and checks that both workflow kinds left the same hashes, bar their times.
It asserts no timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis as redis_lib
from rq import Queue
from rq.job import Job

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_jobs
import harness
from harness import QUEUE, BenchFailure, RedisServer

from workflow_engine import transport
from workflow_engine.models import Workflow, utcnow
from workflow_engine.status import WorkflowStatus

KINDS = ("raw", "rq", "copied")
TIMES = (b"created_at", b"enqueued_at")


def workflows(n: int) -> list[Workflow]:
    now = utcnow()
    out = []
    for _ in range(n):
        wid = uuid.uuid4().hex
        out.append(
            Workflow(
                id=wid,
                workflow_type_id="bench",
                status=WorkflowStatus.QUEUED,
                inputs={},
                handler="bench_jobs:noop_workflow",
                job_id=transport.new_job_id(wid),
                created_at=now,
                updated_at=now,
            )
        )
    return out


class Delivery:
    def __init__(self, connection: redis_lib.Redis, n: int, batch: int) -> None:
        self.connection, self.n, self.batch = connection, n, batch
        self.queue = Queue(QUEUE, connection=connection)
        self.transport = transport.Transport(connection, QUEUE)

    def put(self, kind: str, jobs: list[dict[str, Any]]) -> None:
        """Workflow jobs on the queue in one pipeline: through RQ's ``enqueue_many`` (``rq``) or as
        ``Transport.deliver`` writes them (``copied``)."""
        with self.connection.pipeline() as pipe:
            if kind == "rq":
                self.queue.enqueue_many(
                    [Queue.prepare_data(transport.RUN_WORKFLOW, **opts) for opts in jobs], pipeline=pipe
                )
            else:
                self.transport._write_jobs(pipe, jobs)
            pipe.execute()

    def run(self, kind: str, batch: int) -> float:
        """ms a job for N jobs of ``kind`` in batches of ``batch``."""
        self.connection.flushall()
        jobs = [transport._job_options(wf, engine_key=None) for wf in workflows(self.n)]
        batches = [jobs[i : i + batch] for i in range(0, self.n, batch)]
        start = time.perf_counter()
        for some in batches:
            if kind == "raw":
                self.queue.enqueue_many([Queue.prepare_data(bench_jobs.noop) for _ in some])
                continue
            self.put(kind, some)
        ms = (time.perf_counter() - start) * 1000 / self.n
        if self.queue.count != self.n:
            raise BenchFailure(f"{kind}: {self.queue.count} jobs on the queue, expected {self.n}")
        return ms


def same_hashes(connection: redis_lib.Redis) -> None:
    """Both workflow kinds write the same hash for the same job, bar its times."""
    delivery = Delivery(connection, 3, 3)
    jobs = [transport._job_options(wf, engine_key=None) for wf in workflows(3)]
    written: dict[str, list[dict[bytes, bytes]]] = {}
    for kind in ("rq", "copied"):
        connection.flushall()
        delivery.put(kind, jobs)
        written[kind] = [
            {k: v for k, v in connection.hgetall(Job.key_for(opts["job_id"])).items() if k not in TIMES}
            for opts in jobs
        ]
    if written["rq"] != written["copied"]:
        raise BenchFailure("the copied hashes differ from RQ's")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="jobs per run (default 2000)")
    parser.add_argument("--batch", type=int, default=500, help="jobs a pipeline, bulk (default 500)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported (default 5)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch < 1 or args.rounds < 1:
        parser.error("--n, --batch and --rounds must be at least 1")
    times_before = harness.cpu_times()
    results: dict[int, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="we-delivery-") as tmp_name:
        redis = RedisServer(Path(tmp_name))
        try:
            redis.start()
            connection = redis_lib.Redis.from_url(redis.url)
            same_hashes(connection)
            delivery = Delivery(connection, args.n, args.batch)
            for batch in (args.batch, 1):
                for kind in KINDS:  # warm up: the kind's hash learnt, first-use imports
                    Delivery(connection, 20, min(batch, 20)).run(kind, min(batch, 20))

                def run(kind: str, batch: int = batch) -> float:
                    return delivery.run(kind, batch)

                print(f"batches of {batch}:")
                results[batch] = harness.alternating(KINDS, args.rounds, run, lambda ms: f"{ms:.4f} ms")
        finally:
            redis.stop()
    stolen = harness.steal_percent(times_before, harness.cpu_times())
    print(
        f"\nN={args.n} jobs a run, real Redis, median of {args.rounds}; "
        f"CPU stolen by the hypervisor over the run: {stolen}.\n"
    )
    print("| jobs a pipeline | kind | ms a job | jobs/s | ÷ rq (time) |")
    print("|---|---|---|---|---|")
    for batch, rounds in results.items():
        rq_ms = statistics.median(rounds["rq"])
        for kind in KINDS:
            ms = statistics.median(rounds[kind])
            print(f"| {batch} | {kind} | {ms:.4f} | {1000 / ms:,.0f} | {ms / rq_ms:.2f} |")
    print("\nEvery round, ms a job:")
    for batch, rounds in results.items():
        for kind in KINDS:
            print(f"- {batch} a pipeline, {kind}: " + ", ".join(f"{ms:.4f}" for ms in rounds[kind]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
