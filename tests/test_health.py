"""`workflow-engine health`: exit 0 only when the database, Redis, a live worker, the queue and the
failure rate are all fine; one line per check, naming what failed and the figure behind it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from workflow_engine import WorkflowEngine, WorkflowStatus
from workflow_engine.cli import main
from workflow_engine.health import CHECKS, check_health
from workflow_engine.models import utcnow
from workflow_engine.stores import open_store

from support import BIN, RedisServer, free_port, held, start_worker, true_in_a_forked_child, wait_for

S = WorkflowStatus


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite file with the schema, as the web process or `workflow-engine migrate` leaves it."""
    url = f"sqlite:///{tmp_path / 'health.db'}"
    open_store(url).migrate()
    return url


def health(*args: str) -> tuple[int, dict[str, str]]:
    """Exit code, and each check's line by check name."""
    result = CliRunner().invoke(main, ["health", *args], catch_exceptions=False)
    lines = result.stdout.splitlines()
    checks = {line.split()[1]: line for line in lines[:-1]}
    assert list(checks) == list(CHECKS), lines
    return result.exit_code, checks


@pytest.mark.services
def test_health_exits_1_and_names_redis_when_redis_is_down(db: str, redis_server: RedisServer) -> None:
    redis_server.stop()
    code, checks = health("--database-url", db, "--redis-url", redis_server.url)
    assert code == 1
    assert checks["redis"].startswith("FAIL  redis         unreachable: ")
    assert "Connection refused" in checks["redis"]
    assert checks["workers"].startswith("skip  workers       unknown: Redis is unreachable")
    assert checks["database"].startswith("ok    database")


@pytest.mark.services
def test_health_exits_1_when_no_worker_is_alive(db: str, redis_server: RedisServer) -> None:
    result = CliRunner().invoke(main, ["health", "--database-url", db, "--redis-url", redis_server.url])
    assert result.exit_code == 1
    assert "FAIL  workers       0 live workers on queue 'workflows'" in result.stdout
    assert result.stdout.splitlines()[-1] == "UNHEALTHY: workers"


@pytest.mark.slow
@pytest.mark.services
def test_health_exits_0_with_a_live_workflow_engine_worker_run_as_a_real_subprocess(
    tmp_path: Path, db: str, redis_server: RedisServer
) -> None:
    worker = start_worker(
        tmp_path,
        redis_url=redis_server.url,
        database_url=db,
        kind="engine",
        burst=False,
        extra_args=["--metrics-port", str(free_port()), "--metrics-host", "127.0.0.1"],
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_ENGINE_")}
    env.update(WORKFLOW_ENGINE_DATABASE_URL=db, WORKFLOW_ENGINE_REDIS_URL=redis_server.url)

    def run_health() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "workflow-engine"), "health", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        wait_for(lambda: run_health().returncode == 0, 60, 0.2, "a healthy report:\n" + worker.output())
        done = run_health()
        report = json.loads(done.stdout)
        assert done.returncode == 0 and report["healthy"] is True and report["failing"] == []
        by_name = {c["name"]: c for c in report["checks"]}
        assert set(by_name) == set(CHECKS)
        assert by_name["workers"]["value"] == 1 and by_name["workers"]["status"] == "ok"
        # the worker made itself a multiprocess directory for the metrics, and removes it on a warm stop
        found = re.search(r"counters in (\S+)\)", worker.output())
        assert found is not None, worker.output()
        assert Path(found.group(1)).is_dir()
        worker.terminate()
        assert worker.wait(30) == 0, worker.output()
        assert not Path(found.group(1)).exists()
        code, checks = health("--database-url", db, "--redis-url", redis_server.url)
        assert code == 1 and checks["workers"].startswith("FAIL")
    finally:
        worker.stop()


# -- thresholds, in one process ------------------------------------------------------
@pytest.fixture
def engine(db: str) -> WorkflowEngine:
    e = WorkflowEngine(database_url=db, redis_url="fakeredis://", is_async=False)
    e.register_handler("ok", "we_test_handlers:record_success", max_retries=0)
    e.register_handler("bad", "we_test_handlers:always_fail", max_retries=0)
    return e


