"""What bounds the end-to-end ratio: stock workers, four kinds of job, side by side.

    python benchmarks/e2e_floor.py [--n 2000] [--rounds 5] [--worker simple|fork] [--procs 1]

Each round runs one ``rq worker workflows --burst -w rq.SimpleWorker`` process (the stock
command, as in ``bench.py``'s e2e rows) over N jobs of each kind, in turn, on a private Redis
and a fresh SQLite WAL file. With ``--worker fork`` it runs the default forking worker instead,
with ``-c workflow_engine.rq_preload`` for every kind but ``raw`` (as ``bench.py``'s preloaded
row): then each job's work-horse opens the database afresh, as any durable job must after a fork.
With ``--procs 2`` it runs two such processes side by side over the same queue, as ``bench.py``'s
x2 rows do: on two cores the workers, Redis and SQLite then share the CPU.

- ``raw``: RQ's no-op job, as raw RQ runs it in ``bench.py``;
- ``shape``: a job with a workflow job's arguments, options (timeout, result TTL, description,
  ``on_stopped`` callback) and dict result, that does nothing: what RQ charges for the shape;
- ``sql floor``: the same job running exactly the SQL of a workflow's claim and completion,
  two durable transactions with the store's own statements and PRAGMAs, and nothing else
  (``bench_jobs.sql_floor_job``): the cost of the guarantees;
- ``workflow``: the real workflow job, ``run_workflow``, through the engine.

It prints each kind's median rate and its ratio to ``raw``, with every round's figures.
``sql floor`` ÷ ``raw`` is the highest end-to-end ratio that any engine keeping a durable
claim and a durable completion per workflow could reach with this worker on this machine.
It exits non-zero if a job failed or a workflow did not end ``completed``; it asserts no timing.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis as redis_lib
from rq import Callback, Queue
from rq.job import Job

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_jobs
import harness
from harness import QUEUE, BenchFailure, RedisServer

from workflow_engine import WorkflowEngine
from workflow_engine.transport import META_KEY, PRELOAD, RESULT_TTL

TYPE = "bench"
HANDLER = "bench_jobs:noop_workflow"
KINDS = ("raw", "shape", "sql floor", "workflow")
WORKERS = {"simple": "-w rq.SimpleWorker ", "fork": "(forking; -c workflow_engine.rq_preload but for raw) "}


def queue_workflows(engine: WorkflowEngine, n: int, workflow_type: str = TYPE) -> list[tuple[str, str]]:
    """``n`` workflows of ``workflow_type`` queued in ``engine``'s database, each with its job id;
    their jobs are on the engine's queue."""
    for done in range(0, n, 500):
        engine.create_workflows([{"workflow_type_id": workflow_type}] * min(500, n - done), enqueue=True)
    return [(wf.id, str(wf.job_id)) for wf in harness.workflows_in(engine, "queued", n)]


def reshape(
    queue: Queue,
    func: Callable[..., object],
    workflows: list[tuple[str, str]],
    workflow_type: str = TYPE,
    handler: str = HANDLER,
) -> None:
    """Replace the queue's jobs by ``func`` jobs with the workflow jobs' ids, arguments and options
    (``bench_jobs.sql_floor_job``: the floor; ``bench_jobs.workflow_shaped_noop``: the shape)."""
    queue.empty()
    queue.enqueue_many(
        [
            Queue.prepare_data(
                func,
                args=(wid, handler, jid),
                timeout=-1,
                result_ttl=RESULT_TTL,
                job_id=jid,
                description=f"workflow {workflow_type} {wid}",
                on_stopped=Callback(bench_jobs.stopped_noop),
                meta={META_KEY: PRELOAD},
            )
            for wid, jid in workflows
        ]
    )


@dataclass(frozen=True)
class Run:
    whole: float  # jobs/s, from the workers' start to the end of the last job
    steady: float  # jobs/s, from the end of the first job to the end of the last
    cpu_ms: float  # the worker processes' CPU time (user + system) a job, start-up included


