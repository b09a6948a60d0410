"""Prometheus metrics (``pip install ".[metrics]"`` in a checkout).

Two sources, each used where it is exact:

- **Events** (counters and histograms): an engine listener counts every status change
  the engine makes in its process. A forking worker changes statuses in work-horses
  that exit after one job, so the worker runs prometheus_client's *multiprocess mode*:
  every process writes its counts into files under ``PROMETHEUS_MULTIPROC_DIR``, and a
  scrape sums the files, those of exited work-horses included.
- **State** (gauges): a collector reads the database (and Redis) at scrape time, so
  ``workflow_engine_workflows{status}``, the queue depth and the oldest queued age are
  true whichever process changed what, stock ``rq worker`` processes included.

``workflow-engine worker --metrics-port 9108`` serves both; a web process mounts the
same with :func:`make_wsgi_app`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from .analytics import queued_age, status_totals
from .errors import ConfigurationError, MissingDependency
from .health import read_once
from .models import Workflow, utcnow
from .status import TERMINAL, WorkflowStatus

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

    from .engine import WorkflowEngine

log = logging.getLogger("workflow_engine.metrics")
S = WorkflowStatus

#: The environment variable that turns prometheus_client's multiprocess mode on.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds, for workflows that take from a fraction of a second to an hour.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Seconds between a workflow becoming due in the queue and a worker claiming it.
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: The most workflow types without a handler (any caller of an app's create endpoint may name
#: one) that a process labels series with; each is some 30 series, kept for the process's life.
#: Those past it are counted together as :data:`OTHER_TYPES`. A type with a handler, which some
#: engine registered, always has its own; so do, within a budget of the same size of their own,
#: the types a scrape finds in the database (see :meth:`Instruments.seed`).
MAX_TYPE_LABELS = 200
OTHER_TYPES = "_other_types"

#: Held around every update, and taken before a fork (see below).
_LOCK = threading.Lock()
if hasattr(os, "register_at_fork"):  # pragma: no branch
    # prometheus_client's multiprocess values share one lock; a work-horse forked while another
    # thread (the reconcile thread) held it would deadlock on its first update. Our updates all
    # run under _LOCK, so holding _LOCK across fork() means that lock is free in the child.
    os.register_at_fork(before=_LOCK.acquire, after_in_parent=_LOCK.release, after_in_child=_LOCK.release)


def _require() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise MissingDependency(
            'metrics need prometheus_client, the metrics extra: pip install "prometheus_client>=0.20" '
            '(or pip install ".[metrics]" in a checkout of workflow_engine)'
        ) from exc


class Instruments:
    """The counters and histograms, fed by :meth:`record` (an engine listener).

    Not registered in any registry: :func:`make_registry` exposes them, or, in
    multiprocess mode, the files they write.
    """

    def __init__(self) -> None:
        _require()
        from prometheus_client import Counter, Histogram

        self.created = Counter(
            "workflow_engine_workflows_created", "Workflows created.", ["type"], registry=None
        )
        self.finished = Counter(
            "workflow_engine_workflows_finished",
            "Workflows that reached a terminal status (completed, failed, cancelled, rejected).",
            ["type", "status"],
            registry=None,
        )
        self.attempts_failed = Counter(
            "workflow_engine_attempts_failed",
            "Attempts that failed: retried, or the workflow failed (a lost worker counts).",
            ["type"],
            registry=None,
        )
        self.duration = Histogram(
            "workflow_engine_workflow_duration_seconds",
            "From the first attempt's start to the end, of workflows that completed or failed.",
            ["type"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.queue_wait = Histogram(
            "workflow_engine_queue_wait_seconds",
            "From a workflow being queued (or its retry coming due) to a worker claiming it.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=None,
        )
        #: Types whose series exist (at zero until counted): see :meth:`_series_for`.
        self._types: set[str] = set()
        #: How many of them no engine had registered when it was instrumented; past
        #: MAX_TYPE_LABELS, new ones are counted as OTHER_TYPES (said once, in the log).
        self._unregistered = 0
        self._capped = False
        #: How many types :meth:`seed` gave series of their own, within MAX_TYPE_LABELS.
        self._seeded = 0

    def collectors(self) -> list[Collector]:
        return [self.created, self.finished, self.attempts_failed, self.duration, self.queue_wait]

    def instrument(self, engine: WorkflowEngine) -> None:
        """Count the status changes ``engine`` makes (once, however often this is called)."""
        # By the listener, not the engine: current_engine() hands a handler a copy of its
        # worker's engine that shares its listeners.
        if self.record in engine._listeners:
            return
        with _LOCK:
            for kind in engine.handler_types():
                self._series_for(kind)
        engine.add_listener(self.record)

    def record(self, wf: Workflow, from_status: WorkflowStatus | None) -> None:
        """Count one status change: ``from_status`` (None for a new workflow) to ``wf.status``."""
        kind, to = wf.workflow_type_id, wf.status
        wait = _queue_wait(wf) if from_status is S.QUEUED and to is S.RUNNING else None
        with _LOCK:
            # A workflow with a handler is of a type some engine registered: a bounded set, whoever
            # created it. One without may be of any type a caller named: those are capped.
            capped = wf.handler is None
            if kind not in self._types and capped and self._unregistered >= MAX_TYPE_LABELS:
                if not self._capped:
                    self._capped = True
                    log.warning(
                        "more than %d workflow types: the status changes of those beyond them are "
                        "counted under type=%r",
                        MAX_TYPE_LABELS,
                        OTHER_TYPES,
                    )
                kind = OTHER_TYPES
            if kind not in self._types:
                if capped:
                    self._unregistered += 1
                self._series_for(kind)
            if from_status is None:
                self.created.labels(kind).inc()
            if from_status is S.RUNNING and to in (S.QUEUED, S.FAILED):
                self.attempts_failed.labels(kind).inc()
            if to in TERMINAL and from_status is not to:
                self.finished.labels(kind, to.value).inc()
                if to in (S.COMPLETED, S.FAILED) and wf.started_at and wf.finished_at:
                    seconds = (wf.finished_at - wf.started_at).total_seconds()
                    self.duration.labels(kind).observe(max(seconds, 0.0))
            if wait is not None:
                self.queue_wait.observe(wait)

    def seed(self, kinds: Iterable[str]) -> None:
        """Create the series of each of ``kinds`` at zero, as a first status change would: those
        found in the database at a scrape, at most MAX_TYPE_LABELS of them (a budget of their
        own, so that types a caller made up never keep a type that runs from its own series)."""
        with _LOCK:
            for kind in sorted(kinds):
                if kind not in self._types and self._seeded < MAX_TYPE_LABELS:
                    self._seeded += 1
                    self._series_for(kind)

    def _series_for(self, kind: str) -> None:
        """Create every series of a workflow type at zero, once (under ``_LOCK``): a series that
        appears only with its first count hides that count from ``rate()`` and ``increase()``,
        so the first failure of a type would never show on a dashboard or fire an alert."""
        if kind in self._types:
            return
        self._types.add(kind)
        self.created.labels(kind)
        self.attempts_failed.labels(kind)
        self.duration.labels(kind)
        for status in sorted(TERMINAL, key=lambda s: s.value):
            self.finished.labels(kind, status.value)


def _queue_wait(claimed: Workflow) -> float | None:
    """Seconds from the workflow becoming queued, or its retry coming due, to its claim: its
    ``queued_at``, which a redelivery (Redis lost the job, reconcile sent it again) leaves as it
    was, so that the whole wait is seen, as ``stats()`` sees it."""
    start = claimed.queued_at
    if start is None:
        return None
    if claimed.run_after is not None and claimed.run_after > start:  # as stats' oldest queued
        start = claimed.run_after
    return max((claimed.updated_at - start).total_seconds(), 0.0)


_DEFAULT: Instruments | None = None
_DEFAULT_LOCK = threading.Lock()


def default_instruments() -> Instruments:
    """This process's instruments, created on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Instruments()
        return _DEFAULT


