"""The PostgreSQL store: psycopg 3 and a small connection pool per process.

Install with ``pip install ".[postgres]"`` in a checkout. A pool is never
used across a fork: a forked work-horse sees a new PID and opens its own
pool; the parent's connections are left untouched.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import weakref
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

from ..config import KEEPALIVE_COUNT, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL
from ..errors import ConfigurationError, MissingDependency, StoreError, StoreUnavailable
from ..models import compact_json, load_json
from . import queries as q
from .base import SQLStore, StoreBusy, Tx, store_call
from .urls import secrets

try:
    import psycopg
    from psycopg.rows import dict_row
    from psycopg.types.json import Jsonb, set_json_loads
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - exercised by the import test
    raise MissingDependency(
        'PostgreSQL support needs psycopg 3, the postgres extra: pip install "psycopg[binary]>=3.1" '
        '"psycopg-pool>=3.3" (or pip install ".[postgres]" in a checkout of workflow_engine)'
    ) from exc

#: Migrations run under this advisory lock, so that workers starting together do not race.
MIGRATION_LOCK_ID = 0x77666C6F  # "wflo"

log = logging.getLogger("workflow_engine.stores.postgres")

_SQL_CACHE: dict[str, str] = {}
_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK
_PIPELINE = psycopg.Pipeline.is_supported()  # libpq 14 or later
_ABANDONED: list[Any] = []  # pools inherited across a fork: kept alive, never closed in the child
#: Every connection this process opened (the pools', and reconcile's lock connections).
_OPENED: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
#: Held while a connection is made and recorded, and across ``os.fork()``: a child forked in
#: between would hold a socket that ``_OPENED`` does not know of yet.
_CONNECTING = threading.Lock()


class _Connection(psycopg.Connection[Any]):
    """A connection that a forked child can let go of (see :func:`_after_fork_in_child`), and
    that decodes ``jsonb`` with :func:`~workflow_engine.models.load_json` (psycopg's default is
    ``json.loads``: a quarter or more of a 50-row listing's time went to it)."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> _Connection:
        with _CONNECTING:
            conn = super().connect(conninfo, **kwargs)
            _OPENED.add(conn)
        set_json_loads(load_json, conn)  # this connection only: never the application's own
        return conn


#: Every PostgreSQL store of this process, so that a forked child gets fresh locks (see below).
_STORES: weakref.WeakSet[PostgresStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Give each store fresh locks (a thread of the parent may have held one at the fork, and two
    threads of the child must not each make their own), and let go of the child's copies of the
    parent's sockets.

    A session lives on the server as long as any process holds its socket. A work-horse
    forked while the parent held reconcile's advisory lock (the worker reconciles in a thread)
    kept that lock for as long as it ran once the parent was killed, and no reconcile anywhere
    could run; a parent killed inside a transaction left it open, its row locks held. Each
    inherited socket is pointed at /dev/null instead: the child never uses the parent's
    connections (it opens its own pool), and whatever closes them later closes nothing real."""
    if _CONNECTING.locked():  # taken by the fork (or by a parent's thread that is not in the child)
        _CONNECTING.release()
    for store in list(_STORES):
        store._lock, store._first_use = threading.Lock(), threading.Lock()
    inherited = [conn for conn in list(_OPENED) if not conn.closed]
    _OPENED.clear()
    if not inherited:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for conn in inherited:
            try:
                os.dup2(devnull, conn.pgconn.socket)
            except (psycopg.Error, OSError):  # already gone
                pass
    finally:
        os.close(devnull)


os.register_at_fork(
    before=_CONNECTING.acquire, after_in_parent=_CONNECTING.release, after_in_child=_after_fork_in_child
)


def _rows(cur: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
    result = cur.pgresult  # not cur.description, which builds a Column object per column each time
    if result is None or result.status != _TUPLES_OK:
        return []
    return list(cur.fetchall())


class _PgTx:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def fetch(self, sql: str, params: Mapping[str, Any], *, prepare: bool = True) -> list[dict[str, Any]]:
        return _rows(self.conn.execute(sql, params, prepare=prepare))

    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        return self.conn.execute(sql, params, prepare=True).rowcount

    def fetch_each(self, statements: Sequence[tuple[str, Mapping[str, Any]]]) -> list[list[dict[str, Any]]]:
        if len(statements) < 2 or not _PIPELINE:
            return [self.fetch(sql, params) for sql, params in statements]
        # Pipeline mode: every statement is sent, then one Sync, then the replies are read. The
        # server runs them in order, as it would one by one; an error fails the whole transaction,
        # as it would. 500 one-row INSERTs over loopback: 0.052 ms each, against 0.175 one by one.
        with self.conn.pipeline():  # leaving it sends the Sync and reads every reply
            cursors = [self.conn.execute(sql, params, prepare=True) for sql, params in statements]
        return [_rows(cur) for cur in cursors]


class PostgresStore(SQLStore):
    dialect = "postgres"
    schema_table_sql = "SELECT to_regclass('schema_version') IS NOT NULL AS found"
    retry_unavailable = True
    row_lock = "FOR UPDATE"
    event_in_update = True
    savings_sql = """
SELECT j.key AS key, SUM(j.value::numeric) AS total
  FROM workflows AS w,
       jsonb_each(CASE WHEN jsonb_typeof(w.calculated_savings) = 'object' THEN w.calculated_savings END) AS j
 WHERE w.calculated_savings IS NOT NULL AND jsonb_typeof(j.value) = 'number' {since}
 GROUP BY j.key
"""

    #: Seconds an :meth:`exclusive` lock outlives a stalled holder: see there.
    EXCLUSIVE_IDLE_TIMEOUT = 60.0
    #: Seconds a migration's statement waits for a table's lock before it lets go and tries again
    #: (see :meth:`migrate`), and seconds it goes on trying before it gives up.
    MIGRATION_LOCK_TIMEOUT = 2.0
    MIGRATION_PATIENCE = 300.0
    #: Seconds the pool goes on retrying a connection that failed before it gives up; the next
    #: call that needs one connects again at once (see :meth:`_get_pool`).
    RECONNECT_TIMEOUT = 1.0

    def __init__(
        self, url: str, *, pool_size: int = 4, connect_timeout: float = 5.0, create: bool = True
    ) -> None:
        if not isinstance(create, bool):
            raise ConfigurationError(f"create must be true or false, got {create!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigurationError(f"pool_size must be an integer of at least 1, got {pool_size!r}")
        if (
            isinstance(connect_timeout, bool)
            or not isinstance(connect_timeout, (int, float))
            or not 0 < connect_timeout < float("inf")
        ):
            raise ConfigurationError(
                f"connect_timeout must be a number of seconds > 0, got {connect_timeout!r}"
            )
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        #: Both are replaced in a forked child (see _after_fork_in_child): a thread of the parent
        #: may have held one at the fork. ``_first_use`` is held by the thread that migrates (or
        #: checks) the schema on this process's first use: the others wait there, holding none
        #: of the pool's connections, which it may need.
        self._lock = threading.Lock()
        self._first_use = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._pid = 0
        self._migrated = False
        #: Create the schema on first use; if False, refuse a database without it.
        self.create_on_use = create
        #: A first use's migration that gave up, and when: the threads that waited for it fail
        #: with it instead of each waiting as long again.
        self._gave_up: tuple[float, StoreBusy] | None = None
        self._in_use = _InUse()
        _STORES.add(self)

    def _get_pool(self) -> ConnectionPool:
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        with self._lock:
            inherited = self._pool is not None and self._pid != os.getpid()
            if inherited:
                _ABANDONED.append(self._pool)
                self._pool = None
            if self._pool is None:
                if not inherited:  # a forked work-horse's parent connected to this URL already
                    self._probe()
                self._in_use = _InUse()
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    # Autocommit: a lone statement (a compare-and-set with its event, a read) is
                    # sent without BEGIN and COMMIT, two round trips fewer; several run in
                    # conn.transaction(). Nothing may turn it off on a pooled connection.
                    kwargs={
                        "row_factory": dict_row,
                        "connect_timeout": max(1, int(self.connect_timeout)),
                        "autocommit": True,
                        **_KEEPALIVES,
                    },
                    timeout=self.connect_timeout,
                    # psycopg_pool retries a failed connection 1, 2, 4, 8, … s apart: after an outage
                    # a worker stayed off the database about as long again (28 s after one of 40 s),
                    # while its lease ran out and reconcile, connecting afresh, took its workflow to
                    # run it twice. Given up after this long, a connection is made again on demand,
                    # at the next call.
                    reconnect_timeout=self.RECONNECT_TIMEOUT,
                    # A connection whose backend was terminated is replaced at checkout, not handed out.
                    check=self._check_connection,
                    configure=_configure,
                    connection_class=_Connection,  # for a forked child to let go of (_after_fork_in_child)
                    open=False,
                    name="workflow_engine",
                )
                try:
                    self._pool.open(wait=True, timeout=self.connect_timeout)
                except Exception as exc:
                    pool, self._pool = self._pool, None
                    pool.close()
                    raise StoreUnavailable(
                        f"cannot connect to PostgreSQL: {_safe(exc, self.url)}"
                    ) from _cause(exc, self.url)
                self._pid = os.getpid()
            pool = self._pool
        return pool

    def _first_use_of(self, pool: ConnectionPool, asked: float) -> None:
        """This process's first use: refuse a database without our tables (``create=False``),
        then migrate. A migration that gave up after this thread ``asked`` fails it too."""
        gave_up = self._gave_up
        if gave_up is not None and gave_up[0] >= asked:
            raise StoreBusy(str(gave_up[1]))
        if not self.create_on_use:
            self._require(pool)
        try:
            self.migrate()
        except StoreBusy as exc:
            self._gave_up = (time.monotonic(), exc)
            raise

    def _pool_timeout(self, pool: ConnectionPool, exc: PoolTimeout) -> StoreUnavailable:
        """No connection within the pool's timeout: every one held by this process's calls
        (StoreBusy, not retried: nothing was sent, and a retry would wait as long again), or
        none could be opened (the server is down or refuses: StoreUnavailable, retried)."""
        if self._in_use.count >= self.pool_size:
            # Held, but are they being answered? A server that stopped answering (a frozen host,
            # a network cut) holds them too: a new connection tells the two apart.
            try:
                self._probe(timeout=min(self.connect_timeout, 2.0))
            except StoreUnavailable as down:
                return StoreUnavailable(
                    f"PostgreSQL is unavailable: no connection of the pool came free in "
                    f"{self.connect_timeout:g} s, and a new one failed too ({down})"
                )
            return StoreBusy(
                f"all {self.pool_size} of this process's connections to PostgreSQL stayed in use for "
                f"{self.connect_timeout:g} s (pool_size={self.pool_size}): raise pool_size, or look for "
                "long transactions and waits on a row lock"
            )
        return StoreUnavailable(f"PostgreSQL is unavailable: {_safe(exc, self.url)}")

    def _check_connection(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check at checkout, with a round trip only when the connection may be dead.

        An idle connection has nothing to read. A server that ended its session (a restart, a
        crashed backend, ``pg_terminate_backend``) sent its last message or closed the socket, and
        either makes the socket readable. Only then, or when libpq already knows the connection is
        broken, is the server asked (psycopg_pool's own check, an empty query). A live connection
        costs one ``poll`` instead of a round trip.

        A dead connection is replaced instead of handed out, and the pool's other idle connections
        are checked at once: after a restart they are all dead, and the pool waits longer after
        each failed check (1 s, 2 s, …), so that a pool of four took its whole timeout and failed
        the call instead of reaching a new connection.

        What this cannot see is a server that vanished without closing anything (its address
        moved to another host, which has never heard of the connection): the socket stays quiet.
        The first statement sent on such a connection fails, and :meth:`transaction` then has
        the idle connections checked the same way; the empty query would have drawn the new
        host's reset at checkout instead, a round trip on every call to save one failed call.
        """
        if conn.pgconn.status == psycopg.pq.ConnStatus.OK and not _readable(conn.pgconn.socket):
            return  # (a closed connection's status is BAD)
        try:
            ConnectionPool.check_connection(conn)
        except Exception:
            _sweep(self._pool, self.connect_timeout)
            raise

    def _probe(self, timeout: float | None = None) -> None:
        """Connect once, directly, before building the pool: a wrong database name, role or
        password fails at once with the server's own words, where the pool would retry it
        for its whole timeout and then say only that it could not fill itself. Not done in a
        forked child whose parent's pool reached the URL (a work-horse, once a job)."""
        seconds = self.connect_timeout if timeout is None else timeout
        try:
            _Connection.connect(self.url, connect_timeout=max(1, int(seconds)), **_KEEPALIVES).close()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {_safe(exc, self.url)}") from _cause(
                exc, self.url
            )

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None

    @contextmanager
    def transaction(self, *, write: bool = True, single: bool = False) -> Iterator[Tx]:
        with store_call():  # a handler's timeout waits: see store_call
            pool = self._get_pool()
            if not self._migrated:
                asked = time.monotonic()
                with self._first_use:
                    if not self._migrated:  # not done by another thread while this one waited
                        self._first_use_of(pool, asked)
            conn: psycopg.Connection[Any] | None = None
            try:
                with pool.connection() as conn, self._in_use:
                    if single:  # autocommit: the statement is its own transaction, one round trip
                        yield _PgTx(conn)
                    else:
                        with conn.transaction():  # BEGIN … COMMIT
                            if not write:  # several reads: one snapshot for all (stats' figures agree)
                                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                            yield _PgTx(conn)
            except PoolTimeout as exc:
                raise self._pool_timeout(pool, exc) from _cause(exc, self.url)
            except psycopg.Error as exc:
                if conn is not None and conn.broken:  # lost under the call: the idle ones may be too
                    _sweep(pool, self.connect_timeout)
                if _stale_plan(exc):
                    # Another session changed the type of a column a prepared statement returns
                    # (an ALTER TABLE, a migration): every connection's plans predate it, and
                    # PostgreSQL will not re-plan them. New connections, and the call once more.
                    drain = getattr(pool, "drain", None)  # psycopg_pool 3.3 and later
                    if drain is not None:
                        drain()
                    raise StoreUnavailable(
                        "a column of the workflow tables changed type under this process's prepared "
                        f"statements; its connections are replaced ({_safe(exc, self.url)})"
                    ) from _cause(exc, self.url)
                raise _store_error(exc, url=self.url) from _cause(exc, self.url)
            except Exception as exc:
                _raise_pool_error(exc, self.url)
                raise

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """An advisory lock, held for the duration of the block on a connection of its own: not one
        of the pool's, which the block's own work needs (with ``pool_size=1``, all of them).

        It is a transaction's lock, in a transaction that stays idle while the block works on other
        connections, under ``idle_in_transaction_session_timeout``: if this process stalls (a
        ``SIGSTOP``, a paused VM) for longer than :attr:`EXCLUSIVE_IDLE_TIMEOUT`, the server ends
        the session and the lock with it, and another process may take its turn. A block that
        runs longer than that loses the lock too, harmlessly: the lock only saves work. Closing
        the connection releases the lock, whatever happened in the block."""
        key = zlib.crc32(name.encode()) & 0x7FFFFFFF
        try:
            conn = _Connection.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)), **_KEEPALIVES
            )
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {_safe(exc, self.url)}") from _cause(
                exc, self.url
            )
        try:  # not `with conn`, which would commit on the way out: on a session the server ended, that raises
            try:
                _configure(conn)
                timeout_ms = max(1, int(self.EXCLUSIVE_IDLE_TIMEOUT * 1000))
                conn.execute("BEGIN")
                conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {timeout_ms}")
                # The key written out, not bound: a statement with parameters keeps a snapshot
                # open in the idle transaction, which would hold back VACUUM for the whole pass.
                got = conn.execute(f"SELECT pg_try_advisory_xact_lock({int(key)})").fetchone()
            except psycopg.Error as exc:
                raise _store_error(exc, url=self.url) from _cause(exc, self.url)
            yield bool(got is not None and got[0])
        finally:
            conn.close()

    def migrate(self) -> int:
        """Apply the pending migrations, under an advisory lock so that one process does.

        A statement of a migration that changes a table (``ALTER TABLE``, ``DROP INDEX``) waits
        for the queries already using it, and PostgreSQL queues every later query of that table
        behind it: a long report would stall every process. So each try waits for a table's lock
        at most :attr:`MIGRATION_LOCK_TIMEOUT` seconds, then undoes its work (a savepoint: the
        queries waiting behind it go on), waits as long again and tries once more, keeping the
        advisory lock. :attr:`MIGRATION_PATIENCE` seconds after it started, its wait for the
        advisory lock (another process's migration) included, it gives up with StoreBusy, naming
        the sessions that hold its tables' locks."""
        pool = self._get_pool()
        started = time.monotonic()
        deadline = started + self.MIGRATION_PATIENCE  # waiting for another's migration counts too
        try:
            with store_call(), pool.connection() as conn, self._in_use, conn.transaction():
                done = self._migrated_already(_PgTx(conn))
            if done is not None:
                self._migrated = True
                return done
            with store_call(), pool.connection() as conn, self._in_use, conn.transaction():
                tx = _PgTx(conn)
                # A migrating process that stalls (SIGSTOP, a paused VM) between two statements
                # must not hold the lock, and the tables it locked, for good: the server ends its
                # session, and the others' migrations go on.
                idle_ms = max(1, int(self.EXCLUSIVE_IDLE_TIMEOUT * 1000))
                conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {idle_ms}")
                # An operator's statement_timeout (in the URL, or set on the database or role) is
                # for the app's queries: a migration's waits are bounded below, and its DDL on a
                # large table may take longer.
                conn.execute("SET LOCAL statement_timeout = 0")
                # Another process's migration, running: waited for until the deadline.
                left_ms = max(1, int((deadline - time.monotonic()) * 1000))
                conn.execute(f"SET LOCAL lock_timeout = {left_ms}")
                try:
                    tx.fetch("SELECT pg_advisory_xact_lock(%(id)s)", {"id": MIGRATION_LOCK_ID})
                except psycopg.errors.LockNotAvailable:
                    raise StoreBusy(
                        f"cannot migrate PostgreSQL: another process's migration held the migration lock "
                        f"for the {self.MIGRATION_PATIENCE:g} s this one waited; try again once it has ended"
                    ) from None
                timeout_ms = max(1, int(self.MIGRATION_LOCK_TIMEOUT * 1000))
                conn.execute(f"SET LOCAL lock_timeout = {timeout_ms}")
                said = 0.0  # when it last said it waits: at most every 30 s
                while True:
                    try:
                        with conn.transaction():  # a savepoint: a try that waited too long undoes its work
                            version = self._migrate_locked(conn)
                        break
                    except psycopg.errors.LockNotAvailable:
                        if time.monotonic() >= deadline:
                            raise StoreBusy(
                                f"cannot migrate PostgreSQL: a table the migration changes stayed in use; "
                                f"gave up {time.monotonic() - started:.0f} s after it started "
                                f"(MIGRATION_PATIENCE {self.MIGRATION_PATIENCE:g} s); {_lock_holders(conn)}. "
                                "Run `workflow-engine migrate` again when they have ended"
                            ) from None
                        if time.monotonic() - said >= 30:
                            said = time.monotonic()
                            log.warning(
                                "a migration waits for a table that open transactions use; %s; trying again",
                                _lock_holders(conn),
                            )
                        time.sleep(self.MIGRATION_LOCK_TIMEOUT)
        except PoolTimeout as exc:
            raise self._pool_timeout(pool, exc) from _cause(exc, self.url)
        except psycopg.Error as exc:
            raise _store_error(exc, "cannot migrate PostgreSQL", url=self.url) from _cause(exc, self.url)
        self._migrated = True
        return version

    def _require(self, pool: ConnectionPool) -> None:
        """A store opened with ``create=False``: refuse a database without our tables (see
        ``_require_schema``)."""
        try:
            with pool.connection() as conn, self._in_use, conn.transaction():
                self._require_schema(_PgTx(conn))
        except PoolTimeout as exc:
            raise self._pool_timeout(pool, exc) from _cause(exc, self.url)
        except psycopg.Error as exc:
            raise _store_error(exc, url=self.url) from _cause(exc, self.url)
        except Exception as exc:
            _raise_pool_error(exc, self.url)
            raise

    def _migrate_locked(self, conn: psycopg.Connection[Any]) -> int:
        """The migrations, under the advisory lock: the schema_version table where none is found,
        then each pending script."""
        tx = _PgTx(conn)
        # Created only where none is found: a second one, in a schema earlier on the
        # search_path (the role's own), would take the versions that the tables'
        # migrations record. Read unprepared: a plan prepared by the look above would
        # still name the table it found then.
        if not tx.fetch(self.schema_table_sql, {}, prepare=False)[0]["found"]:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
            )
        current = int(tx.fetch(self.sql(q.SCHEMA_VERSION), {}, prepare=False)[0]["version"])
        return self._apply_migrations(tx, current)

    def run_script(self, tx: Tx, script: str) -> None:
        assert isinstance(tx, _PgTx)
        tx.conn.execute(script.encode())  # a migration script: several statements, no parameters

    def sql(self, text: str) -> str:
        cached = _SQL_CACHE.get(text)
        if cached is None:
            cached = _SQL_CACHE[text] = q.to_pyformat(text)
        return cached

    def decode_json(self, value: Any) -> Any:
        return value

    def encode_json(self, value: Any) -> Any:
        return Jsonb(value, dumps=compact_json)

    def encode_time(self, value: datetime) -> Any:
        return value

    def decode_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return row if type(row) is dict else dict(row)  # psycopg's values are the models' already


