"""The `workflow-engine` command line, through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from workflow_engine import WorkflowEngine
from workflow_engine.cli import main


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_every_command_has_help_with_an_example() -> None:
    for name, command in main.commands.items():  # type: ignore[attr-defined]
        assert command.help, name
        code, out = run(name, "--help")
        assert code == 0 and "Example" in out, name


def test_engine_options_show_their_environment_variables() -> None:
    _, out = run("list", "--help")
    assert "WORKFLOW_ENGINE_DATABASE_URL" in out and "WORKFLOW_ENGINE_REDIS_URL" in out


def test_migrate_reports_the_schema_version(db: str) -> None:
    assert run("migrate", "--database-url", db) == (0, "schema version 2\n")


def test_list_and_show_read_the_database(db: str) -> None:
    engine = WorkflowEngine(database_url=db, redis_url="fakeredis://")
    wid = engine.create_workflow(workflow_type_id="report", created_by_agent="agent", inputs={"x": 1})
    code, out = run("list", "--database-url", db, "--redis-url", "fakeredis://", "--json")
    assert code == 0 and [w["id"] for w in json.loads(out)] == [wid]
    code, out = run("show", wid, "--database-url", db, "--redis-url", "fakeredis://", "--json")
    data = json.loads(out)
    assert data["workflow"]["inputs"] == {"x": 1} and data["events"][0]["to_status"] == "pending"
    code, out = run("cancel", wid, "--database-url", db, "--redis-url", "fakeredis://")
    assert code == 0 and out.strip() == f"{wid}: cancelled"


def test_an_unknown_id_exits_1_with_a_one_line_error(db: str) -> None:
    code, out = run("show", "nope", "--database-url", db, "--redis-url", "fakeredis://")
    assert code == 1
    assert out.strip() == "Error: no workflow with id 'nope'"


def test_reconcile_once_prints_its_report(db: str) -> None:
    code, out = run("reconcile", "--database-url", db, "--redis-url", "fakeredis://")
    assert code == 0 and json.loads(out)["redelivered"] == []
