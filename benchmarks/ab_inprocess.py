"""Did a change to the engine make a workflow job cheaper? Two versions of the package, one process.

    python benchmarks/ab_inprocess.py [--against REF] [--n 6000] [--path job|create]

On this noisy 2-core machine a stock worker's CPU a job swings by more than 10 % between two runs
of the same code, so a change worth a few percent of a job cannot be seen there. This script loads
the package twice into one process: as it was at git ``REF`` (default ``HEAD``) and as it is in
the working tree, each under a name of its own and with its own engine and SQLite WAL file. It then
runs their ``run_workflow`` on queued no-op workflows job by job in alternation (old, new, then new,
old, …), so that whatever the machine does meanwhile falls on both alike. It adds up each version's
CPU time (the thread's) and wall time a job.

This is the same in-process path a SimpleWorker runs a job through (the claim, the handler under its
heartbeat, the completion, each a durable SQLite transaction), without RQ around it: it measures the
engine's own cost, not the ratio to raw RQ. Two copies of the same code differ by up to about 10 µs
a job here (``--against`` the commit you have checked out, with a clean tree, shows it). It asserts
no timing; it exits non-zero if a workflow did not complete.

``--path create`` alternates ``create_workflow(enqueue=True)`` instead, the fused API call: its durable
transaction and the delivery of its job, onto fakeredis (the same Redis client code for both
versions; its cost is fakeredis's, not a server's round trip). It exits non-zero unless every
workflow was queued.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # bench_jobs, whose no-op handler both versions run

import harness  # noqa: E402
from e2e_floor import HANDLER, TYPE, queue_workflows  # noqa: E402


class Version:
    """One version of the package, imported under ``name``, with an engine on its own SQLite file."""

    def __init__(self, name: str, tmp: Path) -> None:
        import fakeredis

        package = importlib.import_module(name)
        self.name = name
        self.execution: ModuleType = importlib.import_module(f"{name}.execution")
        self.engine: Any = package.WorkflowEngine(
            database_url=f"sqlite:///{tmp / f'{name}.db'}", redis_connection=fakeredis.FakeRedis()
        )
        self.engine.register_handler(TYPE, HANDLER)
        self.execution.set_worker_engine(self.engine)  # each version's own module: its own worker engine
        self.cpu_ns = self.wall_ns = self.jobs = 0

    def run(self, workflow_id: str, job_id: str) -> None:
        self.timed(self.execution.run_workflow, workflow_id, HANDLER, job_id)

    def create(self) -> None:
        self.timed(self.engine.create_workflow, workflow_type_id=TYPE, enqueue=True)

    def timed(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """``call(*args, **kwargs)``, its thread's CPU time and its wall time added to this version's."""
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        call(*args, **kwargs)
        self.cpu_ns += time.thread_time_ns() - cpu
        self.wall_ns += time.perf_counter_ns() - wall
        self.jobs += 1

    def count(self, status: str) -> int:
        return len(harness.workflows_in(self.engine, status, self.jobs + 1))


def materialize(ref: str | None, into: Path, name: str) -> None:
    """The package at git ``ref`` (None: as in the working tree), as package ``name`` in ``into``."""
    target = into / name
    if ref is None:
        shutil.copytree(ROOT / "workflow_engine", target, ignore=shutil.ignore_patterns("__pycache__"))
        return
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "workflow_engine"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    (into / "workflow_engine").rename(target)


def run_jobs(old: Version, new: Version, n: int, batch: int) -> None:
    """``n`` workflow jobs of each version, alternated job by job (old, new, then new, old, ...)."""
    done = 0
    while done < n:
        size = min(batch, n - done)
        # The jobs wait on fakeredis and never run: each version runs them here.
        queued = [queue_workflows(version.engine, size) for version in (old, new)]
        pairs = list(zip(*queued, strict=True))
        for i, (for_old, for_new) in enumerate(pairs):
            runs = [(old, for_old), (new, for_new)]
            for version, (workflow_id, job_id) in runs if (done + i) % 2 == 0 else runs[::-1]:
                version.run(workflow_id, job_id)
        done += size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--against", default="HEAD", help="the git ref of the old version (default HEAD)")
    parser.add_argument("--n", type=int, default=6000, help="jobs per version (default 6000)")
    parser.add_argument("--batch", type=int, default=500, help="workflows queued at a time (default 500)")
    parser.add_argument(
        "--path",
        choices=("job", "create"),
        default="job",
        help="what to alternate: run_workflow (default) or create_workflow(enqueue=True)",
    )
    args = parser.parse_args(argv)
    if args.n < 1 or not 1 <= args.batch <= 10_000:
        parser.error("--n must be at least 1 and --batch from 1 to 10,000")
    with tempfile.TemporaryDirectory(prefix="we-ab-") as tmp_name:
        tmp = Path(tmp_name)
        materialize(args.against, tmp, "we_old")
        materialize(None, tmp, "we_new")
        sys.path.insert(0, str(tmp))
        old, new = Version("we_old", tmp), Version("we_new", tmp)
        try:
            if args.path == "create":
                for i in range(args.n):
                    for version in (old, new) if i % 2 == 0 else (new, old):
                        version.create()
            else:
                run_jobs(old, new, args.n, args.batch)
            status = "queued" if args.path == "create" else "completed"
            for version in (old, new):
                if version.count(status) != args.n:
                    print(f"{version.name}: not every workflow is {status}", file=sys.stderr)
                    return 1
        finally:
            for version in (old, new):
                version.execution.set_worker_engine(None)
                version.engine.close()
    what, unit = (
        ("create_workflow(enqueue=True)", "call") if args.path == "create" else ("run_workflow", "job")
    )
    print(f"{what}, in one process, {args.n} {unit}s each, alternating {unit} by {unit}", end="")
    print(" (SQLite WAL, no RQ):\n" if unit == "job" else " (SQLite WAL, fakeredis):\n")
    print(f"| version | CPU a {unit} | wall a {unit} |")
    print("|---|---|---|")
    for label, version in ((f"`{args.against}`", old), ("working tree", new)):
        cpu, wall = (ns / version.jobs / 1000 for ns in (version.cpu_ns, version.wall_ns))
        print(f"| {label} | {cpu:.1f} µs | {wall:.1f} µs |")
    cpu = (new.cpu_ns - old.cpu_ns) / args.n / 1000
    wall = (new.wall_ns - old.wall_ns) / args.n / 1000
    print(f"\nworking tree minus `{args.against}`: {cpu:+.1f} µs CPU, {wall:+.1f} µs wall a {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