def test_health_names_the_failure_rate_and_its_figure_above_the_threshold(
    engine: WorkflowEngine, db: str
) -> None:
    for type_id in ("ok", "ok", "ok", "bad"):
        engine.enqueue_execution(engine.create_workflow(workflow_type_id=type_id))
    code, checks = health("--database-url", db, "--redis-url", "fakeredis://", "--max-failure-rate", "0.2")
    assert code == 1
    assert checks["failure_rate"] == (
        "FAIL  failure_rate  25.0% failed: 1 of 4 finished workflows created in the last 900 s (max 20.0%)"
    )
    _, checks = health("--database-url", db, "--redis-url", "fakeredis://", "--max-failure-rate", "0.25")
    assert checks["failure_rate"].startswith("ok    failure_rate  25.0% failed")


def test_health_names_a_queued_workflow_older_than_the_threshold(engine: WorkflowEngine, db: str) -> None:
    wid = engine.create_workflow(workflow_type_id="ok")
    an_hour_ago = utcnow() - timedelta(hours=1)
    engine.store.compare_and_set(
        wid, expected_status=S.PENDING, changes={"status": S.QUEUED, "updated_at": an_hour_ago}, event=None
    )
    code, checks = health("--database-url", db, "--redis-url", "fakeredis://", "--max-queued-age", "300")
    assert code == 1
    assert re.fullmatch(
        r"FAIL  queue_age     oldest queued workflow is 360\d\.\d s old \(max 300 s\)", checks["queue_age"]
    )


def test_health_json_lists_every_check_with_its_figure_and_threshold(engine: WorkflowEngine, db: str) -> None:
    engine.enqueue_execution(engine.create_workflow(workflow_type_id="bad"))
    result = CliRunner().invoke(
        main, ["health", "--database-url", db, "--redis-url", "fakeredis://", "--json"]
    )
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["healthy"] is False and report["failing"] == ["workers", "failure_rate"]
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["failure_rate"] == {
        "name": "failure_rate",
        "status": "fail",
        "detail": "100.0% failed: 1 of 1 finished workflows created in the last 900 s (max 10.0%)",
        "value": 1.0,
        "threshold": 0.1,
    }
    assert by_name["queue_age"]["status"] == "ok" and by_name["queue_age"]["value"] == 0


def test_an_unreachable_database_fails_its_check_and_skips_those_that_need_it(tmp_path: Path) -> None:
    engine = WorkflowEngine(database_url=f"sqlite:///{tmp_path / 'no' / 'such.db'}", redis_url="fakeredis://")
    report = check_health(engine)
    status = {c.name: c.status for c in report.checks}
    assert status == {
        "database": "fail",
        "redis": "ok",
        "workers": "fail",
        "queue_age": "skip",
        "stale_running": "skip",
        "failure_rate": "skip",
    }
    assert not report.healthy and report.failing == ["database", "workers"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("sqlite:///{tmp}/workflow.db", "no database file at {tmp}/workflow.db: check --database-url"),
        ("mysql://db/app", "unsupported database URL scheme 'mysql'"),
    ],
    ids=["a-sqlite-file-that-does-not-exist", "a-database-it-cannot-use"],
)
def test_settings_no_engine_can_be_built_from_still_give_the_report_with_a_failing_configuration_check(
    tmp_path: Path, url: str, why: str
) -> None:
    """A monitor parses the same report, and reads why; the file is not created."""
    url = url.format(tmp=tmp_path)
    result = CliRunner().invoke(
        main,
        ["health", "--json", "--database-url", url, "--redis-url", "fakeredis://"],
        catch_exceptions=False,
    )
    assert result.exit_code == 1 and result.stderr == ""
    report = json.loads(result.stdout)
    assert report["healthy"] is False and report["failing"] == ["configuration"]
    assert [(c["name"], c["status"]) for c in report["checks"]] == [
        ("configuration", "fail"),
        *((name, "skip") for name in CHECKS),
    ]
    assert report["checks"][0]["detail"].startswith(why.format(tmp=tmp_path))
    assert not (tmp_path / "workflow.db").exists()


def test_health_fails_on_a_running_workflow_whose_lease_expired_long_ago_as_when_no_reconcile_runs(
    engine: WorkflowEngine, db: str
) -> None:
    wid = engine.create_workflow(workflow_type_id="ok")
    now = utcnow()
    engine.store.compare_and_set(
        wid,
        expected_status=S.PENDING,
        changes={"status": S.RUNNING, "updated_at": now, "lease_until": now - timedelta(seconds=60)},
        event=None,
    )
    args = ["--database-url", db, "--redis-url", "fakeredis://"]
    _, checks = health(*args)  # a minute ago: reconcile may not have come by yet
    assert checks["stale_running"].startswith("ok    stale_running no running workflow's lease expired")
    code, checks = health(*args, "--max-stale-age", "30")
    assert code == 1 and checks["stale_running"].startswith(f"FAIL  stale_running workflow {wid} has been")
    assert checks["stale_running"].endswith("(max 30 s): is reconcile running?")


