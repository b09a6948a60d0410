"""SQLite-specific behaviour: forking a process whose threads use the store, and query plans."""

from __future__ import annotations

import gc
import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from workflow_engine import WorkflowEngine, WorkflowStatus
from workflow_engine.errors import HandlerTimeout, StoreError, StoreUnavailable
from workflow_engine.execution import _call_with_timeout
from workflow_engine.models import utcnow
from workflow_engine.stores import queries as q
from workflow_engine.stores.base import in_store_call
from workflow_engine.stores.sqlite import SQLiteStore, _Checkpointer

from support import a_workflow, wait_for


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "workflows.db"))
    s.migrate()
    try:
        yield s
    finally:
        s.close()


def insert_one(store: SQLiteStore) -> None:
    store.insert([a_workflow()])


def hold_the_writer_lock(path: str, seconds: float) -> threading.Thread:
    """Another connection's write transaction, holding SQLite's writer lock for ``seconds``."""
    held = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(5)
    return thread


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


def test_a_child_forked_while_other_threads_read_and_write_never_hangs(store: SQLiteStore) -> None:
    """The same with several threads reading and one writing."""
    stop = threading.Event()
    wid = store.insert([a_workflow()])[0][0].id

    def reads() -> None:
        while not stop.is_set():
            store.get(wid)
            store.find(limit=5, filters={})

    def writes() -> None:
        while not stop.is_set():
            insert_one(store)

    threads = [threading.Thread(target=work, daemon=True) for work in (reads, reads, writes)]
    for thread in threads:
        thread.start()
    try:
        outcomes = [child_writes(store) for _ in range(30)]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert all(outcomes), f"{outcomes.count(False)} of {len(outcomes)} forked children hung"


def test_reads_beside_a_steady_stream_of_writes_leave_the_wal_bounded(store: SQLiteStore) -> None:
    """A second, reading connection that overlapped each of the process's commits kept SQLite from
    ever restarting the WAL (it grew to 79 MB in these 1,500 writes, against under 10 MB): reads
    and writes of a process share one connection."""
    store.insert([a_workflow(inputs={"pad": "x" * 2000}) for _ in range(2000)])  # reads that take a while
    stop = threading.Event()

    def reads() -> None:
        while not stop.is_set():
            store.stats(since=None, recent=utcnow())

    reader = threading.Thread(target=reads)
    reader.start()
    largest = 0
    try:
        for n in range(1500):
            store.insert([a_workflow(inputs={"pad": "y" * 3000})])
            if n % 50 == 0:
                largest = max(largest, os.path.getsize(store.path + "-wal"))
    finally:
        stop.set()
        reader.join()
    assert largest < 25_000_000, f"the WAL grew to {largest / 1e6:.0f} MB"


# -- WAL checkpoints: on a thread of the process, not inside a commit ------------------------------
def wal_frames(path: str) -> int:
    """The pages the WAL holds now, from a connection of the test's own (which copies them back)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        conn.close()


def autocheckpoint(store: SQLiteStore) -> int:
    with store.transaction(write=False) as tx:
        [row] = tx.fetch("PRAGMA wal_autocheckpoint", {})
    return int(next(iter(row.values())))


def test_a_thread_of_the_process_copies_the_wal_back_while_commits_leave_it_alone(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's own checkpoint, inside a commit, made that commit wait for two fsyncs (17 ms on a
    slow disk, where a commit takes 0.15). Once the thread runs, a commit checkpoints only past the
    backstop; when the commits pause, the thread copies what its last checkpoint left, so that
    the next write starts the log again."""
    monkeypatch.setattr(_Checkpointer, "QUIET", 0.1)
    insert_one(store)
    assert autocheckpoint(store) == 1000  # SQLite's default, until the thread runs
    checkpointer = store._checkpointer
    for _ in range(_Checkpointer.EVERY + 50):  # about 1,500 pages: under the backstop
        insert_one(store)
    assert autocheckpoint(store) == _Checkpointer.BACKSTOP
    wait_for(lambda: checkpointer.runs >= 2, 10, what="the thread's checkpoint, and the one after the pause")
    wait_for(lambda: not checkpointer.lock.locked(), 10, what="the checkpoint to end")
    insert_one(store)  # the log was copied whole: this commit starts it again
    assert wal_frames(store.path) < 50


