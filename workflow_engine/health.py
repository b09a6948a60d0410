"""Health checks: is the database reachable, is Redis, is anyone consuming the queue, is it keeping up.

``workflow-engine health`` prints them; a web process can serve :func:`check_health`'s
``to_dict()`` from a health endpoint.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .analytics import queued_age, status_totals
from .config import MAX_SECONDS
from .errors import ConfigurationError, InvalidInput
from .models import utcnow

if TYPE_CHECKING:
    from .engine import WorkflowEngine
    from .stores.base import StatsRows

#: Defaults of the thresholds; the Prometheus alerts in docs/alerts.yml use the same.
DEFAULT_MAX_QUEUED_AGE = 300.0
DEFAULT_MAX_FAILURE_RATE = 0.10
DEFAULT_WINDOW = 900.0
#: A running workflow's lease expired this long ago, and reconcile (every 10 s by default) has
#: not recovered it: the WorkflowEngineStuckRunning alert's ``for: 2m``.
DEFAULT_MAX_STALE_AGE = 120.0

CheckStatus = Literal["ok", "fail", "skip"]
T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    """One check: its name, ``ok``/``fail``/``skip`` (could not run), what was seen, the figures."""

    name: str
    status: CheckStatus
    detail: str
    value: float | None = None
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[Check, ...]

    @property
    def healthy(self) -> bool:
        return all(c.status == "ok" for c in self.checks)

    @property
    def failing(self) -> list[str]:
        return [c.name for c in self.checks if c.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "failing": self.failing,
            "checks": [c.to_dict() for c in self.checks],
        }


def check_health(
    engine: WorkflowEngine,
    *,
    max_queued_age: float = DEFAULT_MAX_QUEUED_AGE,
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
    window: float = DEFAULT_WINDOW,
    max_stale_age: float = DEFAULT_MAX_STALE_AGE,
    min_finished: int = 1,
    only: Sequence[str] | None = None,
    timeout: float | None = None,
) -> HealthReport:
    """Run the checks (every one, or those named in ``only``, in :data:`CHECKS`' order); none
    raises. Healthy only when every check run is ``ok``.

    Thresholds out of range raise InvalidInput before any check runs: seconds from 0 to ten
    years, a failure rate from 0 to 1, a count from 1; so does a name in ``only`` that is not a check.

    - ``database``: the database answers (the statistics query, when a check below needs it);
    - ``redis``: Redis answers PING;
    - ``workers``: at least one RQ worker is registered on the engine's queue (always ``ok`` in the
      in-process mode, ``is_async=False``, where no worker is needed);
    - ``queue_age``: the oldest due queued workflow is younger than ``max_queued_age`` seconds;
    - ``stale_running``: no running workflow's lease expired more than ``max_stale_age``
      seconds ago (reconcile recovers one within a pass: one still there means none runs);
    - ``failure_rate``: of the workflows created in the last ``window`` seconds that finished,
      the failed share is at most ``max_failure_rate`` (``ok`` with fewer than ``min_finished``).

    With ``timeout``, the database and Redis are asked side by side, and one that has not
    answered within ``timeout`` seconds fails its check (its read goes on in a daemon thread).
    """
    for name, value, top in (
        ("max_queued_age", max_queued_age, MAX_SECONDS),
        ("max_failure_rate", max_failure_rate, 1.0),
        ("window", window, MAX_SECONDS),
        ("max_stale_age", max_stale_age, MAX_SECONDS),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
            raise InvalidInput(f"{name} must be a number from 0 to {top:g}, got {value!r}")
    if isinstance(min_finished, bool) or not isinstance(min_finished, int) or min_finished < 1:
        raise InvalidInput(f"min_finished must be a whole number from 1, got {min_finished!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_SECONDS
    ):
        raise InvalidInput(f"timeout must be a number of seconds above 0, or None, got {timeout!r}")
    wanted = _chosen(only)
    checks: dict[str, Check] = {}
    now = utcnow()

    def read_database() -> tuple[StatsRows | None, list[Any]]:
        # The store's reads alone: engine.stats() would ask Redis for the queue's depth too, and a
        # hung Redis would fail the database's checks.
        since = now - timedelta(seconds=window)
        rows = engine.store.stats(since=since, recent=now) if reads_stats else None
        # An indexed read of the few running rows: the database's answer when nothing else asks it.
        return rows, engine.store.stale_running(now=now - timedelta(seconds=max_stale_age), limit=1)

    def read_redis() -> Check | None:
        engine.transport.ping()
        return _workers(engine) if "workers" in wanted else None

    # Side by side, each in a thread of its own, when a deadline is set: a hung server (a table
    # locked by a migration, a Redis that accepts and never answers) fails its checks in time.
    asks_database = bool(wanted & {"database", "queue_age", "stale_running", "failure_rate"})
    reads_stats = bool(wanted & {"queue_age", "failure_rate"})
    database = (
        read_once(engine, ("health-database", reads_stats, window, max_stale_age), read_database, timeout)
        if asks_database
        else None
    )
    redis = (
        read_once(engine, ("health-redis", "workers" in wanted), read_redis, timeout)
        if wanted & {"redis", "workers"}
        else None
    )
    deadline = None if timeout is None else time.monotonic() + timeout
    rows: StatsRows | None = None
    stale: list[Any] | None = None
    if database is not None:
        try:
            rows, stale = _result(database, deadline, timeout)
        except Exception as exc:
            # A schema newer than this code, or none (a store opened with create=False): the database
            # answered, and what it said is the detail; else it did not answer.
            answered = isinstance(exc, ConfigurationError)
            detail = _one_line(exc) if answered else f"unreachable: {_one_line(exc)}"
            checks["database"] = Check("database", "fail", detail)
            why = "the database check failed" if answered else "the database is unreachable"
            for name in ("queue_age", "stale_running", "failure_rate"):
                checks[name] = Check(name, "skip", f"unknown: {why}")
        else:
            checks["database"] = Check("database", "ok", f"reachable ({engine.store.__class__.__name__})")

    if redis is not None:
        try:
            workers = _result(redis, deadline, timeout)
        except Exception as exc:
            checks["redis"] = Check("redis", "fail", f"unreachable: {_one_line(exc)}")
            checks["workers"] = Check("workers", "skip", "unknown: Redis is unreachable")
        else:
            checks["redis"] = Check("redis", "ok", "reachable")
            if workers is not None:
                checks["workers"] = workers

    if rows is not None:
        by_status = status_totals(rows.counts)
        age = round(queued_age(rows.oldest_queued, now) or 0.0, 3)
        queued = by_status["queued"]
        checks["queue_age"] = Check(
            "queue_age",
            "ok" if age <= max_queued_age else "fail",
            f"oldest queued workflow is {age:.1f} s old (max {max_queued_age:g} s)"
            if queued or age
            else f"nothing is waiting in the queue (max {max_queued_age:g} s)",
            value=round(age, 3),
            threshold=max_queued_age,
        )
        failed, completed = by_status["failed"], by_status["completed"]
        finished = failed + completed
        rate = failed / finished if finished else 0.0
        figure = f"{failed} of {finished} finished workflows created in the last {window:g} s"
        checks["failure_rate"] = Check(
            "failure_rate",
            "ok" if rate <= max_failure_rate or finished < min_finished else "fail",
            f"{rate:.1%} failed: {figure} (max {max_failure_rate:.1%})"
            if finished >= min_finished
            else f"{rate:.1%} failed: {figure}, too few to judge (at least {min_finished})",
            value=round(rate, 4),
            threshold=max_failure_rate,
        )
    if stale is not None:
        expired = stale[0].lease_until if stale else None
        checks["stale_running"] = Check(
            "stale_running",
            "fail" if stale else "ok",
            f"workflow {stale[0].id} has been running on an expired lease since {expired:%Y-%m-%d %H:%M:%S} "
            f"UTC (max {max_stale_age:g} s): is reconcile running?"
            if stale and expired is not None
            else f"no running workflow's lease expired more than {max_stale_age:g} s ago",
            value=round((now - expired).total_seconds(), 3) if expired is not None else 0,
            threshold=max_stale_age,
        )
    return HealthReport(tuple(checks[name] for name in CHECKS if name in wanted))


def _complete(future: Future[T], read: Callable[[], T]) -> None:
    """Settle ``future`` with ``read()``'s result, or with what it raised: a reading thread's
    whole work."""
    future.set_running_or_notify_cancel()
    try:
        future.set_result(read())
    except BaseException as exc:
        future.set_exception(exc)


#: Each engine's reads in progress, by what they read: a check or a scrape that finds one takes
#: its outcome instead of starting another (see read_once).
_READS: weakref.WeakKeyDictionary[WorkflowEngine, dict[tuple[Any, ...], Future[Any]]] = (
    weakref.WeakKeyDictionary()
)
_READS_LOCK = threading.Lock()


def _forget_reads() -> None:
    """In a forked child: no thread there will ever settle the parent's reads, and a thread of
    the parent may have held the lock at the fork."""
    global _READS_LOCK
    _READS_LOCK = threading.Lock()
    _READS.clear()


os.register_at_fork(after_in_child=_forget_reads)


def read_once(
    engine: WorkflowEngine, key: tuple[Any, ...], read: Callable[[], T], timeout: float | None
) -> Future[T]:
    """``read``'s outcome: computed here without a ``timeout``, else in a daemon thread (one that
    hangs must not hold up the process's exit), named ``workflow-engine-{key[0]}``.

    While the engine's read of the same ``key`` (who reads, the server, and what is read from
    it) goes on, a caller takes that read's outcome instead of starting another: checks that
    arrive together ask the server once, and a server that hangs is read once however often it
    is checked or scraped (a web process serving the check every few seconds would otherwise
    pile up threads, each holding one of the pool's connections, which the app's own requests
    need). The metrics' scrape reads through it too."""
    future: Future[T] = Future()
    if timeout is None:
        _complete(future, read)
        return future
    with _READS_LOCK:
        reads = _READS.setdefault(engine, {})
        running = reads.get(key)
        if running is not None and not running.done():
            return running
        reads[key] = future
    threading.Thread(
        target=_complete, args=(future, read), name=f"workflow-engine-{key[0]}", daemon=True
    ).start()
    return future


