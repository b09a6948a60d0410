"""SQLite-specific behaviour: forking a process whose threads use the store."""

from __future__ import annotations

import os
import select
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from workflow_engine.models import Workflow, utcnow
from workflow_engine.status import WorkflowStatus
from workflow_engine.stores.sqlite import SQLiteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "workflows.db"))
    s.migrate()
    try:
        yield s
    finally:
        s.close()


def insert_one(store: SQLiteStore) -> None:
    now = utcnow()
    wf = Workflow(
        id=uuid.uuid4().hex,
        workflow_type_id="t",
        status=WorkflowStatus.PENDING,
        inputs={},
        created_at=now,
        updated_at=now,
    )
    store.insert([wf])


def child_writes(store: SQLiteStore, *, within: float = 10.0) -> bool:
    """Fork; the child writes once and reports. False if the child did not report in time."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            insert_one(store)
            os.write(write, b"ok")
        finally:
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], within)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            return False
        return os.read(read, 2) == b"ok"
    finally:
        os.close(read)
        os.waitpid(pid, 0)


def test_a_child_forked_while_another_thread_writes_never_hangs(store: SQLiteStore) -> None:
    # As in `workflow-engine worker`: a work-horse forked per job while the reconcile thread uses
    # the store. A child forked while that thread was inside SQLite could inherit one of SQLite's
    # own mutexes held and hang at its first call (15 of 40 children did, before the fork waited).
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            store.get("nothing")
            insert_one(store)

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        outcomes = [child_writes(store) for _ in range(30)]
    finally:
        stop.set()
        thread.join()
    assert all(outcomes), f"{outcomes.count(False)} of {len(outcomes)} forked children hung"
