"""The documentation keeps up with the code: every command, option and metric is documented,
and the alert rules and the dashboard only use metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from workflow_engine import WorkflowEngine, metrics
from workflow_engine.cli import main

from support import create_index_statements

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: Documented once, in cli.md's "Common options" section, for every command that takes them.
COMMON = {"--database-url", "--redis-url", "--queue", "--heartbeat-interval", "--stale-after", "--help"}


def commands() -> dict[str, click.Command]:
    return dict(main.commands)  # type: ignore[attr-defined]


def sections(markdown: str) -> dict[str, str]:
    """Each `## heading` of a Markdown file, with its text up to the next one."""
    parts = re.split(r"^## +(.+)$", markdown, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


@pytest.fixture(scope="module")
def cli_md() -> str:
    return (DOCS / "cli.md").read_text()


def exposed_metrics(tmp_path: Path) -> set[str]:
    """Every metric name a scrape can show, as written in PromQL (counters with ``_total``)."""
    engine = WorkflowEngine(database_url=f"sqlite:///{tmp_path / 'docs.db'}", redis_url="fakeredis://")
    names = set()
    for family in metrics.make_registry(engine, metrics.Instruments()).collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_has_help_text(name: str) -> None:
    command = commands()[name]
    assert command.help and command.get_short_help_str().strip(), f"{name} has no help text"


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_is_documented_in_cli_md_with_each_of_its_options(name: str, cli_md: str) -> None:
    documented = sections(cli_md)
    assert name in documented, f"docs/cli.md has no '## {name}' section"
    assert f"[`{name}`](#{name})" in cli_md, f"{name} is missing from docs/cli.md's table of commands"
    own = documented[name] + documented.get("Common options", "")
    for param in commands()[name].params:
        if isinstance(param, click.Option):
            for option in param.opts:
                if option.startswith("--") and option not in COMMON:
                    assert option in own, f"docs/cli.md does not document `{name} {option}`"


def test_the_root_options_are_documented_in_cli_md(cli_md: str) -> None:
    for param in main.params:
        for option in param.opts:
            if option.startswith("--") and option != "--help":
                assert option in cli_md, option


def test_every_metric_is_documented_in_operations_md(tmp_path: Path) -> None:
    operations = (DOCS / "operations.md").read_text()
    names = exposed_metrics(tmp_path)
    assert {
        "workflow_engine_workflows_created_total",
        "workflow_engine_workflows_finished_total",
        "workflow_engine_attempts_failed_total",
        "workflow_engine_workflow_duration_seconds",
        "workflow_engine_queue_wait_seconds",
        "workflow_engine_workflows",
        "workflow_engine_queue_depth",
        "workflow_engine_oldest_queued_age_seconds",
    } <= names
    for name in names:
        assert f"`{name}`" in operations, f"{name} is not documented in docs/operations.md"


def referenced_metrics(text: str) -> set[str]:
    return {re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"\bworkflow_engine_\w+", text)}


def test_the_alert_rules_cover_the_four_conditions_with_metrics_that_exist(tmp_path: Path) -> None:
    text = (DOCS / "alerts.yml").read_text()
    rules = {r["alert"]: r for group in yaml.safe_load(text)["groups"] for r in group["rules"]}
    assert "workflow_engine_workers" in rules["WorkflowEngineNoLiveWorkers"]["expr"]
    assert "> 300" in rules["WorkflowEngineQueuedTooLong"]["expr"]
    assert "> 0.10" in rules["WorkflowEngineHighFailureRate"]["expr"]
    assert "workflow_engine_workflows_stale" in rules["WorkflowEngineStuckRunning"]["expr"]
    assert all(r["annotations"]["summary"] and r["labels"]["severity"] for r in rules.values())
    assert referenced_metrics(text) <= exposed_metrics(tmp_path)
    promtool = shutil.which("promtool")
    if promtool:  # Prometheus's own check of the rules, where it is installed
        done = subprocess.run([promtool, "check", "rules", str(DOCS / "alerts.yml")], capture_output=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_grafana_dashboard_is_json_whose_queries_use_metrics_that_exist(tmp_path: Path) -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10 and dashboard["uid"] == "workflow-engine"
    used = referenced_metrics("\n".join(exprs))
    assert used <= exposed_metrics(tmp_path)
    wanted = {"workflow_engine_workers", "workflow_engine_workflows_stale", "workflow_engine_queue_depth"}
    assert wanted <= used


def test_operations_md_covers_units_redis_backups_upgrades_and_shows_a_real_session() -> None:
    operations = (DOCS / "operations.md").read_text()
    for needle in (
        "workflow-engine-worker@.service",
        "workflow-engine-reconciler.service",
        "appendonly yes",
        "appendfsync everysec",
        "source.backup(target)",
        "pg_dump",
        "pg_restore",
        "workflow-engine migrate",
        "PROMETHEUS_MULTIPROC_DIR",
        "(alerts.yml)",
        "(grafana-dashboard.json)",
        "(operations-session.txt)",
    ):
        assert needle in operations, needle
    session = (DOCS / "operations-session.txt").read_text()
    for command in ("workflow-engine list", "workflow-engine show", "workflow-engine stats"):
        assert f"$ {command}" in session, command
    assert "UNHEALTHY" in session and "\nhealthy\n" in session
    assert "curl -s http://127.0.0.1:9108/metrics" in session


def test_the_concurrent_index_recipes_build_what_migrations_0004_and_0006_create() -> None:
    """production.md's CREATE INDEX CONCURRENTLY statements are the migrations' own, so that a
    database prepared by hand migrates to the same indexes."""
    from workflow_engine.stores.postgres import PostgresStore

    def normalized(sql: str) -> list[str]:
        return sorted(
            " ".join(st.split()).replace(" CONCURRENTLY", "") for st in create_index_statements(sql)
        )

    recipes = re.findall(
        r"```sql\n(CREATE INDEX CONCURRENTLY.*?)```", (DOCS / "production.md").read_text(), re.S
    )
    scripts = dict(PostgresStore("postgresql://unused").migration_scripts())
    assert [normalized(recipe) for recipe in recipes] == [normalized(scripts[4]), normalized(scripts[6])]


# -- links -------------------------------------------------------------------------------------
ROOT = DOCS.parent
MARKDOWN = sorted(
    [*DOCS.glob("*.md"), ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md"]
)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (markup dropped, a code span's underscores kept) in
    lower case, punctuation but hyphens and underscores dropped, spaces to hyphens."""
    parts = re.split(r"(`[^`]*`)", heading.strip())
    text = "".join(
        part[1:-1] if part.startswith("`") else re.sub(r"[*_]|\[([^\]]*)\]\([^)]*\)", r"\1", part)
        for part in parts
    ).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?)\s*$", _FENCE.sub("", path.read_text()), flags=re.MULTILINE):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in _LINK.findall(_FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    assert not broken, f"{page.name} has broken links:\n" + "\n".join(broken)


def python_blocks(page: str, first_line: str) -> list[str]:
    """The ```python blocks of ``page`` (in docs/) whose first line starts with ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    return [b for b in blocks if b.startswith(first_line)]


def test_the_testing_pages_tests_pass_on_the_quickstarts_app(tmp_path: Path) -> None:
    """A reader who builds the quickstart's module and adds testing.md's handlers and tests, as the
    pages say, gets passing tests: run with `python -m pytest`, through the installed plugin."""
    [handlers] = python_blocks("quickstart.md", "# myapp/workflows.py\n")
    [more] = python_blocks("testing.md", "# myapp/workflows.py, after the quickstart's")
    [tests] = python_blocks("testing.md", "# tests/test_workflows.py\n")
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "workflows.py").write_text(handlers + "\n\n" + more)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_workflows.py").write_text(tests)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