def instrument(engine: WorkflowEngine, instruments: Instruments | None = None) -> Instruments:
    """Count the status changes ``engine`` makes in this process; return the instruments."""
    chosen = instruments or default_instruments()
    chosen.instrument(engine)
    return chosen


# -- multiprocess mode ---------------------------------------------------------------
def multiprocess_dir() -> str | None:
    """The multiprocess directory, when ``PROMETHEUS_MULTIPROC_DIR`` is set."""
    return os.environ.get(MULTIPROC_ENV) or None


def enable_multiprocess(path: str) -> None:
    """Make this process, and the work-horses it forks, count into files under ``path``.

    Call it before the first instrument is created (``workflow-engine worker`` does).
    Each process writes its own files; the work-horses of this process take turns on
    one set of files (``<pid>_horse``), since a forking worker runs one at a time, so
    the directory does not grow by a file per job.
    """
    _require()
    if _DEFAULT is not None:
        raise ConfigurationError(
            "enable_multiprocess() must be called before the first instrument is created"
        )
    if not os.path.isdir(path):
        raise ConfigurationError(f"{MULTIPROC_ENV} {path!r} is not a directory")
    from prometheus_client import values

    os.environ[MULTIPROC_ENV] = path
    parent = os.getpid()

    def identifier() -> str:
        pid = os.getpid()
        if pid == parent:
            return str(pid)
        # A work-horse of this worker; anything it forks in turn gets its own files.
        return f"{parent}_horse" if os.getppid() == parent else str(pid)

    values.ValueClass = values.MultiProcessValue(process_identifier=identifier)  # type: ignore[no-untyped-call]


