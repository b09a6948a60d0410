"""Named SQL shared by both stores.

Parameters are written ``:name``; the PostgreSQL store rewrites them to
``%(name)s`` once, at import. Only two statements are built at run time
(``update_sql`` and ``list_sql``), and they take column names from the
whitelists below, never from callers: every value is a bound parameter.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

#: Every column of ``workflows``, in table order.
WORKFLOW_COLUMNS: tuple[str, ...] = (
    "id",
    "workflow_type_id",
    "status",
    "created_by_agent",
    "inputs",
    "calculated_savings",
    "assigned_council_id",
    "result",
    "error",
    "traceback",
    "attempts",
    "max_retries",
    "max_attempts",
    "retry_backoff",
    "timeout",
    "handler",
    "job_id",
    "worker",
    "idempotency_key",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "lease_until",
    "run_after",
    "cancel_requested_at",
    "duration_s",
    "queued_at",
)
JSON_COLUMNS = frozenset({"inputs", "calculated_savings", "result"})
TIME_COLUMNS = frozenset(
    {
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "lease_until",
        "run_after",
        "cancel_requested_at",
        "queued_at",
    }
)
#: Columns a compare-and-set may change. ``id``, the type and the creation data never change.
MUTABLE_COLUMNS = frozenset(WORKFLOW_COLUMNS) - {
    "id",
    "workflow_type_id",
    "created_by_agent",
    "inputs",
    "calculated_savings",
    "assigned_council_id",
    "idempotency_key",
    "created_at",
}
#: Columns ``list_workflows`` may filter on.
FILTER_COLUMNS = frozenset({"status", "workflow_type_id", "created_by_agent"})

EVENT_COLUMNS = ("workflow_id", "from_status", "to_status", "at", "detail", "attempt")

#: What every read and every RETURNING names instead of ``*``, so that a column added to a table
#: (by a newer release's migration while this one still runs, or by an operator, for reports)
#: changes no result: the models refuse unknown fields, and PostgreSQL refuses a prepared
#: statement whose result type changed (``cached plan must not change result type``).
WORKFLOW = ", ".join(WORKFLOW_COLUMNS)
EVENT = ", ".join(("id", *EVENT_COLUMNS))
COUNCIL = "id, members, quorum, updated_at"
VOTE = "workflow_id, voter_id, approve, comment, at"

INSERT_WORKFLOW = (
    f"INSERT INTO workflows ({WORKFLOW}) "
    f"VALUES ({', '.join(':' + c for c in WORKFLOW_COLUMNS)}) "
    # Any conflict: another workflow's idempotency key, or this one's id, inserted by an earlier
    # attempt of the same insert whose reply was lost (``Store.insert`` tells them apart).
    "ON CONFLICT DO NOTHING"
)
INSERT_EVENT = (
    f"INSERT INTO workflow_events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in EVENT_COLUMNS)})"
)
GET_WORKFLOW = f"SELECT {WORKFLOW} FROM workflows WHERE id = :id"
#: ``{ids}`` is a list of generated parameter names (:id0, :id1, …), never values.
GET_MANY = f"SELECT {WORKFLOW} FROM workflows WHERE id IN ({{ids}})"
GET_BY_IDEMPOTENCY_KEY = f"SELECT {WORKFLOW} FROM workflows WHERE idempotency_key = :idempotency_key"
GET_EVENTS = f"SELECT {EVENT} FROM workflow_events WHERE workflow_id = :workflow_id ORDER BY id"

#: The claim: one compare-and-set, so two workers can never both run a workflow.
CLAIM = f"""
UPDATE workflows
   SET status = 'running', attempts = attempts + 1, worker = :worker,
       started_at = COALESCE(started_at, :now), heartbeat_at = :now, lease_until = :lease_until,
       updated_at = :now,
       run_after = NULL
 WHERE id = :id AND status = 'queued' AND job_id = :job_id
RETURNING {WORKFLOW}
"""

HEARTBEAT = """
UPDATE workflows SET heartbeat_at = :now, lease_until = :lease_until
 WHERE id = :id AND status = 'running' AND job_id = :job_id
RETURNING cancel_requested_at
"""

STALE_RUNNING = f"""
SELECT {WORKFLOW} FROM workflows
 WHERE status = 'running' AND lease_until < :now
 ORDER BY lease_until LIMIT :limit
"""

#: Queued workflows that may need a delivery: retries that came due (no job yet),
#: and any queued long enough that its job should have been picked up or be visible.
DELIVERABLE_QUEUED = f"""
SELECT {WORKFLOW} FROM workflows
 WHERE status = 'queued'
   AND ((job_id IS NULL AND (run_after IS NULL OR run_after <= :now))
        OR (job_id IS NOT NULL AND updated_at < :queued_before))
   {{after}}
 ORDER BY created_at, id LIMIT :limit
