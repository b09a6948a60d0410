"""How long a workflow stays stuck after its worker is killed: ``kill -9`` to ``queued`` again.

    python benchmarks/recovery.py            # default settings, then the fast setting (about 1 minute)
    python benchmarks/recovery.py --quick    # only the fast setting (about 15 s)

A stock forking ``rq worker workflows`` (the victim) runs a handler that
sleeps. A ``workflow-engine worker`` (non-burst) runs alongside as the
reconciler. Once the victim's work-horse is running the workflow, every
process in the victim's session (worker and work-horse) gets ``kill -9``,
and the script waits for the reconciler to put the workflow back to
``queued``. The time is read from the workflow's own ``queued`` event, so
the polling interval does not count.

Settings:

- default: heartbeat every 5 s, stale after 30 s, reconcile every 10 s
  (``workflow-engine worker`` with no options);
- fast: ``WORKFLOW_ENGINE_HEARTBEAT_INTERVAL=1 WORKFLOW_ENGINE_STALE_AFTER=5`` and
  ``--reconcile-every 2``.

Recovery needs the last heartbeat to be older than ``stale_after`` and then
a reconcile pass, so it lands between ``stale_after - heartbeat_interval``
and ``stale_after + reconcile_every`` after the kill. The script exits
non-zero if the workflow is not requeued within that window plus a margin.

It also reports when the second attempt started (the reconciler is a
worker too). A lost attempt is requeued with no backoff (a crash is not a
handler error), and the same reconcile pass delivers its new job to RQ.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import BenchFailure, RedisServer, wait_for

from workflow_engine import WorkflowEngine
from workflow_engine.models import utcnow


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Setting:
    name: str
    heartbeat_interval: float
    stale_after: float
    reconcile_every: float
    env: dict[str, str]
    cli: list[str]


DEFAULT = Setting("default", 5.0, 30.0, 10.0, {}, [])
FAST = Setting(
    "fast",
    1.0,
    5.0,
    2.0,
    {"WORKFLOW_ENGINE_HEARTBEAT_INTERVAL": "1", "WORKFLOW_ENGINE_STALE_AFTER": "5"},
    ["--reconcile-every", "2"],
)


@dataclass
class Result:
    setting: Setting
    seconds: float
    rerun_seconds: float
    heartbeat_age: float
    detail: str


def measure(setting: Setting, redis: RedisServer, tmp: Path) -> Result:
    redis.flushall()
    database_url = f"sqlite:///{tmp / f'recovery-{setting.name}-{uuid.uuid4().hex[:6]}.db'}"
    env = harness.worker_env(database_url, redis.url, setting.env)
    engine = WorkflowEngine(
        database_url=database_url,
        redis_url=redis.url,
        queue_name=harness.QUEUE,
        heartbeat_interval=setting.heartbeat_interval,
        stale_after=setting.stale_after,
    )
    engine.register_handler("bench_sleep", "bench_jobs:sleepy_workflow", max_retries=3)
    wid = engine.create_workflow(workflow_type_id="bench_sleep", inputs={"seconds": 600})
    victim_name = f"victim-{uuid.uuid4().hex[:8]}"
    victim = harness.start(harness.rq_worker_cmd(redis.url, "fork", burst=False, name=victim_name), env, tmp)
    reconciler: harness.Worker | None = None
    try:
        engine.enqueue_execution(wid)
        wait_for(
            lambda: engine.get_workflow(wid).status.value == "running", 60, "the victim to start the workflow"
        )
        wf = engine.get_workflow(wid)
        if wf.worker != victim_name:
            raise BenchFailure(f"workflow claimed by {wf.worker!r}, not by the victim {victim_name!r}")
        reconciler = harness.start([str(harness.BIN / "workflow-engine"), "worker", *setting.cli], env, tmp)
        from rq import Worker

        wait_for(
            lambda: len(Worker.all(connection=engine.redis)) >= 2,
            30,
            "the reconciler worker to start",
            interval=0.05,
        )
        # Kill at a random point of the heartbeat cycle, after at least one heartbeat.
        time.sleep(setting.heartbeat_interval + random.uniform(0, setting.heartbeat_interval))
        before = engine.get_workflow(wid)
        if before.status.value != "running":
            raise BenchFailure(f"the workflow is {before.status.value} before the kill, expected running")
        killed_at = utcnow()
        victim.kill_session()
        say(f"  [{setting.name}] killed the victim's session (worker and horse) at {killed_at:%H:%M:%S.%f}")
        heartbeat_age = (
            (killed_at - before.heartbeat_at).total_seconds() if before.heartbeat_at else float("nan")
        )

        limit = setting.stale_after + setting.reconcile_every + 30

        def event_at(from_status: str, to_status: str) -> tuple[datetime, str] | None:
            for ev in engine.get_events(wid):
                if ev.from_status == from_status and ev.to_status == to_status and ev.at >= killed_at:
                    return ev.at, ev.detail or ""
            return None

        wait_for(
            lambda: event_at("running", "queued") is not None,
            limit,
            f"workflow {wid} to be requeued",
            interval=0.05,
        )
        requeued = event_at("running", "queued")
        assert requeued is not None
        # The reconciler is also a worker: it runs the second attempt once the retry is delivered.
        wait_for(
            lambda: event_at("queued", "running") is not None,
            setting.reconcile_every + 30,
            f"workflow {wid} to run again",
            interval=0.05,
        )
        rerun = event_at("queued", "running")
        assert rerun is not None
        if victim.session_pids():
            raise BenchFailure("a process of the killed worker's session is still alive")
        return Result(
            setting,
            (requeued[0] - killed_at).total_seconds(),
            (rerun[0] - killed_at).total_seconds(),
            heartbeat_age,
            requeued[1],
        )
    except BenchFailure as exc:
        logs = "\n".join(w.tail(15) for w in (victim, reconciler) if w is not None)
        raise BenchFailure(f"{exc}\n{logs}") from None
    finally:
        victim.stop()
        if reconciler is not None:
            reconciler.stop()
        engine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="run only the fast setting")
    args = parser.parse_args(argv)
    settings = [FAST] if args.quick else [DEFAULT, FAST]
    results: list[Result] = []
    failure: BaseException | None = None
    with tempfile.TemporaryDirectory(prefix="we-recovery-") as tmp_name:
        tmp = Path(tmp_name)
        redis = RedisServer(tmp)
        try:
            redis.start()
            say(f"private redis-server on port {redis.port}")
            for setting in settings:
                say(
                    f"{setting.name}: heartbeat {setting.heartbeat_interval:g} s, stale after "
                    f"{setting.stale_after:g} s, reconcile every {setting.reconcile_every:g} s"
                )
                results.append(measure(setting, redis, tmp))
                say(f"  [{setting.name}] requeued {results[-1].seconds:.2f} s after the kill")
        except Exception as exc:
            failure = exc
        finally:
            redis.stop()

    print(
        "\n| setting | heartbeat | stale after | reconcile every | kill -9 → queued | expected window "
        "| kill -9 → running again |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        s = r.setting
        low, high = s.stale_after - s.heartbeat_interval, s.stale_after + s.reconcile_every
        print(
            f"| {s.name} | {s.heartbeat_interval:g} s | {s.stale_after:g} s | {s.reconcile_every:g} s | "
            f"**{r.seconds:.2f} s** | {low:g}-{high:g} s | {r.rerun_seconds:.2f} s |"
        )
    for r in results:
        print(
            f"\n{r.setting.name}: the last heartbeat was {r.heartbeat_age:.2f} s old at the kill; "
            f"event: {r.detail}"
        )
    if failure is not None:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