#: ``workflow-engine worker``'s own multiprocess directories: ``<prefix><pid namespace>-<pid>-<random>``.
TEMP_DIR_PREFIX = "workflow-engine-metrics-"


def _pid_namespace() -> str | None:
    """This process's PID namespace (Linux), or None where it cannot be told."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None


#: Held (flock) by a worker for its life, and by its work-horses, which inherit the open file.
_LOCK_NAME = "worker.lock"
_held_locks: list[int] = []  # this process's own directory's lock: open until the process ends


def make_temp_dir() -> str:
    """A new multiprocess directory for a worker, after removing those of dead workers.

    A worker removes its own directory when it stops, but not when it is killed with
    ``SIGKILL``; its files then stayed in the temporary directory for good. A directory is
    removed only when its name says it belongs to this user's process in this PID namespace,
    that process is gone, and nothing holds its lock: a work-horse outlives its worker's
    ``SIGKILL`` (it has a process group of its own) and keeps counting into the directory,
    holding the lock it inherited. A container sharing ``/tmp`` with its own PID namespace, or
    a directory named in an older release's way, is left alone.
    """
    import fcntl
    import re
    import shutil
    import tempfile

    namespace = _pid_namespace()
    if namespace is None:  # the PIDs in names could not be checked
        return tempfile.mkdtemp(prefix=TEMP_DIR_PREFIX)
    pattern = re.compile(re.escape(f"{TEMP_DIR_PREFIX}{namespace}-") + r"(\d+)-")
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        names = []
    for name in names:
        found = pattern.match(name)
        if found is None or _alive(int(found.group(1))):
            continue
        path = os.path.join(root, name)
        try:
            if os.lstat(path).st_uid != os.getuid():  # never another user's
                continue
            fd = _open_lock(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a work-horse still holds it: OSError
                shutil.rmtree(path)
            finally:
                os.close(fd)
            log.info("removed the metrics directory %s of a worker that is gone", path)
        except OSError:
            pass  # still in use, removed by another worker starting now, or not ours to remove
    path = tempfile.mkdtemp(prefix=f"{TEMP_DIR_PREFIX}{namespace}-{os.getpid()}-")
    fd = _open_lock(path)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _held_locks.append(fd)
    return path


def _open_lock(path: str) -> int:
    """The lock file of the multiprocess directory ``path``, made if missing."""
    return os.open(os.path.join(path, _LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process, alive
        return True
    return True


# -- exposition ----------------------------------------------------------------------
#: Seconds a scrape waits for the database and for Redis before it reports them down: well inside
#: Prometheus's default ``scrape_timeout`` (10 s), so that a scrape with a dependency down or hung
#: still arrives, with its ``*_up`` 0 (a store call alone may take twice its 5 s pool timeout).
SCRAPE_BUDGET = 4.0


class DatabaseCollector:
    """Gauges read from the database and Redis at scrape time, so they hold across processes.

    The two are read side by side, each in a thread of its own (health.read_once), within
    :data:`SCRAPE_BUDGET`. A read that outlasts it goes on, and the next scrape waits for that
    same read instead of starting another."""

    def __init__(self, engine: WorkflowEngine, instruments: Instruments) -> None:
        self.engine = engine
        self.instruments = instruments

    def describe(self) -> list[Metric]:
        return []  # registering must not touch the database

    def _read_database(self) -> tuple[dict[str, int], float, int, set[str]]:
        """Workflows by status, the oldest queued one's age, the stale running ones, and every
        workflow type in the database."""
        now = utcnow()
        rows = self.engine.store.gauges(now=now)
        oldest = queued_age(rows.oldest_queued, now) or 0.0
        types = {kind for kind, _, _ in rows.counts}
        return status_totals(rows.counts), oldest, rows.stale, types

    def _read_redis(self) -> tuple[int, int]:
        """The queue's depth and the live workers on it."""
        from rq import Worker

        engine = self.engine
        return engine.transport.depth(), len(Worker.all(queue=engine.queue))

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        # Each in a daemon thread, unless the engine's last one still runs: then that one.
        database = read_once(self.engine, ("scrape-database",), self._read_database, SCRAPE_BUDGET)
        redis = read_once(self.engine, ("scrape-redis",), self._read_redis, SCRAPE_BUDGET)
        deadline = time.monotonic() + SCRAPE_BUDGET
        read = _within(database, deadline, "the database")
        yield gauge(
            "workflow_engine_database_up",
            "1 when this scrape could read the database, else 0.",
            int(bool(read)),
        )
        if read:
            by_status, oldest, stale, types = read
            # Every type's series at zero before its first count, in every process that serves
            # metrics: a worker's engine registers no handlers, so its first scrape finds them here.
            self.instruments.seed(types)
            workflows = GaugeMetricFamily(
                "workflow_engine_workflows", "Workflows in the database, by status.", labels=["status"]
            )
            for status, count in by_status.items():
                workflows.add_metric([status], count)
            yield workflows
            yield gauge(
                "workflow_engine_oldest_queued_age_seconds",
                "Age of the oldest queued workflow that is due (0 when none is queued).",
                oldest,
            )
            yield gauge(
                "workflow_engine_workflows_stale",
                "Running workflows whose lease expired: their worker stopped heartbeating.",
                stale,
            )
        queue = _within(redis, deadline, "Redis")
        yield gauge(
            "workflow_engine_redis_up", "1 when this scrape could reach Redis, else 0.", int(bool(queue))
        )
        if queue:
            depth, workers = queue
            yield gauge("workflow_engine_queue_depth", "Jobs waiting on the RQ queue.", depth)
            yield gauge("workflow_engine_workers", "Live RQ workers listening on the queue.", workers)


