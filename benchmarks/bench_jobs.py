"""Job functions the benchmarks enqueue. Workers import them with ``--path benchmarks``.

Each lives at module level in an importable module, because an RQ worker
imports a job's function by its dotted path and rejects ``__main__``. This
module imports nothing heavy at run time, so that a raw RQ job costs a
forked work-horse no more than RQ itself; a workflow job's work-horse imports
``workflow_engine`` (RQ imports ``workflow_engine.execution:run_workflow``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: a raw RQ work-horse must not pay for importing workflow_engine
    from workflow_engine import Workflow


def noop_workflow(wf: Workflow) -> None:
    """The workflow handler of the throughput benchmarks: does nothing."""
    return None


def noop() -> None:
    """The raw RQ job of the throughput benchmarks: does nothing."""
    return None


def sleepy_workflow(wf: Workflow) -> dict[str, Any]:
    """The recovery benchmark's handler: sleeps ``inputs['seconds']`` so that its worker can be killed."""
    deadline = time.monotonic() + float(wf.inputs.get("seconds", 60))
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return {"slept": wf.inputs.get("seconds", 60)}


# -- the jobs of e2e_floor.py: what bounds the end-to-end ratio --------------------------------
def workflow_shaped_noop(workflow_id: str, handler: str, job_id: str, engine_key: str | None = None) -> Any:
    """A job with a workflow job's arguments and result that touches no database."""
    return {"workflow_id": workflow_id, "status": "completed"}


def stopped_noop(job: Any, connection: Any, *args: Any, **kwargs: Any) -> None:
    """The ``on_stopped`` callback of the shaped jobs, as a workflow job carries one."""


_floor_conn: Any = None
#: The checkpoint thread of each floor connection (by ``id``), as a store has one.
_checkpointers: dict[int, Any] = {}


def floor_connection(path: str) -> Any:
    """A bare sqlite3 connection to ``path`` with the store's PRAGMAs and its way of checkpointing:
    what the floor jobs and ``api_floor.py`` run their SQL on, with no store around it. Commit
    with :func:`floor_commit`, close with :func:`floor_close`."""
    import sqlite3

    from workflow_engine.stores.sqlite import _Checkpointer

    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    for pragma in ("busy_timeout = 30000", "journal_mode = WAL", "synchronous = NORMAL", "foreign_keys = ON"):
        conn.execute(f"PRAGMA {pragma}")
    _checkpointers[id(conn)] = _Checkpointer()
    return conn


def floor_commit(conn: Any) -> None:
    """``COMMIT``, and count it for the connection's checkpoint thread, as the store does."""
    conn.execute("COMMIT")
    _checkpointers[id(conn)].committed(conn)


def floor_close(conn: Any) -> None:
    _checkpointers.pop(id(conn)).stop()
    conn.close()


def sql_floor_job(workflow_id: str, handler: str, job_id: str, engine_key: str | None = None) -> Any:
    """Exactly the SQL of a workflow's claim and completion, with no engine around it.

    Two durable transactions on the worker's SQLite file, with the store's PRAGMAs and the
    store's own statements: ``BEGIN IMMEDIATE``; the claim's compare-and-set; its event;
    ``COMMIT``; then the same for the completion. What is left between this job and
    ``run_workflow`` is the engine's Python.
    """
    global _floor_conn
    import os
    from datetime import datetime, timedelta, timezone

    from workflow_engine.stores import queries as q  # the package, as a workflow job imports it

    if _floor_conn is None:
        _floor_conn = floor_connection(os.environ["WORKFLOW_ENGINE_DATABASE_URL"].removeprefix("sqlite:///"))
    conn = _floor_conn
    started = datetime.now(timezone.utc)
    now = started.isoformat(timespec="microseconds")
    event = {"workflow_id": workflow_id, "attempt": 1, "detail": None}
    conn.execute("BEGIN IMMEDIATE")
    claimed = conn.execute(
        q.CLAIM,
        {
            "id": workflow_id,
            "job_id": job_id,
            "worker": "floor",
            "now": now,
            "lease_until": (started + timedelta(seconds=30)).isoformat(timespec="microseconds"),
        },
    ).fetchall()
    if not claimed:
        conn.execute("ROLLBACK")
        raise RuntimeError(f"workflow {workflow_id} was not queued for job {job_id}")
    conn.execute(q.INSERT_EVENT, {**event, "from_status": "queued", "to_status": "running", "at": now})
    floor_commit(conn)
    finished = datetime.now(timezone.utc)
    done = finished.isoformat(timespec="microseconds")
    columns = ("result", "error", "traceback", "finished_at", "updated_at", "status", "duration_s")
    values = ("null", None, None, done, done, "completed", (finished - started).total_seconds())
    params = {f"set_{c}": v for c, v in zip(columns, values, strict=True)}
    params.update(id=workflow_id, expected_status="running", expected_job_id=job_id)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(q.update_sql(columns, job_id=True, lease_expired=False), params).fetchall()
    conn.execute(q.INSERT_EVENT, {**event, "from_status": "running", "to_status": "completed", "at": done})
    floor_commit(conn)
    return {"workflow_id": workflow_id, "status": "completed"}