def _result(future: Future[T], deadline: float | None, timeout: float | None) -> T:
    """``future``'s result, or its exception; TimeoutError past ``deadline``, saying so."""
    try:
        return future.result(timeout=None if deadline is None else max(deadline - time.monotonic(), 0.0))
    except FutureTimeout:
        raise TimeoutError(f"no answer within {timeout:g} s") from None


def _chosen(only: Sequence[str] | None) -> set[str]:
    if only is None:
        return set(CHECKS)
    if isinstance(only, str) or not only or not all(isinstance(name, str) for name in only):
        raise InvalidInput(f"only must be a list of check names from {', '.join(CHECKS)}, got {only!r}")
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        raise InvalidInput(f"no such check: {', '.join(unknown)} (the checks: {', '.join(CHECKS)})")
    return set(only)


def _workers(engine: WorkflowEngine) -> Check:
    from rq import Worker

    if not engine.is_async:  # no worker needed: every job runs inside the call that enqueues it
        return Check("workers", "ok", "in-process mode: each workflow runs inside the call that enqueues it")
    try:
        workers = Worker.all(queue=engine.queue)
    except Exception as exc:
        return Check("workers", "fail", f"cannot list RQ workers: {_one_line(exc)}")
    names = ", ".join(sorted(w.name for w in workers))
    count = len(workers)
    detail = f"{count} live worker{'s' if count != 1 else ''} on queue {engine.queue_name!r}"
    return Check(
        "workers",
        "ok" if count else "fail",
        f"{detail}: {names}" if names else detail,
        value=count,
        threshold=1,
    )


#: The checks :func:`check_health` runs, in order.
CHECKS = ("database", "redis", "workers", "queue_age", "stale_running", "failure_rate")


def unbuilt(error: BaseException, only: Sequence[str] | None = None) -> HealthReport:
    """The report when no engine could be built from the settings (a SQLite file that does not
    exist, a driver not installed, a malformed URL): a failing ``configuration`` check that
    says why, and every other check (of ``only``) skipped, so that a monitor still reads the
    usual report."""
    wanted = _chosen(only)
    skipped = (
        Check(name, "skip", "unknown: the engine could not be built") for name in CHECKS if name in wanted
    )
    return HealthReport((Check("configuration", "fail", _one_line(error)), *skipped))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