def test_a_steady_stream_of_commits_keeps_the_wal_near_its_backstop(store: SQLiteStore) -> None:
    """The thread's checkpoint never catches up with a commit every few hundred microseconds (SQLite
    starts the log again only once it is copied whole), so the commit at the backstop does it."""
    largest = 0
    for n in range(3_000):  # about 30,000 pages: 120 MB of log if nothing started it again
        insert_one(store)
        if n % 50 == 0:
            largest = max(largest, os.path.getsize(store.path + "-wal"))
    assert store._checkpointer.runs >= 1
    assert largest < 1.5 * _Checkpointer.BACKSTOP * (4096 + 24), f"the WAL grew to {largest / 1e6:.0f} MB"


def test_a_child_forked_while_the_checkpoint_thread_works_never_hangs(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork waits for a checkpoint in progress: no thread of the parent is inside SQLite, and
    no connection of the thread's crosses into the child."""
    monkeypatch.setattr(_Checkpointer, "EVERY", 1)  # a checkpoint after every commit
    stop = threading.Event()

    def writes() -> None:
        while not stop.is_set():
            insert_one(store)

    thread = threading.Thread(target=writes, daemon=True)
    thread.start()
    try:
        wait_for(lambda: store._checkpointer.runs >= 5, 10, what="checkpoints")
        outcomes = [child_writes(store) for _ in range(30)]
    finally:
        stop.set()
        thread.join()
    assert all(outcomes), f"{outcomes.count(False)} of {len(outcomes)} forked children hung"
    with store.transaction(write=False) as tx:
        [row] = tx.fetch("PRAGMA integrity_check", {})
    assert list(row.values()) == ["ok"]


def test_closing_the_store_ends_its_thread_and_a_store_used_again_starts_one(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Checkpointer, "EVERY", 2)
    insert_one(store)
    insert_one(store)
    first = store._checkpointer.thread
    assert first is not None
    store.close()
    assert not first.is_alive()
    insert_one(store)
    insert_one(store)
    second = store._checkpointer.thread
    assert second is not None and second is not first and second.is_alive()


def test_a_store_dropped_without_closing_ends_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Checkpointer, "EVERY", 1)
    store = SQLiteStore(str(tmp_path / "dropped.db"))
    insert_one(store)
    thread = store._checkpointer.thread
    assert thread is not None
    del store
    gc.collect()
    wait_for(lambda: not thread.is_alive(), 10, what="the dropped store's thread to end")


@pytest.mark.parametrize("path", [":memory:", "file::memory:"])
def test_an_in_memory_database_has_no_wal_and_no_checkpoint_thread(
    path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_Checkpointer, "EVERY", 1)
    store = SQLiteStore(path)
    insert_one(store)
    insert_one(store)
    assert store._checkpointer.thread is None
    store.close()


def test_a_checkpoint_never_creates_a_database_file_deleted_meanwhile(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Checkpointer, "EVERY", 1)
    insert_one(store)
    checkpointer = store._checkpointer
    wait_for(lambda: checkpointer.runs >= 1 and not checkpointer.lock.locked(), 10, what="a checkpoint")
    runs = checkpointer.runs
    os.unlink(store.path)  # the store's connection still has it open
    checkpointer.checkpoint()
    assert not os.path.exists(store.path)
    assert checkpointer.runs == runs


