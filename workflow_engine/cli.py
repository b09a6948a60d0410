"""The ``workflow-engine`` command line (click).

Every command that reads data has ``--json`` (stable, documented in docs/cli.md);
without it, output is a table on a terminal and plain columns elsewhere. A
WorkflowEngineError (an unknown id, an illegal transition, an unreachable
database) exits with status 1 and a one-line message, never a traceback.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import wraps
from typing import Any, TypeVar

import click
import redis

from . import config, display, health, logs
from .engine import WorkflowEngine
from .errors import ConfigurationError, InvalidInput, QueueUnavailable, WorkflowEngineError
from .models import Workflow
from .status import WorkflowStatus
from .stores import open_store
from .stores.urls import parse_database_url
from .transport import connect

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("workflow_engine.cli")
#: Page size when a command walks many workflows.
_PAGE = 500


def _stripped(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The value without the whitespace around it (a CRLF ``.env`` file's ``\\r``), as
    ``WorkflowEngine.from_env`` reads it; the default if nothing is left."""
    if value is None:
        return None
    value = value.strip()
    return value or (param.default if isinstance(param.default, str) else None)


def _engine_options(func: F) -> F:
    """--database-url, --redis-url and --queue, each with its environment variable."""
    func = click.option(
        "--queue",
        "queue_name",
        callback=_stripped,
        envvar="WORKFLOW_ENGINE_QUEUE",
        show_envvar=True,
        default=config.DEFAULT_QUEUE,
        show_default=True,
        help="RQ queue name.",
    )(func)
    func = click.option(
        "--redis-url",
        callback=_stripped,
        envvar=["WORKFLOW_ENGINE_REDIS_URL", "REDIS_URL"],
        show_envvar=True,
        default=config.DEFAULT_REDIS_URL,
        show_default=True,
        help="Redis URL (env: WORKFLOW_ENGINE_REDIS_URL, then REDIS_URL).",
    )(func)
    func = click.option(
        "--database-url",
        callback=_stripped,
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
        type=_Seconds(min=0, min_open=True, max=config.MAX_SECONDS),
        envvar="WORKFLOW_ENGINE_STALE_AFTER",
        show_envvar=True,
        default=config.DEFAULT_STALE_AFTER,
        show_default=True,
        help="Seconds without a heartbeat before a running workflow counts as lost.",
    )(func)
    func = click.option(
        "--heartbeat-interval",
        type=_Seconds(min=0, min_open=True, max=config.MAX_SECONDS),
        envvar="WORKFLOW_ENGINE_HEARTBEAT_INTERVAL",
        show_envvar=True,
        default=config.DEFAULT_HEARTBEAT_INTERVAL,
        show_default=True,
        help="Seconds between a running workflow's heartbeats.",
    )(func)
    return func


def _metrics_options(func: F) -> F:
    func = click.option(
        "--metrics-host",
        envvar="WORKFLOW_ENGINE_METRICS_HOST",
        show_envvar=True,
        default="0.0.0.0",
        show_default=True,
        help="Address the metrics server listens on.",
    )(func)
    func = click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        envvar="WORKFLOW_ENGINE_METRICS_PORT",
        show_envvar=True,
        default=None,
        help="Serve Prometheus metrics on this port at /metrics (needs the [metrics] extra).",
    )(func)
    return func


class _Seconds(click.FloatRange):
    """A finite number of seconds within bounds: NaN and infinity would crash a sleep or a timer.
    ``smallest``: the least value other than 0, so that a pause cannot become a busy loop."""

    def __init__(self, *, min: float, max: float, min_open: bool = False, smallest: float = 0.0) -> None:
        super().__init__(min=min, max=max, min_open=min_open)
        self.smallest = smallest

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        if 0 < seconds < self.smallest:
            self.fail(f"{seconds:g} is less than {self.smallest:g} seconds", param, ctx)
        return seconds


