"""The ``workflow-engine`` command line (click)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from . import config
from .engine import WorkflowEngine
from .errors import WorkflowEngineError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("workflow_engine.cli")


def _engine_options(func: F) -> F:
    """--database-url, --redis-url and --queue, each with its environment variable."""
    func = click.option(
        "--queue",
        "queue_name",
        envvar="WORKFLOW_ENGINE_QUEUE",
        show_envvar=True,
        default=config.DEFAULT_QUEUE,
        show_default=True,
        help="RQ queue name.",
    )(func)
    func = click.option(
        "--redis-url",
        envvar=["WORKFLOW_ENGINE_REDIS_URL", "REDIS_URL"],
        show_envvar=True,
        default=config.DEFAULT_REDIS_URL,
        show_default=True,
        help="Redis URL (env: WORKFLOW_ENGINE_REDIS_URL, then REDIS_URL).",
    )(func)
    func = click.option(
        "--database-url",
        envvar="WORKFLOW_ENGINE_DATABASE_URL",
        show_envvar=True,
        default=config.DEFAULT_DATABASE_URL,
        show_default=True,
        help="Database URL: sqlite:///path.db or postgresql://…",
    )(func)
    return func


def _timing_options(func: F) -> F:
    func = click.option(
        "--stale-after",
        type=float,
        envvar="WORKFLOW_ENGINE_STALE_AFTER",
        show_envvar=True,
        default=config.DEFAULT_STALE_AFTER,
        show_default=True,
        help="Seconds without a heartbeat before a running workflow counts as lost.",
    )(func)
    func = click.option(
        "--heartbeat-interval",
        type=float,
        envvar="WORKFLOW_ENGINE_HEARTBEAT_INTERVAL",
        show_envvar=True,
        default=config.DEFAULT_HEARTBEAT_INTERVAL,
        show_default=True,
        help="Seconds between a running workflow's heartbeats.",
    )(func)
    return func


def _errors(func: F) -> F:
    """Turn a WorkflowEngineError into a one-line message and exit code 1, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except WorkflowEngineError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def _make_engine(**options: Any) -> WorkflowEngine:
    return WorkflowEngine(**{k: v for k, v in options.items() if v is not None})


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="workflow_engine")
def main() -> None:
    """Durable background workflows on RQ.

    \b
    Example:
      export WORKFLOW_ENGINE_DATABASE_URL=sqlite:///workflows.db
      workflow-engine list --status failed
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option(
    "--database", default="workflow_engine_demo.db", show_default=True, help="SQLite file to create."
)
@_errors
def demo(database: str) -> None:
    """Run a small end-to-end example: SQLite in this directory, the in-process queue.

    \b
    Example:
      workflow-engine demo
    """
    from . import demo as handlers

    logging.getLogger("workflow_engine").setLevel(logging.ERROR)
    engine = WorkflowEngine(database_url=f"sqlite:///{database}", redis_url="fakeredis://", is_async=False)
    engine.register_handler("website_creation", handlers.create_website)
    engine.register_handler("weekly_report", handlers.weekly_report, max_retries=2)
    engine.register_handler("import_contacts", handlers.import_contacts, max_retries=1)
    savings = handlers.calculated_savings(tasks_per_week=10, minutes_per_task=30, hourly_wage=40)
    ids = [
        engine.create_workflow(
            workflow_type_id="website_creation",
            created_by_agent="content_creator_agent",
            inputs={"business": "Ana's Bakery"},
            calculated_savings=savings,
        ),
        engine.create_workflow(
            workflow_type_id="weekly_report",
            created_by_agent="analytics_agent",
            inputs={"recipient": "owner@example.com"},
            calculated_savings=savings,
        ),
        engine.create_workflow(
            workflow_type_id="import_contacts",
            created_by_agent="crm_agent",
            inputs={"file": "contacts.xlsx"},
        ),
    ]
    for wid in ids:
        engine.enqueue_execution(wid)
    click.echo(f"database: {os.path.abspath(database)} (in-process queue)\n")
    click.echo(f"{'id':32}  {'type':16}  {'status':9}  {'attempts':8}  result / error")
    for wid in ids:
        wf = engine.get_workflow(wid)
        outcome = json.dumps(wf.result) if wf.status.value == "completed" else wf.error
        click.echo(f"{wf.id:32}  {wf.workflow_type_id:16}  {wf.status.value:9}  {wf.attempts:<8}  {outcome}")
    click.echo("\nEvents of the retried workflow:")
    for ev in engine.get_events(ids[1]):
        click.echo(
            f"  {ev.at:%H:%M:%S.%f}  {ev.from_status or '-':>9} -> {ev.to_status:9}  {ev.detail or ''}"
        )
    engine.close()


@main.command()
@_engine_options
@_errors
def migrate(database_url: str, redis_url: str, queue_name: str) -> None:
    """Apply pending database migrations (they also run on first use).

    \b
    Example:
      workflow-engine migrate --database-url postgresql://app@db/app
    """
    from .stores import open_store

    store = open_store(database_url)
    version = store.migrate()
    store.close()
    click.echo(f"schema version {version}")


@main.command()
@_engine_options
@_timing_options
@click.option("--every", type=float, default=None, help="Run forever, every SECONDS; without it, run once.")
@_errors
def reconcile(every: float | None, **options: Any) -> None:
    """Recover stale running workflows, redeliver queued ones Redis forgot, deliver due retries.

    \b
    Example:
      workflow-engine reconcile --every 10
    """
    engine = _make_engine(**options)
    if every is None:
        click.echo(json.dumps(engine.reconcile().to_dict()))
        return
    while True:
        try:
            click.echo(json.dumps(engine.reconcile().to_dict()))
        except WorkflowEngineError as exc:  # the database or Redis is down: say so, try again
            log.error("reconcile failed: %s; trying again in %s s", exc, every)
        time.sleep(every)


def reconcile_loop(engine: WorkflowEngine, every: float, stop: threading.Event) -> None:
    """Reconcile every ``every`` seconds until ``stop`` is set; errors are logged, never fatal."""
    while not stop.wait(every):
        try:
            engine.reconcile()
        except Exception:
            log.exception("reconcile failed; trying again in %s s", every)


@main.command()
@_engine_options
@_timing_options
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option(
    "--worker-class",
    "-w",
    type=click.Choice(["fork", "simple"]),
    default="fork",
    show_default=True,
    help="fork: rq.Worker, a work-horse per job; simple: rq.SimpleWorker, jobs in this process.",
)
@click.option(
    "--reconcile-every",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds between reconcile passes in this worker; 0 turns them off.",
)
@click.option("--name", default=None, help="Worker name (default: RQ's).")
@click.option(
    "--path",
    "paths",
    multiple=True,
    default=["."],
    show_default=True,
    help="Put this directory first on the import path, so handlers in the app can be imported (repeatable).",
)
@_errors
def worker(
    burst: bool,
    worker_class: str,
    reconcile_every: float,
    name: str | None,
    paths: tuple[str, ...],
    **options: Any,
) -> None:
    """Run an RQ worker on the engine's queue that also reconciles periodically.

    \b
    Example:
      WORKFLOW_ENGINE_DATABASE_URL=sqlite:////srv/app/workflows.db workflow-engine worker
    """
    from rq import SimpleWorker, Worker

    from .execution import set_worker_engine

    for path in reversed(paths):
        sys.path.insert(0, os.path.abspath(path))
    engine = _make_engine(**options)
    set_worker_engine(engine)
    stop = threading.Event()
    if reconcile_every > 0:
        engine.reconcile()
        threading.Thread(
            target=reconcile_loop,
            args=(engine, reconcile_every, stop),
            name="workflow-engine-reconcile",
            daemon=True,
        ).start()
    cls = SimpleWorker if worker_class == "simple" else Worker
    rq_worker = cls([engine.queue], connection=engine.redis, name=name)
    try:
        rq_worker.work(burst=burst, with_scheduler=False)
    finally:
        stop.set()
        if burst and reconcile_every > 0:
            engine.reconcile()


def _print_workflow(wf: Any) -> None:
    for key, value in wf.to_dict().items():
        click.echo(f"{key:20} {json.dumps(value) if isinstance(value, (dict, list)) else value}")


@main.command(name="list")
@_engine_options
@click.option("--status", default=None, help="Only this status.")
@click.option("--type", "workflow_type_id", default=None, help="Only this workflow type.")
@click.option("--agent", "created_by_agent", default=None, help="Only workflows created by this agent.")
@click.option("--limit", default=50, show_default=True, help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of workflows.")
@_errors
def list_(
    status: str | None,
    workflow_type_id: str | None,
    created_by_agent: str | None,
    limit: int,
    as_json: bool,
    **options: Any,
) -> None:
    """List workflows, newest first.

    \b
    Example:
      workflow-engine list --status failed --limit 20
    """
    engine = _make_engine(**options)
    rows = engine.list_workflows(
        limit=limit, status=status, workflow_type_id=workflow_type_id, created_by_agent=created_by_agent
    )
    if as_json:
        click.echo(json.dumps([wf.to_dict() for wf in rows], indent=2))
        return
    click.echo(f"{'id':32}  {'type':20}  {'status':9}  {'attempts':8}  created_at")
    for wf in rows:
        click.echo(
            f"{wf.id:32}  {wf.workflow_type_id[:20]:20}  {wf.status.value:9}  {wf.attempts:<8}  "
            f"{wf.created_at.isoformat(timespec='seconds')}"
        )


@main.command()
@_engine_options
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True, help="Print {workflow, events} as JSON.")
@_errors
def show(workflow_id: str, as_json: bool, **options: Any) -> None:
    """Show one workflow and its event timeline.

    \b
    Example:
      workflow-engine show 3f2a…
    """
    engine = _make_engine(**options)
    wf = engine.get_workflow(workflow_id)
    events = engine.get_events(workflow_id)
    if as_json:
        click.echo(json.dumps({"workflow": wf.to_dict(), "events": [e.to_dict() for e in events]}, indent=2))
        return
    _print_workflow(wf)
    click.echo("\nevents:")
    for ev in events:
        click.echo(
            f"  {ev.at.isoformat(timespec='milliseconds')}  {ev.from_status or '-':>9} -> "
            f"{ev.to_status:9}  {ev.detail or ''}"
        )


def _simple_command(name: str, doc: str, action: Callable[[WorkflowEngine, str], Any]) -> None:
    @main.command(name=name, help=doc)
    @_engine_options
    @click.argument("workflow_id")
    @_errors
    def command(workflow_id: str, **options: Any) -> None:
        engine = _make_engine(**options)
        action(engine, workflow_id)
        click.echo(f"{workflow_id}: {engine.get_workflow(workflow_id).status.value}")


_simple_command(
    "enqueue",
    "Queue a pending workflow for execution.\n\n\b\nExample:\n  workflow-engine enqueue 3f2a…",
    lambda e, w: e.enqueue_execution(w),
)
_simple_command(
    "requeue",
    "Run a failed or cancelled workflow again.\n\n\b\nExample:\n  workflow-engine requeue 3f2a…",
    lambda e, w: e.requeue(w),
)
_simple_command(
    "cancel",
    "Cancel a workflow (a running one is asked to stop).\n\n\b\nExample:\n  workflow-engine cancel 3f2a…",
    lambda e, w: e.cancel(w),
)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