def test_the_thread_checkpoints_the_file_the_store_opened_after_the_directory_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path is the file of the directory the store opened it in, not of today's."""
    monkeypatch.setattr(_Checkpointer, "EVERY", 1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    store = SQLiteStore("rel.db")
    insert_one(store)
    monkeypatch.chdir(tmp_path / "b")
    before = store._checkpointer.runs
    insert_one(store)
    wait_for(lambda: store._checkpointer.runs > before, 10, what="a checkpoint of a/rel.db")
    store.close()
    assert not (tmp_path / "b" / "rel.db").exists()


def test_a_forked_work_horse_keeps_sqlites_own_checkpoint_and_its_parents_thread(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A work-horse commits a claim and an outcome: too few to start a thread, so it keeps SQLite's
    default of 1,000 pages; the parent's checkpointer, which it inherits, is not its to stop."""
    monkeypatch.setattr(_Checkpointer, "EVERY", 2)
    insert_one(store)
    insert_one(store)
    parents = store._checkpointer
    assert parents.thread is not None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            insert_one(store)  # its own connection, its own count: one commit
            thread = parents.thread
            parents.stop()  # what its exit's finalizer calls: nothing, in a child
            ok = autocheckpoint(store) == 1000 and store._checkpointer.thread is None
            os.write(write, b"ok" if ok and parents.thread is thread else b"no")
        finally:
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 10)
        assert ready and os.read(read, 2) == b"ok"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert parents.thread is not None and parents.thread.is_alive()


def test_an_in_memory_database_named_by_uri_keeps_its_one_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a SQLite built without URI filenames would make a file
    store = SQLiteStore("file::memory:")
    [(wf, _)] = store.insert([a_workflow()])
    assert store.get(wf.id) is not None
    assert len(store.find(limit=5, filters={})) == 1
    store.close()


#: A worker parent that has used the store, then forks a work-horse that opens its own connection
#: and waits for the word to write; the parent then only waits to be killed.
ORPHAN_SCRIPT = """
import os, sys, time
from workflow_engine import WorkflowEngine
db, wid_file, go_file, done_file = sys.argv[1:]
engine = WorkflowEngine(database_url=f"sqlite:///{db}", redis_url="fakeredis://")
wid = engine.create_workflow(workflow_type_id="t")  # the parent's connection is open
if os.fork() == 0:  # the work-horse
    engine.get_workflow(wid)  # its own connection, as at its claim
    open(wid_file, "w").write(wid)
    while not os.path.exists(go_file):
        time.sleep(0.02)
    engine.cancel(wid, reason="by the orphaned work-horse")
    open(done_file, "w").write("done")
    os._exit(0)
while True:
    time.sleep(1)
"""


def test_a_work_horse_whose_parent_was_killed_keeps_its_writes_when_another_process_closes(
    tmp_path: Path,
) -> None:
    """A forked child must hold its own SQLite locks. Before the parent closed its connection
    at fork, the child's connection reused the parent's lock bookkeeping without its locks:
    once the parent died, the next process to close the file took itself for the last one,
    deleted the WAL, and the child's commit went into the deleted file."""
    db, wid_file, go_file, done_file = (tmp_path / n for n in ("w.db", "wid", "go", "done"))
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, str(db), str(wid_file), str(go_file), str(done_file)],
        start_new_session=True,
    )
    try:
        wait_for(lambda: wid_file.exists() and wid_file.read_text(), 20, what="the work-horse to be ready")
        os.kill(parent.pid, signal.SIGKILL)  # the worker parent dies; its work-horse runs on
        parent.wait()
        other = SQLiteStore(str(db))  # another process comes and goes (a `workflow-engine list`)
        other.get("nothing")
        other.close()
        go_file.write_text("go")
        wait_for(done_file.exists, 20, what="the orphaned work-horse to write")
    finally:
        try:  # the parent and, if the test failed half-way, the work-horse: the group we started
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        parent.wait()
    seen = SQLiteStore(str(db))
    wf = seen.get(wid_file.read_text())
    seen.close()
    assert wf is not None and wf.status.value == "cancelled", "the orphaned work-horse's write was lost"


# -- query plans: what SQLite does without statistics, as on every embedded database ---------------
def plan(store: SQLiteStore, sql: str, params: dict[str, object]) -> str:
    with store.transaction(write=False) as tx:
        rows = tx.fetch(f"EXPLAIN QUERY PLAN {sql}", params)
    return " / ".join(str(r["detail"]) for r in rows)


