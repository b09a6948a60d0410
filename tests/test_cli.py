"""The `workflow-engine` command line, through click's CliRunner, checked against the database."""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from workflow_engine import WorkflowEngine, WorkflowStatus, display
from workflow_engine.cli import main
from workflow_engine.stores import open_store

from support import RedisServer, a_workflow, free_port

S = WorkflowStatus


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def run(*args: str) -> Outcome:
    root = logging.getLogger()
    level = root.level
    try:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    finally:
        root.setLevel(level)  # a command's --log-level must not leak into the tests after it
    # The tests stand fakeredis:// in for Redis; the warning that a real user gets for it is
    # specified once, in test_a_command_that_puts_jobs_on_fakeredis_says_no_worker_will_see_them.
    stderr = "".join(
        line for line in result.stderr.splitlines(keepends=True) if FAKE_REDIS_WARNING not in line
    )
    return Outcome(result.exit_code, result.stdout, stderr)


FAKE_REDIS_WARNING = "--redis-url fakeredis:// is a Redis inside this command alone"


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite file with the schema, as the web process or `workflow-engine migrate` leaves it."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    open_store(url).migrate()
    return url


@pytest.fixture
def engine(db: str) -> WorkflowEngine:
    """An in-process engine on the same database file the commands use."""
    e = WorkflowEngine(database_url=db, redis_url="fakeredis://", is_async=False)
    e.register_handler("ok", "we_test_handlers:record_success", max_retries=0)
    e.register_handler("bad", "we_test_handlers:always_fail", max_retries=0)
    return e


def on(db: str) -> list[str]:
    return ["--database-url", db, "--redis-url", "fakeredis://"]


def ran(engine: WorkflowEngine, workflow_type_id: str, **kwargs: object) -> str:
    wid = engine.create_workflow(workflow_type_id=workflow_type_id, **kwargs)  # type: ignore[arg-type]
    engine.enqueue_execution(wid)
    return wid


# -- help ----------------------------------------------------------------------------
def test_every_command_has_help_with_an_example() -> None:
    for name, command in main.commands.items():  # type: ignore[attr-defined]
        assert command.help, name
        out = run(name, "--help")
        assert out.code == 0 and "Example" in out.stdout, name


def test_every_option_with_an_environment_variable_shows_it_in_help() -> None:
    commands: list[tuple[list[str], click.Command]] = [([], main)]
    commands += [([name], cmd) for name, cmd in main.commands.items()]  # type: ignore[attr-defined]
    seen = set()
    for path, command in commands:
        help_text = " ".join(run(*path, "--help").stdout.split())
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
                assert param.show_envvar, (path, param.name)
                for env in names:
                    assert env in help_text, (path, param.name, env)
                    seen.add(env)
    assert {
        "WORKFLOW_ENGINE_DATABASE_URL",
        "WORKFLOW_ENGINE_LOG_FORMAT",
        "WORKFLOW_ENGINE_METRICS_PORT",
    } <= seen


# -- reading -------------------------------------------------------------------------
def test_migrate_reports_the_schema_version(db: str) -> None:
    out = run("migrate", "--database-url", db)
    assert (out.code, out.stdout) == (0, "schema version 6\n")


def test_list_json_matches_the_database_for_every_filter(engine: WorkflowEngine, db: str) -> None:
    ran(engine, "ok", created_by_agent="crm")
    ran(engine, "bad", created_by_agent="crm")
    ran(engine, "bad", created_by_agent="sales")
    engine.create_workflow(workflow_type_id="ok", created_by_agent="sales")
    cases = [
        ([], {}),
        (["--status", "failed"], {"status": "failed"}),
        (["--type", "ok"], {"workflow_type_id": "ok"}),
        (["--agent", "sales"], {"created_by_agent": "sales"}),
        (["--limit", "2"], {"limit": 2}),
    ]
    for args, filters in cases:
        out = run("list", *on(db), "--json", *args)
        assert out.code == 0, out.stderr
        expected = [wf.to_dict() for wf in engine.list_workflows(**filters)]  # type: ignore[arg-type]
        assert json.loads(out.stdout) == expected, args
    assert len(json.loads(run("list", *on(db), "--json", "--status", "failed").stdout)) == 2


def test_list_prints_plain_columns_when_not_a_terminal(engine: WorkflowEngine, db: str) -> None:
    wid = ran(engine, "bad")
    lines = run("list", *on(db)).stdout.splitlines()
    assert lines[0].split() == ["id", "type", "status", "attempts", "created", "(UTC)", "error"]
    assert lines[1].split()[:4] == [wid, "bad", "failed", "1"]
    assert lines[1].endswith("ValueError: this handler always fails")