class Floor:
    def __init__(
        self, tmp: Path, redis: RedisServer, n: int, worker_class: str = "simple", procs: int = 1
    ) -> None:
        self.tmp, self.redis, self.n, self.worker_class, self.procs = tmp, redis, n, worker_class, procs
        self.connection = redis_lib.Redis.from_url(redis.url)
        self.queue = Queue(QUEUE, connection=self.connection)
        self.runs = 0

    def worker(self, database_url: str | None, job_ids: list[str]) -> Run:
        """``procs`` stock burst workers over the queue: their jobs/s from the start to the end of the
        last job (not to their exit, which a burst worker delays by up to 1 s at random, as
        ``bench.py`` says), at their steady pace (from the end of the first job to the end of the
        last: no start-up, no first import), and the CPU time they used a job, which the
        hypervisor's steal barely touches."""
        cmd = harness.rq_worker_cmd(self.redis.url, self.worker_class)
        if self.worker_class == "fork" and database_url is not None:
            cmd += ["-c", "workflow_engine.rq_preload"]  # the package and the engine, built once
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall_start = time.time()
        env = harness.worker_env(database_url, self.redis.url)
        procs = [harness.start(cmd, env, self.tmp) for _ in range(self.procs)]
        try:
            codes = [proc.wait(timeout=max(120.0, self.n * 0.1)) for proc in procs]
        finally:
            for proc in procs:
                proc.stop()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, once reaped
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        for proc, code in zip(procs, codes, strict=True):
            if code != 0:
                raise BenchFailure(f"worker exited with code {code}\n{proc.tail()}")
            proc.log.unlink(missing_ok=True)
        failed = self.queue.failed_job_registry.count
        if failed or self.queue.count:
            raise BenchFailure(f"{failed} jobs failed and {self.queue.count} are still queued")
        ends = [job.ended_at for job in Job.fetch_many(job_ids, connection=self.connection) if job]
        if len(ends) != self.n or None in ends:
            raise BenchFailure(f"{len(ends)} of {self.n} jobs have an end time")
        elapsed = max(ends).timestamp() - wall_start  # type: ignore[type-var,union-attr]
        steady = (max(ends) - min(ends)).total_seconds()  # type: ignore[type-var,operator]
        return Run(
            self.n / elapsed, (self.n - 1) / steady if steady > 0 else float("nan"), cpu / self.n * 1000
        )

    def engine(self) -> WorkflowEngine:
        self.runs += 1
        engine = WorkflowEngine(
            database_url=f"sqlite:///{self.tmp / f'floor-{self.runs}.db'}",
            redis_url=self.redis.url,
            queue_name=QUEUE,
        )
        engine.register_handler(TYPE, HANDLER)
        return engine

    def completed(self, engine: WorkflowEngine) -> None:
        done = len(harness.workflows_in(engine, "completed", self.n + 1))
        engine.close()
        if done != self.n:
            raise BenchFailure(f"{done} of {self.n} workflows completed")

    def run(self, kind: str) -> Run:
        self.redis.flushall()
        if kind == "raw":
            jobs = self.queue.enqueue_many([Queue.prepare_data(bench_jobs.noop) for _ in range(self.n)])
            return self.worker(None, [job.id for job in jobs])
        engine = self.engine()
        workflows = queue_workflows(engine, self.n)
        job_ids = [jid for _, jid in workflows]
        if kind == "shape":
            reshape(self.queue, bench_jobs.workflow_shaped_noop, workflows)
            rates = self.worker(engine.database_url, job_ids)
            engine.close()
            return rates
        if kind == "sql floor":
            reshape(self.queue, bench_jobs.sql_floor_job, workflows)
        rates = self.worker(engine.database_url, job_ids)
        self.completed(engine)
        return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="jobs per run (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported (default 5)")
    parser.add_argument(
        "--worker",
        choices=("simple", "fork"),
        default="simple",
        help="rq.SimpleWorker (default), or the forking Worker with the package preloaded (try --n 200)",
    )
    parser.add_argument(
        "--procs", type=int, default=1, help="worker processes side by side over the queue (default 1)"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1 or args.procs < 1:
        parser.error("--n, --rounds and --procs must be at least 1")
    print(harness.compile_bytecode())
    times_before = harness.cpu_times()
    with tempfile.TemporaryDirectory(prefix="we-floor-") as tmp_name:
        redis = RedisServer(Path(tmp_name))
        try:
            redis.start()
            floor = Floor(Path(tmp_name), redis, args.n, args.worker, args.procs)
            runs = harness.alternating(
                KINDS,
                args.rounds,
                floor.run,
                lambda run: f"{run.whole:,.0f}/s ({run.steady:,.0f}/s steady, {run.cpu_ms:.3f} ms CPU)",
            )
        finally:
            redis.stop()
    stolen = harness.steal_percent(times_before, harness.cpu_times())
    times = f" x{args.procs}" if args.procs > 1 else ""
    print(
        f"\n`rq worker {WORKERS[args.worker]}--burst`{times}, SQLite WAL, N={args.n}, median of "
        f"{args.rounds}; CPU stolen by the hypervisor over the run: {stolen}. Whole: from the "
        "workers' start to the end of the last job. Steady: from the end of the first job to the end "
        "of the last. CPU: the worker processes' own user and system time a job, start-up included.\n"
    )
    print("| job | jobs/s, whole | ÷ raw | jobs/s, steady | ÷ raw | worker CPU, ms a job | + over raw |")
    print("|---|---|---|---|---|---|---|")

    def median(kind: str, field: str) -> float:
        return statistics.median(getattr(run, field) for run in runs[kind])

    for kind in KINDS:
        whole, steady, cpu = (median(kind, f) for f in ("whole", "steady", "cpu_ms"))
        print(
            f"| {kind} | {whole:,.0f} | {whole / median('raw', 'whole'):.2f} | {steady:,.0f} "
            f"| {steady / median('raw', 'steady'):.2f} | {cpu:.3f} | {cpu - median('raw', 'cpu_ms'):+.3f} |"
        )
    print("\nEvery round, whole jobs/s / steady jobs/s / CPU ms a job:")
    for kind in KINDS:
        print(
            f"- {kind}: "
            + ", ".join(f"{r.whole:,.0f} / {r.steady:,.0f} / {r.cpu_ms:.3f}" for r in runs[kind])
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