FILTERS = [
    {},
    {"status": "failed"},
    {"workflow_type_id": "t"},
    {"created_by_agent": "a"},
    {"status": "failed", "workflow_type_id": "t"},
    {"status": "failed", "created_by_agent": "a"},
    {"workflow_type_id": "t", "created_by_agent": "a"},
    {"status": "failed", "workflow_type_id": "t", "created_by_agent": "a"},
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: "+".join(f) or "unfiltered")
@pytest.mark.parametrize("cursor", [False, True], ids=["page 1", "deep page"])
def test_every_listing_reads_one_index_in_order_and_never_sorts(
    store: SQLiteStore, filters: dict[str, str], cursor: bool
) -> None:
    sql = q.list_sql(filters, cursor=cursor, index=store.list_index(filters))
    params: dict[str, object] = {**filters, "limit": 50, "cursor_at": "2026-01-01", "cursor_id": "x"}
    found = plan(store, sql, params)
    assert "USING INDEX" in found and "TEMP B-TREE" not in found, found
    if {"created_by_agent", "status"} <= set(filters):
        assert "workflows_with_agent_status_created" in found, found
    elif "created_by_agent" in filters:  # an agent's workflows are few: read them, not a whole type's
        assert "workflows_with_agent_created" in found, found
    elif {"status", "workflow_type_id"} <= set(filters):
        assert "workflows_type_status_created" in found, found


@pytest.mark.parametrize(
    ("sql", "index"),
    [
        (q.STATS_FINISHED_SINCE, "workflows_finished_at"),
        (q.STALE_RUNNING, "workflows_status_created"),
        (q.STATS_RUNNING, "workflows_status_created"),
    ],
    ids=["finished recently", "stale running", "running count"],
)
def test_statistics_and_reconcile_read_an_index(store: SQLiteStore, sql: str, index: str) -> None:
    params = {"workflow_type_id": "t", "offset": 0, "recent": "2026", "now": "2026", "limit": 10}
    found = plan(store, sql, params)
    assert index in found and "SCAN workflows" not in found, found


@pytest.mark.parametrize(
    ("window", "analyzed", "index", "sorts"),
    [
        (None, False, "workflows_completed_duration_created", False),
        (SQLiteStore.SORTED_WINDOW + 1, False, "workflows_completed_duration_created", False),
        (SQLiteStore.SORTED_WINDOW + 1, True, "workflows_completed_duration_created", False),
        (10, False, "workflows_type_status_created", True),
    ],
    ids=["all", "a wide window", "a wide window after ANALYZE", "a short window"],
)
def test_a_duration_rank_is_walked_in_the_duration_index_or_a_short_windows_few_rows_are_sorted(
    store: SQLiteStore, window: int | None, analyzed: bool, index: str, sorts: bool
) -> None:
    if analyzed:  # statistics that make (workflow_type_id, status, ...) look better: the plan holds
        for _ in range(3):
            insert_one(store)
        with store.transaction() as tx:
            tx.fetch("ANALYZE", {})
    sql = q.duration_at_sql(windowed=window is not None, index=store.duration_index(window))
    found = plan(store, sql, {"workflow_type_id": "t", "offset": 0, "since": "2026"})
    assert index in found and "SCAN workflows" not in found, found
    assert ("TEMP B-TREE" in found) is sorts, found


def test_an_in_memory_database_closed_and_used_again_is_new_and_empty() -> None:
    store = SQLiteStore(":memory:")
    insert_one(store)
    assert len(store.find(limit=10, filters={})) == 1
    store.close()
    assert store.find(limit=10, filters={}) == []  # a new database, with the schema, not "no such table"
    insert_one(store)
    assert len(store.find(limit=10, filters={})) == 1
    store.close()


def test_a_timeout_that_fires_while_a_write_waits_for_the_lock_leaves_no_transaction_open(
    store: SQLiteStore,
) -> None:
    """A handler that writes through the engine can time out while its BEGIN IMMEDIATE waits for
    another process's write lock. The timeout waits for the store call to end, then is raised: no
    transaction may be left open, or this process's one connection would hold the write lock for
    good and lock out every writer, its own failure record and heartbeats included."""
    holder = hold_the_writer_lock(store.path, 0.4)
    try:
        with pytest.raises(HandlerTimeout):
            _call_with_timeout(lambda wf: insert_one(store), None, 0.1)  # type: ignore[arg-type]
    finally:
        holder.join()
    assert not store._connect().in_transaction
    insert_one(store)  # this process still writes
    probe = sqlite3.connect(store.path, isolation_level=None, timeout=1)
    probe.execute("BEGIN IMMEDIATE")  # and so does another one
    probe.execute("ROLLBACK")
    probe.close()


