"""Prometheus metrics: counters fed by the engine's listener, gauges read from the database.

The process test runs a real forking ``workflow-engine worker --metrics-port`` and checks
that counts made in work-horses that exited are all there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from workflow_engine import WorkflowEngine, WorkflowStatus, metrics
from workflow_engine.models import utcnow
from workflow_engine.transport import Transport

from support import APPS, RedisServer, free_port, held, start_worker, true_in_a_forked_child, wait_for

S = WorkflowStatus
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape_registry(engine: WorkflowEngine, instruments: metrics.Instruments) -> Samples:
    return scrape_registry_of(metrics.make_registry(engine, instruments))


def scrape_registry_of(registry: Any) -> Samples:
    from prometheus_client import generate_latest

    return parse(generate_latest(registry).decode())


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[WorkflowEngine]:
    e = WorkflowEngine(
        database_url=f"sqlite:///{tmp_path / 'm.db'}", redis_url="fakeredis://", is_async=False
    )
    e.register_handler("ok", "we_test_handlers:record_success", max_retries=0)
    e.register_handler("bad", "we_test_handlers:always_fail", max_retries=0)
    e.register_handler("flaky", "we_test_handlers:flaky", max_retries=2, retry_backoff=0)
    yield e
    e.close()


# -- in one process --------------------------------------------------------------------
def test_every_series_of_a_type_exists_at_zero_before_its_first_count(engine: WorkflowEngine) -> None:
    """So that rate() and increase() see a type's first failure: a series that appeared only with
    its first count would hide it. Registered types start at zero when the engine is instrumented,
    any other type at its first status change."""
    inst = metrics.instrument(engine, metrics.Instruments())
    m = scrape_registry(engine, inst)
    for kind in ("ok", "bad", "flaky"):
        assert value(m, "workflow_engine_workflows_created_total", type=kind) == 0
        assert value(m, "workflow_engine_attempts_failed_total", type=kind) == 0
        assert value(m, "workflow_engine_workflow_duration_seconds_count", type=kind) == 0
        for status in ("completed", "failed", "cancelled", "rejected"):
            assert value(m, "workflow_engine_workflows_finished_total", type=kind, status=status) == 0
    assert value(m, "workflow_engine_workflows_created_total", type="later") is None

    engine.create_workflow(workflow_type_id="later")  # registered nowhere: its series start now
    m = scrape_registry(engine, inst)
    assert value(m, "workflow_engine_workflows_created_total", type="later") == 1
    assert value(m, "workflow_engine_workflows_finished_total", type="later", status="failed") == 0
    assert value(m, "workflow_engine_attempts_failed_total", type="later") == 0


def test_types_past_the_label_limit_are_counted_together_and_registered_ones_keep_their_own(
    engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Any caller of an app's create endpoint may name a type: each new one would be some 30
    series for the process's life, so past a limit they share one label value."""
    monkeypatch.setattr(metrics, "MAX_TYPE_LABELS", 3)
    inst = metrics.instrument(engine, metrics.Instruments())
    for n in range(6):
        engine.create_workflow(workflow_type_id=f"made-up-{n}")
    engine.enqueue_execution(engine.create_workflow(workflow_type_id="ok"))  # registered: its own
    m = scrape_registry(engine, inst)
    created = {
        dict(labels)["type"]: v
        for (name, labels), v in m.items()
        if name == "workflow_engine_workflows_created_total"
    }
    assert created == {
        "made-up-0": 1,
        "made-up-1": 1,
        "made-up-2": 1,
        metrics.OTHER_TYPES: 3,
        # The scrape seeds the types it finds in the database, within a budget of their own.
        "made-up-3": 0,
        "made-up-4": 0,
        "made-up-5": 0,
        **{kind: (1 if kind == "ok" else 0) for kind in engine._handlers},
    }
    assert value(m, "workflow_engine_workflows_finished_total", type="ok", status="completed") == 1
    assert caplog.text.count(f"counted under type={metrics.OTHER_TYPES!r}") == 1


