"""Analytics: ``engine.stats()``, shaped from aggregates the store computes in SQL."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput, QueueUnavailable
from .models import utcnow
from .status import WorkflowStatus

if TYPE_CHECKING:
    from .engine import WorkflowEngine

#: The window of ``stats()["throughput_per_min"]``.
STATS_WINDOW_MINUTES = 15


def compute_stats(engine: WorkflowEngine, since: datetime | None = None) -> dict[str, Any]:
    """``engine.stats()``: shape the store's SQL aggregates into the documented dict."""
    if since is not None and (not isinstance(since, datetime) or since.tzinfo is None):
        raise InvalidInput("since must be a timezone-aware datetime or None")
    now = utcnow()
    rows = engine.store.stats(since=since, recent=now - timedelta(minutes=STATS_WINDOW_MINUTES))
    by_status = {status.value: 0 for status in WorkflowStatus}
    by_type: dict[str, dict[str, Any]] = {}
    for type_id, status, count in rows.counts:
        by_status[status] = by_status.get(status, 0) + count
        entry = by_type.setdefault(type_id, {"total": 0, "by_status": {st.value: 0 for st in WorkflowStatus}})
        entry["total"] += count
        entry["by_status"][status] = entry["by_status"].get(status, 0) + count
    for type_id, entry in by_type.items():
        done, failed = entry["by_status"]["completed"], entry["by_status"]["failed"]
        entry["success_rate"] = round(done / (done + failed), 4) if done + failed else None
        p50, p95 = rows.durations.get(type_id, (None, None))
        entry["duration_p50_s"], entry["duration_p95_s"] = p50, p95
    try:
        depth: int | None = engine.transport.depth()
    except QueueUnavailable:
        depth = None
    oldest = rows.oldest_queued
    return {
        "since": since.isoformat() if since else None,
        "generated_at": now.isoformat(),
        "total": sum(by_status.values()),
        "by_status": by_status,
        "by_type": dict(sorted(by_type.items())),
        "queue_depth": depth,
        "oldest_queued_age_s": round(max((now - oldest).total_seconds(), 0.0), 3) if oldest else None,
        "running": rows.running,
        "throughput_per_min": round(rows.finished_recently / STATS_WINDOW_MINUTES, 3),
        # A sum past the largest float is infinite, which JSON cannot carry: None says "too large".
        "calculated_savings": {k: v if math.isfinite(v) else None for k, v in sorted(rows.savings.items())},
    }