def test_sqlite_utils_is_imported_only_when_the_store_is_asked_for_it(tmp_path: Path) -> None:
    """A worker's work-horse opens the store for every job: importing sqlite-utils (about 45 ms)
    there would cost every job of a forking worker. database() imports it on demand."""
    code = (
        "import sys\n"
        "from workflow_engine import WorkflowEngine\n"
        f"engine = WorkflowEngine(database_url='sqlite:///{tmp_path / 'lazy.db'}', redis_url='fakeredis://', "
        "is_async=False)\n"
        "engine.register_handler('t', 'workflow_engine.demo:create_website')\n"
        "engine.create_workflow(workflow_type_id='t', enqueue=True)\n"
        "assert 'sqlite_utils' not in sys.modules, 'imported without being asked for'\n"
        "db = engine.store.database()\n"
        "print(db['workflows'].count, db['workflow_events'].count)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "4"]


def test_a_statement_sqlite_refuses_is_a_store_error_and_a_busy_database_is_unavailable(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(str(tmp_path / "w.db"), busy_timeout=0.1)
    store.migrate()
    with pytest.raises(StoreError) as refused, store.transaction() as tx:
        tx.fetch("SELECT * FROM no_such_table", {})
    assert not isinstance(refused.value, StoreUnavailable)  # retrying would not help
    holder = sqlite3.connect(str(tmp_path / "w.db"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the busy timeout
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            insert_one(store)
    finally:
        holder.rollback()
        holder.close()
    insert_one(store)  # and once it is free, writes go on
    store.close()


def test_a_transaction_commits_on_a_clean_exit_and_otherwise_leaves_nothing_open(store: SQLiteStore) -> None:
    """Whatever ends a transaction, the connection is left outside one, the store's lock and the
    store call are let go, and only a driver error is turned into the store's own."""

    def count() -> int:
        with store.transaction(write=False, single=True) as tx:
            return int(tx.fetch("SELECT count(*) AS n FROM workflows", {})[0]["n"])

    def settled() -> None:
        assert not store._connect().in_transaction
        assert not in_store_call()
        other = threading.Thread(target=insert_one, args=(store,))  # the lock is free for others
        other.start()
        other.join(5)
        assert not other.is_alive()

    insert_one(store)
    assert count() == 1
    settled()  # a clean write commits (the thread's insert commits too)
    assert count() == 2

    mistake = KeyError("the caller's own")
    with pytest.raises(KeyError) as raised, store.transaction() as tx:
        tx.execute(q.INSERT_WORKFLOW, store._workflow_params(a_workflow()))
        raise mistake
    assert raised.value is mistake  # not wrapped, and the insert is rolled back
    settled()
    assert count() == 3

    with pytest.raises(StoreError) as refused, store.transaction() as tx:
        tx.execute("PRAGMA defer_foreign_keys = ON", {})  # so the violation fails COMMIT, not the INSERT
        tx.execute(
            "INSERT INTO workflow_events (workflow_id, from_status, to_status, at, detail, attempt)"
            " VALUES ('no such workflow', NULL, 'pending', '2026-12-01T00:00:00+00:00', NULL, 0)",
            {},
        )
    assert isinstance(refused.value.__cause__, sqlite3.IntegrityError)
    settled()

    with store.transaction(write=False) as tx:  # several reads share one snapshot, ended on exit
        assert store._connect().in_transaction
        tx.fetch("SELECT count(*) AS n FROM workflows", {})
    settled()
    with pytest.raises(StoreError), store.transaction(write=False) as tx:
        tx.fetch("SELECT * FROM no_such_table", {})
    settled()
    assert count() == 6  # the first insert and one a settled(): neither failed write left a row


@pytest.mark.parametrize(("write", "single"), [(True, False), (False, False), (False, True)])
def test_an_exception_that_lands_as_a_transaction_ends_leaves_nothing_held(
    store: SQLiteStore, write: bool, single: bool
) -> None:
    """A timeout raised from a signal handler lands wherever the thread is (RQ's job timeout, or a
    handler's past its grace), even at the first step of leaving a transaction: the store's lock,
    the store call and the transaction are let go all the same, or the heartbeat thread would wait
    for the lock for good and no other process could write. The generator behind transaction()
    does that when it is dropped; a context class would not (tried in the thirtieth session)."""

    class Landed(BaseException):
        pass

    leaving = type(store.transaction()).__exit__.__code__  # the context's own, whatever it is

    def lands_as_it_ends(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is leaving:
            sys.settrace(None)
            raise Landed

    insert_one(store)
    sys.settrace(lands_as_it_ends)
    try:
        with pytest.raises(Landed), store.transaction(write=write, single=single) as tx:
            tx.fetch("SELECT count(*) AS n FROM workflows", {})
    finally:
        sys.settrace(None)
    gc.collect()
    assert not store._connect().in_transaction
    assert not in_store_call()
    other = threading.Thread(target=insert_one, args=(store,))
    other.start()
    other.join(5)
    assert not other.is_alive()  # the lock was free for another thread


def test_a_timestamp_is_stored_as_its_instant_in_utc_whatever_was_stored_before(store: SQLiteStore) -> None:
    """The store keeps the text of the last UTC timestamp it encoded (a write encodes each of its
    stamps two or three times): an equal instant gets that text, any other its own, and two times
    that one zone's clock shows twice are two instants."""
    at = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    text = "2026-12-01T12:00:00.123456+00:00"
    assert store.encode_time(at) == text
    assert store.encode_time(at.astimezone(timezone(timedelta(hours=2)))) == text  # the same instant
    assert store.encode_time(at + timedelta(microseconds=1)) == "2026-12-01T12:00:00.123457+00:00"
    assert store.encode_time(at) == text
    naive = at.replace(tzinfo=None)  # local time, as Python reads a naive datetime: never the kept text
    assert store.encode_time(naive) == naive.astimezone(timezone.utc).isoformat(timespec="microseconds")
    berlin = ZoneInfo("Europe/Berlin")  # its clock went back from 03:00 to 02:00 on 2026-10-25
    first = datetime(2026, 10, 25, 2, 30, tzinfo=berlin)
    assert first == first.replace(fold=1)  # the same clock time in one zone: equal, two instants
    assert store.encode_time(first) == "2026-10-25T00:30:00.000000+00:00"
    assert store.encode_time(first.replace(fold=1)) == "2026-10-25T01:30:00.000000+00:00"


def test_each_timestamp_of_a_row_is_read_as_its_own_instant_when_several_share_one(
    store: SQLiteStore,
) -> None:
    """decode_row parses a run of equal stamps once (a claim's, a completion's): each column still
    gets its own value, and a column after a different one is parsed again."""
    one, two = "2026-12-01T12:00:00.000001+00:00", "2026-12-01T12:00:00.000002+00:00"
    row = {
        "created_at": one,
        "queued_at": one,
        "started_at": two,
        "heartbeat_at": two,
        "updated_at": one,
        "finished_at": None,
        "lease_until": two,
        "run_after": None,
        "cancel_requested_at": one,
    }
    decoded = store.decode_row(row)
    assert {key: value.isoformat() if value else None for key, value in decoded.items()} == row


def test_migration_0003_backfills_durations_exact_to_the_microsecond(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(str(tmp_path / "old.db"))
    scripts = store.migration_scripts()
    monkeypatch.setattr(store, "migration_scripts", lambda: [(n, t) for n, t in scripts if n <= 2])
    assert store.migrate() == 2
    with store.transaction() as tx:  # a workflow finished before durations were stored
        tx.fetch(
            "INSERT INTO workflows (id, workflow_type_id, status, inputs, created_at, updated_at, "
            "started_at, finished_at) VALUES ('w', 't', 'completed', '{}', :at, :at, :start, :end)",
            {
                "at": "2026-11-29T23:59:59.000000+00:00",
                "start": "2026-11-29T23:59:59.000000+00:00",
                "end": "2026-11-30T00:00:01.250000+00:00",
            },
        )
    monkeypatch.setattr(store, "migration_scripts", lambda: scripts)
    store.migrate()
    wf = store.get("w")
    assert wf is not None and wf.duration_s == 2.25  # julianday() arithmetic gave 2.2499978542
    store.close()


def test_closing_the_inspection_database_of_an_in_memory_store_leaves_the_engine_working() -> None:
    engine = WorkflowEngine(database_url="sqlite:///:memory:", redis_url="fakeredis://", is_async=False)
    wid = engine.create_workflow(workflow_type_id="t")
    db = engine.store.database()  # type: ignore[attr-defined]
    assert db["workflows"].count == 1
    db.close()  # as the docs say to: the store's own connection stays open
    assert engine.get_workflow(wid).id == wid


def test_database_reads_through_a_connection_of_its_own_so_it_sees_only_committed_data(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(str(tmp_path / "inspect.db"))
    insert_one(store)
    with store.transaction() as tx:
        tx.fetch("UPDATE workflows SET status = 'completed'", {})
        db = store.database()  # another thread's half-done write must not show
        try:
            assert [row["status"] for row in db["workflows"].rows] == ["pending"]
        finally:
            db.close()
    db = store.database()
    try:
        assert [row["status"] for row in db["workflows"].rows] == ["completed"]
    finally:
        db.close()


def test_a_migration_script_is_split_where_sqlite_finds_each_statement_complete(tmp_path: Path) -> None:
    """Not at every semicolon: a trigger's body holds several, and so may a string or a comment."""
    from workflow_engine.stores import open_store

    store = open_store(f"sqlite:///{tmp_path / 'split.db'}")
    store.migrate()
    script = """
-- a comment; with a semicolon
CREATE TABLE notes (body TEXT NOT NULL);
CREATE TRIGGER notes_twice AFTER INSERT ON notes WHEN NEW.body NOT LIKE '%again%'
BEGIN
    INSERT INTO notes (body) VALUES (NEW.body || '; again');
END;
INSERT INTO notes (body) VALUES ('first; and more');
"""
    with store.transaction() as tx:  # type: ignore[attr-defined]
        store.run_script(tx, script)  # type: ignore[attr-defined]
        rows = tx.fetch("SELECT body FROM notes ORDER BY rowid", {})
    assert [r["body"] for r in rows] == ["first; and more", "first; and more; again"]
    with store.transaction() as tx, pytest.raises(ValueError, match="ends inside a statement"):  # type: ignore[attr-defined]
        store.run_script(tx, "CREATE TRIGGER t AFTER INSERT ON notes BEGIN SELECT 1;")  # type: ignore[attr-defined]
    store.close()


def test_a_claim_and_a_heartbeat_that_waited_for_the_writer_lock_get_their_whole_lease(
    store: SQLiteStore,
) -> None:
    # Stamped when they were asked for, a 2 s lease would have 0.5 s left once they could write:
    # a reconcile would then take the live attempt for lost and run the workflow a second time
    # alongside it. The lease runs from when the store could write instead.
    wf = a_workflow(status=WorkflowStatus.QUEUED, job_id="job-1")
    store.insert([wf])
    lease = timedelta(seconds=2)
    holder = hold_the_writer_lock(store.path, 1.5)
    asked = utcnow()
    claimed = store.claim(wf.id, job_id="job-1", worker="w", now=asked, lease_until=asked + lease)
    written = utcnow()
    holder.join()
    assert claimed is not None and claimed.heartbeat_at is not None and claimed.lease_until is not None
    assert claimed.heartbeat_at >= asked + timedelta(seconds=1.4)
    assert claimed.lease_until - claimed.heartbeat_at == lease
    assert claimed.lease_until >= written + lease - timedelta(seconds=0.2)
    assert claimed.started_at == claimed.heartbeat_at

    holder = hold_the_writer_lock(store.path, 1.5)
    asked = utcnow()
    assert store.heartbeat(wf.id, job_id="job-1", now=asked, lease_until=asked + lease).owned
    holder.join()
    beat = store.get(wf.id)
    assert beat is not None and beat.heartbeat_at is not None and beat.lease_until is not None
    assert beat.heartbeat_at >= asked + timedelta(seconds=1.4)
    assert beat.lease_until - beat.heartbeat_at == lease


def test_a_claim_that_did_not_wait_keeps_the_callers_exact_stamps(store: SQLiteStore) -> None:
    wf = a_workflow(status=WorkflowStatus.QUEUED, job_id="job-1")
    store.insert([wf])
    asked = utcnow() - timedelta(hours=1)  # as a test of recovery stamps an attempt long dead
    claimed = store.claim(wf.id, job_id="job-1", worker="w", now=asked, lease_until=asked)
    assert claimed is not None and (claimed.heartbeat_at, claimed.lease_until) == (asked, asked)


def test_opening_a_migrated_file_takes_no_writer_lock(tmp_path: Path) -> None:
    """Every process start reads the schema version first: with nothing to migrate it does not
    wait for another process's write to end (up to the busy timeout)."""
    path = str(tmp_path / "w.db")
    SQLiteStore(path).migrate()
    writer = hold_the_writer_lock(path, 3.0)
    store = SQLiteStore(path, busy_timeout=10)
    started = time.monotonic()
    try:
        assert store.get("nothing") is None
        assert time.monotonic() - started < 2
    finally:
        store.close()
        writer.join()


def test_two_migrations_with_one_number_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database records a migration by its number alone: a second script with the same number
    would never run where the first one had."""
    from workflow_engine.errors import ConfigurationError
    from workflow_engine.stores import base

    folder = tmp_path / "migrations" / "sqlite"
    folder.mkdir(parents=True)
    (folder / "0001_initial.sql").write_text("CREATE TABLE a (x);")
    (folder / "0001_other.sql").write_text("CREATE TABLE b (x);")
    monkeypatch.setattr(base.resources, "files", lambda package: tmp_path)
    with pytest.raises(ConfigurationError, match=r"two sqlite migrations share a number: \[1, 1\]"):
        SQLiteStore(str(tmp_path / "w.db")).migration_scripts()


def test_savings_that_an_operator_stored_count_as_sqlites_json_functions_read_them(
    store: SQLiteStore,
) -> None:
    """SQLite's TEXT column takes anything. What Python's parser refuses is read by SQLite's JSON
    functions, as when the whole sum was SQL: text that is not JSON and NaN count for nothing, and
    a document nested deeper than pydantic parses, a number of more digits than Python converts,
    or text that is not UTF-8 count what SQLite reads in them, instead of failing ``stats()``."""
    [(wf, _)] = store.insert([a_workflow(calculated_savings={"usd": 1})])
    store.insert([a_workflow(calculated_savings={"usd": 2})])
    deep = '{"usd": 4, "tree": ' + "[" * 1500 + "]" * 1500 + "}"
    not_utf8 = "CAST(x'" + b'{"usd": 5, "note": "caf\x85"}'.hex() + "' AS TEXT)"
    for value, expected in (
        ("'{not json'", {"usd": 2.0}),
        ("'{\"usd\": NaN}'", {"usd": 2.0}),
        ("'{\"usd\": -Infinity}'", {"usd": 2.0}),
        ("''", {"usd": 2.0}),
        (f"'{deep}'", {"usd": 6.0}),
        ('\'{"usd": 1' + "0" * 400 + "}'", {"usd": float("inf")}),
        ('\'{"hours": 3, "usd": 1' + "0" * 5000 + "}'", {"usd": float("inf"), "hours": 3.0}),
        (not_utf8, {"usd": 7.0}),
        ('\'{"usd": 1, "usd": 5}\'', {"usd": 7.0}),  # the last of two equal keys, as PostgreSQL's jsonb keeps
    ):
        with store.transaction() as tx:
            tx.execute(f"UPDATE workflows SET calculated_savings = {value} WHERE id = :id", {"id": wf.id})
        assert store.stats(since=None, recent=utcnow()).savings == expected, value[:40]


def test_savings_of_more_workflows_than_one_batch_of_reads_are_all_summed(store: SQLiteStore) -> None:
    store.insert([a_workflow(calculated_savings={"usd": 1}) for _ in range(2_500)])
    assert store.stats(since=None, recent=utcnow()).savings == {"usd": 2_500.0}