def _sweep(pool: ConnectionPool | None, timeout: float) -> None:
    """Have ``pool`` check its idle connections now, replacing the dead ones: one was just found
    dead, and after a restart or a failover they all are.

    On a thread of its own, waited for (up to ``timeout``): ``pool.check()`` holds the idle
    connections in a list of its own while it checks them, and an exception raised in the
    caller's thread meanwhile (a KeyboardInterrupt) would drop them for good, the pool still
    counting them and never growing back."""
    if pool is None:
        return

    def check() -> None:
        with suppress(Exception):
            pool.check()

    sweeper = threading.Thread(target=check, name="workflow_engine-pool-check", daemon=True)
    sweeper.start()
    sweeper.join(timeout)


def _readable(fd: int) -> bool:
    """Whether ``fd`` has something to read (or an error or hang-up to report), without waiting."""
    if not hasattr(select, "poll"):  # pragma: no cover - Windows
        return bool(select.select([fd], [], [fd], 0)[0])
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)  # POLLERR and POLLHUP are always reported
    return bool(poller.poll(0))


#: TCP keepalives (libpq's), so that a connection whose server vanished without closing it (a
#: failover, a dropped network) is found dead within about a minute, not the system's two hours:
#: a reconcile thread or a heartbeat waiting on it would hang until then. Keepalives probe only a
#: quiet connection; one whose statement went unacknowledged would retransmit for about 15
#: minutes instead, so sent data unacknowledged for 60 s ends it too (``TCP_USER_TIMEOUT``).
_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": KEEPALIVE_IDLE,
    "keepalives_interval": KEEPALIVE_INTERVAL,
    "keepalives_count": KEEPALIVE_COUNT,
    "tcp_user_timeout": 60_000,  # milliseconds
}
#: Each connection's session settings, one round trip when it is made:
#: - the server's keepalives too, not only the client's above: a host that vanished (power lost, a
#:   partition) while it held the reconcile lock or a migration's would otherwise keep its session,
#:   and the lock, for the server's default (two hours and more) while nothing tells it the peer is
#:   gone; with these it is found dead within about a minute. (Ignored on a Unix socket.)
#: - the ISO date style, the only one psycopg parses: a database or role set to another (or the
#:   client's PGDATESTYLE) made every read fail with NotImplementedError, after a write had committed.
#: - the UTC time zone: psycopg then gives each timestamp ``timezone.utc`` itself, which the models
#:   take as it is, where the server's default (``Etc/UTC`` on Debian, or a local zone) made them
#:   convert every timestamp of every row read (nine a workflow). The stored instants are the same.
_SESSION = (
    f"SELECT set_config('tcp_keepalives_idle', '{KEEPALIVE_IDLE}', false),"
    f" set_config('tcp_keepalives_interval', '{KEEPALIVE_INTERVAL}', false),"
    f" set_config('tcp_keepalives_count', '{KEEPALIVE_COUNT}', false), set_config('datestyle', 'ISO', false),"
    " set_config('timezone', 'UTC', false)"
)


