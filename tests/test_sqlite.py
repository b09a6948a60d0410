"""SQLite-specific behaviour: WAL checkpoints run beside the commits, not inside them."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from workflow_engine.models import Workflow, utcnow
from workflow_engine.status import WorkflowStatus
from workflow_engine.stores.sqlite import SQLiteStore

from support import wait_for

CHECKPOINTER = "workflow-engine-sqlite-checkpoint"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "workflows.db"))
    s.checkpoint_interval = 0.02
    s.migrate()
    try:
        yield s
    finally:
        s.close()


def insert_one(store: SQLiteStore) -> str:
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
    return wf.id


def checkpointers(store: SQLiteStore) -> int:
    """This store's checkpointing threads (the thread is named after the database file)."""
    name = f"{CHECKPOINTER} {store.path}"
    return sum(1 for t in threading.enumerate() if t.name == name and t.is_alive())


def rows_in_database_file(db: Path, tmp_path: Path) -> int:
    """Rows that reached the database file itself: a copy without its WAL sees only those."""
    copy = tmp_path / "copy" / "workflows.db"
    copy.parent.mkdir(exist_ok=True)
    shutil.copyfile(db, copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT count(*) FROM workflows").fetchone()[0])
    except sqlite3.OperationalError:  # not even the schema has been copied back yet
        return -1
    finally:
        conn.close()


def test_commits_leave_wal_checkpoints_to_a_background_thread(store: SQLiteStore, tmp_path: Path) -> None:
    for _ in range(30):
        insert_one(store)

    with store.transaction(write=False) as tx:
        [row] = tx.fetch("PRAGMA wal_autocheckpoint", {})
    assert row["wal_autocheckpoint"] == store.foreground_checkpoint_pages  # a commit rarely checkpoints
    assert checkpointers(store) == 1
    # The thread copies the WAL into the database file by itself, within a few intervals.
    wait_for(lambda: rows_in_database_file(Path(store.path), tmp_path) == 30, timeout=10)

    store.close()
    assert checkpointers(store) == 0


def test_the_checkpointer_ends_when_writes_stop_and_the_next_write_starts_it_again(
    store: SQLiteStore,
) -> None:
    store.checkpoint_idle_exit = 0.1
    insert_one(store)
    assert checkpointers(store) == 1
    wait_for(lambda: checkpointers(store) == 0, timeout=10)

    insert_one(store)
    assert checkpointers(store) == 1


def fork_and_write(store: SQLiteStore) -> dict[str, int]:
    """Fork, write once in the child, and report what the child saw; fail if the child hangs."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            insert_one(store)
            with store.transaction(write=False) as tx:
                [row] = tx.fetch("PRAGMA wal_autocheckpoint", {})
            found = {"pages": row["wal_autocheckpoint"], "threads": checkpointers(store)}
            os.write(write, json.dumps(found).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 20)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the forked child hung in SQLite")
        with os.fdopen(read) as pipe:
            return dict(json.loads(pipe.read()))
    finally:
        os.waitpid(pid, 0)


def test_a_forked_work_horse_keeps_sqlites_own_checkpoints_and_starts_no_thread(store: SQLiteStore) -> None:
    insert_one(store)  # the parent's thread runs; a fork does not copy it
    # SQLite's default in the child: it checkpoints as it commits, as before.
    assert fork_and_write(store) == {"pages": 1000, "threads": 0}


def test_forking_while_the_checkpointer_works_never_leaves_the_child_hung(store: SQLiteStore) -> None:
    # A child forked while the thread held one of SQLite's mutexes would hang at its first call.
    store.checkpoint_interval = 0.0005
    insert_one(store)
    for _ in range(25):
        insert_one(store)
        assert fork_and_write(store)["threads"] == 0
