"""The SQLite store: the embedded default, through sqlite-utils.

WAL journal, ``synchronous=NORMAL``, a busy timeout, and ``BEGIN IMMEDIATE``
for every write so that several worker processes writing one file wait for
each other instead of failing with "database is locked". One connection per
process (a forked work-horse opens its own), shared by threads under a lock.
The WAL is copied back into the database file by a thread of the process
(:class:`_Checkpointer`), not inside the commits.

``os.fork()`` waits until no thread is inside one of this process's stores: a
child forked while another thread was inside SQLite could inherit one of
SQLite's own mutexes held, and hang at its first call.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pydantic_core import from_json

from ..errors import ConfigurationError, StoreError, StoreUnavailable
from ..models import compact_json, load_json
from . import queries as q
from .base import SQLStore, Tx, store_call

if TYPE_CHECKING:  # imported on demand only: sqlite_utils takes about 45 ms to import
    import sqlite_utils

log = logging.getLogger("workflow_engine.stores.sqlite")


class _SQLiteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def _run(self, sql: str, params: Mapping[str, Any]) -> sqlite3.Cursor:
        # Named parameters must be a dict.
        return self.conn.execute(sql, params if isinstance(params, dict) else dict(params))

    def fetch(self, sql: str, params: Mapping[str, Any], *, prepare: bool = True) -> list[dict[str, Any]]:
        cursor = self._run(sql, params)
        if cursor.description is None:
            return []
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        return self._run(sql, params).rowcount

    def fetch_each(self, statements: Sequence[tuple[str, Mapping[str, Any]]]) -> list[list[dict[str, Any]]]:
        return [self.fetch(sql, params) for sql, params in statements]  # in-process: no round trips


def _add_savings(totals: dict[str, float], items: Iterable[tuple[str, Any]]) -> None:
    """Add the numbers of one calculated_savings document's top-level ``(key, value)`` pairs to
    ``totals``, by key: ``true`` and ``false`` are not numbers, nor is anything else."""
    for key, value in items:
        if type(value) is float or type(value) is int:
            try:
                totals[key] = totals.get(key, 0.0) + value
            except OverflowError:  # an integer beyond any float: SQLite reads it as infinite
                totals[key] = totals.get(key, 0.0) + (math.inf if value > 0 else -math.inf)


#: The columns decode_row parses as timestamps: a workflow's, and an event's ``at``; and those it
#: parses as JSON. Looked up one by one (a listing decodes 50 rows: no set built for each). The
#: stamps that are often one instant come one after the other, so that it parses each once: a
#: created workflow's ``created_at`` and ``queued_at``; a claim's ``started_at``, ``heartbeat_at``
#: and ``updated_at``; a completion's ``updated_at`` and ``finished_at``.
_ALIKE = ("created_at", "queued_at", "started_at", "heartbeat_at", "updated_at", "finished_at")
_TIME_KEYS = _ALIKE + tuple(sorted(q.TIME_COLUMNS - set(_ALIKE) | {"at"}))
_JSON_KEYS = tuple(sorted(q.JSON_COLUMNS))

#: SQLite's result codes for a database that cannot serve now (busy past the timeout, the disk,
#: the file), as opposed to a statement it refuses (a missing table, a constraint): worth a retry.
_UNAVAILABLE = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_FULL",
    "SQLITE_READONLY",
    "SQLITE_PROTOCOL",
    "SQLITE_NOMEM",
    "SQLITE_INTERRUPT",
)


def _unavailable(exc: sqlite3.Error) -> bool:
    """True for a failure of the database rather than of the statement (StoreUnavailable)."""
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11 and later
    if name is None:
        return isinstance(exc, sqlite3.OperationalError)
    return str(name).startswith(_UNAVAILABLE)


class _Checkpointer:
    """Copies a store's WAL back into the database file on a thread of the process.

    In WAL mode SQLite checkpoints inside the commit that takes the log past
    ``wal_autocheckpoint`` pages (1,000 by default): that one commit waits for the
    copy and for its two fsyncs, 17 ms on a slow disk where a commit takes 0.15, which
    made the average commit twice its median (docs/performance.md). Instead, at every
    ``EVERY``-th commit of the process the store wakes this thread, which runs a
    ``PASSIVE`` checkpoint on a connection of its own while the commits go on (SQLite
    releases the GIL meanwhile), and once more when the commits pause for ``QUIET``
    seconds, so that the log is copied whole and the next write starts it again.

    From the first wake on, the store's connection keeps SQLite's own checkpoint only
    as a backstop, at ``BACKSTOP`` pages: a steady stream of writes never leaves the
    thread's checkpoint with the whole log copied, and SQLite starts the log again only
    when it is, so the commit that reaches the backstop copies the little that is left.
    The log is bounded by the backstop as it was by the default (about 16 MB instead of
    4). A process that commits fewer than ``EVERY`` times (a forked work-horse, a CLI
    command) starts no thread and keeps SQLite's default. Durability is SQLite's with
    ``synchronous=NORMAL`` either way.

    Nothing is kept open between checkpoints: each opens and closes its connection,
    under ``lock``, which ``os.fork()`` takes, so that no connection and no thread
    inside SQLite crosses a fork (see ``_before_fork``). A forked child has its own.
    """

    #: Commits between two checkpoints: a workflow's transaction writes about ten pages,
    #: so about SQLite's own interval of 1,000.
    EVERY = 100
    #: Pages of log after which a commit checkpoints itself, once the thread runs.
    BACKSTOP = 4_000
    #: Seconds without a commit after which the thread copies what the last checkpoint left.
    QUIET = 1.0

    def __init__(self) -> None:
        self.pid = os.getpid()  # the process whose thread this is (a forked child has its own)
        self.uri: str | None = None  # the store's file, read-write only: set at the first wake
        self.lock = threading.Lock()  # held while checkpointing; a fork waits for it
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.commits = 0  # this process's commits to the store
        self.runs = 0  # checkpoints run, for the tests and for whoever debugs
        self.warned = False

    def committed(self, conn: sqlite3.Connection) -> None:
        """Count one commit of the store's (under its lock, on its connection ``conn``);
        every ``EVERY``-th wakes the thread, started now if it is not running."""
        self.commits += 1
        if self.commits % self.EVERY:
            return
        try:  # after a COMMIT that succeeded: nothing here may make the write look failed
            if self.uri is None:
                # The file the connection opened, whatever the directory is now (a relative path,
                # a file: URI); opened read-write only, so a file deleted meanwhile is not made again.
                rows = conn.execute("PRAGMA database_list").fetchall()
                name = next((row[2] for row in rows if row[1] == "main"), "")
                if not name:
                    return
                self.uri = f"file:{quote(name)}?mode=rw"
            conn.execute(f"PRAGMA wal_autocheckpoint = {self.BACKSTOP}")  # again on a connection reopened
        except sqlite3.Error as exc:  # SQLite's own checkpoint goes on as before
            log.debug("cannot set up background WAL checkpoints: %s", exc)
            return
        if self.thread is None:
            thread = threading.Thread(target=self._run, name="workflow_engine-sqlite-checkpoint", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # the interpreter is shutting down: SQLite's own checkpoint remains
                return
            self.thread = thread
        self.wake.set()

    def _run(self) -> None:
        me = threading.current_thread()
        copied = 0  # the commit count when the last checkpoint started
        while True:
            woken = self.wake.wait(timeout=self.QUIET if copied != self.commits else None)
            self.wake.clear()
            if self.thread is not me:  # stopped (a newer thread may have started since)
                return
            if woken or copied != self.commits:  # woken, or commits that paused since
                copied = self.commits
                self.checkpoint()

    def checkpoint(self) -> None:
        """One ``PASSIVE`` checkpoint: it copies what the log holds and waits for no one."""
        if self.uri is None:
            return
        with self.lock:
            try:
                conn = sqlite3.connect(self.uri, uri=True, isolation_level=None, check_same_thread=False)
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                finally:
                    conn.close()
            except sqlite3.Error as exc:  # the next one, or SQLite's own at the backstop, will do it
                level = logging.DEBUG if self.warned else logging.WARNING
                self.warned = True
                log.log(level, "background WAL checkpoint of %s failed: %s", self.uri, exc)
                return
            self.runs += 1

    def stop(self) -> None:
        """Let the thread end (it is idle, or ends its checkpoint first); wait for it unless
        called from it. Nothing in a forked child, which inherited this but not the thread."""
        if os.getpid() != self.pid:
            return
        thread, self.thread = self.thread, None
        if thread is None:
            return
        self.wake.set()
        if thread is not threading.current_thread():
            thread.join(timeout=10)


#: Every SQLite store of this process, and the locks a fork in progress holds.
_stores: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()
_held_for_fork: list[threading.RLock | threading.Lock] = []


def _before_fork() -> None:
    """Hold each store's lock across ``os.fork()``, and close its connection first.

    Every SQLite call of a store runs under its lock, so no other thread is inside SQLite
    when the process forks: a child forked while another thread held one of SQLite's mutexes
    (its allocator's, say) would hang at its first SQLite call. ``workflow-engine worker``
    forks a work-horse per job while its reconcile thread uses the store.

    The connection is closed because SQLite keeps, per process, what it knows of each open
    file and the locks it holds on it. A child inherits that memory but not the locks (POSIX
    locks belong to the process that took them), and its own new connection reuses it: it
    believes it holds the WAL's shared lock without holding it. If the parent then dies (a
    worker killed while its work-horse runs), the next process to close the database takes
    itself for the last, checkpoints and deletes the WAL, and the child's commits go into the
    deleted file: lost. Closed here, the parent's state is gone before the fork; the parent
    reopens on its next call. A checkpoint in progress on the store's thread is waited for
    (its connection lives only as long as the checkpoint)."""
    for store in list(_stores):
        lock = store._lock
        lock.acquire()
        _held_for_fork.append(lock)
        store._close_for_fork()
        checkpoints = store._checkpointer.lock
        checkpoints.acquire()
        _held_for_fork.append(checkpoints)


def _after_fork_in_parent() -> None:
    while _held_for_fork:
        _held_for_fork.pop().release()


def _after_fork_in_child() -> None:
    _held_for_fork.clear()  # the child's stores make new locks (SQLiteStore._lock)


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


class SQLiteStore(SQLStore):
    dialect = "sqlite"
    schema_table_sql = (
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version')"
        " AS found"
    )
    #: At most this many completed workflows of a type in a stats(since=...) window are read through
    #: the created_at range of (workflow_type_id, status, created_at, id) and sorted: a short window,
    #: such as the health check's, in a few lookups. A wider one is walked in duration order through
    #: the completed-duration index, which holds created_at (migration 0006), never sorted: at 1M
    #: rows and a window over all of them, the 40 ranks took 3.3 s sorted and 0.1 s walked.
    SORTED_WINDOW = 2_000
    #: The documents the savings are summed from (see :meth:`_savings`), in the table's order, as
    #: bytes: a TEXT value that is not UTF-8 (an operator's SQL) must not fail the read.
    savings_sql = (
        "SELECT id, CAST(calculated_savings AS BLOB) AS doc FROM workflows"
        " WHERE calculated_savings IS NOT NULL {since}"
    )
    #: One workflow's savings as SQLite's JSON functions read them, for a document that Python's
    #: parser refused: a document that is not JSON, or not an object, gives no rows.
    savings_of_one_sql = """