def _raise_pool_error(exc: Exception, url: str) -> None:
    """Raise StoreUnavailable for an error of psycopg_pool's that is no driver error (the pool
    closed under the call, say); return for any other."""
    if type(exc).__module__.startswith("psycopg_pool"):
        raise StoreUnavailable(f"PostgreSQL is unavailable: {_safe(exc, url)}") from _cause(exc, url)


def _stale_plan(exc: psycopg.Error) -> bool:
    """The server refused a prepared statement whose result's columns changed type ("cached plan
    must not change result type", in the server's language): told by the server function that
    raised it, which no other feature_not_supported error names."""
    return exc.sqlstate == "0A000" and exc.diag.source_function == "RevalidateCachedQuery"


class _InUse:
    """How many of a pool's connections this process's calls hold: a pool that times out with
    all of them held is busy, not down (while it reconnects, it counts connections it remakes)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.count -= 1


#: The tables the migrations change.
_TABLES = ("workflows", "workflow_events", "councils", "workflow_votes", "schema_version")


def _lock_holders(conn: psycopg.Connection[Any]) -> str:
    """The other sessions that hold a lock on our tables, by pid, state, client and the age of
    their transaction (not their queries, which may hold data): what a migration waits for. A
    role without ``pg_read_all_stats`` sees no state of other roles' sessions."""
    rows = conn.execute(
        "SELECT a.pid, a.state, a.application_name, "
        "extract(epoch FROM clock_timestamp() - a.xact_start)::int AS age "
        "FROM pg_stat_activity AS a WHERE a.pid <> pg_backend_pid() AND a.pid IN ("
        "SELECT l.pid FROM pg_locks AS l JOIN pg_class AS c ON c.oid = l.relation "
        "WHERE l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND c.relname = ANY(%s)) ORDER BY a.xact_start NULLS LAST LIMIT 3",
        (list(_TABLES),),
    ).fetchall()
    if not rows:
        return "no session this role may see holds them now"
    shown = ", ".join(
        f"pid {r['pid']} ({r['state'] or 'state hidden'}"
        f"{', ' + r['application_name'] if r['application_name'] else ''}, "
        f"{'?' if r['age'] is None else r['age']} s)"
        for r in rows
    )
    return f"the sessions that hold them: {shown}"


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Apply :data:`_SESSION` to a new connection (autocommit: no transaction is left open)."""
    conn.execute(_SESSION)


#: The SQLSTATEs of a statement the server gave up on while the database was busy, and why.
_BUSY = {
    "57014": "the statement was canceled (statement_timeout, or by an administrator)",
    "55P03": "the statement waited longer than lock_timeout for a lock",
}


def _store_error(exc: psycopg.Error, what: str | None = None, *, url: str | None = None) -> StoreError:
    """The store's error for a driver error: StoreUnavailable when the server could not be
    reached or stopped serving (worth retrying later), StoreError for a statement it refused.

    Unavailable: no SQLSTATE (the client lost the connection), or a connection exception (08),
    insufficient resources (53) or an operator intervention (57P). Busy (StoreBusy: not retried at
    once, a retry would wait as long again): a statement the server canceled (57014: the
    ``statement_timeout`` an operator set, ``pg_cancel_backend``) or one that waited longer than
    the ``lock_timeout`` an operator set for a lock (55P03). psycopg calls many refusals
    "operational" too: a deadlock, an index row too large."""
    state = exc.sqlstate
    if state in _BUSY:
        return StoreBusy(f"{what or 'PostgreSQL is busy'}: {_BUSY[state]}: {_safe(exc, url)}")
    if isinstance(exc, psycopg.OperationalError) and (state is None or state.startswith(("08", "53", "57P"))):
        return StoreUnavailable(f"{what or 'PostgreSQL is unavailable'}: {_safe(exc, url)}")
    return StoreError(f"{what or 'PostgreSQL failed'}: {_safe(exc, url)}")


def _cause(exc: BaseException, url: str | None) -> BaseException | None:
    """``exc``, to chain as the store's error's cause, with every secret of ``url`` in the text of
    it and of the errors it chains written ``***`` (a traceback, a logger's ``exc_info`` or an
    error tracker prints them all); None, to chain nothing, if one would still show."""
    hidden = secrets(url) if url else []
    if not hidden:
        return exc
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.args = tuple(_masked(arg, hidden) if isinstance(arg, str) else arg for arg in link.args)
        if any(secret in str(link) or secret in repr(link) for secret in hidden):
            return None
        link = link.__cause__ or link.__context__
    return exc


def _masked(text: str, hidden: list[str]) -> str:
    for secret in hidden:
        text = text.replace(secret, "***")
    return text


def _safe(exc: BaseException, url: str | None = None) -> str:
    """The first line of the driver's message, with every secret of ``url`` in it written
    ``***``: libpq quotes a token of the connection string it cannot parse (a password with a
    stray ``%``, say), and a pool's error may repeat the string."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _masked(text, secrets(url) if url else [])