class _Fraction(click.FloatRange):
    """A share from 0 to 1: NaN compares false with both bounds, so FloatRange lets it through."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        share = super().convert(value, param, ctx)
        if math.isnan(share):
            self.fail(f"{value!r} is not a number", param, ctx)
        return share


#: A day: the longest pause between reconcile passes that makes sense.
_DAY = 86_400.0
#: Ten years: the longest window or age a health check takes.
_DECADE = 10 * 365 * _DAY


def _json_option(what: str) -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON (see docs/cli.md).")


def _errors(func: F) -> F:
    """Turn a WorkflowEngineError into a one-line message and exit code 1, never a traceback: ``Error:
    …``, or with ``--log-format json`` an ERROR record, so that stderr stays one JSON object a line
    (a service's journal, read with ``jq``)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except WorkflowEngineError as exc:
            message = display.printable(str(exc), lines=True)
            if _json_logs() and log.isEnabledFor(logging.ERROR):  # else it would print nothing
                log.error("%s", message)
                raise SystemExit(1) from exc
            raise click.ClickException(message) from exc

    return wrapper  # type: ignore[return-value]


def _json_logs() -> bool:
    """True under ``--log-format json``: what the command writes on stderr must be log records."""
    context = click.get_current_context(silent=True)
    return context is not None and context.find_root().params.get("log_format") == "json"


def _make_engine(*, create: bool = False, sends: bool = False, **options: Any) -> WorkflowEngine:
    """The engine the options describe. Unless ``create``, a SQLite file must exist already: a
    mistyped path would otherwise become a new, empty database that shows no workflows; and the
    database must hold our tables: the command does not create them in another database that a
    mistyped URL names (``migrate`` does create them).
    ``sends``: the command puts jobs on Redis for workers, which a ``fakeredis://`` URL, a Redis
    inside this one process, would keep from every worker: it says so on stderr."""
    url = options.get("database_url")
    parsed = parse_database_url(url) if url else None
    if (
        parsed
        and parsed.backend == "sqlite"
        and parsed.target != ":memory:"
        and not os.path.exists(parsed.target)
    ):
        where = os.path.abspath(parsed.target)
        if not create:
            raise ConfigurationError(
                f"no database file at {where}: check --database-url or "
                "WORKFLOW_ENGINE_DATABASE_URL (`workflow-engine migrate` creates a new one)"
            )
        log.warning(
            "no database file at %s yet: creating an empty one (is this the web process's URL?)", where
        )
    if not create:
        options["store"] = open_store(url or config.DEFAULT_DATABASE_URL, create=False)
    engine = WorkflowEngine(**{k: v for k, v in options.items() if v is not None})
    if sends and engine.transport.in_process:
        log.warning(
            "--redis-url fakeredis:// is a Redis inside this command alone, gone when it exits: no "
            "other process sees the jobs put there, nor this one theirs; use the URL your workers "
            "use (reconcile, run against it, delivers the workflows this leaves queued)"
        )
    return engine


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


class _Main(click.Group):
    """The command group; before any option reads its environment variable, each of ours (and
    ``REDIS_URL``) loses the whitespace around its value (a CRLF ``.env`` file's ``\\r``) and, if
    nothing is left, counts as unset, as ``WorkflowEngine.from_env`` reads them."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        saved = {n: v for n, v in os.environ.items() if n.startswith("WORKFLOW_ENGINE_") or n == "REDIS_URL"}
        for name, value in saved.items():
            if value.strip():
                os.environ[name] = value.strip()
            else:
                del os.environ[name]
        try:
            return super().main(*args, **kwargs)
        finally:  # as it was, for a caller in the same process (a test's CliRunner, say)
            os.environ.update(saved)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="workflow_engine")
@click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    envvar="WORKFLOW_ENGINE_LOG_FORMAT",
    show_envvar=True,
    default="text",
    show_default=True,
    help="Logs on stderr as text, or as one JSON object a line (with workflow_id, workflow_type_id, "
    "attempt).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    envvar="WORKFLOW_ENGINE_LOG_LEVEL",
    show_envvar=True,
    default="INFO",
    show_default=True,
    help="The least severe log records shown.",
)
def main(log_format: str, log_level: str) -> None:
    """Durable background workflows on RQ.

    \b
    Example:
      export WORKFLOW_ENGINE_DATABASE_URL=sqlite:///workflows.db
      workflow-engine list --status failed
      workflow-engine --log-format json worker --metrics-port 9108
    """
    logs.configure(log_format, log_level)


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

    if database.strip() == ":memory:" or not database.strip():
        raise ConfigurationError(
            f"--database must name a file, got {database!r}: the other commands read the demo's "
            "workflows from it"
        )
    engine_log = logging.getLogger("workflow_engine")
    level = engine_log.level
    engine_log.setLevel(logging.ERROR)  # the demo prints its own account of what happened
    try:
        engine = WorkflowEngine(
            database_url=f"sqlite:///{database}", redis_url="fakeredis://", is_async=False
        )
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
        path = os.path.abspath(database)
        click.echo(f"database: {path} (in-process queue)\n")
        click.echo(f"{'id':32}  {'type':16}  {'status':9}  {'attempts':8}  result / error")
        for wid in ids:
            wf = engine.get_workflow(wid)
            outcome = json.dumps(wf.result) if wf.status.value == "completed" else wf.error
            click.echo(
                f"{wf.id:32}  {wf.workflow_type_id:16}  {wf.status.value:9}  {wf.attempts:<8}  {outcome}"
            )
        click.echo("\nEvents of the retried workflow:")
        for ev in engine.get_events(ids[1]):
            click.echo(
                f"  {ev.at:%H:%M:%S.%f}  {ev.from_status or '-':>9} -> {ev.to_status:9}  {ev.detail or ''}"
            )
        engine.close()
        # The other commands default to workflows.db: say how to point them at this file.
        url = shlex.quote(f"sqlite:///{path}")
        click.echo("\nLook at them with the other commands:")
        for command in ("list", f"show {ids[1]}", "stats"):
            click.echo(f"  workflow-engine {command} --database-url {url}")
    finally:
        engine_log.setLevel(level)


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
@click.option(
    "--every",
    type=_Seconds(min=0, min_open=True, max=_DAY, smallest=0.1),
    default=None,
    help="Run forever, every SECONDS (0.1 to a day); without it, run once.",
)
@_metrics_options
@_errors
def reconcile(every: float | None, metrics_port: int | None, metrics_host: str, **options: Any) -> None:
    """Recover stale running workflows, redeliver queued ones Redis forgot, deliver due retries.

    Prints each pass's report as one line of JSON. With --metrics-port it also serves
    the metrics, so that the gauges (live workers included) outlive every worker.

    \b
    Example:
      workflow-engine reconcile --every 10 --metrics-port 9100
    """
    source = click.get_current_context().get_parameter_source("metrics_port")
    if every is None and source is click.core.ParameterSource.ENVIRONMENT:
        # WORKFLOW_ENGINE_METRICS_PORT is the reconcile service's, from an env file shared with an
        # operator's shell: a one-off pass, gone in a moment, would only find its port taken.
        metrics_port = None
    with ExitStack() as stack:
        if metrics_port is not None:
            _require_metrics()  # before anything is created: a missing extra changes nothing
        # A reconcile service (--every) may start before the web process has created the file.
        engine = _make_engine(create=every is not None, sends=True, **options)
        if metrics_port is not None:
            _serve_metrics(stack, engine, metrics_port, metrics_host, forking=False)
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
        except WorkflowEngineError as exc:  # the database or Redis is down: one line, as `reconcile --every`
            log.error("reconcile failed: %s; trying again in %s s", exc, every)
        except Exception:
            log.exception("reconcile failed; trying again in %s s", every)


def _require_metrics() -> None:
    """MissingDependency now if the [metrics] extra is not installed."""
    from . import metrics

    metrics._require()


def _serve_metrics(stack: ExitStack, engine: WorkflowEngine, port: int, host: str, *, forking: bool) -> None:
    """Count the status changes this process makes, and serve the metrics on ``port``.

    For a forking worker (``forking``), this must run before the first fork and before any
    metric exists: it turns on prometheus_client's multiprocess mode, in
    ``PROMETHEUS_MULTIPROC_DIR`` when that is set, else in a new temporary directory
    removed when the worker stops, so that counts made in work-horses are kept.
    """
    from . import metrics

    path = metrics.multiprocess_dir()
    if path is not None and not os.path.isdir(path):
        raise ConfigurationError(f"{metrics.MULTIPROC_ENV} {path!r} is not a directory")
    if forking:
        if path is None:
            path = metrics.make_temp_dir()  # and removes those of killed workers
            stack.callback(shutil.rmtree, path, ignore_errors=True)
        metrics.enable_multiprocess(path)
    metrics.instrument(engine)
    try:
        server = metrics.MetricsServer(engine, port=port, host=host)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    stack.callback(server.close)
    where = f"counters in {path}" if path else "counters in this process"
    log.info("serving /metrics on http://%s:%d/metrics (%s)", host, server.port, where)


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
    help="fork: rq.Worker, a work-horse per job; simple: rq.SimpleWorker, jobs in this process "
    "(each with one-round-trip heartbeats: workflow_engine.workers).",
)
@click.option(
    "--reconcile-every",
    type=_Seconds(min=0, max=_DAY, smallest=0.1),
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
@click.option(
    "--preload",
    "preloads",
    multiple=True,
    metavar="MODULE",
    help="Import this module (or handler path) before forking, so that work-horses find the app loaded "
    "(repeatable, or comma-separated; default: $WORKFLOW_ENGINE_PRELOAD).",
)
@click.option(
    "--app",
    envvar="WORKFLOW_ENGINE_APP",
    show_envvar=True,
    default=None,
    metavar="MODULE:ENGINE",
    help="The app's engine (myapp.engine:engine): the worker shares its handler registrations, so that "
    "handlers can create and enqueue workflows of those types through current_engine().",
)
@_metrics_options
@_errors
def worker(
    burst: bool,
    worker_class: str,
    reconcile_every: float,
    name: str | None,
    paths: tuple[str, ...],
    preloads: tuple[str, ...],
    app: str | None,
    metrics_port: int | None,
    metrics_host: str,
    **options: Any,
) -> None:
    """Run an RQ worker on the engine's queue that also reconciles periodically.

    With --metrics-port it serves Prometheus metrics, counted in every work-horse
    (prometheus_client's multiprocess mode; see docs/operations.md).

    \b
    Example:
      WORKFLOW_ENGINE_DATABASE_URL=sqlite:////srv/app/workflows.db workflow-engine worker
      workflow-engine worker --path /srv/app --preload myapp.workflows
      workflow-engine worker --path /srv/app --app myapp.engine:engine
      workflow-engine worker --metrics-port 9108
    """
    from .execution import preload_modules, set_worker_engine, take_app_handlers
    from .workers import SimpleWorkflowWorker, WorkflowWorker

    for path in reversed(paths):
        sys.path.insert(0, os.path.abspath(path))
    with ExitStack() as stack:
        if metrics_port is not None:
            _require_metrics()  # before anything is created: a missing extra changes nothing
        engine = _make_engine(create=True, sends=True, **options)  # a worker may start before the web process
        # As `rq worker -c workflow_engine.rq_preload` does (None: $WORKFLOW_ENGINE_PRELOAD), and before
        # the metrics and the reconcile thread: a wrong name stops the worker here, at once.
        preload_modules(config.split_names(" ".join(preloads)) or None)
        take_app_handlers(engine, app or "")  # click has read WORKFLOW_ENGINE_APP already
        if metrics_port is not None:
            _serve_metrics(stack, engine, metrics_port, metrics_host, forking=True)
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
        cls = SimpleWorkflowWorker if worker_class == "simple" else WorkflowWorker
        try:
            # RQ raises its connection's socket timeout to its dequeue timeout plus 10 s (415 s):
            # on a connection of its own, so that the reconcile thread keeps the engine's 5 s.
            rq_connection = engine.redis if engine.transport.in_process else connect(engine.redis_url)
            rq_worker = cls([engine.queue_name], connection=rq_connection, name=name)
            rq_worker.work(burst=burst, with_scheduler=False)
        except redis.exceptions.RedisError as exc:  # RQ's own calls: registering, dequeueing
            raise QueueUnavailable(f"Redis is unavailable: {exc}") from exc
        except ValueError as exc:
            if name is None or "active worker named" not in str(exc):
                raise
            raise ConfigurationError(
                f"an RQ worker named {name!r} is registered already: another one is running, or one "
                "was killed less than RQ's worker TTL (about 7 minutes) ago; choose another --name"
            ) from None
        finally:
            stop.set()
            if burst and reconcile_every > 0:
                engine.reconcile()


@main.command(name="list")
@_engine_options
@click.option(
    "--status",
    type=click.Choice([status.value for status in WorkflowStatus], case_sensitive=False),
    default=None,
    help="Only this status.",
)
@click.option("--type", "workflow_type_id", default=None, help="Only this workflow type.")
@click.option("--agent", "created_by_agent", default=None, help="Only workflows created by this agent.")
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=50,
    show_default=True,
    help="At most this many, newest first.",
)
@_json_option("an array of workflows")
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
        _echo_json([wf.to_dict() for wf in rows])
        return
    display.workflows(rows)


@main.command()
@_engine_options
@click.argument("workflow_id")
@_json_option("{workflow, events}")
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
        _echo_json({"workflow": wf.to_dict(), "events": [e.to_dict() for e in events]})
        return
    display.workflow(wf, events)


@main.command()
@_engine_options
@_json_option("engine.stats()")
@_errors
def stats(as_json: bool, **options: Any) -> None:
    """Counts by status and type, success rates, durations, queue depth, throughput, savings.

    \b
    Example:
      workflow-engine stats
      workflow-engine stats --json | jq .by_status.failed
    """
    engine = _make_engine(**options)
    report = engine.stats()
    if as_json:
        _echo_json(report)
        return
    display.stats(report)


@main.command(name="health")
@_engine_options
@click.option(
    "--max-queued-age",
    type=_Seconds(min=0, max=_DECADE),
    default=health.DEFAULT_MAX_QUEUED_AGE,
    show_default=True,
    help="Fail when the oldest queued workflow has waited longer, in seconds.",
)
@click.option(
    "--max-failure-rate",
    type=_Fraction(0, 1),
    default=health.DEFAULT_MAX_FAILURE_RATE,
    show_default=True,
    help="Fail when a larger share (0 to 1) of recent finished workflows failed.",
)
@click.option(
    "--window",
    type=_Seconds(min=1, max=_DECADE),
    default=health.DEFAULT_WINDOW,
    show_default=True,
    help="Seconds back that count as recent, for the failure rate.",
)
@click.option(
    "--min-finished",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Judge the failure rate only once this many recent workflows finished.",
)
@click.option(
    "--max-stale-age",
    type=_Seconds(min=0, max=_DECADE),
    default=health.DEFAULT_MAX_STALE_AGE,
    show_default=True,
    help="Fail when a running workflow's lease expired longer ago, in seconds (reconcile is not running).",
)
@click.option(
    "--timeout",
    type=_Seconds(min=0, max=_DECADE, min_open=True),
    default=10.0,
    show_default=True,
    help="Fail the database's or Redis's checks when it has not answered within this many seconds.",
)
@click.option(
    "--check",
    "only",
    type=click.Choice(health.CHECKS),
    multiple=True,
    help="Run only this check (repeat for several); by default, every one.",
)
@_json_option("{healthy, failing, checks}")
@_errors
def health_(
    max_queued_age: float,
    max_failure_rate: float,
    window: float,
    min_finished: int,
    max_stale_age: float,
    timeout: float,
    only: tuple[str, ...],
    as_json: bool,
    **options: Any,
) -> None:
    """Check the database, Redis, live workers, queue age, stale running workflows and failure
    rate; exit 1 if any fails.

    One line per check; a failing one names the figure behind it.

    \b
    Examples:
      workflow-engine health --max-queued-age 120 || page-the-on-call
      workflow-engine health --check database --check redis    # a web pod's readiness
    """
    chosen = only or None
    try:
        engine = _make_engine(**options)
    except (ConfigurationError, InvalidInput) as exc:  # still the report a monitor parses, failing
        report = health.unbuilt(exc, chosen)
    else:
        report = health.check_health(
            engine,
            max_queued_age=max_queued_age,
            max_failure_rate=max_failure_rate,
            window=window,
            min_finished=min_finished,
            max_stale_age=max_stale_age,
            only=chosen,
            timeout=timeout,
        )
    if as_json:
        _echo_json(report.to_dict())
    else:
        display.health(report)
    if not report.healthy:
        sys.exit(1)


def _action_command(
    name: str, doc: str, action: Callable[[WorkflowEngine, str], Any], *, sends: bool
) -> None:
    @main.command(name=name, help=doc)
    @_engine_options
    @click.argument("workflow_id")
    @_json_option("the workflow")
    @_errors
    def command(workflow_id: str, as_json: bool, **options: Any) -> None:
        engine = _make_engine(sends=sends, **options)
        _undelivered_ok(lambda: action(engine, workflow_id))
        _print_outcome(engine.get_workflow(workflow_id), as_json)


def _undelivered_ok(change: Callable[[], Any]) -> None:
    """Make ``change`` (an enqueue or a requeue); if it is recorded but Redis is down, do not fail:
    the workflow is ``queued`` in the database, and reconcile delivers it. The engine has logged
    a warning that says so (``… WARNING workflow_engine: N workflow(s) recorded queued, but not
    put on the queue: …`` on stderr, or a JSON record)."""
    try:
        change()
    except QueueUnavailable:
        pass


def _print_outcome(wf: Workflow, as_json: bool) -> None:
    if as_json:
        _echo_json(wf.to_dict())
    else:
        click.echo(f"{wf.id}: {wf.status.value}")


_action_command(
    "enqueue",
    "Queue a pending workflow for execution.\n\n\b\nExample:\n  workflow-engine enqueue 3f2a…",
    lambda e, w: e.enqueue_execution(w),
    sends=True,
)
_action_command(
    "cancel",
    "Cancel a workflow (a running one is asked to stop).\n\n\b\nExample:\n  workflow-engine cancel 3f2a…",
    lambda e, w: e.cancel(w),
    sends=False,  # it only sends a stop command to a running workflow's worker
)


@main.command()
@_engine_options
@click.argument("workflow_id", required=False)
@click.option("--all-failed", is_flag=True, help="Requeue every failed workflow (of --type, if given).")
@click.option("--type", "workflow_type_id", default=None, help="With --all-failed: only this workflow type.")
@_json_option("the workflow, or {requeued, undelivered, errors} with --all-failed,")
@_errors
def requeue(
    workflow_id: str | None, all_failed: bool, workflow_type_id: str | None, as_json: bool, **options: Any
) -> None:
    """Run a failed or cancelled workflow again, or every failed one, with a fresh retry budget.

    With --all-failed it shows a progress bar on a terminal, and exits 1 if any
    workflow could not be requeued.

    \b
    Example:
      workflow-engine requeue 3f2a…
      workflow-engine requeue --all-failed --type weekly_report
    """
    if workflow_id is not None and all_failed:
        raise click.UsageError("give a WORKFLOW_ID or --all-failed, not both")
    if workflow_id is None and not all_failed:
        raise click.UsageError("give a WORKFLOW_ID, or --all-failed for every failed workflow")
    if workflow_type_id is not None and not all_failed:
        raise click.UsageError("--type goes with --all-failed")
    engine = _make_engine(sends=True, **options)
    if workflow_id is not None:
        _undelivered_ok(lambda: engine.requeue(workflow_id))
        _print_outcome(engine.get_workflow(workflow_id), as_json)
        return
    ids = _failed_ids(engine, workflow_type_id)
    requeued: list[str] = []
    undelivered: list[str] = []
    errors: dict[str, str] = {}
    for wid in display.progress(ids, "requeueing"):
        try:
            engine.requeue(wid)
        except QueueUnavailable:  # requeued in the database; reconcile delivers it once Redis is back
            requeued.append(wid)
            undelivered.append(wid)
        except WorkflowEngineError as exc:
            errors[wid] = str(exc)
        else:
            requeued.append(wid)
    if as_json:
        _echo_json({"requeued": requeued, "undelivered": undelivered, "errors": errors})
    else:
        for wid, message in errors.items():
            click.echo(f"{wid}: not requeued: {display.printable(message)}")
        click.echo(f"requeued {len(requeued)} of {len(ids)} failed workflows")
        if undelivered:
            click.echo(
                f"{len(undelivered)} of them are queued in the database but not yet in Redis, which is "
                "unavailable; reconcile delivers them once it is back"
            )
    if errors:
        sys.exit(1)


def _failed_ids(engine: WorkflowEngine, workflow_type_id: str | None) -> list[str]:
    """Every failed workflow's id, newest first, read before any is requeued (one may fail again)."""
    ids: list[str] = []
    before: Workflow | None = None
    while True:
        page = engine.list_workflows(
            limit=_PAGE, status="failed", workflow_type_id=workflow_type_id, before=before
        )
        ids.extend(wf.id for wf in page)
        if len(page) < _PAGE:
            return ids
        before = page[-1]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
