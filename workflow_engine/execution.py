"""Running one attempt of a workflow inside a worker.

:func:`run_workflow` is the function every RQ job calls. It finds an engine
(the in-process one that enqueued it, the one ``workflow-engine worker``
set, or one built from the environment), claims the workflow with a
compare-and-set, runs the handler under its timeout while a heartbeat
thread stamps the database, and records the outcome.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from rq.job import get_current_job
from rq.timeouts import BaseDeathPenalty, BaseTimeoutException

from . import recovery
from .errors import ConfigurationError, HandlerTimeout, UnknownWorkflowType, WorkflowEngineError
from .handlers import HandlerFunc, describe, import_advice, traceback_text
from .models import Workflow, log_extra, to_json, utcnow
from .status import WorkflowStatus
from .stores.base import after_store_call, in_store_call
from .stores.urls import shown
from .transport import TIMEOUT_GRACE, Transport

if TYPE_CHECKING:
    from .config import Settings
    from .engine import WorkflowEngine

log = logging.getLogger("workflow_engine.execution")
S = WorkflowStatus

_worker_engine: WorkflowEngine | None = None
_worker_engine_pid = 0
#: The settings ``_worker_engine`` was built from ahead of its first job (prepare_worker_engine),
#: while it still lacks what that job gives it; None once it is complete, or given.
_prepared: Settings | None = None
#: ``_worker_engine`` once it is complete (given, or built and given the app's handlers), else None:
#: the one global a job reads without the lock, so that it never sees one half-way through a change.
_ready: WorkflowEngine | None = None
_engine_lock = threading.Lock()


def set_worker_engine(engine: WorkflowEngine | None) -> None:
    """Make ``engine`` the one that jobs in this process (and its forked work-horses) run with."""
    global _worker_engine, _worker_engine_pid, _prepared, _ready
    with _engine_lock:
        _ready = None
        _worker_engine, _worker_engine_pid = engine, os.getpid() if engine else 0
        _prepared = None
        _ready = engine


def prepare_worker_engine() -> None:
    """Build the worker engine from the environment now, ahead of its first job, if there is none.

    A plain forking ``rq worker`` calls this as it reads its first workflow job
    (``transport.Preload``), so that every work-horse inherits the engine instead of building it
    (in such a worker: 165 fewer pages copied a job, about 1 ms of CPU). Quietly: nothing is
    connected, imported or logged here. Whatever first asks for it (:func:`worker_engine`: each
    work-horse's job, or RQ's stopped-job callback in the worker itself) finishes it as it
    would have built it (the app's handlers, the log line), and builds another if the
    environment no longer says the same. A failure is left to that job, which reports it.
    Any process that reads a workflow job's meta (a dashboard's ``Job.fetch``) builds one too
    and keeps it: an object with no connection."""
    global _worker_engine, _worker_engine_pid, _prepared
    from .config import Settings
    from .engine import WorkflowEngine

    # Never waits: the lock's holder may be this very thread, building the engine, in an app whose
    # import reads a workflow job (Job.fetch); or another thread building it, which will do.
    if not _engine_lock.acquire(blocking=False):
        return
    try:
        if _worker_engine is not None:
            return
        try:
            settings = Settings.from_env()
            engine = WorkflowEngine.from_env()
        except Exception:
            return
        _worker_engine, _worker_engine_pid, _prepared = engine, os.getpid(), settings
    finally:
        _engine_lock.release()


def worker_engine(engine_key: str | None = None, *, strict: bool = False) -> WorkflowEngine:
    """The engine a job runs with: by key (in-process), the worker's, or one from the environment.

    Built from the environment, it shares the handlers of ``WORKFLOW_ENGINE_APP``'s engine; one
    that cannot be loaded raises ConfigurationError if ``strict`` (at a worker's start), else is
    logged and said again by each attempt that needs it (a job's own workflow does not)."""
    global _worker_engine, _worker_engine_pid, _prepared, _ready
    ready = _ready
    if engine_key is None and ready is not None:
        return ready  # every job but a worker's first: nothing to check, nothing to take
    from .config import Settings
    from .engine import _ENGINES, WorkflowEngine

    if engine_key is not None:
        found = _ENGINES.get(engine_key)
        if found is None:
            raise WorkflowEngineError(
                f"the in-process engine {engine_key!r} that enqueued this job no longer exists"
            )
        return found
    with _engine_lock:
        if _prepared is not None:  # built ahead by a parent: used if the environment still says the same
            try:
                same = Settings.from_env() == _prepared
            except ConfigurationError:
                same = False  # building it again says why
            if not same:
                _worker_engine = _prepared = None
        if _worker_engine is None or _prepared is not None:
            # A stock `rq worker`: the database comes from WORKFLOW_ENGINE_DATABASE_URL, the
            # handlers a job's own workflow needs from its row, and those its handler may create
            # workflows of from the app's engine that WORKFLOW_ENGINE_APP names, if it is set.
            built = _worker_engine is None
            engine = WorkflowEngine.from_env() if _worker_engine is None else _worker_engine
            try:
                take_app_handlers(engine)
            except ConfigurationError as exc:
                if strict:
                    if built:
                        engine.close()
                    raise
                # Only a handler that starts a workflow needs the app's handlers: every other job
                # runs, and that handler's attempt fails saying why.
                engine._app_error = str(exc)
                log.error("%s", exc)
            except BaseException:  # RQ's job timeout during the import: the next job tries again
                if built:
                    engine.close()
                raise
            _worker_engine, _worker_engine_pid, _prepared = engine, os.getpid(), None
            _ready = engine
            where = shown(_worker_engine.database_url)
            if os.environ.get("WORKFLOW_ENGINE_DATABASE_URL"):
                log.info("worker engine from the environment: %s", where)
            else:
                log.warning(
                    "WORKFLOW_ENGINE_DATABASE_URL is not set: this worker uses the default database, %s, "
                    "and cannot find workflows another process recorded elsewhere",
                    where,
                )
        return _worker_engine


def take_app_handlers(engine: WorkflowEngine, name: str | None = None) -> WorkflowEngine | None:
    """Make ``engine`` use the handlers of the app's engine that ``name`` names, and return that.

    ``name`` is ``package.module:attribute`` (None reads ``WORKFLOW_ENGINE_APP``; unset, nothing
    is done and None returned). A worker's engine comes from the environment and knows no
    handlers: a job's own workflow needs none (its row records its handler), but a handler that
    creates and enqueues workflows through :func:`current_engine` needs their types registered.
    ``engine`` shares the app engine's registrations, those made later included (a handler
    module that registers on the app's engine when it is imported); the database, Redis and
    queue stay the worker's own. Raises ConfigurationError if the module cannot be imported or
    the attribute is not a :class:`WorkflowEngine`.
    """
    from . import config
    from .engine import WorkflowEngine

    name = config.app_name() if name is None else name.strip()
    if not name:
        return None
    module_name, sep, attr = name.partition(":")
    if not module_name or not sep or not attr:
        raise ConfigurationError(
            f"the app's engine {name!r} must be named as 'package.module:engine' (WORKFLOW_ENGINE_APP, --app)"
        )
    cannot = f"cannot load the app's engine {name!r}"
    try:
        app: Any = importlib.import_module(module_name)
    except BaseTimeoutException:  # RQ's job timeout, during a slow import: that attempt's, not the app's
        raise
    except (Exception, SystemExit) as exc:  # SystemExit: a settings check's sys.exit("… is not set")
        raise ConfigurationError(f"{cannot}: {describe(exc)}{import_advice(module_name, exc)}") from exc
    try:
        for part in attr.split("."):
            app = getattr(app, part)
    except AttributeError:
        raise ConfigurationError(f"{cannot}: module {module_name!r} has no {attr!r}") from None
    if not isinstance(app, WorkflowEngine):
        raise ConfigurationError(
            f"the app's engine {name!r} is of type {type(app).__name__}, not a WorkflowEngine"
        )
    engine.share_handlers(app)
    engine._app_name, engine._app_error = name, None
    log.info("handlers from the app's engine %s", name)
    return app


def current_engine() -> WorkflowEngine:
    """Inside a handler: the engine running this attempt, to create and enqueue more workflows with.

    In the in-process mode that is the engine that enqueued the workflow (a test's fixture);
    in a worker, the worker's engine, which knows the handlers of the app's engine that
    ``WORKFLOW_ENGINE_APP`` names. Raises WorkflowEngineError outside a handler, and in a
    thread the handler started: call it in the handler and pass the engine on.
    """
    attempt = _current.get()
    if attempt is None:
        raise WorkflowEngineError(
            "current_engine() is only available while a handler runs, in the handler's own thread "
            "(call it there and pass the engine to threads the handler starts)"
        )
    # Jobs go where this job came from: a stock `rq worker --url …` may have no REDIS_URL set.
    return attempt.engine if attempt.transport is None else attempt.engine._using(attempt.transport)


def in_handler() -> bool:
    """True while a handler runs in this thread (or context)."""
    return _current.get() is not None


def preload(modules: Iterable[str] | None = None) -> WorkflowEngine:
    """Build this process's worker engine now, open its database, and import the app's handlers.

    A forking ``rq worker`` imports the job's module in each work-horse; done once in the
    parent instead, every horse inherits the loaded package, the engine (connections are
    reopened per process) and the handler modules, with everything they import.
    ``modules`` are module names or handler paths (``myapp.workflows`` or
    ``myapp.workflows:create_website``); None reads them from ``WORKFLOW_ENGINE_PRELOAD``
    (comma-separated). One that cannot be imported raises ConfigurationError.
    ``rq worker -c workflow_engine.rq_preload`` calls this.
    """
    engine = worker_engine(strict=True)
    if engine._app_error is not None:  # at start, a wrong WORKFLOW_ENGINE_APP stops the worker
        raise ConfigurationError(engine._app_error)
    engine.store.migrate()
    preload_modules(modules)
    return engine


def preload_modules(modules: Iterable[str] | None = None) -> None:
    """Import the handler modules ``modules`` names (None: ``WORKFLOW_ENGINE_PRELOAD``), now."""
    from . import config
    from .handlers import preload_handlers

    names = config.preload_names() if modules is None else list(modules)
    if names:
        log.info("preloaded %s", ", ".join(preload_handlers(names)))


# -- the job -----------------------------------------------------------------
def run_workflow(
    workflow_id: str, handler: str, job_id: str, engine_key: str | None = None
) -> dict[str, Any]:
    """The RQ job: run one attempt of ``workflow_id``. Returns a small summary for RQ's records.

    Handler errors never escape: they are recorded on the workflow. Only a
    store failure propagates, so RQ marks the job failed; reconcile recovers
    the workflow from the database later.
    """
    engine = worker_engine(engine_key)
    job = get_current_job()
    transport = engine.transport if job is None or engine_key is not None else _job_transport(job)
    worker = (getattr(job, "worker_name", None) if job else None) or os.environ.get("RQ_WORKER_ID")
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    status = run_attempt(
        engine, workflow_id, job_id=job_id, handler=handler, worker=worker, transport=transport
    )
    # A "skipped (missing)" job most likely ran on a worker with the wrong database: run_attempt
    # logged a WARNING saying so (Python shows it even where nothing configured logging). It is
    # not raised: RQ would keep each failed job for a year, and reconcile redelivers the workflow
    # every pass while only such workers take its jobs.
    return {"workflow_id": workflow_id, "status": status}


def _job_transport(job: Any) -> Transport:
    """Retries go back on the queue ``job`` came from, over the worker's own connection."""
    return Transport(job.connection, job.origin, is_async=True)


def _missing(engine: WorkflowEngine, workflow_id: str, job_id: str) -> str:
    return (
        f"job {job_id} names workflow {workflow_id!r}, which is not in this worker's database, "
        f"{shown(engine.database_url)}: does the worker have the web process's WORKFLOW_ENGINE_DATABASE_URL?"
    )


def on_job_stopped(job: Any, connection: Any, *args: Any, **kwargs: Any) -> None:
    """RQ's ``on_stopped`` callback: the work-horse was killed on request, so the attempt is over."""
    workflow_id, _handler, job_id = job.args[:3]
    engine = worker_engine(job.kwargs.get("engine_key"))
    wf = engine.store.get(workflow_id)
    if wf is None or wf.status is not S.RUNNING or wf.job_id != job_id:
        return
    recovery.attempt_failed(
        engine,
        wf.model_copy(update={"cancel_requested_at": wf.cancel_requested_at or utcnow()}),
        error="work-horse stopped by request",
        traceback=None,
    )


# -- one attempt -------------------------------------------------------------
@dataclass
class _Attempt:
    workflow_id: str
    job_id: str
    engine: WorkflowEngine
    #: Where the job came from (a stock worker's job: maybe not ``engine.transport``), if given.
    transport: Transport | None = None
    cancel_requested: bool = False
    #: Set when a heartbeat finds that another job now carries the workflow.
    lost: bool = False
    last_beat: float = field(default_factory=time.monotonic)

    def lose(self) -> None:
        """Another job carries the workflow now (reconcile took this attempt's for lost)."""
        if not self.lost:
            self.lost = True
            log.warning(
                "workflow %s was taken over by another job (this attempt's lease expired); "
                "its result will be discarded, and cancel_requested() now returns True",
                self.workflow_id,
                extra={"workflow_id": self.workflow_id},
            )


_current: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "workflow_engine_attempt", default=None
)


def cancel_requested() -> bool:
    """Inside a handler: True once the running attempt should stop.

    That is when ``engine.cancel()`` was asked for the workflow, or when this
    attempt lost the workflow (its lease expired and reconcile gave it to another
    job). A long handler should check it between steps and stop early by
    raising; the workflow then ends ``cancelled`` (or stays with its new owner).
    """
    attempt = _current.get()
    if attempt is None:
        return False
    if attempt.cancel_requested or attempt.lost:
        return True
    wf = attempt.engine.store.get(attempt.workflow_id)
    if wf is None or wf.status is not S.RUNNING or wf.job_id != attempt.job_id:
        attempt.lose()  # noticed here at once, not only at the next heartbeat
        return True
    attempt.cancel_requested = wf.cancel_requested_at is not None
    return attempt.cancel_requested


def run_attempt(
    engine: WorkflowEngine,
    workflow_id: str,
    *,
    job_id: str,
    handler: str | None,
    worker: str | None,
    transport: Transport | None = None,
) -> str:
    """Claim the workflow for ``job_id``, run its handler, record the outcome; return the final status.

    A ``KeyboardInterrupt`` or ``SystemExit`` from the handler is raised again once its failed
    attempt is recorded: it asks the process to stop."""
    wf = claim_attempt(engine, workflow_id, job_id=job_id, worker=worker)
    if isinstance(wf, str):
        return wf
    outcome = run_handler(engine, wf, job_id, handler, transport=transport)
    status = record_outcome(engine, wf, job_id, outcome, transport)
    if outcome.interrupt is not None:
        raise outcome.interrupt
    return status


def claim_attempt(
    engine: WorkflowEngine, workflow_id: str, *, job_id: str, worker: str | None
) -> Workflow | str:
    """The first step of an attempt: the compare-and-set that makes ``job_id`` the workflow's runner.

    Returns the running workflow, or a ``skipped (…)`` status when the workflow is not queued
    for this job (carried by another, finished, cancelled, or not in this database)."""
    now = utcnow()
    wf = engine.store.claim(
        workflow_id, job_id=job_id, worker=worker, now=now, lease_until=engine.lease_from(now)
    )
    if wf is None:
        current = engine.store.get(workflow_id)
        if current is None:
            log.warning("%s", _missing(engine, workflow_id, job_id), extra={"workflow_id": workflow_id})
            return "skipped (missing)"
        state = current.status.value
        log.info(
            "job %s skipped: workflow %s is %s or carried by another job",
            job_id,
            workflow_id,
            state,
            extra=log_extra(current),
        )
        return f"skipped ({state})"
    log.info("attempt %d started", wf.attempts, extra=log_extra(wf))
    engine.notify(wf, S.QUEUED)
    return wf


class Outcome(NamedTuple):
    """How a handler's run ended, before anything is recorded: what :func:`record_outcome` is given.

    ``kind`` is ``completed`` (with ``result`` and ``duration``), ``failed`` (the handler
    raised, timed out, or returned something JSON cannot hold: ``error`` and ``traceback``),
    or ``unknown_type`` (no handler could be imported: retrying cannot help). ``interrupt`` is
    the ``KeyboardInterrupt`` or ``SystemExit`` that failed the attempt, to raise once it is recorded.
    """

    kind: Literal["completed", "failed", "unknown_type"]
    result: Any = None
    duration: float = 0.0
    error: str | None = None
    traceback: str | None = None
    interrupt: BaseException | None = None


def run_handler(
    engine: WorkflowEngine,
    wf: Workflow,
    job_id: str,
    handler: str | None,
    *,
    transport: Transport | None = None,
) -> Outcome:
    """Run the claimed workflow's handler under its timeout, with a heartbeat; record nothing.

    ``transport``: where the job came from, if not ``engine.transport``; what the handler
    enqueues through :func:`current_engine` goes there."""
    path = handler or wf.handler
    attempt = _Attempt(wf.id, job_id, engine, transport)
    token = _current.set(attempt)
    func: HandlerFunc | None = None
    try:
        # The heartbeat runs from the claim on: importing the handler's module (in each work-horse
        # of a plain forking worker) may take longer than stale_after, and must keep the lease.
        beater = _watch(engine, attempt)
        try:
            if not path:
                raise UnknownWorkflowType(wf.workflow_type_id, "the workflow records no handler path")
            func = engine.resolve_handler(path, wf.workflow_type_id)
            started = time.monotonic()
            result = _call_with_timeout(func, wf, wf.timeout)
            if result is not None:  # None is JSON's null: nothing to check
                to_json(result, "the handler's result")  # a large result takes a while: under the lease
        finally:
            beater.forget(attempt)
    except UnknownWorkflowType as exc:
        if func is not None:  # raised by the handler itself: an error like any other
            return Outcome("failed", error=describe(exc), traceback=traceback_text())
        # Retrying cannot fix a missing handler: record_outcome() fails it at once.
        trace = traceback_text() if exc.__cause__ is not None else None
        return Outcome("unknown_type", error=str(exc), traceback=trace)
    except HandlerTimeout as exc:
        return Outcome("failed", error=str(exc))
    except Exception as exc:
        return Outcome("failed", error=describe(exc), traceback=traceback_text())
    except BaseException as exc:  # SystemExit (sys.exit, a CLI library), asyncio.CancelledError, …
        # The attempt failed all the same: left unrecorded, it would stay running until its lease ran
        # out and reconcile called its worker lost. A stop request is raised again once recorded.
        stop = exc if isinstance(exc, (KeyboardInterrupt, SystemExit)) else None
        return Outcome("failed", error=describe(exc), traceback=traceback_text(), interrupt=stop)
    finally:
        _current.reset(token)
    return Outcome("completed", result=result, duration=time.monotonic() - started)


def record_outcome(
    engine: WorkflowEngine, wf: Workflow, job_id: str, outcome: Outcome, transport: Transport | None
) -> str:
    """The last step of an attempt: write ``outcome`` for the workflow ``job_id`` claimed.

    Nothing is written if the workflow no longer runs for ``job_id`` (reconcile took it over).
    Returns the workflow's status."""
    extra = log_extra(wf)
    if outcome.kind == "completed":
        now = utcnow()
        ending = {
            "result": outcome.result,
            "error": None,
            "traceback": None,
            "finished_at": now,
            "updated_at": now,
        }
        done = engine._change(
            wf, S.COMPLETED, ending, detail=f"completed in {outcome.duration:.3f} s", expected_job_id=job_id
        )
        if done is None:
            message = "attempt %d finished but the workflow was taken over; result discarded"
            log.warning(message, wf.attempts, extra=extra)
            current = engine.store.get(wf.id)
            return current.status.value if current else "missing"
        log.info("workflow completed", extra=extra)
        return done.status.value
    error = outcome.error or "the attempt failed"
    if outcome.kind == "unknown_type":
        log.warning("attempt %d failed: %s", wf.attempts, error, extra=extra)
        ending = {"error": error, "traceback": outcome.traceback, "finished_at": utcnow()}
        final = engine._change(
            wf, S.FAILED, ending, detail=error, expected_job_id=job_id, cancel_not_requested=True
        )
        if final is None:  # a cancel was requested meanwhile (the import can take a while): honour it
            current = engine.store.get(wf.id)
            if current is not None and current.status is S.RUNNING and current.job_id == job_id:
                detail = f"{error}; cancelled as requested"
                final = engine._change(current, S.CANCELLED, ending, detail=detail, expected_job_id=job_id)
        return (final or engine.store.get(wf.id) or wf).status.value
    return _failed(engine, wf, job_id, error, outcome.traceback, transport)


def _failed(
    engine: WorkflowEngine,
    wf: Workflow,
    job_id: str,
    error: str,
    trace: str | None,
    transport: Transport | None,
) -> str:
    current = engine.store.get(wf.id)
    if current is None or current.status is not S.RUNNING or current.job_id != job_id:
        return current.status.value if current else "missing"
    try:
        new = recovery.attempt_failed(engine, current, error=error, traceback=trace, transport=transport)
    except WorkflowEngineError:
        log.exception("could not record the failed attempt of %s; reconcile will recover it", wf.id)
        raise
    return (new or current).status.value


# -- timeouts ----------------------------------------------------------------
#: How long past its timeout a handler's store call (a read, a write, a pool checkout) may delay
#: the timeout, which waits for it to end; past that it is raised there all the same.
STORE_CALL_GRACE = 10.0
#: Seconds between the timeouts raised again in a handler that caught the first one and went on
#: (a bare ``except:``, or a ``with ThreadPoolExecutor()`` that waits for its threads).
TIMEOUT_REPEAT = 1.0


def _call_with_timeout(func: Any, wf: Workflow, timeout: float | None) -> Any:
    """Run ``func(wf)``; past ``timeout`` seconds raise HandlerTimeout.

    In the main thread (every RQ worker and work-horse) a real SIGALRM timer
    interrupts the handler, with sub-second precision. Elsewhere (a web
    request thread in in-process mode) signals are not available, so the
    attempt is judged when the handler returns.
    """
    if timeout is None:
        return func(wf)
    message = f"handler timed out after {timeout:g} s"
    start = time.monotonic()
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        result = func(wf)
        if time.monotonic() - start > timeout:
            raise HandlerTimeout(message)
        return result

    fired = returned = False

    def timed_out() -> None:
        nonlocal fired
        fired = True
        raise HandlerTimeout(message)

    def on_alarm(signum: int, frame: Any) -> None:
        if returned:  # the handler is over: its outcome stands (this was the repeat, in flight)
            return
        # Never inside a store call (a pool's bookkeeping cut in two could lose a connection for
        # good): raised as that call ends, or where it stands if it outlasts the grace.
        if in_store_call() and time.monotonic() - start < timeout + STORE_CALL_GRACE:
            after_store_call(timed_out)
            signal.setitimer(signal.ITIMER_REAL, STORE_CALL_GRACE)
            return
        after_store_call(None)
        # Again and again until the handler ends: one that caught the timeout and went on would
        # otherwise run unbounded (RQ's backstop is off while this timer stands in for it).
        signal.setitimer(signal.ITIMER_REAL, TIMEOUT_REPEAT)
        timed_out()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    # RQ's backstop (its death penalty's handler), or a caller's own alarm (a test's timeout).
    backstop = isinstance(getattr(previous, "__self__", None), BaseDeathPenalty)
    outer_delay, _ = signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            result = func(wf)
        finally:
            returned = True  # from here on an alarm interrupts nothing: this cleanup always runs
        if fired:  # the handler caught its timeout (a bare ``except:``) and returned all the same
            raise HandlerTimeout(message)
        return result
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            after_store_call(None)  # a timeout handed to a store call that has not ended is void now
            signal.signal(signal.SIGALRM, previous)
            if outer_delay > 0:  # put back the outer alarm, minus the time spent; RQ's backstop with
                # at least its grace for the outcome's write: a slow import may have spent most of
                # it already, and RQ's timeout inside that write would lose an attempt that ended in
                # time. (A caller's own alarm in the in-process mode keeps its time.)
                left = outer_delay - (time.monotonic() - start)
                signal.setitimer(signal.ITIMER_REAL, max(left, TIMEOUT_GRACE if backstop else 0.001))


# -- heartbeats --------------------------------------------------------------
class _Beater(threading.Thread):
    """One daemon thread per process that stamps every running attempt's heartbeat."""

    #: The longest it sleeps between looks at its attempts, in seconds.
    IDLE_WAIT = 1.0

    def __init__(self) -> None:
        super().__init__(name="workflow-engine-heartbeat", daemon=True)
        self.attempts: dict[int, _Attempt] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()

    def forget(self, attempt: _Attempt) -> None:
        """Stop stamping ``attempt``: it is over."""
        with self.lock:
            self.attempts.pop(id(attempt), None)

    @staticmethod
    def beat(attempt: _Attempt) -> None:
        at = utcnow()
        engine = attempt.engine
        beat = engine.store.heartbeat(
            attempt.workflow_id, job_id=attempt.job_id, now=at, lease_until=engine.lease_from(at)
        )
        attempt.cancel_requested = attempt.cancel_requested or beat.cancel_requested
        if not beat.owned:
            attempt.lose()

    def run(self) -> None:  # pragma: no cover - timing-dependent, covered by the process tests
        while True:
            with self.lock:
                attempts = list(self.attempts.values())
            now = time.monotonic()
            wait = self.IDLE_WAIT
            for attempt in attempts:
                interval = attempt.engine.heartbeat_interval
                due = attempt.last_beat + interval
                if now >= due:
                    attempt.last_beat = now
                    try:
                        self.beat(attempt)
                    except Exception:
                        log.warning("heartbeat for %s failed", attempt.workflow_id, exc_info=True)
                    due = now + interval
                wait = min(wait, max(due - now, 0.01))
            self.wake.wait(wait)
            self.wake.clear()


_beater: _Beater | None = None
_beater_pid = 0


def _watch(engine: WorkflowEngine, attempt: _Attempt) -> _Beater:
    """Have this process's heartbeat thread (started now if it is not running) stamp ``attempt``
    until :meth:`_Beater.forget`; the thread, returned."""
    global _beater, _beater_pid
    # In-process mode too: the claim gave the attempt a lease, and a reconcile (this engine's or
    # another process's on the same database) takes an attempt whose lease ran out for lost.
    beater = _beater
    if beater is None or _beater_pid != os.getpid() or not beater.is_alive():
        beater = _beater = _Beater()
        _beater_pid = os.getpid()
        beater.start()
    with beater.lock:
        beater.attempts[id(attempt)] = attempt
    if engine.heartbeat_interval < _Beater.IDLE_WAIT:
        beater.wake.set()  # otherwise its next look, at most IDLE_WAIT away, is soon enough
    return beater