"""
#: Keyset paging for DELIVERABLE_QUEUED, so a long backlog is walked to its end.
DELIVERABLE_AFTER = "AND (created_at > :after_at OR (created_at = :after_at AND id > :after_id))"

SAVE_COUNCIL = f"""
INSERT INTO councils (id, members, quorum, updated_at) VALUES (:id, :members, :quorum, :updated_at)
ON CONFLICT (id) DO UPDATE SET members = excluded.members, quorum = excluded.quorum,
                               updated_at = excluded.updated_at
RETURNING {COUNCIL}
"""
GET_COUNCIL = f"SELECT {COUNCIL} FROM councils WHERE id = :id"
#: The workflow's status, read inside the vote's transaction ({lock} locks the row where the store can).
VOTE_STATUS = "SELECT status, attempts FROM workflows WHERE id = :workflow_id {lock}"
INSERT_VOTE = """
INSERT INTO workflow_votes (workflow_id, voter_id, approve, comment, at)
VALUES (:workflow_id, :voter_id, :approve, :comment, :at)
ON CONFLICT (workflow_id, voter_id) DO NOTHING
RETURNING voter_id
"""
CHANGE_VOTE = """
INSERT INTO workflow_votes (workflow_id, voter_id, approve, comment, at)
VALUES (:workflow_id, :voter_id, :approve, :comment, :at)
ON CONFLICT (workflow_id, voter_id) DO UPDATE SET approve = excluded.approve, comment = excluded.comment,
                                                  at = excluded.at
RETURNING voter_id
"""
GET_VOTES = f"SELECT {VOTE} FROM workflow_votes WHERE workflow_id = :workflow_id ORDER BY at, voter_id"
HAS_VOTED = "SELECT 1 AS found FROM workflow_votes WHERE workflow_id = :workflow_id AND voter_id = :voter_id"

# -- statistics ({since} is "" or "AND created_at >= :since") ------------------------------
STATS_COUNTS = """
SELECT workflow_type_id, status, COUNT(*) AS n FROM workflows WHERE 1 = 1 {since}
GROUP BY workflow_type_id, status
"""
#: The completed duration at one rank of one type (nearest-rank percentiles), read from the
#: partial index of completed workflows (workflow_type_id, duration_s, created_at): see
#: :func:`duration_at_sql`.
STATS_DURATION_AT = """
SELECT duration_s FROM workflows{indexed}
 WHERE workflow_type_id = :workflow_type_id AND status = 'completed' AND duration_s IS NOT NULL {since}
 ORDER BY duration_s LIMIT 1 OFFSET :offset
"""
#: The oldest queued workflow that is due (a retry waiting for its delay counts from its due time).
STATS_OLDEST_QUEUED = """
SELECT MIN(CASE WHEN run_after IS NOT NULL AND run_after > COALESCE(queued_at, updated_at) THEN run_after
                ELSE COALESCE(queued_at, updated_at) END) AS oldest
  FROM workflows WHERE status = 'queued'
"""
STATS_RUNNING = "SELECT COUNT(*) AS n FROM workflows WHERE status = 'running'"
#: Running workflows whose lease expired before ``:now`` (``STALE_RUNNING``'s rows, counted).
STATS_STALE = "SELECT COUNT(*) AS n FROM workflows WHERE status = 'running' AND lease_until < :now"
#: Only the finish time is a condition, so that the (finished_at) index is what is read: with the
#: status in the WHERE clause too, SQLite took (status, …) and read every finished workflow.
STATS_FINISHED_SINCE = """
SELECT COALESCE(SUM(CASE WHEN status IN ('completed', 'failed') THEN 1 ELSE 0 END), 0) AS n
  FROM workflows WHERE finished_at >= :recent
