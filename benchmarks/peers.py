"""The peers: Celery, Dramatiq and Huey on the end-to-end workload (N no-op tasks), to report beside ours.

    python benchmarks/peers.py                       # N=2000, 3 rounds: 2-2.5 min once the venv exists
    python benchmarks/peers.py --n 200 --rounds 1    # smoke run: ~20 s (~40 s the first time)

The peers are never installed into the project's virtualenv: the first run creates their own venv,
/tmp/we-bench-peers/venv-<hash of the pins in GROUPS and the Python version>, and pip-installs the pins
into it (about 20 s, progress on stderr); later runs reuse it. A peer whose packages do not install is
reported as "not installed: <pip's error>" instead of failing the run (and is retried by the next run);
a peer that installed but did not run exactly N tasks to success raises BenchFailure.

Each round of each peer runs on a private redis-server (harness.RedisServer, flushed between rounds), with
task modules generated into a temporary directory. A process in the peers' venv enqueues N no-op tasks with
the peer's usual API (its rate is printed, not part of the figure); then the peer's worker is started and
the figure is N ÷ the seconds from starting it to the moment all N are counted as done. That includes the
worker's start-up, as our e2e figure includes `rq worker --burst`'s. Workers log at their defaults (Huey's
logs two lines per task), as `rq worker` does in our figure. What runs, and how "done" is counted:

- Celery: `celery worker --pool=solo --concurrency=1 --without-gossip --without-mingle --without-heartbeat`.
  With the SQLAlchemy result backend on a SQLite file (the durable comparison): rows in celery_taskmeta, all
  SUCCESS. Celery's SQLAlchemy backend builds a new engine (and connection) for every result unless its
  pool forked, so that is what solo costs (~100 tasks/s here, over half of the run's time). Without a result
  backend nothing records a finished task, so that variant's task INCRs a Redis counter: one Redis command
  per task that no other row pays.
- Dramatiq: `dramatiq --processes 1 --threads 8`, RedisBroker; its broker deletes a message once the task
  ran and was acked: done when all N are gone, and none dead-lettered or delayed for a retry.
- Huey: `huey_consumer -w 1 -k thread`, RedisHuey(store_none=True), so that a task returning None leaves a
  result: done when its result store holds N, all None (a failed task's result is an Error).

Every round then checks that exactly N tasks succeeded and nothing is left queued. Workers are stopped by
PID (SIGKILL to their session) once the figure is taken. The order of the peers rotates by round.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import BenchFailure, RedisServer, wait_for

REDIS_PY = "redis==8.1.0"
#: What each peer needs, pinned; each group is installed by its own pip call, so one can fail alone.
GROUPS = {
    "celery": ["celery[redis]==5.7.0", "kombu==5.7.0", "sqlalchemy==2.1.9", REDIS_PY],
    "dramatiq": ["dramatiq[redis]==2.2.1", REDIS_PY],
    "huey": ["huey==3.5.4", REDIS_PY],
}
CACHE = Path(tempfile.gettempdir()) / "we-bench-peers"
COUNTER = "peers:done"  # the key that peer_celery's task INCRs without a result backend

MODULES = {
    "peer_celery": """
import os
import redis
from celery import Celery

BACKEND = os.environ.get("PEERS_CELERY_BACKEND") or None
app = Celery("peer_celery", broker=os.environ["PEERS_REDIS_URL"], backend=BACKEND)
app.conf.broker_connection_retry_on_startup = True
counter = redis.Redis.from_url(os.environ["PEERS_REDIS_URL"])


@app.task(ignore_result=BACKEND is None)
def noop():
    if BACKEND is None:  # no result store to count finished tasks in
        counter.incr("peers:done")


def enqueue(n):
    for _ in range(n):
        noop.delay()
""",
    "peer_dramatiq": """
import os
import dramatiq
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=os.environ["PEERS_REDIS_URL"]))


@dramatiq.actor(max_retries=0)
def noop():
    pass