def test_health_judges_the_failure_rate_only_once_enough_workflows_finished(
    engine: WorkflowEngine, db: str
) -> None:
    for type_id in ("ok", "bad"):
        engine.enqueue_execution(engine.create_workflow(workflow_type_id=type_id))
    args = ["--database-url", db, "--redis-url", "fakeredis://"]
    assert health(*args)[1]["failure_rate"].startswith("FAIL  failure_rate  50.0% failed: 1 of 2")
    _, checks = health(*args, "--min-finished", "10")
    assert checks["failure_rate"] == (
        "ok    failure_rate  50.0% failed: 1 of 2 finished workflows created in the last 900 s, "
        "too few to judge (at least 10)"
    )


def test_health_runs_only_the_checks_asked_for_as_a_web_pods_readiness_probe_would(
    engine: WorkflowEngine, db: str
) -> None:
    """No live worker and a failing workflow are not a web pod's to fix: its probe asks for the
    database and Redis alone, and passes."""
    engine.enqueue_execution(engine.create_workflow(workflow_type_id="bad"))
    args = ["health", "--database-url", db, "--redis-url", "fakeredis://", "--json"]
    result = CliRunner().invoke(main, [*args, "--check", "database", "--check", "redis"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [c["name"] for c in report["checks"]] == ["database", "redis"] and report["healthy"]
    assert CliRunner().invoke(main, args).exit_code == 1  # every check: no worker, 100 % failed
    result = CliRunner().invoke(main, [*args, "--check", "everything"])
    assert result.exit_code == 2 and "'everything' is not one of" in result.stderr


def test_settings_refused_as_invalid_input_still_give_the_json_report(db: str) -> None:
    result = CliRunner().invoke(
        main,
        ["health", "--json", "--database-url", db, "--redis-url", "fakeredis://", "--queue", "work\x01flows"],
    )
    assert result.exit_code == 1 and result.stderr == ""
    report = json.loads(result.stdout)
    assert report["failing"] == ["configuration"] and "queue_name" in report["checks"][0]["detail"]


def test_a_hung_database_fails_its_checks_within_the_timeout_and_redis_is_still_checked(
    engine: WorkflowEngine, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table locked by a migration or a backup, or a server that accepts and never answers:
    the check must still answer, in time for the monitor that runs it."""
    import threading
    import time

    hung = threading.Event()
    monkeypatch.setattr(engine.store, "stats", held(engine.store.stats, hung))
    try:
        started = time.monotonic()
        report = check_health(engine, timeout=0.5)
        assert time.monotonic() - started < 2
    finally:
        hung.set()
    by_name = {c.name: c for c in report.checks}
    assert by_name["database"].status == "fail"
    assert by_name["database"].detail == "unreachable: no answer within 0.5 s"
    assert by_name["redis"].status == "ok" and by_name["queue_age"].status == "skip"
    assert check_health(engine, timeout=5).checks[0].status == "ok"  # answered: as without one


def test_a_hung_database_is_read_once_however_often_it_is_checked(
    engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A web process serving check_health(timeout=...) every few seconds: each hung read holds
    a thread and one of the pool's connections, which the app's own requests need."""
    import threading
    import time

    hung = threading.Event()
    reads: list[float] = []
    stats = held(engine.store.stats, hung)

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(time.monotonic())
        return stats(*args, **kwargs)

    monkeypatch.setattr(engine.store, "stats", counted)
    threads = threading.active_count()
    try:
        for _ in range(5):
            started = time.monotonic()
            report = check_health(engine, only=["queue_age"], timeout=0.2)
            assert time.monotonic() - started < 1
            assert report.checks[0].status == "skip"  # the database failed: no answer within 0.2 s
        time.sleep(0.3)  # every waiting check's thread has reached its deadline
        assert len(reads) == 1
        assert threading.active_count() == threads + 1  # the one hung read, and no other
    finally:
        hung.set()
    # Answered at last: a check takes that read's outcome while it ends, then reads afresh.
    assert check_health(engine, only=["queue_age"], timeout=5).healthy
    assert check_health(engine, only=["queue_age"], timeout=5).healthy
    assert len(reads) >= 2


def test_checks_that_arrive_together_at_a_slow_database_share_one_read_and_all_pass(
    engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load balancer and a readiness probe asking at once, of a database answering in 0.6 s:
    reads queued one behind another would fail all but the first within a 1 s deadline."""
    import threading
    import time

    reads: list[float] = []
    stats = engine.store.stats

    def slow(*args: Any, **kwargs: Any) -> Any:
        reads.append(time.monotonic())
        time.sleep(0.6)
        return stats(*args, **kwargs)

    monkeypatch.setattr(engine.store, "stats", slow)
    reports: list[Any] = []
    checks = [
        threading.Thread(target=lambda: reports.append(check_health(engine, only=["queue_age"], timeout=1)))
        for _ in range(3)
    ]
    for check in checks:
        check.start()
    for check in checks:
        check.join(5)
    assert [r.healthy for r in reports] == [True, True, True]
    assert len(reads) == 1


def test_a_forked_child_does_not_wait_for_a_read_its_parent_had_in_progress(
    engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread in the child will ever settle the parent's read: its checks must read afresh."""
    import threading

    hung = threading.Event()
    monkeypatch.setattr(engine.store, "stats", held(engine.store.stats, hung))
    try:
        assert not check_health(engine, only=["queue_age"], timeout=0.2).healthy  # a read in progress

        def in_the_child() -> bool:  # where its copy of the read is not held
            hung.set()
            return check_health(engine, only=["queue_age"], timeout=2).healthy

        assert true_in_a_forked_child(in_the_child)
    finally:
        hung.set()


def test_a_hung_redis_fails_only_its_own_checks_and_each_check_asks_only_its_server(
    engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    hung = threading.Event()
    hang = held(lambda: None, hung)

    def untouched(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a check asked a server it does not need")

    monkeypatch.setattr(engine.transport, "ping", hang)
    monkeypatch.setattr(engine.transport, "depth", hang)  # the queue's depth: not the database's
    try:
        report = check_health(engine, timeout=0.5)
        status = {c.name: c.status for c in report.checks}
        assert status == {
            "database": "ok",
            "redis": "fail",
            "workers": "skip",
            "queue_age": "ok",
            "stale_running": "ok",
            "failure_rate": "ok",
        }
        monkeypatch.setattr(engine.store, "stats", untouched)
        monkeypatch.setattr(engine.store, "stale_running", untouched)
        assert [c.status for c in check_health(engine, only=["redis"], timeout=0.5).checks] == ["fail"]
    finally:
        hung.set()
    monkeypatch.setattr(engine.transport, "ping", lambda: None)
    assert check_health(engine, only=["redis"]).healthy  # no database read at all


@pytest.mark.parametrize(
    "thresholds",
    [{"window": 1e12}, {"window": float("nan")}, {"max_queued_age": "300"}, {"max_failure_rate": 1.5}],
    ids=["window-past-ten-years", "window-nan", "age-as-text", "rate-above-one"],
)
def test_check_health_refuses_thresholds_out_of_range_with_invalid_input(
    thresholds: dict[str, object],
) -> None:
    from workflow_engine.errors import InvalidInput

    engine = WorkflowEngine(database_url="sqlite:///:memory:", redis_url="fakeredis://")
    with pytest.raises(InvalidInput, match=re.escape(next(iter(thresholds))) + " must be a number from 0 to"):
        check_health(engine, **thresholds)  # type: ignore[arg-type]


def test_a_database_newer_than_this_code_fails_the_database_check_as_what_it_is_not_as_unreachable(
    db: str,
) -> None:
    """Mid-upgrade, an operator reading "unreachable" would look for a network problem."""
    import sqlite3

    path = db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (999, '2030-01-01T00:00:00')")
    conn.close()
    args = ["health", "--check", "database", "--check", "queue_age", "--database-url", db]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    database, queue_age, verdict = result.stdout.splitlines()
    assert result.exit_code == 1 and verdict == "UNHEALTHY: database"
    assert database.startswith("FAIL  database      the database is at schema version 999, newer than")
    assert queue_age == "skip  queue_age     unknown: the database check failed"


def test_an_in_process_engine_is_healthy_with_no_worker_since_its_jobs_need_none(
    workflow_engine: WorkflowEngine,
) -> None:
    """So that an app's test of its health endpoint passes against the test fixture's engine."""
    workflow_engine.register_handler("noop", "we_test_handlers:noop")
    workflow_engine.create_workflow(workflow_type_id="noop", enqueue=True)
    report = check_health(workflow_engine)
    assert report.healthy, report.to_dict()
    [workers] = [c for c in report.checks if c.name == "workers"]
    assert workers.status == "ok" and "in-process" in workers.detail