"""

SCHEMA_VERSION = "SELECT COALESCE(MAX(version), 0) AS version FROM schema_version"
RECORD_VERSION = "INSERT INTO schema_version (version, applied_at) VALUES (:version, :applied_at)"

_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


def to_pyformat(sql: str) -> str:
    """``:name`` -> ``%(name)s`` for psycopg."""
    return _PARAM.sub(r"%(\1)s", sql)


def update_sql(
    columns: Iterable[str],
    *,
    job_id: str | bool | None,
    lease_expired: bool,
    cancel_not_requested: bool = False,
    attempts: bool = False,
) -> str:
    """A compare-and-set UPDATE. ``columns`` must come from MUTABLE_COLUMNS.

    ``job_id``: False for no condition on it, None for "has no job", True for "equals :expected_job_id".
    ``cancel_not_requested``: only if ``cancel_requested_at`` is NULL.
    ``attempts``: only if ``attempts`` equals ``:expected_attempts``.
    """
    job_cond = None if job_id is None else job_id is True  # the three cases, and a cache key each
    return _update_sql(
        tuple(columns), job_cond, bool(lease_expired), bool(cancel_not_requested), bool(attempts)
    )


@functools.lru_cache(maxsize=256)  # a few dozen shapes, one of them on every attempt's completion
def _update_sql(
    cols: tuple[str, ...],
    job_id: bool | None,
    lease_expired: bool,
    cancel_not_requested: bool,
    attempts: bool,
) -> str:
    bad = set(cols) - MUTABLE_COLUMNS
    if bad or not cols:
        raise ValueError(f"not updatable columns: {sorted(bad) or list(cols)}")
    sets = ", ".join(f"{c} = :set_{c}" for c in cols)
    where = "id = :id AND status = :expected_status"
    if job_id is None:
        where += " AND job_id IS NULL"
    elif job_id is True:
        where += " AND job_id = :expected_job_id"
    if lease_expired:
        where += " AND lease_until < :lease_expired_at"
    if cancel_not_requested:
        where += " AND cancel_requested_at IS NULL"
    if attempts:
        where += " AND attempts = :expected_attempts"
    return f"UPDATE workflows SET {sets} WHERE {where} RETURNING {WORKFLOW}"


@functools.cache  # a handful of sizes: 1 and 2 events on every create's path
def insert_events_sql(count: int) -> str:
    """One INSERT of ``count`` events of one workflow: ``:workflow_id``, ``:at`` and ``:attempt`` are
    shared, ``:from_status_<i>``, ``:to_status_<i>`` and ``:detail_<i>`` are each event's own."""
    rows = ", ".join(
        f"(:workflow_id, :from_status_{i}, :to_status_{i}, :at, :detail_{i}, :attempt)" for i in range(count)
    )
    return f"INSERT INTO workflow_events ({', '.join(EVENT_COLUMNS)}) VALUES {rows}"


@functools.cache
def insert_with_events_sql(count: int) -> str:
    """A new workflow and its ``count`` events in one statement, for databases with
    data-modifying CTEs (PostgreSQL): one round trip instead of BEGIN, two INSERTs and COMMIT.

    The parameters are ``INSERT_WORKFLOW``'s and ``insert_events_sql(count)``'s. The events are
    written, in order, only if the workflow was (not on a conflict), and the statement returns
    the workflow's id only then.
    """
    rows = ", ".join(
        f"({i}, CAST(:from_status_{i} AS TEXT), CAST(:to_status_{i} AS TEXT), CAST(:detail_{i} AS TEXT))"
        for i in range(count)
    )
    return (
        f"WITH w AS ({INSERT_WORKFLOW} RETURNING id), "
        f"e AS (INSERT INTO workflow_events ({', '.join(EVENT_COLUMNS)}) "
        "SELECT w.id, v.from_status, v.to_status, CAST(:at AS TIMESTAMPTZ), v.detail, "
        "CAST(:attempt AS INTEGER) "
        f"FROM w, (VALUES {rows}) AS v (n, from_status, to_status, detail) ORDER BY v.n) "
        "SELECT id FROM w"
    )


def with_event(update: str) -> str:
    """``update`` (an UPDATE … RETURNING the workflow's columns) that also records its event, in one
    statement.

    For databases with data-modifying CTEs (PostgreSQL): the event takes the new row's
    ``updated_at`` and ``attempts``, as the two-statement form does, and is written only if
    the row was updated.
    """
    return (
        f"WITH u AS ({update}), e AS (INSERT INTO workflow_events ({', '.join(EVENT_COLUMNS)}) "
        "SELECT u.id, CAST(:event_from AS TEXT), CAST(:event_to AS TEXT), u.updated_at, "
        f"CAST(:event_detail AS TEXT), u.attempts FROM u) SELECT {WORKFLOW} FROM u"
    )


def duration_at_sql(*, windowed: bool, index: str | None = None) -> str:
    """STATS_DURATION_AT over all completed workflows of a type, or (``windowed``) those created
    since ``:since``; ``index`` names the index to read (SQLite's ``INDEXED BY``)."""
    since = "AND created_at >= :since" if windowed else ""
    return STATS_DURATION_AT.format(indexed=_indexed_by(index), since=since)


def list_sql(filters: Iterable[str], *, cursor: bool, index: str | None = None) -> str:
    """Newest first. ``filters`` must come from FILTER_COLUMNS; ``index`` names the index to read
    (SQLite's ``INDEXED BY``)."""
    conds = []
    for c in filters:
        if c not in FILTER_COLUMNS:
            raise ValueError(f"cannot filter on {c!r}")
        conds.append(f"{c} = :{c}")
    if cursor:
        conds.append("(created_at, id) < (:cursor_at, :cursor_id)")
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    indexed = _indexed_by(index)
    return f"SELECT {WORKFLOW} FROM workflows{indexed}{where} ORDER BY created_at DESC, id DESC LIMIT :limit"


def _indexed_by(index: str | None) -> str:
    return f" INDEXED BY {index}" if index else ""