def enqueue(n):
    for _ in range(n):
        noop.send()
""",
    "peer_huey": """
import os
from huey import RedisHuey

huey = RedisHuey("bench", url=os.environ["PEERS_REDIS_URL"], store_none=True)


@huey.task()
def noop():
    pass


def enqueue(n):
    for _ in range(n):
        noop()
""",
}
#: Run in the peers' venv: import a generated module, enqueue N tasks, print the seconds it took.
DRIVER = (
    "import importlib, sys, time; m = importlib.import_module(sys.argv[1]); t = time.perf_counter(); "
    "m.enqueue(int(sys.argv[2])); print(time.perf_counter() - t)"
)


@dataclass
class PeerResult:
    name: str
    rates: list[float]  # tasks/s per round; empty if the peer did not run
    note: str  # versions, or why it did not run
    enqueue_rates: list[float] = field(default_factory=list)  # tasks/s enqueued, per round

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None


@dataclass
class Run:
    """What one round of one peer can look at: the broker, the tmp dir, the results database."""

    r: redis.Redis
    tmp: Path
    n: int

    @property
    def results_db(self) -> Path:
        return self.tmp / "celery-results.sqlite"


def celery_rows(run: Run, success_only: bool) -> int:
    if run.r.llen("celery"):  # still queued: no need to read (and lock) the results database yet
        return 0
    sql = "SELECT count(*) FROM celery_taskmeta" + (" WHERE status = 'SUCCESS'" if success_only else "")
    try:
        with closing(sqlite3.connect(run.results_db, timeout=10)) as db:
            return int(db.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:  # the worker creates the table on its first result
        return 0


def huey_check(run: Run) -> str:
    values = set(run.r.hvals("huey.results.bench"))
    try:
        ok = all(isinstance(v, bytes) and pickle.loads(v) is None for v in values)  # else a huey Error
    except Exception:
        ok = False
    return "" if ok else "a result is not None (a task failed)"


@dataclass
class Peer:
    name: str
    group: str  # which of GROUPS it needs
    shown: list[str]  # the packages whose versions its note shows
    module: str  # which of MODULES it enqueues with
    args: list[str]  # the worker command, from the venv's bin/
    how: str  # how finished tasks are counted
    queued: Callable[[Run], int]  # tasks on the broker before the worker starts
    done: Callable[[Run], int]  # tasks finished so far
    check: Callable[[Run], str]  # after the worker stopped: why the round is wrong, or ""
    env: dict[str, str] = field(default_factory=dict)


CELERY_WORKER = ["celery", "-A", "peer_celery", "worker", "--pool=solo", "--concurrency=1"]
CELERY_WORKER += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
PEERS = [
    Peer(
        name="Celery solo, SQLAlchemy/SQLite results",
        group="celery",
        shown=["celery", "kombu", "sqlalchemy"],
        module="peer_celery",
        args=CELERY_WORKER,
        how="rows in celery_taskmeta, all SUCCESS",
        queued=lambda run: int(run.r.llen("celery")),
        done=lambda run: celery_rows(run, success_only=False),  # a failed task has a row too
        check=lambda run: "" if celery_rows(run, success_only=True) == run.n else "a task did not succeed",
        env={"PEERS_CELERY_BACKEND": "db+sqlite:///{tmp}/celery-results.sqlite"},
    ),
    Peer(
        name="Celery solo, no result backend",
        group="celery",
        shown=["celery", "kombu"],
        module="peer_celery",
        args=CELERY_WORKER,
        how="the task INCRs a Redis counter (+1 Redis command per task)",
        queued=lambda run: int(run.r.llen("celery")),
        done=lambda run: int(run.r.get(COUNTER) or 0),
        check=lambda run: "" if int(run.r.get(COUNTER) or 0) == run.n else "the counter is not N",
    ),
    Peer(
        name="Dramatiq 8 threads",
        group="dramatiq",
        shown=["dramatiq"],
        module="peer_dramatiq",
        args=["dramatiq", "peer_dramatiq", "--processes", "1", "--threads", "8"],
        how="messages acked (deleted) in its broker, none dead-lettered",
        queued=lambda run: int(run.r.hlen("dramatiq:default.msgs")),
        done=lambda run: run.n - int(run.r.hlen("dramatiq:default.msgs")),
        check=lambda run: (
            "dead-lettered or delayed messages"
            if run.r.zcard("dramatiq:default.XQ") or run.r.hlen("dramatiq:default.DQ.msgs")
            else ""
        ),
    ),
    Peer(
        name="Huey 1 thread",
        group="huey",
        shown=["huey"],
        module="peer_huey",
        args=["huey_consumer", "peer_huey.huey", "-w", "1", "-k", "thread"],
        how="None results in its result store (store_none=True)",
        queued=lambda run: int(run.r.llen("huey.redis.bench")),
        done=lambda run: int(run.r.hlen("huey.results.bench")),
        check=huey_check,
    ),
]
QUEUES = ["celery", "dramatiq:default", "huey.redis.bench"]


# -- the peers' venv ---------------------------------------------------------
def call(cmd: list[str], timeout: float = 900) -> tuple[str, str]:
    """Run ``cmd``: (its stdout, "" or why it failed)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", str(exc)
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line] or proc.stderr.splitlines()
    return proc.stdout, "" if proc.returncode == 0 else (errors or [f"exit code {proc.returncode}"])[
        -1
    ].strip()