def test_list_prints_a_table_on_a_terminal(
    engine: WorkflowEngine, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wid = ran(engine, "ok")
    monkeypatch.setattr(display, "is_tty", lambda: True)
    monkeypatch.setenv("COLUMNS", "120")
    out = run("list", *on(db)).stdout
    assert "─" * 20 in out  # rich's table rule under the header
    [row] = [line for line in out.splitlines() if wid in line]
    assert row.split()[:4] == [wid, "ok", "completed", "1"]
    monkeypatch.setenv("COLUMNS", "60")
    [row] = [line for line in run("list", *on(db)).stdout.splitlines() if wid[:8] in line]
    assert row.split()[0] == wid  # narrow: other columns give way, the id is never cut


@pytest.mark.parametrize("width", [80, 100])
def test_list_on_a_narrow_terminal_keeps_the_status_and_the_error_whole_and_leaves_out_columns_first(
    engine: WorkflowEngine, db: str, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    """What failed, and why: at 3 a.m., on an 80-column terminal."""
    wid = ran(engine, "bad")
    engine.configure_council("c", members=["ann"], quorum=1)
    waiting = engine.create_workflow(workflow_type_id="ok", requires_approval=True, assigned_council_id="c")
    monkeypatch.setattr(display, "is_tty", lambda: True)
    monkeypatch.setenv("COLUMNS", str(width))
    out = run("list", *on(db)).stdout
    assert all(len(line) <= width for line in out.splitlines())
    [row] = [line for line in out.splitlines() if wid in line]
    assert row.split()[1:3] in (["bad", "failed"], ["failed", "ValueError:"])
    words = " ".join(out.split())
    assert "ValueError: this" in words and "always fails" in words  # the error, wrapped, not left out
    assert any(waiting in line and "awaiting_approval" in line for line in out.splitlines())


def test_show_json_is_the_workflow_and_its_events_from_the_database(engine: WorkflowEngine, db: str) -> None:
    wid = ran(engine, "bad", inputs={"x": 1})
    out = run("show", wid, *on(db), "--json")
    assert out.code == 0
    data = json.loads(out.stdout)
    assert data["workflow"] == engine.get_workflow(wid).to_dict()
    assert data["events"] == [ev.to_dict() for ev in engine.get_events(wid)]
    assert [ev["to_status"] for ev in data["events"]] == ["pending", "queued", "running", "failed"]


def test_show_prints_the_record_the_traceback_and_the_timeline(engine: WorkflowEngine, db: str) -> None:
    wid = ran(engine, "bad")
    out = run("show", wid, *on(db)).stdout
    assert f"id                   {wid}" in out.splitlines()
    assert "ValueError: this handler always fails" in out
    assert "traceback:\nTraceback (most recent call last):" in out
    assert "running  failed   1        attempt 1 failed" in out


def test_stats_json_is_engine_stats(engine: WorkflowEngine, db: str) -> None:
    for _ in range(3):
        ran(engine, "ok", calculated_savings={"hours": 1.5, "label": "x"})
    ran(engine, "bad", calculated_savings={"hours": 2})
    engine.create_workflow(workflow_type_id="ok")
    out = run("stats", *on(db), "--json")
    assert out.code == 0
    data = json.loads(out.stdout)
    expected = engine.stats()
    for key in ("total", "by_status", "by_type", "running", "calculated_savings", "oldest_queued_age_s"):
        assert data[key] == expected[key], key
    assert data["total"] == 5 and data["by_status"]["completed"] == 3 and data["by_status"]["pending"] == 1
    assert data["by_type"]["ok"]["success_rate"] == 1.0 and data["by_type"]["bad"]["success_rate"] == 0.0
    assert data["calculated_savings"] == {"hours": 6.5}
    assert data["throughput_per_min"] == pytest.approx(4 / 15, abs=0.001)
    assert set(data) == {
        "since",
        "generated_at",
        "total",
        "by_status",
        "by_type",
        "queue_depth",
        "oldest_queued_age_s",
        "running",
        "throughput_per_min",
        "calculated_savings",
    }


def test_stats_prints_summary_statuses_types_and_savings(engine: WorkflowEngine, db: str) -> None:
    ran(engine, "ok", calculated_savings={"hours": 1.5})
    ran(engine, "bad")
    out = run("stats", *on(db)).stdout
    assert out.splitlines()[0].split() == ["total", "2"]
    lines = [line.split() for line in out.splitlines()]
    assert ["completed", "1"] in lines and ["failed", "1"] in lines and ["running", "0"] in lines
    assert any(line[:5] == ["ok", "1", "1", "0", "100.0%"] for line in lines)
    assert ["hours", "1.5"] in lines


# -- errors --------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["show", "enqueue", "requeue", "cancel"])
def test_an_unknown_id_exits_1_with_a_one_line_error(db: str, command: str) -> None:
    out = run(command, "nope", *on(db))
    assert out.code == 1
    assert out.stderr.strip().splitlines() == ["Error: no workflow with id 'nope'"]
    assert "Traceback" not in out.stdout + out.stderr


def test_an_illegal_transition_exits_1_with_a_one_line_error(engine: WorkflowEngine, db: str) -> None:
    wid = ran(engine, "ok")
    out = run("cancel", wid, *on(db))
    assert out.code == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "completed" in out.stderr and "Traceback" not in out.stderr


# -- changing ------------------------------------------------------------------------
def test_enqueue_and_cancel_change_the_database_and_print_the_workflow(
    engine: WorkflowEngine, db: str
) -> None:
    first = engine.create_workflow(workflow_type_id="ok")
    second = engine.create_workflow(workflow_type_id="ok")
    out = run("enqueue", first, *on(db), "--json")
    assert out.code == 0 and json.loads(out.stdout)["status"] == "queued"
    assert engine.get_workflow(first).status is S.QUEUED
    out = run("cancel", second, *on(db))
    assert (out.code, out.stdout) == (0, f"{second}: cancelled\n")
    assert engine.get_workflow(second).status is S.CANCELLED


def test_requeue_one_sends_a_failed_workflow_back_to_the_queue(engine: WorkflowEngine, db: str) -> None:
    wid = ran(engine, "bad")
    out = run("requeue", wid, *on(db), "--json")
    assert out.code == 0 and json.loads(out.stdout) == engine.get_workflow(wid).to_dict()
    assert engine.get_workflow(wid).status is S.QUEUED


def test_requeue_all_failed_of_a_type_requeues_exactly_those(engine: WorkflowEngine, db: str) -> None:
    bad = {ran(engine, "bad") for _ in range(3)}
    ok = ran(engine, "ok")
    other = engine.create_workflow(workflow_type_id="other")
    engine.store.compare_and_set(
        other, expected_status=S.PENDING, changes={"status": S.FAILED}, event=None
    )  # failed, of another type
    newest_first = [wf.id for wf in engine.list_workflows(status="failed", workflow_type_id="bad")]
    out = run("requeue", "--all-failed", "--type", "bad", *on(db), "--json")
    assert out.code == 0
    assert json.loads(out.stdout) == {"requeued": newest_first, "undelivered": [], "errors": {}}
    assert set(newest_first) == bad
    assert {wid: engine.get_workflow(wid).status for wid in bad} == dict.fromkeys(bad, S.QUEUED)
    assert engine.get_workflow(ok).status is S.COMPLETED
    assert engine.get_workflow(other).status is S.FAILED


def test_requeue_all_failed_reports_what_it_could_not_requeue_and_exits_1(
    engine: WorkflowEngine, db: str
) -> None:
    good = ran(engine, "bad")
    orphan = engine.create_workflow(workflow_type_id="nobody_handles_this")
    engine.store.compare_and_set(orphan, expected_status=S.PENDING, changes={"status": S.FAILED}, event=None)
    out = run("requeue", "--all-failed", *on(db))
    assert out.code == 1
    lines = out.stdout.splitlines()
    assert lines[-1] == "requeued 1 of 2 failed workflows"
    assert lines[0].startswith(f"{orphan}: not requeued: ") and "nobody_handles_this" in lines[0]
    assert engine.get_workflow(good).status is S.QUEUED


def test_requeue_all_failed_shows_a_progress_bar_on_a_terminal(
    engine: WorkflowEngine, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(2):
        ran(engine, "bad")
    monkeypatch.setattr(display, "stderr_is_tty", lambda: True)
    out = run("requeue", "--all-failed", *on(db))
    assert out.code == 0 and out.stdout == "requeued 2 of 2 failed workflows\n"
    assert "requeueing" in out.stderr and "100%" in out.stderr


def test_requeue_all_failed_with_redis_down_counts_them_requeued_and_says_they_wait(
    engine: WorkflowEngine, db: str
) -> None:
    failed = [ran(engine, "bad") for _ in range(2)]
    down = ["--database-url", db, "--redis-url", f"redis://127.0.0.1:{free_port()}/0"]
    out = run("requeue", "--all-failed", *down, "--json")
    report = json.loads(out.stdout)
    assert out.code == 0 and report["errors"] == {}
    assert sorted(report["requeued"]) == sorted(report["undelivered"]) == sorted(failed)
    assert {engine.get_workflow(w).status for w in failed} == {S.QUEUED}


@pytest.mark.parametrize("command", ["enqueue", "requeue"])
def test_enqueue_or_requeue_with_redis_down_prints_the_queued_workflow_and_warns_that_it_waits(
    engine: WorkflowEngine, db: str, command: str
) -> None:
    wid = ran(engine, "bad") if command == "requeue" else engine.create_workflow(workflow_type_id="ok")
    down = ["--database-url", db, "--redis-url", f"redis://127.0.0.1:{free_port()}/0"]
    out = run(command, wid, *down, "--json")
    assert out.code == 0 and json.loads(out.stdout) == engine.get_workflow(wid).to_dict()
    assert engine.get_workflow(wid).status is S.QUEUED
    [warning] = [line for line in out.stderr.splitlines() if " WARNING " in line]
    assert "WARNING workflow_engine: 1 workflow(s) recorded queued, but not put on the queue: " in warning
    assert "Redis is unavailable" in warning and "reconcile" in warning
    # With JSON logs, the warning is a record like every other line of stderr.
    wid = ran(engine, "bad") if command == "requeue" else engine.create_workflow(workflow_type_id="ok")
    out = run("--log-format", "json", command, wid, *down)
    assert out.code == 0 and out.stdout == f"{wid}: queued\n"
    records = [json.loads(line) for line in out.stderr.splitlines()]
    [warning_record] = [r for r in records if "Redis is unavailable" in r["message"]]
    assert warning_record["level"] == "WARNING" and "reconcile" in warning_record["message"]


def test_the_commands_ignore_whitespace_around_their_variables_as_from_env_does(
    engine: WorkflowEngine, db: str
) -> None:
    wid = engine.create_workflow(workflow_type_id="ok")
    crlf = {
        "WORKFLOW_ENGINE_DATABASE_URL": f"{db}\r",
        "WORKFLOW_ENGINE_QUEUE": "workflows\r",
        "REDIS_URL": " ",
        "WORKFLOW_ENGINE_LOG_LEVEL": "info\r",
        "WORKFLOW_ENGINE_LOG_FORMAT": "\r",
        "WORKFLOW_ENGINE_STALE_AFTER": "\r",
    }
    result = CliRunner().invoke(main, ["list", "--json"], env=crlf, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert [wf["id"] for wf in json.loads(result.stdout)] == [wid]
    result = CliRunner().invoke(main, ["reconcile"], env=crlf, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr


def test_the_command_leaves_its_callers_environment_as_it_found_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKFLOW_ENGINE_QUEUE", "   ")
    monkeypatch.setenv("REDIS_URL", " redis://127.0.0.1:6379/0 ")
    assert CliRunner().invoke(main, ["--help"]).exit_code == 0
    assert os.environ["WORKFLOW_ENGINE_QUEUE"] == "   "
    assert os.environ["REDIS_URL"] == " redis://127.0.0.1:6379/0 "


def test_list_takes_a_status_in_any_case_and_refuses_an_unknown_one_as_a_usage_error(
    engine: WorkflowEngine, db: str
) -> None:
    wid = ran(engine, "ok", inputs={})
    out = run("list", *on(db), "--status", "COMPLETED", "--json")
    assert out.code == 0 and [wf["id"] for wf in json.loads(out.stdout)] == [wid]
    out = run("list", *on(db), "--status", "bogus")
    assert out.code == 2 and "'bogus' is not one of" in out.stderr


def test_control_characters_in_stored_text_are_written_out_not_sent_to_the_terminal(
    engine: WorkflowEngine, db: str
) -> None:
    wid = ran(engine, "ok", created_by_agent="agent", inputs={})
    forged = "x\nFAKE-ROW completed\x1b]0;pwned\x07\x9b2J"
    # The engine refuses such a name now; an earlier release stored it.
    engine.store.insert([a_workflow(workflow_type_id=forged)])
    out = run("list", *on(db))
    assert out.code == 0 and not {"\x1b", "\x07", "\x9b"} & set(out.stdout)
    assert not any(line.startswith("FAKE-ROW") for line in out.stdout.splitlines())
    assert "x\\x0aFAKE-ROW completed\\x1b]0;pwned\\x07\\x9b2J" in out.stdout
    assert len(out.stdout.splitlines()) == 3, out.stdout  # the header and one row a workflow
    assert wid in out.stdout
    out = run("list", "--type", forged, *on(db), "--status", "pending")
    assert out.code == 0 and "\x1b" not in out.stdout
    err = run("enqueue", engine.list_workflows(workflow_type_id=forged)[0].id, *on(db))
    assert err.code == 1 and "\x1b" not in err.stderr and len(err.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["reconcile", "--every", "0"],
        ["reconcile", "--every", "-1"],
        ["reconcile", "--every", "nan"],
        ["reconcile", "--every", "1e-9"],
        ["worker", "--reconcile-every", "0.001"],
        ["worker", "--reconcile-every", "1e10"],
        ["health", "--window", "inf"],
        ["health", "--max-queued-age", "1e11"],
        ["health", "--max-failure-rate", "nan"],
        ["reconcile", "--stale-after", "nan"],
        ["reconcile", "--stale-after", "0"],
        ["worker", "--heartbeat-interval", "-1"],
    ],
)
def test_a_number_of_seconds_out_of_range_is_a_usage_error(db: str, args: list[str]) -> None:
    out = run(*args, *on(db))
    assert out.code == 2 and "Invalid value for" in out.stderr


def test_the_log_level_the_workers_accept_the_commands_accept_too(db: str) -> None:
    # One environment file for every service: rq_preload takes CRITICAL, so the CLI must too.
    out = run("--log-level", "CRITICAL", "stats", *on(db))
    assert out.code == 0, out.stderr


@pytest.mark.services
def test_a_worker_name_already_registered_is_a_clear_error_not_a_traceback(
    db: str, redis_server: RedisServer
) -> None:
    import redis

    # What a live worker of that name (or one killed within RQ's worker TTL) leaves in Redis.
    redis.Redis.from_url(redis_server.url).hset("rq:worker:web-1", "birth", "2026-11-29T00:00:00Z")
    result = CliRunner().invoke(
        main,
        [
            "worker",
            "--name",
            "web-1",
            "--burst",
            "--reconcile-every",
            "0",
            "--database-url",
            db,
            "--redis-url",
            redis_server.url,
        ],
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception  # no escape
    assert "an RQ worker named 'web-1' is registered already" in result.stderr


@pytest.mark.parametrize("command", [["worker", "--burst"], ["reconcile", "--every", "10"]])
def test_metrics_without_their_extra_stop_a_service_before_it_creates_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if the extra were not installed
    db = tmp_path / "not-yet.db"
    out = run(
        *command, "--metrics-port", "0", "--database-url", f"sqlite:///{db}", "--redis-url", "fakeredis://"
    )
    assert out.code == 1 and 'pip install "prometheus_client>=0.20"' in out.stderr
    assert not db.exists()


def test_tables_show_every_digit_of_a_float_and_no_exponent() -> None:
    assert display._cell(3703703.67) == "3703703.67"
    assert display._cell(71225.07) == "71225.07"
    assert display._cell(2.0) == "2"
    assert display._cell(0.00123456789) == "0.00123456789"
    assert (display._cell(1e-07), display._cell(-1e-07), display._cell(-0.0)) == (
        "0.0000001",
        "-0.0000001",
        "0",
    )


def test_a_worker_that_cannot_reach_redis_exits_1_with_a_one_line_error(db: str) -> None:
    down = ["--database-url", db, "--redis-url", f"redis://127.0.0.1:{free_port()}/0"]
    out = run("worker", "--burst", "--reconcile-every", "0", "-w", "simple", *down)
    assert out.code == 1 and out.stderr.startswith("Error: Redis is unavailable")
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_missing_metrics_directory_is_a_one_line_error_for_reconcile_too(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("prometheus_client")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    out = run("reconcile", "--metrics-port", "0", *on(db))
    assert out.code == 1 and "is not a directory" in out.stderr


@pytest.mark.parametrize(
    "args",
    [[], ["some-id", "--all-failed"], ["some-id", "--type", "bad"]],
    ids=["neither", "both", "type-without-all-failed"],
)
def test_requeue_takes_an_id_or_all_failed(db: str, args: list[str]) -> None:
    out = run("requeue", *args, *on(db))
    assert out.code == 2 and "Usage:" in out.stderr


@pytest.mark.parametrize("database", [":memory:", " "])
def test_demo_refuses_a_database_that_is_not_a_file_the_other_commands_could_read(database: str) -> None:
    out = run("demo", "--database", database)
    assert out.code == 1 and "--database must name a file" in out.stderr and out.stdout == ""


def test_demo_runs_three_workflows_in_process_and_prints_their_outcomes(tmp_path: Path) -> None:
    out = run("demo", "--database", str(tmp_path / "demo.db"))
    assert out.code == 0
    rows = [line.split()[1:3] for line in out.stdout.splitlines() if line[:1].isalnum() and "_" in line]
    assert ["website_creation", "completed"] in rows and ["import_contacts", "failed"] in rows
    assert (tmp_path / "demo.db").exists()
    # It says how to look at its file with the other commands, which default to workflows.db.
    hint = next(line for line in out.stdout.splitlines() if line.strip().startswith("workflow-engine list"))
    listed = run(*shlex.split(hint)[1:])
    assert listed.code == 0 and listed.stdout.count("website_creation") == 1, listed.stdout


def test_reconcile_once_prints_its_report(db: str) -> None:
    out = run("reconcile", *on(db))
    assert out.code == 0 and json.loads(out.stdout)["redelivered"] == []


def test_a_one_off_reconcile_leaves_the_services_metrics_port_from_the_environment_alone(db: str) -> None:
    """The env file operations.md has an operator source holds the reconcile service's port,
    which that service holds: a one-off pass found it taken and did nothing."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        env = {"WORKFLOW_ENGINE_METRICS_PORT": port, "WORKFLOW_ENGINE_METRICS_HOST": "127.0.0.1"}
        out = CliRunner().invoke(main, ["reconcile", *on(db)], env=env, catch_exceptions=False)
        assert out.exit_code == 0 and json.loads(out.stdout)["redelivered"] == []
        # Asked for on the command line, it is served (and here, refused: the port is taken).
        out = CliRunner().invoke(main, ["reconcile", "--metrics-port", port, *on(db)], env=env)
        assert out.exit_code == 1 and "cannot serve metrics" in out.stderr


# -- logs ----------------------------------------------------------------------------
def test_with_json_logs_an_error_is_a_json_record_too_so_that_stderr_stays_json(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    out = run("--log-format", "json", "list", "--database-url", missing, "--redis-url", "fakeredis://")
    assert out.code == 1
    [record] = [json.loads(line) for line in out.stderr.splitlines()]
    assert record["level"] == "ERROR" and record["message"].startswith("no database file at ")
    quiet = run("--log-format", "json", "--log-level", "CRITICAL", "list", "--database-url", missing)
    assert quiet.code == 1 and quiet.stderr.startswith("Error: no database file at ")  # not silence


def test_json_logs_are_ascii_so_that_any_stream_encoding_keeps_them_json() -> None:
    import logging

    from workflow_engine.logs import JsonFormatter

    line = JsonFormatter().format(logging.makeLogRecord({"msg": "café 😀", "levelname": "INFO"}))
    assert line.isascii() and json.loads(line)["message"] == "café 😀"


def test_text_logs_name_the_workflow_a_record_is_about_after_its_message_before_a_traceback() -> None:
    import logging

    from workflow_engine.logs import TextFormatter

    about = {"workflow_id": "c856", "workflow_type_id": "website_creation", "attempt": 1}
    plain = logging.makeLogRecord(
        {
            "name": "workflow_engine.execution",
            "msg": "attempt %d started",
            "args": (1,),
            "levelname": "INFO",
            **about,
        }
    )
    fields = "[workflow_id=c856 workflow_type_id=website_creation attempt=1]"
    assert (
        TextFormatter().format(plain).endswith(f"INFO workflow_engine.execution: attempt 1 started {fields}")
    )
    other = logging.makeLogRecord(
        {"name": "workflow_engine", "msg": "reconcile: nothing to do", "levelname": "INFO"}
    )
    assert TextFormatter().format(other).endswith("INFO workflow_engine: reconcile: nothing to do")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.makeLogRecord(
            {"msg": "attempt failed", "levelname": "WARNING", "exc_info": sys.exc_info(), **about}
        )
    first, *rest = TextFormatter().format(failed).splitlines()
    assert first.endswith(f"attempt failed {fields}")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"


def test_the_workers_reconcile_thread_logs_one_line_a_failed_pass_when_the_database_is_down(
    engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    from workflow_engine.cli import reconcile_loop
    from workflow_engine.errors import StoreUnavailable

    stop = threading.Event()

    def down() -> None:
        stop.set()
        raise StoreUnavailable("PostgreSQL is unavailable: connection refused")

    monkeypatch.setattr(engine, "reconcile", down)
    caplog.set_level(logging.ERROR, logger="workflow_engine.cli")  # whatever level a command left
    reconcile_loop(engine, 0.001, stop)
    [record] = [r for r in caplog.records if "reconcile failed" in r.getMessage()]
    assert "connection refused" in record.getMessage() and record.exc_info is None  # no traceback


def test_json_logs_stay_strict_json_and_keep_their_standard_keys() -> None:
    import logging

    from workflow_engine.logs import JsonFormatter

    record = logging.makeLogRecord(
        {
            "msg": "m",
            "levelname": "INFO",
            "ratio": float("nan"),
            "level": "custom",
            "time": 5,
            "exception": "E",
        }
    )
    out = json.loads(JsonFormatter().format(record), parse_constant=lambda name: pytest.fail(name))
    assert (out["level"], out["extra_level"], out["extra_time"]) == ("INFO", "custom", 5)
    assert out["ratio"] == "nan" and out["time"] != 5
    assert out["extra_exception"] == "E" and "exception" not in out  # never taken for a traceback


def test_log_format_json_writes_one_object_a_line_with_the_workflow_fields(
    engine: WorkflowEngine, db: str
) -> None:
    wid = engine.create_workflow(workflow_type_id="ok")
    out = run("--log-format", "json", "cancel", wid, *on(db))
    assert out.code == 0 and out.stdout == f"{wid}: cancelled\n"
    records = [json.loads(line) for line in out.stderr.splitlines()]
    [cancelled] = [r for r in records if r["message"] == "workflow cancelled"]
    assert cancelled["workflow_id"] == wid
    assert cancelled["workflow_type_id"] == "ok"
    assert cancelled["attempt"] == 0
    assert cancelled["level"] == "INFO" and cancelled["logger"] == "workflow_engine"
    assert cancelled["time"].endswith("+00:00")


def test_log_level_hides_less_severe_records(engine: WorkflowEngine, db: str) -> None:
    wid = engine.create_workflow(workflow_type_id="ok")
    out = run("--log-level", "warning", "cancel", wid, *on(db))
    assert out.code == 0 and out.stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["show", "x"],
        ["stats"],
        ["enqueue", "x"],
        ["requeue", "x"],
        ["cancel", "x"],
        ["reconcile"],
    ],
)
def test_a_command_on_a_sqlite_file_that_does_not_exist_says_so_and_creates_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    typo = tmp_path / "workflow.db"  # the real one would be workflows.db
    out = run(*args, "--database-url", f"sqlite:///{typo}", "--redis-url", "fakeredis://")
    assert out.code == 1
    assert out.stderr.strip().splitlines() == [
        f"Error: no database file at {typo}: check --database-url or WORKFLOW_ENGINE_DATABASE_URL "
        "(`workflow-engine migrate` creates a new one)"
    ]
    assert not typo.exists()


READING_AND_QUEUEING = [
    ["list"],
    ["show", "x"],
    ["stats"],
    ["health", "--check", "database"],
    ["enqueue", "x"],
    ["requeue", "x"],
    ["cancel", "x"],
    ["reconcile"],
]


def _no_tables_error(url: str) -> str:
    return (
        f"no workflow_engine tables in the database at {url}: check the database URL "
        "(`workflow-engine migrate` creates them)"
    )


@pytest.mark.parametrize("args", READING_AND_QUEUEING, ids=lambda a: a[0])
def test_a_command_on_the_apps_own_sqlite_file_refuses_it_and_leaves_it_as_it_was(
    tmp_path: Path, args: list[str]
) -> None:
    """A URL that names another database (the app's own, say) must not get five tables written
    into it, nor its journal switched to WAL, nor show an empty list as if all were well."""
    import sqlite3

    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.close()
    before = other.read_bytes()
    out = run(*args, "--database-url", f"sqlite:///{other}", "--redis-url", "fakeredis://")
    assert out.code == 1
    if args[0] == "health":
        assert f"FAIL  database      {_no_tables_error(f'sqlite:///{other}')}" in out.stdout
    else:
        assert out.stderr.strip().splitlines() == [f"Error: {_no_tables_error(f'sqlite:///{other}')}"]
    assert other.read_bytes() == before and not Path(f"{other}-wal").exists()


@pytest.mark.parametrize("args", READING_AND_QUEUEING, ids=lambda a: a[0])
def test_a_command_on_a_postgresql_database_without_our_tables_refuses_it_and_creates_none(
    pg_url: str, args: list[str]
) -> None:
    import psycopg

    out = run(*args, "--database-url", pg_url, "--redis-url", "fakeredis://")
    assert out.code == 1
    if args[0] == "health":
        assert f"FAIL  database      {_no_tables_error(pg_url)}" in out.stdout
    else:
        assert out.stderr.strip().splitlines() == [f"Error: {_no_tables_error(pg_url)}"]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


def test_requeue_with_neither_an_id_nor_all_failed_says_to_give_one(db: str) -> None:
    out = run("requeue", *on(db))
    assert out.code == 2 and "give a WORKFLOW_ID, or --all-failed for every failed workflow" in out.stderr


@pytest.mark.parametrize("limit", ["0", "10001", "x"])
def test_a_list_limit_out_of_range_is_a_usage_error(db: str, limit: str) -> None:
    out = run("list", "--limit", limit, *on(db))
    assert out.code == 2 and "Invalid value for '--limit'" in out.stderr


def test_shown_urls_hide_passwords_in_the_netloc_and_in_the_query() -> None:
    from workflow_engine.stores.urls import shown

    assert shown("postgresql://app:s3cret@db:5432/app") == "postgresql://app:***@db:5432/app"
    assert shown("postgresql://app@db/app?sslmode=require&password=s3cret") == (
        "postgresql://app@db/app?sslmode=require&password=***"
    )
    assert shown("postgresql://app@db/app?sslkey=k.pem&sslpassword=s3cret") == (
        "postgresql://app@db/app?sslkey=k.pem&sslpassword=***"
    )


@pytest.mark.parametrize(
    "flag, url",
    [
        ("--database-url", "postgresql:app:s3cr3t@db.internal/app"),  # no "//"
        ("--redis-url", "redis:/:s3cr3t@cache.internal:6379/0"),  # one "/" short
        ("--redis-url", "redis:cache.internal:6379/0?password=s3cr3t"),  # in the query
        ("--database-url", "postgresql:app:s3cr3t@db/app?next=http://x"),  # a "://" in the query
    ],
)
def test_a_mistyped_url_is_refused_without_showing_its_password(db: str, flag: str, url: str) -> None:
    urls = {"--database-url": db, "--redis-url": "fakeredis://", flag: url}
    for command in (["list"], ["health", "--json"]):
        out = run(*command, *[part for pair in urls.items() for part in pair])
        assert out.code == 1 and "malformed" in out.stdout + out.stderr
        assert "s3cr3t" not in out.stdout + out.stderr
        assert "***" in out.stdout + out.stderr  # the rest is shown, to find the typo by


def test_shown_hides_what_may_be_a_password_in_a_url_without_its_slashes() -> None:
    from workflow_engine.stores.urls import secrets, shown

    assert shown("postgresql:app:s3cret@db/app") == "postgresql:***@db/app"
    assert shown("redis:/:s3cret@cache:6379/0") == "redis:***@cache:6379/0"
    assert shown("app.db") == "app.db"  # nothing to hide
    assert secrets("postgresql:app:s%40cret@db/app") == ["s%40cret", "s@cret"]
    # A password in the query; a "://" in the query, which is no scheme's; no ":" at all.
    assert shown("redis:cache:6379/0?password=s3cret") == "redis:cache:6379/0?password=***"
    assert shown("postgresql:db/app?x=a@b&password=s3cret") == "postgresql:db/app?x=a@b&password=***"
    assert shown("postgresql:app:s3cret@db/app?next=http://x") == "postgresql:***@db/app?next=http://x"
    assert secrets("postgresql//app:s3cret@db/app") == ["s3cret"]


def test_a_reconcile_service_may_start_before_the_database_file_exists(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from workflow_engine.cli import _make_engine

    path = tmp_path / "later.db"
    engine = _make_engine(create=True, database_url=f"sqlite:///{path}", redis_url="fakeredis://")
    assert engine.reconcile().total == 0
    engine.close()
    assert path.exists()
    assert f"no database file at {path} yet: creating an empty one" in caplog.text


@pytest.mark.parametrize("app_configured_rq", [False, True])
def test_json_worker_logging_takes_rqs_records_unless_the_app_configured_rqs_loggers(
    monkeypatch: pytest.MonkeyPatch, app_configured_rq: bool
) -> None:
    """RQ's records in JSON too, but never twice: an app's own handler on `rq.worker` keeps them."""
    import logging

    from workflow_engine.logs import configure_worker_logging

    monkeypatch.setenv("WORKFLOW_ENGINE_LOG_FORMAT", "json")
    loggers = [logging.getLogger(n) for n in ("workflow_engine", "rq", "rq.worker")]
    root = logging.getLogger()
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers], root.handlers[:]
    for lg in loggers:
        lg.handlers.clear()
    root.handlers.clear()
    app_handler = logging.NullHandler()
    try:
        if app_configured_rq:
            loggers[2].addHandler(app_handler)
        ours = configure_worker_logging()
        assert ours is not None and loggers[0].handlers == [ours]
        assert loggers[1].handlers == ([] if app_configured_rq else [ours])
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved[0], strict=True):
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
        root.handlers[:] = saved[1]


def test_worker_logging_shows_the_engines_records_and_still_lets_the_app_have_them() -> None:
    """`rq worker -c workflow_engine.rq_preload`: RQ configures only its own logger. The engine's records
    go to stderr, and a root handler the app installs later still receives them."""
    import logging

    from workflow_engine.logs import configure_worker_logging

    package, root = logging.getLogger("workflow_engine"), logging.getLogger()
    saved = (package.handlers[:], package.level, package.propagate, root.handlers[:])
    package.handlers.clear()
    root.handlers.clear()
    seen: list[str] = []
    app_handler = logging.Handler()
    app_handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    try:
        ours = configure_worker_logging()
        assert ours is not None and package.handlers == [ours]
        root.addHandler(app_handler)  # the app's module, imported later, configures logging
        logging.getLogger("workflow_engine.execution").warning("attempt 1 failed: boom")
        assert seen == ["attempt 1 failed: boom"]
        assert configure_worker_logging() is None, "configured already: left alone"
    finally:
        package.handlers[:], package.level, package.propagate = saved[0], saved[1], saved[2]
        root.handlers[:] = saved[3]


def test_a_row_written_by_hand_that_cannot_be_read_is_one_line_of_error_not_a_traceback(
    engine: WorkflowEngine, db: str
) -> None:
    wid = engine.create_workflow(workflow_type_id="ok")
    engine.store.database().execute("UPDATE workflows SET inputs = '{not json' WHERE id = ?", [wid])  # type: ignore[attr-defined]
    engine.store.database().conn.commit()  # type: ignore[attr-defined]
    for args in (["list"], ["show", wid], ["--log-format", "json", "list"]):
        out = run(*args, *on(db))
        assert out.code == 1 and "Traceback" not in out.stderr
        [line] = out.stderr.strip().splitlines()
        assert f"the workflow '{wid}' has a row this workflow_engine cannot read (JSONDecodeError: " in line


def test_a_command_that_puts_jobs_on_fakeredis_says_no_worker_will_see_them(
    engine: WorkflowEngine, db: str
) -> None:
    """`fakeredis://` is the in-process mode's Redis: given to a command, the jobs it puts there
    vanish with it. Commands that only read, or cancel, say nothing of it."""
    wid = engine.create_workflow(workflow_type_id="ok")
    result = CliRunner().invoke(main, ["enqueue", wid, *on(db)], catch_exceptions=False)
    assert result.exit_code == 0 and FAKE_REDIS_WARNING in result.stderr
    assert "use the URL your workers use" in result.stderr
    assert (
        engine.get_workflow(wid).status is S.QUEUED
    )  # recorded: a reconcile with the real Redis delivers it
    for args in (["list"], ["show", wid], ["stats"], ["cancel", wid]):
        quiet = CliRunner().invoke(main, [*args, *on(db)], catch_exceptions=False)
        assert quiet.exit_code == 0 and FAKE_REDIS_WARNING not in quiet.stderr, args
