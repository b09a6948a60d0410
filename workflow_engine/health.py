"""Health checks: is the database reachable, is Redis, is anyone consuming the queue, is it keeping up.

``workflow-engine health`` prints them; a web process can serve :func:`check_health`'s
``to_dict()`` from a health endpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from .config import MAX_SECONDS
from .errors import InvalidInput
from .models import utcnow

if TYPE_CHECKING:
    from .analytics import Stats
    from .engine import WorkflowEngine

#: Defaults of the thresholds; the Prometheus alerts in docs/alerts.yml use the same.
DEFAULT_MAX_QUEUED_AGE = 300.0
DEFAULT_MAX_FAILURE_RATE = 0.10
DEFAULT_WINDOW = 900.0

CheckStatus = Literal["ok", "fail", "skip"]


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
) -> HealthReport:
    """Run every check; none raises. Healthy only when every check is ``ok``.

    Thresholds out of range raise InvalidInput before any check runs: seconds from 0 to ten
    years, a failure rate from 0 to 1.

    - ``database``: the statistics query answers;
    - ``redis``: Redis answers PING;
    - ``workers``: at least one RQ worker is registered on the engine's queue;
    - ``queue_age``: the oldest due queued workflow is younger than ``max_queued_age`` seconds;
    - ``failure_rate``: of the workflows created in the last ``window`` seconds that finished,
      the failed share is at most ``max_failure_rate``.
    """
    for name, value, top in (
        ("max_queued_age", max_queued_age, MAX_SECONDS),
        ("max_failure_rate", max_failure_rate, 1.0),
        ("window", window, MAX_SECONDS),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
            raise InvalidInput(f"{name} must be a number from 0 to {top:g}, got {value!r}")
    checks: list[Check] = []
    since = utcnow() - timedelta(seconds=window)
    try:
        stats: Stats | None = engine.stats(since=since)
    except Exception as exc:
        stats = None
        checks.append(Check("database", "fail", f"unreachable: {_one_line(exc)}"))
    else:
        checks.append(Check("database", "ok", f"reachable ({engine.store.__class__.__name__})"))

    try:
        engine.transport.ping()
    except Exception as exc:
        redis_ok = False
        checks.append(Check("redis", "fail", f"unreachable: {_one_line(exc)}"))
    else:
        redis_ok = True
        checks.append(Check("redis", "ok", "reachable"))

    checks.append(_workers(engine) if redis_ok else Check("workers", "skip", "unknown: Redis is unreachable"))

    if stats is None:
        checks.append(Check("queue_age", "skip", "unknown: the database is unreachable"))
        checks.append(Check("failure_rate", "skip", "unknown: the database is unreachable"))
        return HealthReport(tuple(checks))
    age = float(stats["oldest_queued_age_s"] or 0.0)
    queued = stats["by_status"]["queued"]
    checks.append(
        Check(
            "queue_age",
            "ok" if age <= max_queued_age else "fail",
            f"oldest queued workflow is {age:.1f} s old (max {max_queued_age:g} s)"
            if queued or age
            else f"nothing is waiting in the queue (max {max_queued_age:g} s)",
            value=round(age, 3),
            threshold=max_queued_age,
        )
    )
    failed, completed = stats["by_status"]["failed"], stats["by_status"]["completed"]
    finished = failed + completed
    rate = failed / finished if finished else 0.0
    checks.append(
        Check(
            "failure_rate",
            "ok" if rate <= max_failure_rate else "fail",
            f"{rate:.1%} failed: {failed} of {finished} finished workflows created in the last "
            f"{window:g} s (max {max_failure_rate:.1%})",
            value=round(rate, 4),
            threshold=max_failure_rate,
        )
    )
    return HealthReport(tuple(checks))


def _workers(engine: WorkflowEngine) -> Check:
    from rq import Worker

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
CHECKS = ("database", "redis", "workers", "queue_age", "failure_rate")


def unbuilt(error: BaseException) -> HealthReport:
    """The report when no engine could be built from the settings (a SQLite file that does not
    exist, a driver not installed, a malformed URL): a failing ``configuration`` check that
    says why, and every other check skipped, so that a monitor still reads the usual report."""
    skipped = (Check(name, "skip", "unknown: the engine could not be built") for name in CHECKS)
    return HealthReport((Check("configuration", "fail", _one_line(error)), *skipped))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