SELECT j.key AS key, j.value AS value
  FROM workflows AS w,
       json_each(CASE WHEN json_valid(w.calculated_savings) THEN
                     CASE json_type(w.calculated_savings) WHEN 'object' THEN w.calculated_savings END
                 END) AS j
 WHERE w.id = :id AND j.type IN ('integer', 'real')
"""

    def __init__(
        self, path: str, *, url: str | None = None, busy_timeout: float = 30.0, create: bool = True
    ) -> None:
        if not isinstance(create, bool):
            raise ConfigurationError(f"create must be true or false, got {create!r}")
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self.busy_timeout = busy_timeout
        #: Create the file and the schema on first use; if False, refuse a database without them.
        self.create_on_use = create
        self._lock_obj = threading.RLock()
        self._lock_pid = os.getpid()
        self._checkpointer_obj = self._new_checkpointer()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._wal = False  # the connection's journal is a WAL (not an in-memory database's)
        self._migrated = False
        #: The last timestamp encoded, and its text: see encode_time.
        self._last_time: tuple[datetime | None, str] = (None, "")
        _stores.add(self)

    def duration_index(self, window: int | None) -> str | None:
        if window is not None and window <= self.SORTED_WINDOW:
            return None
        # Named, so that the plan holds after an ANALYZE too (with statistics SQLite preferred
        # (workflow_type_id, status, …) and a sort of every completed workflow of the type).
        return "workflows_completed_duration_created"

    def list_index(self, filters: Mapping[str, str]) -> str | None:
        # Without statistics (nobody runs ANALYZE on an embedded database) SQLite takes the index
        # that matches the most filters, and with an agent among them may pick one that reads
        # every workflow of a common type and status to find one agent's. An agent's are few.
        if "created_by_agent" not in filters or len(filters) == 1:
            return None
        return (
            "workflows_with_agent_status_created" if "status" in filters else "workflows_with_agent_created"
        )

    # -- connection -------------------------------------------------------
    @property
    def _lock(self) -> threading.RLock:
        # A lock held by another thread when the process forked would never be released in the
        # child (a work-horse), so each process gets its own.
        if self._lock_pid != os.getpid():
            self._lock_obj, self._lock_pid = threading.RLock(), os.getpid()
        return self._lock_obj

    @property
    def _checkpointer(self) -> _Checkpointer:
        # A forked child has none of its parent's threads, and may have its lock held: its own.
        if self._checkpointer_obj.pid != os.getpid():
            self._checkpointer_obj = self._new_checkpointer()
        return self._checkpointer_obj

    def _new_checkpointer(self) -> _Checkpointer:
        """A checkpointer for this process, whose thread ends when the store is collected."""
        checkpointer = _Checkpointer()
        weakref.finalize(self, checkpointer.stop)
        return checkpointer

    def database(self) -> sqlite_utils.Database:
        """A connection of its own to the file, wrapped by sqlite-utils: for inspection and scripts.

        ``store.database()["workflows"].count_where("status = ?", ["failed"])``; close it when
        done (``db.close()``). It sees only committed data, whatever the store's threads are
        doing. Writes made through it bypass the state machine and the audit trail; use the
        engine for those. An in-memory database has only the store's connection: it is
        returned, shared, must not be used while the engine is in use, and its ``close()``
        leaves it open (the store closes it).
        """
        import sqlite_utils

        class _SharedDatabase(sqlite_utils.Database):
            def close(self) -> None:
                """The store's own connection: closing it would break the engine for good."""

        with self._lock:
            if self.path == ":memory:":
                return _SharedDatabase(self._connect())
            self._connect()  # the schema, before anyone looks
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        return sqlite_utils.Database(conn)

    def _connect(self, *, migrating: bool = False) -> sqlite3.Connection:
        """This process's connection, opened (and the schema migrated or checked) on first use;
        ``migrating``: for :meth:`migrate`, which creates the schema whatever ``create_on_use`` says."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        checked = not self._migrated and not self.create_on_use and not migrating
        if checked and self.path != ":memory:" and not os.path.exists(self.path):
            raise ConfigurationError(  # before connecting, which would create an empty file
                f"no database file at {os.path.abspath(self.path)}: check the database URL "
                "(`workflow-engine migrate` creates one)"
            )
        # After a fork the parent's connection is left alone (never closed here).
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if checked:  # before WAL is switched on: a file without our tables is left as it was
                self._require_schema(_SQLiteTx(conn))
            wal = self.path != ":memory:" and self._enable_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc
            raise
        self._conn = conn
        self._pid = os.getpid()
        self._wal = wal
        if not self._migrated and not migrating:
            try:
                self._migrate(conn)
            except BaseException:  # not cached: the next call tries (and refuses) again
                self._conn = None
                conn.close()
                raise
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> bool:
        """Switch to WAL; False if the database cannot have one (in memory, by URI). Switching
        needs a moment alone with the file, and SQLite's busy timeout does not cover it, so a
        first use racing another process's migration waits here."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return str(mode).lower() == "wal"
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _close_for_fork(self) -> None:
        """Close this process's connection to a file before ``os.fork()`` (see ``_before_fork``).
        Runs under the store's lock; a connection inside a transaction, or an in-memory
        database (closing it would lose it), is left open."""
        conn = self._conn
        if conn is None or self._pid != os.getpid() or self.path == ":memory:" or conn.in_transaction:
            return
        self._conn = None
        try:
            conn.close()
        except sqlite3.Error:  # pragma: no cover - closing an idle connection does not fail
            pass

    def close(self) -> None:
        with self._lock:  # no commit starts a thread meanwhile (the thread never takes this lock)
            self._checkpointer.stop()
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            if self.path == ":memory:":
                self._migrated = False  # the next connection is a new, empty database: give it the schema

    @contextmanager
    def transaction(self, *, write: bool = True, single: bool = False) -> Iterator[Tx]:
        # Every write takes BEGIN IMMEDIATE, one statement or several: a lone statement would
        # start as a reader, and SQLite fails its upgrade to writer at once if another process
        # wrote in between, instead of waiting.
        with store_call(), self._lock:
            conn = self._connect()
            try:
                if write:
                    try:
                        # Inside the try: an exception raised right after BEGIN returns (a handler's
                        # SIGALRM timeout while this waited for the lock) must not leave the
                        # process's connection in a write transaction, locking out every writer.
                        conn.execute("BEGIN IMMEDIATE")
                        yield _SQLiteTx(conn)
                        conn.execute("COMMIT")
                        if self._wal:
                            self._checkpointer.committed(conn)
                    except BaseException:
                        if conn.in_transaction:
                            conn.rollback()
                        raise
                elif single:
                    yield _SQLiteTx(conn)
                else:  # several reads: one snapshot for all (stats' figures agree), writers go on
                    try:
                        conn.execute("BEGIN")  # inside the try, as for writes: never left open
                        yield _SQLiteTx(conn)
                    finally:
                        if conn.in_transaction:
                            conn.rollback()  # it wrote nothing: ending it either way is the same
            except sqlite3.Error as exc:
                error = StoreUnavailable if _unavailable(exc) else StoreError
                raise error(f"SQLite database {self.path!r} failed: {exc}") from exc

    # -- migrations -------------------------------------------------------
    def migrate(self) -> int:
        with self._lock:
            conn = self._connect(migrating=True)
            try:
                return self._migrate(conn)
            except BaseException:
                if not self._migrated:  # not cached: the next call migrates (or refuses) again
                    self._conn = None
                    conn.close()
                raise

    def _migrate(self, conn: sqlite3.Connection) -> int:
        try:
            try:
                done = self._migrated_already(_SQLiteTx(conn))  # no writer lock taken for it
                if done is not None:
                    self._migrated = True
                    return done
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version "
                    "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
                )
                tx = _SQLiteTx(conn)
                current = int(tx.fetch(q.SCHEMA_VERSION, {})[0]["version"])
                version = self._apply_migrations(tx, current)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot migrate SQLite database {self.path!r}: {exc}") from exc
        self._migrated = True
        return version

    def run_script(self, tx: Tx, script: str) -> None:
        # executescript() would COMMIT the open transaction, so run statement by statement: each
        # ends at the first semicolon after which SQLite's own tokenizer finds it complete (a
        # trigger's body holds several).
        statement = ""
        for piece in script.split(";"):
            statement += piece + ";"
            if sqlite3.complete_statement(statement):
                if _has_sql(statement):
                    tx.fetch(statement, {})
                statement = ""
        if _has_sql(statement):
            raise ValueError(f"a migration script ends inside a statement: {statement[-200:]!r}")

    # -- encoding ---------------------------------------------------------
    def sql(self, text: str) -> str:
        return text

    def decode_json(self, value: Any) -> Any:
        return load_json(value) if isinstance(value, str) else value

    def encode_json(self, value: Any) -> Any:
        return compact_json(value)

    def encode_time(self, value: datetime) -> Any:
        # A write encodes each of its stamps two or three times (a claim's in its columns and its
        # event, a completion's in finished_at, updated_at and its event): the last text is kept.
        # Only for UTC's own tzinfo (the engine's stamps, and SQLite's rows as read): two datetimes
        # in it that are equal are one instant, which is not so in a zone whose clock goes back
        # (== ignores fold between two times in one zone).
        last, text = self._last_time
        if value.tzinfo is timezone.utc and value == last:
            return text
        text = value.astimezone(timezone.utc).isoformat(timespec="microseconds")
        self._last_time = (value, text)  # one assignment: a thread reads the pair whole
        return text

    def _savings(self, tx: Tx, cond: str, params: Mapping[str, Any]) -> dict[str, float]:
        # Summed here, each document parsed once. In SQL alone (json_each, kept from a malformed
        # document by json_valid and from an array by json_type) SQLite 3.40 parsed each one three
        # times, as its JSON functions keep nothing between calls: at 1M workflows, 267k with
        # savings, 1.05 s against 0.71 here (alternating, the twenty-fifth session). What Python's
        # parser refuses (not JSON, NaN, deeper than 200 levels, 4,300 digits, bytes that are not
        # UTF-8: only an operator's SQL writes those) is read by that SQL, as before, one by one.
        # Read in batches: no list of them all.
        assert isinstance(tx, _SQLiteTx)
        cursor = tx._run(self.savings_sql.format(since=cond), params)
        totals: dict[str, float] = {}
        while batch := cursor.fetchmany(1000):
            for workflow_id, doc in batch:
                try:
                    parsed = from_json(doc, allow_inf_nan=False)
                except ValueError:
                    _add_savings(totals, tx._run(self.savings_of_one_sql, {"id": workflow_id}))
                    continue
                if type(parsed) is dict:  # an array, a number, a string or null counts for nothing
                    _add_savings(totals, parsed.items())
        return totals

    def decode_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for key in _JSON_KEYS:
            value = out.get(key)
            if value is not None:
                out[key] = load_json(value)
        text: Any = None
        at: datetime | None = None
        for key in _TIME_KEYS:
            value = out.get(key)
            if value is not None:
                if value != text:  # a row's stamps are often one instant (a claim's, a completion's)
                    text, at = value, datetime.fromisoformat(value)
                out[key] = at
        return out


def _has_sql(statement: str) -> bool:
    """True unless ``statement`` holds only blank lines and ``--`` comments."""
    return any(
        line.strip() and not line.strip().startswith("--")
        for line in statement.rstrip().rstrip(";").splitlines()
    )