def ensure_venv(say: Callable[[str], None]) -> tuple[Path, dict[str, str], dict[str, str]]:
    """Create (once) and return the peers' venv, {group: why it did not install}, {package: version}."""
    pins = json.dumps([GROUPS, sys.version_info[:2]], sort_keys=True)
    venv = CACHE / f"venv-{hashlib.sha256(pins.encode()).hexdigest()[:12]}"
    python, ready = str(venv / "bin" / "python"), venv / "we-bench-ready.json"
    state = json.loads(ready.read_text()) if ready.exists() else {"installed": [], "versions": {}}
    missing = [group for group in GROUPS if group not in state["installed"]]
    if not missing:
        return venv, {}, state["versions"]
    started = time.perf_counter()
    if not Path(python).exists():
        say(f"peers: creating {venv}")
        shutil.rmtree(venv, ignore_errors=True)
        _, error = call([sys.executable, "-m", "venv", str(venv)])
        if error:
            return venv, {group: f"python -m venv failed: {error}" for group in GROUPS}, {}
    failed = {}
    for group in missing:
        say(f"peers: pip install {' '.join(GROUPS[group])}")
        _, error = call([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *GROUPS[group]])
        if error:
            failed[group] = error
        else:
            state["installed"].append(group)
    freeze, _ = call([python, "-m", "pip", "freeze"])
    state["versions"] = dict(line.lower().split("==", 1) for line in freeze.split() if "==" in line)
    ready.write_text(json.dumps(state))  # only what installed: a group that failed is tried again next time
    say(f"peers: venv ready in {time.perf_counter() - started:.0f} s")
    return venv, failed, state["versions"]


# -- one round ----------------------------------------------------------------
def stop(worker: harness.Worker) -> None:
    """SIGKILL to the worker's session (by its PID), once every task is counted: a graceful
    shutdown would only add its seconds (Dramatiq's is about 3) to the run, never to the figure."""
    worker.kill_session()