def test_made_up_types_in_the_database_never_keep_a_type_that_runs_from_its_own_series(
    engine: WorkflowEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker seeds the types it finds in the database, made-up ones first in their order: the
    type it then runs still counts under its own name."""
    monkeypatch.setattr(metrics, "MAX_TYPE_LABELS", 3)
    for n in range(5):
        engine.create_workflow(workflow_type_id=f"junk-{n}")
    worker_side = WorkflowEngine(
        database_url=f"sqlite:///{tmp_path / 'm.db'}", redis_url="fakeredis://", is_async=False
    )
    worker_side.register_handler("zz_report", "we_test_handlers:always_fail", max_retries=0)
    inst = metrics.instrument(worker_side, metrics.Instruments())
    scrape_registry(worker_side, inst)  # seeds junk-0 to junk-2
    worker_side.enqueue_execution(worker_side.create_workflow(workflow_type_id="zz_report"))
    for n in range(5, 9):  # made up, with no handler, past the limit
        worker_side.create_workflow(workflow_type_id=f"junk-{n}")
    m = scrape_registry(worker_side, inst)
    assert value(m, "workflow_engine_workflows_finished_total", type="zz_report", status="failed") == 1
    created = {
        dict(labels)["type"]
        for (name, labels), _ in m.items()
        if name == "workflow_engine_workflows_created_total"
    }
    assert created == {
        "zz_report",
        "junk-0",
        "junk-1",
        "junk-2",
        "junk-5",
        "junk-6",
        "junk-7",
        metrics.OTHER_TYPES,
    }
    worker_side.close()


def test_the_queue_wait_runs_from_becoming_queued_to_the_claim_across_a_redelivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis forgot the job, and reconcile sent it again: the wait is the whole of it, as
    ``queued_at`` and ``stats()`` have it, not the moments since the redelivery."""
    import time

    from rq import SimpleWorker

    from workflow_engine import recovery

    monkeypatch.setattr(recovery, "REDELIVERY_GRACE", timedelta(0))
    e = WorkflowEngine(database_url=f"sqlite:///{tmp_path / 'w.db'}", redis_url="fakeredis://", is_async=True)
    e.register_handler("ok", "we_test_handlers:record_success")
    inst = metrics.instrument(e, metrics.Instruments())
    wid = e.create_workflow(workflow_type_id="ok", enqueue=True)
    time.sleep(0.5)
    e.redis.flushall()  # Redis restarted without persistence
    assert e.reconcile().redelivered == [wid]
    SimpleWorker([e.queue], connection=e.redis).work(burst=True)
    wf = e.get_workflow(wid)
    assert wf.status is S.COMPLETED and wf.started_at is not None and wf.queued_at is not None
    m = scrape_registry(e, inst)
    assert value(m, "workflow_engine_queue_wait_seconds_count") == 1
    waited = value(m, "workflow_engine_queue_wait_seconds_sum")
    assert waited is not None and waited >= 0.5
    assert waited == pytest.approx((wf.started_at - wf.queued_at).total_seconds(), abs=0.01)
    e.close()


def test_the_listener_counts_creations_finishes_failed_attempts_and_observes_durations(
    engine: WorkflowEngine,
) -> None:
    inst = metrics.instrument(engine, metrics.Instruments())
    for _ in range(3):
        engine.enqueue_execution(engine.create_workflow(workflow_type_id="ok"))
    engine.enqueue_execution(engine.create_workflow(workflow_type_id="bad"))
    engine.enqueue_execution(engine.create_workflow(workflow_type_id="flaky", inputs={"fail_times": 2}))
    engine.cancel(engine.create_workflow(workflow_type_id="ok"))
    engine.create_workflow(workflow_type_id="ok")  # stays pending

    m = scrape_registry(engine, inst)
    assert value(m, "workflow_engine_workflows_created_total", type="ok") == 5
    assert value(m, "workflow_engine_workflows_created_total", type="bad") == 1
    assert value(m, "workflow_engine_workflows_finished_total", type="ok", status="completed") == 3
    assert value(m, "workflow_engine_workflows_finished_total", type="ok", status="cancelled") == 1
    assert value(m, "workflow_engine_workflows_finished_total", type="bad", status="failed") == 1
    assert value(m, "workflow_engine_workflows_finished_total", type="flaky", status="completed") == 1
    assert value(m, "workflow_engine_attempts_failed_total", type="bad") == 1
    assert value(m, "workflow_engine_attempts_failed_total", type="flaky") == 2  # two retries
    assert value(m, "workflow_engine_attempts_failed_total", type="ok") == 0  # there, at zero
    assert value(m, "workflow_engine_workflow_duration_seconds_count", type="ok") == 3
    assert value(m, "workflow_engine_workflow_duration_seconds_count", type="bad") == 1
    assert value(m, "workflow_engine_queue_wait_seconds_count") == 3 + 1 + 3  # one per claim
    # the gauges, from the database
    assert value(m, "workflow_engine_workflows", status="completed") == 4
    assert value(m, "workflow_engine_workflows", status="failed") == 1
    assert value(m, "workflow_engine_workflows", status="cancelled") == 1
    assert value(m, "workflow_engine_workflows", status="pending") == 1
    assert value(m, "workflow_engine_workflows", status="rejected") == 0
    assert value(m, "workflow_engine_queue_depth") == 0
    assert value(m, "workflow_engine_oldest_queued_age_seconds") == 0
    assert value(m, "workflow_engine_workflows_stale") == 0
    assert value(m, "workflow_engine_workers") == 0
    assert value(m, "workflow_engine_database_up") == 1
    assert value(m, "workflow_engine_redis_up") == 1


def test_instrumenting_an_engine_twice_counts_once(engine: WorkflowEngine) -> None:
    """Also through the copy of a worker's engine that current_engine() gives a handler (it puts
    jobs where the handler's job came from, and shares the engine's listeners)."""
    inst = metrics.Instruments()
    metrics.instrument(engine, inst)
    metrics.instrument(engine, inst)
    metrics.instrument(engine._using(Transport(engine.redis, "elsewhere")), inst)
    assert len(engine._listeners) == 1
    engine.create_workflow(workflow_type_id="ok")
    assert value(scrape_registry(engine, inst), "workflow_engine_workflows_created_total", type="ok") == 1


def test_a_scrape_reads_the_gauges_alone_not_the_statistics(
    engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stats() ranks durations and sums savings over every workflow (0.8 s at 1M rows): every
    process serving metrics would run it at every scrape, for the counts by status alone."""

    def stats(**kwargs: Any) -> Any:
        raise AssertionError("a scrape ran the whole stats()")

    monkeypatch.setattr(engine.store, "stats", stats)
    engine.create_workflow(workflow_type_id="ok")
    m = scrape_registry(engine, metrics.Instruments())
    assert value(m, "workflow_engine_database_up") == 1
    assert value(m, "workflow_engine_workflows", status="pending") == 1


def test_a_type_found_in_the_database_has_its_series_at_zero_before_its_first_count(
    engine: WorkflowEngine, tmp_path: Path
) -> None:
    """A worker's engine registers no handlers: without this, a type's series appeared only with
    its first failure, already at 1, which rate() and increase() never see."""
    worker_side = WorkflowEngine(
        database_url=f"sqlite:///{tmp_path / 'm.db'}", redis_url="fakeredis://", is_async=False
    )
    inst = metrics.instrument(worker_side, metrics.Instruments())
    engine.create_workflow(workflow_type_id="nightly_export")  # by the web side
    m = scrape_registry(worker_side, inst)
    assert value(m, "workflow_engine_workflows_finished_total", type="nightly_export", status="failed") == 0
    assert value(m, "workflow_engine_attempts_failed_total", type="nightly_export") == 0
    worker_side.close()


def test_the_gauges_count_a_running_workflow_whose_lease_expired_as_stale(engine: WorkflowEngine) -> None:
    wid = engine.create_workflow(workflow_type_id="ok")
    past = utcnow() - timedelta(minutes=5)
    engine.store.compare_and_set(
        wid,
        expected_status=S.PENDING,
        changes={"status": S.RUNNING, "started_at": past, "lease_until": past},
        event=None,
    )
    m = scrape_registry(engine, metrics.Instruments())
    assert value(m, "workflow_engine_workflows_stale") == 1
    assert value(m, "workflow_engine_workflows", status="running") == 1


def test_a_queued_workflow_sets_the_oldest_queued_age(tmp_path: Path) -> None:
    e = WorkflowEngine(database_url=f"sqlite:///{tmp_path / 'q.db'}", redis_url="fakeredis://")
    e.register_handler("ok", "we_test_handlers:noop")
    e.enqueue_execution(e.create_workflow(workflow_type_id="ok"))  # async: waits on the fake queue
    m = scrape_registry(e, metrics.Instruments())
    assert value(m, "workflow_engine_queue_depth") == 1
    assert value(m, "workflow_engine_workflows", status="queued") == 1
    age = value(m, "workflow_engine_oldest_queued_age_seconds")
    assert age is not None and 0 <= age < 5


def test_an_unreachable_database_is_a_gauge_not_a_failed_scrape(tmp_path: Path) -> None:
    e = WorkflowEngine(database_url=f"sqlite:///{tmp_path / 'missing' / 'x.db'}", redis_url="fakeredis://")
    m = scrape_registry(e, metrics.Instruments())
    assert value(m, "workflow_engine_database_up") == 0
    assert value(m, "workflow_engine_workflows", status="pending") is None
    assert value(m, "workflow_engine_redis_up") == 1


def test_a_scrape_with_a_hung_database_or_redis_still_arrives_in_time_saying_which_is_down(
    engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prometheus gives up on a scrape after 10 s by default: a scrape that waited out the store's
    timeouts (5 s, and its retry) never delivered the ``*_up 0`` that the alerts look for."""
    import threading
    import time

    monkeypatch.setattr(metrics, "SCRAPE_BUDGET", 0.5)
    hung = threading.Event()
    monkeypatch.setattr(engine.store, "gauges", held(engine.store.gauges, hung))
    registry = metrics.make_registry(engine, metrics.Instruments())
    try:
        for _ in range(2):  # the second scrape waits for the same stuck read, not a new one
            started = time.monotonic()
            m = scrape_registry_of(registry)
            assert time.monotonic() - started < 2
            assert value(m, "workflow_engine_database_up") == 0 and value(m, "workflow_engine_redis_up") == 1
            assert value(m, "workflow_engine_workers") == 0
        readers = [t for t in threading.enumerate() if t.name.startswith("workflow-engine-scrape")]
        assert readers and all(t.daemon for t in readers)  # a hung read does not hold up the exit
    finally:
        hung.set()
    time.sleep(0.1)
    m = scrape_registry_of(registry)
    assert value(m, "workflow_engine_database_up") == 1


def test_a_forked_child_does_not_wait_for_a_scrape_read_its_parent_had_in_progress(
    engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread in the child will ever settle the parent's read: its scrapes must read afresh."""
    import threading

    monkeypatch.setattr(metrics, "SCRAPE_BUDGET", 0.5)
    hung = threading.Event()
    monkeypatch.setattr(engine.store, "gauges", held(engine.store.gauges, hung))
    registry = metrics.make_registry(engine, metrics.Instruments())
    try:
        assert value(scrape_registry_of(registry), "workflow_engine_database_up") == 0  # in progress

        def in_the_child() -> bool:  # where its copy of the read is not held
            hung.set()
            return bool(value(scrape_registry_of(registry), "workflow_engine_database_up") == 1)

        assert true_in_a_forked_child(in_the_child)
    finally:
        hung.set()


def test_a_forked_work_horse_does_not_hold_the_metrics_port(engine: WorkflowEngine) -> None:
    """Orphaned by a killed worker, a work-horse that held the listening socket kept the port: the
    restarted worker could not serve its metrics."""
    server = metrics.MetricsServer(engine, port=free_port(), host="127.0.0.1")
    try:
        pid = os.fork()
        if pid == 0:  # the work-horse
            os._exit(0 if server._server.socket.fileno() == -1 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).status == 200
    finally:
        server.close()


def test_make_wsgi_app_serves_the_metrics_for_a_web_process(engine: WorkflowEngine) -> None:
    app = metrics.make_wsgi_app(engine)
    engine.create_workflow(workflow_type_id="ok")
    started: list[Any] = []
    body = b"".join(
        app(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""},
            lambda status, headers, exc_info=None: started.append((status, headers)),  # type: ignore[arg-type,return-value]
        )
    )
    assert started[0][0] == "200 OK"
    m = parse(body.decode())
    assert value(m, "workflow_engine_workflows", status="pending") == 1
    created = value(m, "workflow_engine_workflows_created_total", type="ok")
    assert created is not None and created >= 1  # this process's default instruments


# -- multiprocess mode ------------------------------------------------------------------
_ORPHAN = """
import os, sys, time
from workflow_engine import metrics
path = metrics.make_temp_dir()
horse = os.fork()
if horse == 0:  # a work-horse: it outlives its worker, as after a SIGKILL of the worker alone
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1), os.dup2(null, 2)  # so that the test's pipe ends with the worker
    time.sleep(60)
    os._exit(0)
print(path, horse, flush=True)
os._exit(0)  # the worker is gone
"""


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie (its files, and so its locks, are closed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="PID namespaces are Linux's")
def test_a_metrics_directory_is_kept_while_a_work_horse_of_its_dead_worker_still_counts_into_it(
    tmp_path: Path,
) -> None:
    import signal
    import tempfile

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _ORPHAN], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    path, horse_pid = out.stdout.split()
    horse = int(horse_pid)
    saved = tempfile.tempdir
    tempfile.tempdir = str(tmp_path)
    try:
        mine = metrics.make_temp_dir()
        assert os.path.isdir(path), "removed under a work-horse that still holds its lock"
        os.kill(horse, signal.SIGKILL)
        wait_for(lambda: _gone(horse))
        shutil.rmtree(mine)  # the next call keeps it: this process is alive
        metrics.make_temp_dir()
        assert not os.path.exists(path)
    finally:
        tempfile.tempdir = saved
        with contextlib.suppress(ProcessLookupError):
            os.kill(horse, signal.SIGKILL)


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="PID namespaces are Linux's")
def test_a_worker_removes_the_metrics_directories_of_killed_workers_and_only_those(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    namespace = os.stat("/proc/self/ns/pid").st_ino
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a PID that no process has now
    names = {
        "killed": f"workflow-engine-metrics-{namespace}-{gone.pid}-abc",
        "running": f"workflow-engine-metrics-{namespace}-{os.getpid()}-def",
        "other namespace": f"workflow-engine-metrics-{namespace + 1}-{gone.pid}-ghi",
        "older release": "workflow-engine-metrics-k3j2_x",
        "not a worker's": f"other-{namespace}-{gone.pid}-jkl",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "counter_1.db").write_bytes(b"x")
    new = metrics.make_temp_dir()
    assert os.path.basename(new).startswith(f"workflow-engine-metrics-{namespace}-{os.getpid()}-")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {os.path.basename(new)} | (set(names.values()) - {names["killed"]})


def test_in_multiprocess_mode_work_horses_count_into_one_shared_set_of_files_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    script = """
import os, sys
from prometheus_client import Counter, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from workflow_engine import metrics
metrics.enable_multiprocess(sys.argv[1])
counter = Counter("we_test_jobs", "jobs")
for _ in range(5):  # a forking worker's work-horses, one at a time
    pid = os.fork()
    if pid == 0:
        counter.inc()
        os._exit(0)
    os.waitpid(pid, 0)
counter.inc()  # the worker process itself
registry = CollectorRegistry()
MultiProcessCollector(registry, sys.argv[1])
print(os.getpid())
print(generate_latest(registry).decode())
"""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", script, str(shared)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    pid, exposition = out.split("\n", 1)
    assert value(parse(exposition), "we_test_jobs_total") == 6
    assert sorted(p.name for p in shared.glob("counter_*.db")) == [
        f"counter_{pid}.db",
        f"counter_{pid}_horse.db",
    ]


# -- a real forking worker -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.services
def test_a_forking_worker_serves_exact_counts_of_20_workflows_of_which_5_fail(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    db = f"sqlite:///{tmp_path / 'w.db'}"
    shared = tmp_path / "prometheus"
    shared.mkdir()
    port = free_port()
    worker = start_worker(
        tmp_path,
        redis_url=redis_server.url,
        database_url=db,
        kind="engine",
        burst=False,
        extra_args=["--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
        extra_env={"PROMETHEUS_MULTIPROC_DIR": str(shared)},
    )
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> Samples | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return parse(response.read().decode())
        except OSError:
            return None

    try:
        wait_for(
            lambda: (scrape() or {}).get(("workflow_engine_workers", frozenset())) == 1, 60, 0.1, "worker"
        )
        # A type the worker has not seen run: its series are there at zero, from the database.
        web = WorkflowEngine(database_url=db, redis_url="fakeredis://")
        web.create_workflow(workflow_type_id="later_type")
        web.close()
        m = scrape()
        assert m is not None
        assert value(m, "workflow_engine_workflows_finished_total", type="later_type", status="failed") == 0
        env = dict(os.environ)
        env.update(
            WORKFLOW_ENGINE_DATABASE_URL=db,
            WORKFLOW_ENGINE_REDIS_URL=redis_server.url,
            PROMETHEUS_MULTIPROC_DIR=str(shared),
            PYTHONPATH=str(APPS),
        )
        subprocess.run(
            [sys.executable, "-m", "we_metrics_producer", "15", "5"], env=env, check=True, timeout=60
        )

        def all_finished() -> bool:
            m = scrape() or {}
            return (
                sum(v for (name, _), v in m.items() if name == "workflow_engine_workflows_finished_total")
                == 20
            )

        wait_for(all_finished, 60, 0.2, "20 finished workflows in /metrics:\n" + worker.output())
        m = scrape()
        assert m is not None
        # counters, summed over the producer, the worker and its work-horses
        assert value(m, "workflow_engine_workflows_created_total", type="ok") == 15
        assert value(m, "workflow_engine_workflows_created_total", type="bad") == 5
        assert value(m, "workflow_engine_workflows_finished_total", type="ok", status="completed") == 15
        assert value(m, "workflow_engine_workflows_finished_total", type="bad", status="failed") == 5
        assert value(m, "workflow_engine_attempts_failed_total", type="bad") == 5
        assert value(m, "workflow_engine_attempts_failed_total", type="ok") == 0
        assert value(m, "workflow_engine_workflow_duration_seconds_count", type="ok") == 15
        assert value(m, "workflow_engine_workflow_duration_seconds_count", type="bad") == 5
        assert value(m, "workflow_engine_queue_wait_seconds_count") == 20
        # gauges, from the database and Redis at scrape time
        by_status = {
            dict(labels)["status"]: v
            for (name, labels), v in m.items()
            if name == "workflow_engine_workflows"
        }
        assert by_status == {
            "pending": 1,  # later_type's
            "queued": 0,
            "running": 0,
            "completed": 15,
            "failed": 5,
            "cancelled": 0,
            "awaiting_approval": 0,
            "rejected": 0,
        }
        assert value(m, "workflow_engine_queue_depth") == 0
        assert value(m, "workflow_engine_oldest_queued_age_seconds") == 0
        assert value(m, "workflow_engine_workflows_stale") == 0
        assert value(m, "workflow_engine_workers") == 1
        assert value(m, "workflow_engine_database_up") == 1
        # 20 work-horses took turns on one set of files, instead of leaving a file each
        counter_files = sorted(p.name for p in shared.glob("counter_*.db"))
        assert len(counter_files) <= 3 and any(n.endswith("_horse.db") for n in counter_files), counter_files
        worker.terminate()
        assert worker.wait(30) == 0, worker.output()
    finally:
        worker.stop()
