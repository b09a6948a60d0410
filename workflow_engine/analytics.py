"""Analytics: ``engine.stats()``, shaped from aggregates the store computes in SQL."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, TypedDict

from .errors import InvalidInput, QueueUnavailable
from .models import utcnow
from .status import WorkflowStatus

if TYPE_CHECKING:
    from .engine import WorkflowEngine

#: The window of ``stats()["throughput_per_min"]``.
STATS_WINDOW_MINUTES = 15


class TypeStats(TypedDict):
    """One workflow type's entry in ``stats()["by_type"]``."""

    total: int
    #: Every status, zeros included.
    by_status: dict[str, int]
    #: completed / (completed + failed); None before either.
    success_rate: float | None
    #: Nearest-rank percentiles of completed workflows' durations; None without any.
    duration_p50_s: float | None
    duration_p95_s: float | None


class Stats(TypedDict):
    """What ``engine.stats()`` returns: a plain, JSON-safe dict of this shape."""

    #: ISO 8601, or None for all workflows.
    since: str | None
    generated_at: str
    total: int
    #: Every status, zeros included.
    by_status: dict[str, int]
    by_type: dict[str, TypeStats]
    #: Jobs waiting in Redis; None when Redis is down.
    queue_depth: int | None
    oldest_queued_age_s: float | None
    running: int
    #: Workflows finished over the last STATS_WINDOW_MINUTES, per minute.
    throughput_per_min: float
    #: Each numeric top-level field summed; None for a sum too large for a float.
    calculated_savings: dict[str, float | None]


def compute_stats(engine: WorkflowEngine, since: datetime | None = None) -> Stats:
    """``engine.stats()``: shape the store's SQL aggregates into the documented dict."""
    if since is not None and (not isinstance(since, datetime) or since.tzinfo is None):
        raise InvalidInput("since must be a timezone-aware datetime or None")
    if since is not None:
        try:
            since = since.astimezone(timezone.utc)
        except OverflowError:  # within a day of datetime.min or max, in UTC outside the calendar
            raise InvalidInput(f"since is out of range: {since!r}") from None
    now = utcnow()
    rows = engine.store.stats(since=since, recent=now - timedelta(minutes=STATS_WINDOW_MINUTES))
    by_status = status_totals(rows.counts)
    counts: dict[str, dict[str, int]] = {}
    for type_id, status, count in rows.counts:
        of_type = counts.setdefault(type_id, {st.value: 0 for st in WorkflowStatus})
        of_type[status] = of_type.get(status, 0) + count
    by_type: dict[str, TypeStats] = {}
    for type_id, of_type in sorted(counts.items()):
        done, failed = of_type["completed"], of_type["failed"]
        p50, p95 = rows.durations.get(type_id, (None, None))
        by_type[type_id] = {
            "total": sum(of_type.values()),
            "by_status": of_type,
            "success_rate": round(done / (done + failed), 4) if done + failed else None,
            "duration_p50_s": p50,
            "duration_p95_s": p95,
        }
    try:
        depth: int | None = engine.transport.depth()
    except QueueUnavailable:
        depth = None
    age = queued_age(rows.oldest_queued, now)
    return {
        "since": since.isoformat() if since else None,
        "generated_at": now.isoformat(),
        "total": sum(by_status.values()),
        "by_status": by_status,
        "by_type": by_type,
        "queue_depth": depth,
        "oldest_queued_age_s": None if age is None else round(age, 3),
        "running": rows.running,
        "throughput_per_min": round(rows.finished_recently / STATS_WINDOW_MINUTES, 3),
        # A sum past the largest float is infinite, which JSON cannot carry: None says "too large".
        "calculated_savings": {k: v if math.isfinite(v) else None for k, v in sorted(rows.savings.items())},
    }


def status_totals(counts: Iterable[tuple[str, str, int]]) -> dict[str, int]:
    """Workflows by status, every status included (zeros too), from the store's (type, status, n) rows."""
    by_status = {status.value: 0 for status in WorkflowStatus}
    for _, status, count in counts:
        by_status[status] = by_status.get(status, 0) + count
    return by_status


def queued_age(oldest: datetime | None, now: datetime) -> float | None:
    """Seconds since the oldest queued workflow came due (the store's ``oldest_queued``), never
    negative; None when none is queued."""
    return max((now - oldest).total_seconds(), 0.0) if oldest else None