def run_round(peer: Peer, run: Run, redis_url: str, venv: Path) -> tuple[float, float]:
    """One round of one peer: (tasks/s end to end, tasks/s enqueued)."""
    n, tmp = run.n, run.tmp
    run.r.flushall()
    run.results_db.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PEERS_"))}
    env.update({k: v.format(tmp=tmp) for k, v in peer.env.items()})
    env.update(PEERS_REDIS_URL=redis_url, PYTHONPATH=str(tmp), PATH=f"{venv / 'bin'}:{env['PATH']}")
    cmd = [str(venv / "bin" / "python"), "-c", DRIVER, peer.module, str(n)]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise BenchFailure(f"{peer.name}: enqueueing failed\n{proc.stderr[-2000:]}")
    enqueue_seconds = float(proc.stdout.split()[-1])
    if peer.queued(run) != n:
        raise BenchFailure(f"{peer.name}: {peer.queued(run)} tasks on the broker, expected {n}")

    start = time.perf_counter()
    worker = harness.start([str(venv / "bin" / peer.args[0]), *peer.args[1:]], env, tmp)
    try:

        def finished() -> bool:
            if worker.proc.poll() is not None:
                raise BenchFailure(f"{peer.name}: worker exited with code {worker.proc.returncode}")
            return peer.done(run) >= n

        wait_for(finished, timeout=max(60.0, n * 0.05), what=f"{n} {peer.name} tasks", interval=0.01)
        elapsed = time.perf_counter() - start
    except BenchFailure as exc:
        stop(worker)
        raise BenchFailure(f"{exc}\n{worker.tail()}") from None
    stop(worker)
    done, left = peer.done(run), sum(int(run.r.llen(q)) for q in QUEUES)
    problem = peer.check(run) or ("" if done == n and not left else f"{done} done, {left} left queued")
    if problem:
        raise BenchFailure(f"{peer.name}: {problem} (N={n})\n{worker.tail()}")
    worker.log.unlink(missing_ok=True)
    return n / elapsed, n / enqueue_seconds


def run_peers(n: int, rounds: int, say: Callable[[str], None]) -> list[PeerResult]:
    """Every peer that installs, ``rounds`` rounds of ``n`` no-op tasks each. Raises BenchFailure."""
    venv, failed, versions = ensure_venv(say)
    results = {}
    for peer in PEERS:
        shown = ", ".join(f"{p} {versions.get(p, '?')}" for p in peer.shown)
        note = f"not installed: {failed[peer.group]}" if peer.group in failed else f"{shown}; {peer.how}"
        results[peer.name] = PeerResult(peer.name, [], note)
    runnable = [peer for peer in PEERS if peer.group not in failed]
    with tempfile.TemporaryDirectory(prefix="we-bench-peers-") as folder:
        tmp = Path(folder)
        for module, source in MODULES.items():
            (tmp / f"{module}.py").write_text(source.lstrip())
        server = RedisServer(tmp)
        server.start()
        run = Run(redis.Redis.from_url(server.url), tmp, n)
        try:
            for r in range(rounds):
                shift = r % max(len(runnable), 1)
                for peer in runnable[shift:] + runnable[:shift]:
                    rate, enqueue_rate = run_round(peer, run, server.url, venv)
                    results[peer.name].rates.append(rate)
                    results[peer.name].enqueue_rates.append(enqueue_rate)
                    say(f"  [{peer.name}] round {r + 1}/{rounds}: {rate:,.0f} tasks/s")
        finally:
            run.r.close()
            server.stop()
    return list(results.values())


def format_table(results: list[PeerResult]) -> str:
    lines = ["| peer | tasks/s (median) | rounds | note |", "|---|---|---|---|"]
    for res in results:
        median = "—" if res.median is None else f"{res.median:,.0f}"
        rounds = ", ".join(f"{rate:,.0f}" for rate in res.rates) or "—"
        lines.append(f"| {res.name} | {median} | {rounds} | {res.note} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="no-op tasks per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per peer (default 3)")
    args = parser.parse_args()

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    try:
        results = run_peers(args.n, args.rounds, say)
    except BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"Peers, N={args.n} no-op tasks, {args.rounds} round(s), {os.cpu_count()} cores\n")
    print(format_table(results))
    print("\nEnqueue rates (a process in the peers' venv, before the worker starts; not in the figure):")
    for res in results:
        if res.enqueue_rates:
            print(f"- {res.name}: {statistics.median(res.enqueue_rates):,.0f} tasks/s")
    print(f"\nTook {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