def _within(read: Future[Any], deadline: float, what: str) -> Any:
    """``read``'s result, or None (logged) if it failed or is not done by ``deadline``."""
    try:
        return read.result(timeout=max(deadline - time.monotonic(), 0.0))
    except FutureTimeout:
        log.warning("metrics: %s did not answer within %g s", what, SCRAPE_BUDGET)
    except Exception as exc:
        log.warning("metrics: cannot read %s: %s", what, exc)
    return None


def make_registry(engine: WorkflowEngine, instruments: Instruments | None = None) -> CollectorRegistry:
    """A registry with the counters (from the multiprocess files when in that mode) and the gauges."""
    _require()
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    chosen = instruments or default_instruments()
    # The gauges first: their read seeds every type's counters at zero (see Instruments.seed),
    # which the counters read after it then show in the same scrape.
    registry.register(DatabaseCollector(engine, chosen))
    path = multiprocess_dir()
    if path is not None and instruments is None:
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    else:
        for collector in chosen.collectors():
            registry.register(collector)
    return registry


def make_wsgi_app(engine: WorkflowEngine) -> WSGIApplication:
    """A WSGI app serving ``/metrics`` for ``engine``, to mount in a web process.

    It also counts the workflows this process creates and changes. Under a
    multi-process server (gunicorn), set ``PROMETHEUS_MULTIPROC_DIR`` for every
    process before it starts, as prometheus_client documents.
    """
    instrument(engine)
    from prometheus_client import make_wsgi_app as prometheus_app

    app: WSGIApplication = prometheus_app(make_registry(engine))
    return app


class MetricsServer:
    """``/metrics`` over HTTP in a background thread of this process."""

    def __init__(self, engine: WorkflowEngine, *, port: int, host: str = "0.0.0.0") -> None:
        _require()
        from prometheus_client import start_http_server

        server, thread = start_http_server(port, addr=host, registry=make_registry(engine))
        self._server: Any = server
        self._thread = thread
        self.port = int(server.server_port)
        # A forked work-horse must not hold the listening socket: orphaned by a killed worker, it
        # would keep the port, and the restarted worker could not serve its metrics.
        os.register_at_fork(after_in_child=server.socket.close)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
