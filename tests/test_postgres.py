"""PostgreSQL-specific behaviour: many processes and machines against one database."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from workflow_engine import StoreUnavailable, Workflow, WorkflowEngine, WorkflowStatus, cancel_requested
from workflow_engine.errors import ConfigurationError, MissingDependency, StoreError
from workflow_engine.models import utcnow
from workflow_engine.stores import open_store
from workflow_engine.stores.base import StoreBusy

from support import APPS, RedisServer, a_workflow, free_port, start_worker, successes, wait_for

S = WorkflowStatus


def test_a_missing_driver_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "psycopg" or name.startswith(("psycopg.", "workflow_engine.stores.postgres")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    needed = r'pip install "psycopg\[binary\]>=3.1" "psycopg-pool>=3.3" \(or pip install "\.\[postgres\]"'
    with pytest.raises(MissingDependency, match=needed):
        open_store("postgresql://postgres@127.0.0.1:5432/test")


def test_an_unreachable_server_raises_store_unavailable_quickly_without_the_password() -> None:
    url = f"postgresql://app:s3cret@127.0.0.1:{free_port()}/db"
    store = open_store(url, connect_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match="cannot connect to PostgreSQL") as info:
        store.get("x")
    assert time.monotonic() - start < 5
    assert "s3cret" not in str(info.value)


def test_a_password_the_driver_cannot_parse_is_not_repeated_in_the_error() -> None:
    # libpq quotes the token it cannot percent-decode: here, the whole password.
    store = open_store(f"postgresql://app:50%off-S3cret@127.0.0.1:{free_port()}/db", connect_timeout=1.0)
    with pytest.raises(StoreUnavailable) as info:
        store.get("x")
    assert "S3cret" not in str(info.value) and "***" in str(info.value)
    # Nor in the driver's error chained as its cause, which a traceback, a logger's exc_info or an
    # error tracker prints: masked there too, and still chained.
    import traceback

    assert info.value.__cause__ is not None and "***" in str(info.value.__cause__)
    assert "S3cret" not in "".join(traceback.format_exception(info.value))


def test_an_engines_repr_hides_the_database_password() -> None:
    engine = WorkflowEngine(
        database_url="postgresql://app:s3cret@127.0.0.1:5432/db", redis_url="fakeredis://"
    )
    assert "s3cret" not in repr(engine) and "app:***@127.0.0.1" in repr(engine)


@pytest.mark.parametrize("pool_size", [0, -1, "4", 2.5, True])
def test_a_pool_size_that_is_not_a_positive_integer_is_refused(pool_size: object) -> None:
    with pytest.raises(ConfigurationError, match="pool_size must be an integer"):
        open_store("postgresql://postgres@127.0.0.1:5432/test", pool_size=pool_size)


def test_reconcile_works_with_a_pool_of_one_connection(pg_url: str) -> None:
    # The reconcile lock is held on a connection of its own, not on the pool's only one.
    engine = WorkflowEngine(
        store=open_store(pg_url, pool_size=1, connect_timeout=2.0), redis_url="fakeredis://"
    )
    engine.register_handler("t", "we_test_handlers:noop")
    engine.create_workflow(workflow_type_id="t")
    start = time.monotonic()
    assert engine.reconcile().total == 0
    assert time.monotonic() - start < 2
    engine.close()


def test_a_database_that_does_not_exist_is_named_at_once(pg_url: str) -> None:
    url = pg_url.rsplit("/", 1)[0] + "/no_such_database_here"
    store = open_store(url)
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match='database "no_such_database_here" does not exist'):
        store.get("x")
    assert time.monotonic() - start < 3  # not the pool's whole timeout, twice


def _terminate_the_others(pg_url: str, *, wait: bool = False) -> None:
    """End every other session on the database, as a restart would; with ``wait``, return only
    once they are all gone (otherwise the next statement may race the backends' exit)."""
    others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"SELECT pg_terminate_backend(pid) {others}")
        if wait:
            wait_for(lambda: admin.execute(f"SELECT count(*) {others}").fetchone() == (0,), timeout=10)


def test_a_terminated_backend_is_replaced_and_the_next_call_succeeds(pg_url: str) -> None:
    engine = WorkflowEngine(database_url=pg_url, redis_url="fakeredis://")
    wid = engine.create_workflow(workflow_type_id="t")
    _terminate_the_others(pg_url)
    assert engine.get_workflow(wid).status is S.PENDING
    assert engine.update_status(wid, "cancelled").status is S.CANCELLED
    engine.close()


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
def test_every_pooled_connection_gives_up_on_data_unacknowledged_for_a_minute(pg_url: str) -> None:
    """Keepalives probe only a quiet connection: a statement sent to a server that vanished
    would wait through TCP's retransmissions (about 15 minutes) without a user timeout."""
    engine = WorkflowEngine(database_url=pg_url, redis_url="fakeredis://")
    engine.create_workflow(workflow_type_id="t")
    with engine.store._get_pool().connection() as conn:  # type: ignore[attr-defined]
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 60_000
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        finally:
            sock.close()
    engine.close()


def test_after_every_pooled_connection_dies_the_next_create_gets_a_new_one_at_once(pg_url: str) -> None:
    """A restart ends every session at once. The pool waits longer after each failed check (1 s,
    then 2 s), so a pool of four dead connections took its whole 5 s timeout and failed the call,
    and ``create_workflow`` is not retried. The first dead one now has the others checked too."""
    engine = WorkflowEngine(database_url=pg_url, redis_url="fakeredis://")
    pool = engine.store._get_pool()  # type: ignore[attr-defined]
    held = [pool.getconn() for _ in range(4)]  # grow the pool to four
    for conn in held:
        pool.putconn(conn)
    engine.create_workflow(workflow_type_id="t")
    _terminate_the_others(pg_url, wait=True)
    start = time.monotonic()
    wid = engine.create_workflow(workflow_type_id="t")
    assert time.monotonic() - start < 1.0
    assert engine.get_workflow(wid).status is S.PENDING
    engine.close()


def test_an_interrupt_while_the_idle_connections_are_checked_loses_none_of_them(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's check holds its idle connections in a list of its own while it checks them. An
    exception raised in the caller's thread meanwhile (here a KeyboardInterrupt, from a signal)
    dropped them for good, the pool still counting them, so that it never grew back: the check
    now runs on a thread of its own."""
    from psycopg_pool import ConnectionPool

    engine = WorkflowEngine(database_url=pg_url, redis_url="fakeredis://")
    pool = engine.store._get_pool()  # type: ignore[attr-defined]
    held = [pool.getconn() for _ in range(4)]
    for conn in held:
        pool.putconn(conn)
    wid = engine.create_workflow(workflow_type_id="t")
    check_one = ConnectionPool.check_connection

    def slow_check_one(conn: Any) -> None:
        time.sleep(0.1)
        check_one(conn)

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(slow_check_one))
    _terminate_the_others(pg_url, wait=True)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.25)  # the checkout's check fails at 0.1 s; the sweep runs on
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.get_workflow(wid)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    monkeypatch.undo()
    at_once = [pool.getconn(timeout=5) for _ in range(4)]  # all four are there (or come back)
    for conn in at_once:
        pool.putconn(conn)
    assert engine.get_workflow(wid).status is S.PENDING
    engine.close()


class _LostWrite:
    """What :func:`_lose_the_first_write` did: whether the failure happened, and the timer that
    commits the first attempt, which :meth:`close` waits for before closing that connection (a
    commit on a closed connection fails in the timer's thread, inside whichever test runs then)."""

    def __init__(self, first: psycopg.Connection[Any]) -> None:
        self.first = first
        self.happened = False
        self.timer: threading.Timer | None = None

    def close(self) -> None:
        if self.timer is not None:
            self.timer.join()
        self.first.close()


def _lose_the_first_write(
    store: Any, first: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> _LostWrite:
    """The store's first write fails with StoreUnavailable, as if its connection were lost on this
    side only, while the server still ran it: in ``first``, open and not committed. ``first``
    commits half a second into the retry (once, whatever else the retry writes), while the retry
    waits on its rows."""
    real = store.transaction
    loss = _LostWrite(first)

    @contextlib.contextmanager
    def transaction(*, write: bool = True, single: bool = False) -> Any:
        if write and not loss.happened:
            loss.happened = True
            raise StoreUnavailable("the connection failed on this side, while the server ran the write")
        if write and loss.timer is None:
            loss.timer = threading.Timer(0.5, first.commit)
            loss.timer.start()
        with real(write=write, single=single) as tx:
            yield tx

    monkeypatch.setattr(store, "transaction", transaction)
    return loss


def test_an_insert_retried_while_its_first_attempt_still_commits_returns_that_workflow(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection failed after the INSERT was sent, before the server committed it (a proxy in
    between dropped). The retry's INSERT waits for that transaction, then finds the row it
    wrote: created, with its event written once, not a primary-key error."""
    from workflow_engine.stores import queries as q
    from workflow_engine.stores.base import NewEvent

    store = open_store(pg_url)
    store.migrate()
    wf = a_workflow(workflow_type_id="t")
    first = psycopg.connect(pg_url)  # the first attempt, still open on the server
    first.execute(store.sql(q.INSERT_WORKFLOW), store._workflow_params(wf))  # type: ignore[attr-defined]
    first.execute(
        store.sql(q.INSERT_EVENT),  # type: ignore[attr-defined]
        store._event_params(wf, NewEvent(None, S.PENDING)),  # type: ignore[attr-defined]
    )
    lost = _lose_the_first_write(store, first, monkeypatch)
    try:
        [(stored, created)] = store.insert([wf])
    finally:
        lost.close()
    assert lost.happened and created and stored.id == wf.id
    assert [e.to_status for e in store.events(wf.id)] == [S.PENDING]
    store.close()


def test_a_claim_retried_while_its_first_attempt_still_waits_on_the_server_is_won_not_lost(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection failed on this side only, while the claim still ran on the server (waiting on
    a row lock). The look for a landed claim finds nothing yet; the retry then waits behind the
    first attempt, and misses once that commits. The claim is won, with one event, not reported lost
    (which left the workflow running with no worker until its lease ran out)."""
    from datetime import timedelta

    from workflow_engine.stores import queries as q
    from workflow_engine.stores.base import Change, NewEvent

    store = open_store(pg_url)
    store.migrate()
    [(wf, _)] = store.insert([a_workflow(workflow_type_id="t")])
    now = utcnow()
    queued = {"status": S.QUEUED, "job_id": "job-1", "updated_at": now}
    [moved] = store.apply([Change(wf.id, S.PENDING, queued, NewEvent(S.PENDING, S.QUEUED))])
    assert moved is not None
    now, lease = utcnow(), utcnow() + timedelta(seconds=30)
    params = {
        "id": wf.id,
        "job_id": "job-1",
        "worker": "w",
        "now": store.encode_time(now),  # type: ignore[attr-defined]
        "lease_until": store.encode_time(lease),  # type: ignore[attr-defined]
    }
    sql, params = store._one_statement(  # type: ignore[attr-defined]
        q.CLAIM.strip(), params, NewEvent(S.QUEUED, S.RUNNING, "claimed by w")
    )
    first = psycopg.connect(pg_url)  # the first attempt, still open on the server
    assert first.execute(store.sql(sql), params).fetchall()  # type: ignore[attr-defined]
    lost = _lose_the_first_write(store, first, monkeypatch)
    try:
        claimed = store.claim(wf.id, job_id="job-1", worker="w", now=now, lease_until=lease)
    finally:
        lost.close()
    assert lost.happened and claimed is not None
    assert (claimed.status, claimed.job_id, claimed.attempts) == (S.RUNNING, "job-1", 1)
    assert [e.to_status for e in store.events(wf.id)] == [S.PENDING, S.QUEUED, S.RUNNING]
    store.close()


def test_a_cancel_request_retried_while_its_first_attempt_still_runs_on_the_server_is_recorded_once(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change that leaves the status as it is (running -> running) would match again on its retry,
    after its first attempt landed: recorded twice. The cancel request (as ``engine.cancel`` makes
    it) holds only while no cancel is requested, so its retry misses and finds the first."""
    from workflow_engine.stores.base import Change, NewEvent

    store = open_store(pg_url)
    store.migrate()
    [(wf, _)] = store.insert([a_workflow(status=S.RUNNING, job_id="job-1", attempts=1)])
    now = utcnow()
    request = Change(
        wf.id,
        S.RUNNING,
        {"cancel_requested_at": now, "updated_at": now},
        NewEvent(S.RUNNING, S.RUNNING, "cancel requested"),
        expected_job_id="job-1",
        cancel_not_requested=True,
    )
    first = psycopg.connect(pg_url)  # the first attempt, still open on the server
    sql, params = store._update(request)  # type: ignore[attr-defined]
    assert first.execute(*store._one_statement(sql, params, request.event)).fetchall()  # type: ignore[attr-defined]
    lost = _lose_the_first_write(store, first, monkeypatch)
    try:
        [marked] = store.apply([request])
    finally:
        lost.close()
    assert lost.happened and marked is not None and marked.cancel_requested_at == now
    assert [e.detail for e in store.events(wf.id)].count("cancel requested") == 1
    store.close()


class _Relay:
    """A TCP relay to PostgreSQL that can play a failover to another host: after :meth:`failover`
    the server's side of every relayed connection is closed, the client's side hears nothing,
    and the first bytes a client sends on one get a reset, as from a host that never had such
    a connection. New connections are relayed as before (the new primary)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.pairs, self.lock = upstream, [], threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            pair = {"client": client, "server": socket.create_connection(self.upstream), "dead": False}
            with self.lock:
                self.pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair, "client", "server"), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, "server", "client"), daemon=True).start()

    def _pump(self, pair: dict[str, Any], source: str, sink: str) -> None:
        while True:
            try:
                data = pair[source].recv(65536)
            except OSError:
                return
            if pair["dead"]:
                if source == "client":  # a reset: close at once, without lingering
                    pair["client"].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    pair["client"].close()
                return
            try:
                if not data:
                    pair[sink].shutdown(socket.SHUT_WR)
                    return
                pair[sink].sendall(data)
            except OSError:
                return

    def failover(self) -> None:
        with self.lock:
            for pair in self.pairs:
                pair["dead"] = True
                pair["server"].close()  # the old server's sessions end; the client is not told

    def close(self) -> None:
        self.server.close()
        with self.lock:
            for pair in self.pairs:
                for end in ("client", "server"):
                    with contextlib.suppress(OSError):
                        pair[end].close()


def test_after_a_failover_that_leaves_the_connections_silent_the_pool_recovers_in_one_call(
    pg_url: str,
) -> None:
    """A server whose address moved to another host closes nothing: the sockets stay quiet, and
    the checkout's poll hands a dead connection out. The statement fails on it; the pool's idle
    connections are then checked at once, so that the call's one retry gets a new connection
    (not another dead one) and every later call works."""
    host, rest = pg_url.split("@", 1)[1].split("/", 1)
    relay = _Relay((host.split(":")[0], int(host.split(":")[1])))
    url = f"{pg_url.split('@', 1)[0]}@127.0.0.1:{relay.port}/{rest}"
    engine = WorkflowEngine(database_url=url, redis_url="fakeredis://")
    try:
        pool = engine.store._get_pool()  # type: ignore[attr-defined]
        held = [pool.getconn() for _ in range(4)]  # grow the pool to four
        for conn in held:
            pool.putconn(conn)
        wid = engine.create_workflow(workflow_type_id="t")
        relay.failover()
        start = time.monotonic()
        for _ in range(4):  # as many as the dead connections: the first is retried, the rest find none
            engine.create_workflow(workflow_type_id="t")
        assert engine.get_workflow(wid).status is S.PENDING
        assert time.monotonic() - start < 2.0
    finally:
        engine.close()
        relay.close()


@contextlib.contextmanager
def _traced(engine: WorkflowEngine, path: Path) -> Iterator[None]:
    """Write libpq's trace of what the engine's pooled connection sends (F) and gets back (B) to
    ``path``, while the block runs."""
    from psycopg import pq

    pool = engine.store._get_pool()  # type: ignore[attr-defined]
    pool.resize(1, 1)  # never more than one connection from here on,
    assert pool.get_stats()["pool_size"] == 1  # nor before: the trace sees every statement
    with open(path, "w") as out:
        with pool.connection() as conn:
            conn.pgconn.trace(out.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        yield
        with pool.connection() as conn:
            conn.pgconn.untrace()


def test_a_live_pooled_connection_is_handed_out_without_a_round_trip(pg_url: str, tmp_path: Path) -> None:
    """The checkout's check asks the server only when the socket says the session may be over
    (see the test above); a live connection's check sends nothing. Read from libpq's trace."""
    engine = WorkflowEngine(database_url=pg_url, redis_url="fakeredis://")
    wid = engine.create_workflow(workflow_type_id="t")
    with _traced(engine, tmp_path / "libpq.trace"):
        for _ in range(3):
            assert engine.get_workflow(wid).status is S.PENDING
    sent = [line for line in (tmp_path / "libpq.trace").read_text().splitlines() if line.startswith("F")]
    assert [line.split("\t")[2] for line in sent].count("Execute") == 3, sent  # the three reads
    assert not [line for line in sent if line.split("\t")[2] == "Query"], sent  # no check's empty query
    engine.close()


def polls_until_cancelled(wf: Workflow) -> None:
    while not cancel_requested():  # a store read after another, until the timeout cuts in
        pass


def test_timeouts_that_fire_inside_the_handlers_store_calls_never_lose_a_pooled_connection(
    pg_url: str,
) -> None:
    """The timeout is an exception raised from SIGALRM wherever the main thread is. Raised inside
    the pool's bookkeeping, it left a connection checked out for good, and after a few dozen
    timeouts no store call got one. It now waits for the store call to end."""
    engine = WorkflowEngine(database_url=pg_url, redis_url="fakeredis://", is_async=False)
    engine.register_handler("poll", polls_until_cancelled, max_retries=0, timeout=0.02)
    for _ in range(150):
        wf = engine.get_workflow(engine.create_workflow(workflow_type_id="poll", enqueue=True))
        assert wf.status is S.FAILED and "timed out" in (wf.error or ""), (wf.status, wf.error)
    pool = engine.store._pool  # type: ignore[attr-defined]
    stats = pool.get_stats()
    assert stats["pool_available"] == stats["pool_size"], stats  # every connection is back
    engine.close()


#: A worker parent that forks a work-horse while its reconcile thread holds the advisory lock,
#: then waits to be killed; the work-horse runs on (a long handler).
LOCK_HOLDER = """
import os, sys, time
from workflow_engine.stores import open_store
url, ready = sys.argv[1:]
store = open_store(url)
store.get("nothing")  # the pool is open too
with store.exclusive("workflow_engine.reconcile") as mine:
    assert mine
    if os.fork() == 0:
        store.get("nothing")  # the work-horse's own pool
        time.sleep(60)
        os._exit(0)
    open(ready, "w").write("ready")
    time.sleep(60)
"""


def test_reconcile_lock_of_a_killed_worker_is_free_while_its_work_horse_still_runs(
    pg_url: str, tmp_path: Path
) -> None:
    """A work-horse inherits its parent's sockets; the server keeps a session while any process
    holds its socket. The child lets go of them at the fork, so a killed parent's lock (and any
    transaction it had open) ends with it, not with its last work-horse."""
    ready = tmp_path / "ready"
    parent = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, pg_url, str(ready)], start_new_session=True)
    store = open_store(pg_url)
    try:
        wait_for(ready.exists, 30, what="the worker to hold the lock and fork")
        with store.exclusive("workflow_engine.reconcile") as mine:
            assert not mine  # held by the live worker
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()

        def free() -> bool:
            with store.exclusive("workflow_engine.reconcile") as mine:
                return mine

        wait_for(free, 10, 0.1, "the killed worker's reconcile lock to be released")
    finally:
        try:  # the work-horse too: the group we started
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        parent.wait()
        store.close()


#: Counts the connections a forked work-horse opens for its first store call: with its parent's
#: store already connected, and with a store the parent never used.
FORK_CONNECTS = """
import os, sys
from workflow_engine.stores import open_store, postgres
url = sys.argv[1]
used, unused = open_store(url), open_store(url)
used.get("nothing")  # the parent's pool is open
r, w = os.pipe()
if os.fork() == 0:
    opened = []
    connect = postgres._Connection.connect.__func__
    postgres._Connection.connect = classmethod(lambda cls, *a, **k: opened.append(1) or connect(cls, *a, **k))
    used.get("nothing")
    counts = [len(opened)]
    unused.get("nothing")
    counts.append(len(opened) - counts[0])
    os.write(w, repr(counts).encode())
    os._exit(0)
os.wait()
print(os.read(r, 100).decode())
"""


def test_a_work_horse_opens_one_connection_where_its_parent_connected_to_the_url_already(
    pg_url: str,
) -> None:
    """A store's first call connects once directly (a wrong name or password fails at once with
    the server's words), then opens its pool. A forked work-horse of a parent whose store was
    connected skips that probe: its parent reached the URL already, and a preloaded forking
    worker pays the connection on every job."""
    out = subprocess.run(
        [sys.executable, "-c", FORK_CONNECTS, pg_url], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 2]", out  # the pool's connection only; probe and pool


def test_reconcilers_take_turns_under_an_advisory_lock(pg_url: str) -> None:
    first, second = open_store(pg_url), open_store(pg_url)
    with first.exclusive("workflow_engine.reconcile") as mine:
        assert mine
        with psycopg.connect(pg_url, autocommit=True) as admin:  # the holder's idle transaction
            [(state, xmin)] = admin.execute(
                "SELECT state, backend_xmin FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE 'SELECT pg_try_advisory%'"
            ).fetchall()
        assert state == "idle in transaction" and xmin is None, "it holds back no VACUUM"
        with second.exclusive("workflow_engine.reconcile") as theirs:
            assert not theirs
    with second.exclusive("workflow_engine.reconcile") as theirs:
        assert theirs
    first.close()
    second.close()


def test_a_stalled_reconcilers_lock_is_ended_by_the_server_and_its_holder_leaves_quietly(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconciler stopped while it holds the lock (SIGSTOP, a paused VM) must not stop every
    other one for good: past EXCLUSIVE_IDLE_TIMEOUT the server ends its session, and the lock."""
    from workflow_engine.stores import postgres

    monkeypatch.setattr(postgres.PostgresStore, "EXCLUSIVE_IDLE_TIMEOUT", 0.5)
    first, second = open_store(pg_url), open_store(pg_url)
    try:
        with first.exclusive("workflow_engine.reconcile") as mine:
            assert mine
            with second.exclusive("workflow_engine.reconcile") as theirs:
                assert not theirs
            time.sleep(1.5)  # the holder stalls

            def taken() -> bool:
                with second.exclusive("workflow_engine.reconcile") as theirs:
                    return theirs

            assert taken()
        # the first left its block without an error, though its session was gone
        with first.exclusive("workflow_engine.reconcile") as mine:
            assert mine
    finally:
        first.close()
        second.close()


def test_a_database_set_to_another_date_style_is_read_and_written_as_usual(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{pg_url.rsplit('/', 1)[1]}\" SET datestyle = 'SQL, DMY'")
    store = open_store(pg_url)
    try:
        [(wf, created)] = store.insert([a_workflow()])
        assert created and store.get(wf.id) == wf  # psycopg parses ISO dates only
        with store.transaction() as tx:
            [row] = tx.fetch("SELECT current_setting('datestyle') AS d", {})
        assert row["d"].startswith("ISO")
    finally:
        store.close()


def test_timestamps_read_back_in_utc_whatever_the_databases_time_zone(pg_url: str) -> None:
    """The session runs in UTC, so that psycopg hands the models ``timezone.utc`` itself, which
    they keep as it is; a zone of the database's own gave every timestamp a conversion."""
    from datetime import timezone

    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{pg_url.rsplit('/', 1)[1]}\" SET timezone = 'America/New_York'")
    store = open_store(pg_url)
    try:
        [(wf, _)] = store.insert([a_workflow()])
        assert store.get(wf.id) == wf
        with store.transaction() as tx:  # type: ignore[attr-defined]
            [row] = tx.fetch("SELECT created_at, current_setting('timezone') AS zone FROM workflows", {})
        assert row["zone"] == "UTC" and row["created_at"].tzinfo is timezone.utc  # no conversion left
    finally:
        store.close()


def test_every_connection_asks_the_server_to_probe_its_peer_as_the_client_does(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that vanished holding the reconcile lock (or a migration's) is found dead by the server
    within about a minute, not after the server's default of two hours and more."""
    from workflow_engine.stores import postgres

    keepalives = (
        "SELECT current_setting('tcp_keepalives_idle') AS idle,"
        " current_setting('tcp_keepalives_interval') AS every,"
        " current_setting('tcp_keepalives_count') AS count"
    )
    store = open_store(pg_url)
    try:
        with store.transaction() as tx:
            [pooled] = tx.fetch(keepalives, {})
        seen: list[dict[str, str]] = []
        connect = postgres._Connection.connect

        def spy(*args: Any, **kwargs: Any) -> Any:
            conn = connect(*args, **kwargs)
            original = conn.execute

            def execute(query: Any, params: Any = None, **kw: Any) -> Any:
                cursor = original(query, params, **kw)
                if "pg_try_advisory_xact_lock" in str(query):
                    now = original(keepalives)
                    seen.append(
                        dict(zip([c.name for c in now.description or ()], now.fetchone() or (), strict=True))
                    )
                return cursor

            conn.execute = execute  # type: ignore[method-assign]
            return conn

        monkeypatch.setattr(postgres._Connection, "connect", spy)
        with store.exclusive("reconcile") as got:
            assert got
    finally:
        store.close()
    assert dict(pooled) == {"idle": "30", "every": "10", "count": "3"}
    assert seen == [{"idle": "30", "every": "10", "count": "3"}]


def test_json_columns_are_jsonb(pg_url: str) -> None:
    open_store(pg_url).migrate()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'workflows' AND column_name IN ('inputs', 'result', 'calculated_savings')"
        ).fetchall()
    assert sorted(rows) == [("calculated_savings", "jsonb"), ("inputs", "jsonb"), ("result", "jsonb")]


_CREATOR = """
import json, sys
from workflow_engine import WorkflowEngine
engine = WorkflowEngine(database_url=sys.argv[1], redis_url="fakeredis://")
ids = [engine.create_workflow(workflow_type_id="t", inputs={"i": i}, idempotency_key=f"key-{i % 50}")
       for i in range(int(sys.argv[2]))]
print(json.dumps(ids))
"""


@pytest.mark.slow
def test_four_processes_creating_with_shared_idempotency_keys_make_no_duplicates(pg_url: str) -> None:
    open_store(pg_url).migrate()
    procs = [
        subprocess.Popen([sys.executable, "-c", _CREATOR, pg_url, "100"], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    per_process = [json.loads(out) for out, _ in outputs]
    # every process got the same id for the same key
    for i in range(100):
        assert len({ids[i] for ids in per_process}) == 1
    with psycopg.connect(pg_url) as conn:
        count = conn.execute("SELECT count(*) FROM workflows").fetchone()
    assert count == (50,)


def noop(wf: Workflow) -> None:
    return None


def test_batches_over_the_same_rows_in_opposite_orders_never_deadlock(pg_url: str) -> None:
    """Two create_workflows with the same idempotency keys, then two enqueue_many with the same
    ids, each pair in opposite orders and at the same moment: rows are locked in one order."""
    engines = [WorkflowEngine(database_url=pg_url, redis_url="fakeredis://") for _ in range(2)]
    errors: list[BaseException] = []
    results: list[list[str]] = [[], []]

    def both(call: Callable[[int], list[str]]) -> None:
        barrier = threading.Barrier(2)

        def run(i: int) -> None:
            barrier.wait()
            try:
                results[i] = call(i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    for engine in engines:
        engine.register_handler("t", noop)
    for r in range(10):
        keys = [f"r{r}-k{i}" for i in range(30)]
        batches = [
            [{"workflow_type_id": "t", "idempotency_key": k} for k in order] for order in (keys, keys[::-1])
        ]
        both(lambda i, batches=batches: engines[i].create_workflows(batches[i]))
        assert not errors and results[0] == results[1][::-1]
        orders = [results[0], results[0][::-1]]
        both(lambda i, orders=orders: engines[i].enqueue_many(orders[i]) or [])
        assert not errors, errors
    assert {wf.status for wf in engines[0].list_workflows(limit=500)} == {S.QUEUED}
    for engine in engines:
        engine.close()


def test_a_statement_the_server_refuses_is_a_store_error_not_unavailable(pg_url: str) -> None:
    """psycopg calls an index row that is too large "operational"; it is no outage to retry."""
    store = open_store(pg_url)
    store.migrate()
    too_long = a_workflow(
        id="w",
        idempotency_key=base64.b64encode(os.urandom(6000)).decode(),  # past the engine's check, to the store
    )
    with pytest.raises(StoreError) as info:
        store.insert([too_long])
    assert not isinstance(info.value, StoreUnavailable) and "index row size" in str(info.value)
    store.close()


@pytest.mark.slow
def test_many_workers_and_two_reconcilers_on_one_database_complete_every_workflow_once(
    pg_url: str, redis_server: RedisServer, effects: Path, tmp_path: Path
) -> None:
    engine = WorkflowEngine(database_url=pg_url, redis_url=redis_server.url)
    engine.register_handler("ok", "we_test_handlers:record_success")
    engine.register_handler("flaky", "we_test_handlers:flaky", max_retries=3, retry_backoff=0)
    ids = []
    for i in range(1000):
        kind = "flaky" if i % 10 == 0 else "ok"
        wid = engine.create_workflow(workflow_type_id=kind, inputs={"fail_times": 1, "i": i})
        engine.enqueue_execution(wid)
        ids.append(wid)
    common = {"redis_url": redis_server.url, "database_url": pg_url, "effects": effects}
    workers = [start_worker(tmp_path, worker_class=c, **common) for c in ("fork", "fork", "simple", "simple")]
    reconcilers = [
        subprocess.Popen(
            [
                str(Path(sys.executable).parent / "workflow-engine"),
                "reconcile",
                "--every",
                "0.5",
                "--database-url",
                pg_url,
                "--redis-url",
                redis_server.url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        for w in workers:
            assert w.wait(240) == 0, w.output()[-3000:]
    finally:
        for w in workers:
            w.stop()
        for r in reconcilers:
            r.kill()
            r.wait(10)
    statuses = {engine.get_workflow(w).status for w in ids}
    assert statuses == {S.COMPLETED}
    assert [successes(effects, w) for w in ids] == [1] * len(ids)
    assert all("database is locked" not in w.output() for w in workers)
    engine.close()


@pytest.mark.slow
def test_a_worker_whose_connection_is_terminated_mid_run_still_completes_the_workflow(
    pg_url: str, redis_server: RedisServer, effects: Path, tmp_path: Path
) -> None:
    engine = WorkflowEngine(
        database_url=pg_url, redis_url=redis_server.url, heartbeat_interval=0.5, stale_after=2
    )
    engine.register_handler("sleepy", "we_test_handlers:sleepy", max_retries=2, retry_backoff=0)
    wid = engine.create_workflow(workflow_type_id="sleepy", inputs={"seconds": 2})
    engine.enqueue_execution(wid)
    worker = start_worker(
        tmp_path,
        redis_url=redis_server.url,
        database_url=pg_url,
        effects=effects,
        worker_class="simple",
        burst=False,
        extra_env={"WORKFLOW_ENGINE_HEARTBEAT_INTERVAL": "0.5", "WORKFLOW_ENGINE_STALE_AFTER": "2"},
    )
    try:
        wait_for(lambda: engine.get_workflow(wid).status is S.RUNNING, timeout=30, what="the workflow to run")
        _terminate_the_others(pg_url)
        engine.store.close()

        def finished() -> bool:
            engine.reconcile()
            return engine.get_workflow(wid).status is S.COMPLETED

        wait_for(finished, timeout=60, interval=0.5, what="the workflow to complete")
    finally:
        worker.stop()
    assert successes(effects, wid) == 1
    engine.close()


def test_a_claim_and_a_completion_are_one_statement_each_without_begin_or_commit(
    pg_url: str, tmp_path: Path
) -> None:
    """A compare-and-set carries its event in the same statement, and a lone statement runs in
    autocommit: no BEGIN and COMMIT round trips. Read from libpq's own trace of what it sent."""
    engine = WorkflowEngine(database_url=pg_url, redis_url="fakeredis://")
    engine.register_handler("t", "workflow_engine.demo:create_website")
    wid = engine.create_workflow(workflow_type_id="t", enqueue=True)
    queued = engine.get_workflow(wid)
    assert queued.status is S.QUEUED and queued.job_id is not None
    with _traced(engine, tmp_path / "libpq.trace"):
        now = utcnow()
        claimed = engine.store.claim(
            wid, job_id=queued.job_id, worker="w", now=now, lease_until=engine.lease_from(now)
        )
        assert claimed is not None and claimed.status is S.RUNNING
        done = engine._change(
            claimed, S.COMPLETED, {"finished_at": utcnow()}, detail="done", expected_job_id=queued.job_id
        )
        assert done is not None and done.status is S.COMPLETED
    sent = (tmp_path / "libpq.trace").read_text()  # what went to the server (F) and came back (B)
    assert sent.count("WITH u AS (UPDATE workflows") == 2, sent  # the claim, then the completion
    assert sent.count("INSERT INTO workflow_events") == 2, sent  # each event inside its statement
    assert "BEGIN" not in sent and "COMMIT" not in sent, sent
    assert [e.to_status for e in engine.get_events(wid)][-2:] == [S.RUNNING, S.COMPLETED]
    engine.close()


def test_a_create_is_one_statement_with_its_events_and_a_batch_one_statement_a_workflow(
    pg_url: str, tmp_path: Path
) -> None:
    """A new workflow and its events are written by one statement: a lone create in autocommit
    (no BEGIN or COMMIT), a batch inside one transaction. Read from libpq's own trace."""
    engine = WorkflowEngine(database_url=pg_url, redis_url="fakeredis://")
    engine.register_handler("t", "workflow_engine.demo:create_website")
    engine.create_workflow(workflow_type_id="t")  # migrated and connected before the trace
    with _traced(engine, tmp_path / "one.trace"):
        wid = engine.create_workflow(workflow_type_id="t", enqueue=True, idempotency_key="k")
    sent = [line for line in (tmp_path / "one.trace").read_text().splitlines() if line.startswith("F")]
    assert [line.split("\t")[2] for line in sent].count("Execute") == 1, sent
    assert not [line for line in sent if "BEGIN" in line or "COMMIT" in line], sent
    assert [(e.from_status, e.to_status) for e in engine.get_events(wid)] == [
        (None, S.PENDING),
        (S.PENDING, S.QUEUED),
    ]
    again = engine.create_workflow(workflow_type_id="t", idempotency_key="k")  # kept: nothing written
    assert again == wid and len(engine.get_events(wid)) == 2
    with _traced(engine, tmp_path / "batch.trace"):
        ids = engine.create_workflows([{"workflow_type_id": "t"}] * 3)
    sent = [line for line in (tmp_path / "batch.trace").read_text().splitlines() if line.startswith("F")]
    assert [line.split("\t")[2] for line in sent].count("Execute") == 3, sent  # one a workflow
    assert sum("BEGIN" in line for line in sent) == 1 and sum("COMMIT" in line for line in sent) == 1, sent
    assert all([e.to_status for e in engine.get_events(i)] == [S.PENDING] for i in ids)
    engine.close()


def _messages(trace: Path) -> list[str]:
    """``F <message>`` / ``B <message>`` for each line of libpq's trace: who sent what, in order."""
    return [f"{line.split(chr(9))[0]} {line.split(chr(9))[2]}" for line in trace.read_text().splitlines()]


def test_a_batch_sends_every_statement_before_it_reads_a_reply(pg_url: str, tmp_path: Path) -> None:
    """A batch's statements go out in pipeline mode: all of them, one Sync, then every reply. Its
    round trips are BEGIN, the batch and COMMIT, not one a workflow. Read from libpq's trace."""
    engine = WorkflowEngine(database_url=pg_url, redis_url="fakeredis://")
    engine.register_handler("t", "workflow_engine.demo:create_website")
    engine.create_workflow(workflow_type_id="t")  # migrated and connected before the trace
    for name, call in (
        ("create", lambda: engine.create_workflows([{"workflow_type_id": "t"}] * 3, enqueue=True)),
        ("enqueue", lambda: engine.enqueue_many(engine.create_workflows([{"workflow_type_id": "t"}] * 3))),
    ):
        trace = tmp_path / f"{name}.trace"
        with _traced(engine, trace):
            call()
        messages = _messages(trace)
        batch = messages[messages.index("F Query") + 3 : len(messages) - 3]  # after BEGIN, before COMMIT
        if name == "enqueue":  # the batch of changes, after the creating transaction
            batch = batch[batch.index("F Query", batch.index("F Query") + 1) + 3 :]
        sent = [m for m in batch if m.startswith("F")]
        assert [m for m in sent if m != "F Flush"][-1] == "F Sync" and sent.count("F Sync") == 1, batch
        assert sent.count("F Execute") == 3, batch
        assert batch.index("F Sync") < min(batch.index(m) for m in batch if m.startswith("B")), batch
    assert {wf.status for wf in engine.list_workflows()} == {S.PENDING, S.QUEUED}
    assert all(len(engine.get_events(wf.id)) == 2 for wf in engine.list_workflows(status="queued"))
    engine.close()


def test_a_batch_whose_statement_the_server_refuses_writes_nothing(pg_url: str) -> None:
    """The statements of a batch are sent before their replies are read, but in one transaction:
    one refused rolls back the others, sent before it or after it; the connection serves on."""
    store = open_store(pg_url)
    store.migrate()
    # Rows are locked, so sent, in key order: "a", then the refused one's "m…", then "z".
    too_long = a_workflow(idempotency_key="m" + base64.b64encode(os.urandom(6000)).decode())
    sent_last, sent_first = a_workflow(idempotency_key="z"), a_workflow(idempotency_key="a")
    with pytest.raises(StoreError, match="index row size"):
        store.insert([sent_last, too_long, sent_first])
    assert [store.get(wf.id) for wf in (sent_first, too_long, sent_last)] == [None, None, None]
    [(stored, created)] = store.insert([sent_last])
    assert created and stored == sent_last and len(store.events(sent_last.id)) == 1
    store.close()


@pytest.mark.parametrize(
    ("migration", "index"), [(4, "workflows_finished_at"), (6, "workflows_completed_duration_created")]
)
def test_migrations_0004_and_0006_refuse_an_invalid_index_left_by_a_failed_concurrent_build(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, migration: int, index: str
) -> None:
    store = open_store(pg_url)
    scripts = store.migration_scripts()  # type: ignore[attr-defined]
    before = migration - 1
    monkeypatch.setattr(store, "migration_scripts", lambda: [(n, t) for n, t in scripts if n <= before])
    assert store.migrate() == before
    with psycopg.connect(pg_url, autocommit=True) as admin:  # two workflows of one type
        for n in range(2):
            admin.execute(
                "INSERT INTO workflows (id, workflow_type_id, status, inputs, created_at, updated_at) "
                "VALUES (%s, 'same', 'pending', '{}', now(), now())",
                (f"w{n}",),
            )
    with psycopg.connect(pg_url, autocommit=True) as admin:  # a build that fails halfway, on purpose
        with pytest.raises(psycopg.errors.UniqueViolation):
            admin.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {index} ON workflows (workflow_type_id)")
    monkeypatch.setattr(store, "migration_scripts", lambda: scripts)
    with pytest.raises(
        StoreError,
        match=f"migration 000{migration}: .*built beforehand is invalid: .* or one still running; wait",
    ):
        store.migrate()
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"DROP INDEX {index}")
    assert store.migrate() == scripts[-1][0]
    store.close()


assert APPS.exists()


def test_a_role_that_may_only_read_and_write_rows_uses_a_migrated_database(pg_url: str) -> None:
    """Opening a database with nothing to migrate runs no DDL and takes no lock: a role with no
    right to create tables (a web process's, with migrations run by another role) works."""
    open_store(pg_url).migrate()  # by the owner
    role = f"we_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        admin.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    scheme, rest = pg_url.split("://", 1)
    app = open_store(f"{scheme}://{role}@{rest.split('@', 1)[1]}")
    try:
        [(wf, _)] = app.insert([a_workflow()])
        assert app.get(wf.id) == wf and app.migrate() == open_store(pg_url).migrate()
    finally:
        app.close()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


def test_opening_a_migrated_database_does_not_wait_behind_another_processs_migration(pg_url: str) -> None:
    from workflow_engine.stores.postgres import MIGRATION_LOCK_ID

    open_store(pg_url).migrate()
    store = open_store(pg_url)
    answered = threading.Event()

    def first_call() -> None:
        store.get("nothing")
        answered.set()

    try:
        with psycopg.connect(pg_url) as migrating:  # another process, in the middle of a migration
            migrating.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            caller = threading.Thread(target=first_call)
            caller.start()
            assert answered.wait(5), "the first call waited for the migration lock"
        caller.join(10)
    finally:
        store.close()


def test_a_migration_under_a_role_with_a_schema_of_its_own_records_its_version_beside_the_tables(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The role's own schema comes first on the search_path ("$user"). A second schema_version
    made there would take the versions of migrations applied to the tables in public."""
    store = open_store(pg_url)
    scripts = store.migration_scripts()  # type: ignore[attr-defined]
    monkeypatch.setattr(store, "migration_scripts", lambda: scripts[:-1])
    assert store.migrate() == scripts[-2][0]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        user = admin.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
        admin.execute(f'CREATE SCHEMA "{user}"')
    monkeypatch.setattr(store, "migration_scripts", lambda: scripts)
    try:
        assert store.migrate() == scripts[-1][0]
        with psycopg.connect(pg_url, autocommit=True) as admin:
            assert admin.execute(f"SELECT to_regclass('\"{user}\".schema_version')").fetchone() == (None,)
            assert admin.execute("SELECT max(version) FROM public.schema_version").fetchone() == (
                scripts[-1][0],
            )
        assert open_store(pg_url).migrate() == scripts[-1][0]
    finally:
        store.close()


def _store_with_a_pending_migration(pg_url: str, monkeypatch: pytest.MonkeyPatch, **settings: float) -> Any:
    """A store of a database migrated to this version, with one more migration that changes the
    table: an ALTER TABLE, which needs the workflows table to itself."""
    open_store(pg_url).migrate()
    store = open_store(pg_url)
    for name, value in settings.items():
        setattr(store, name, value)
    scripts = store.migration_scripts()  # type: ignore[attr-defined]
    extra = (scripts[-1][0] + 1, "ALTER TABLE workflows ADD COLUMN test_extra integer;")
    monkeypatch.setattr(store, "migration_scripts", lambda: [*scripts, extra])
    return store


def _read_time(pg_url: str) -> float:
    """Seconds another process's query of the workflows table takes (10 at most)."""
    started = time.monotonic()
    with psycopg.connect(pg_url, autocommit=True) as reader:
        reader.execute("SET statement_timeout = 10000")
        reader.execute("SELECT count(*) FROM workflows")
    return time.monotonic() - started


def test_a_migration_waiting_for_a_table_does_not_stall_the_queries_that_come_after_it(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL queues every later query of a table behind an ALTER TABLE that waits for it: a
    long report open during a deploy would otherwise stall every process until it ended."""
    store = _store_with_a_pending_migration(pg_url, monkeypatch, MIGRATION_LOCK_TIMEOUT=0.2)
    outcome: list[Any] = []
    try:
        with psycopg.connect(pg_url) as report:  # a long report, in a transaction of its own
            report.execute("SELECT count(*) FROM workflows")
            migrating = threading.Thread(target=lambda: outcome.append(store.migrate()))
            migrating.start()
            time.sleep(0.5)  # the migration has tried, and waits to try again
            assert _read_time(pg_url) < 1.5  # not behind the migration: until the report ends
            assert outcome == []  # and the migration still waits for the report
        migrating.join(10)  # the report ended: the next try finds the table free
        assert outcome == [store.migration_scripts()[-1][0]]
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(test_extra) FROM workflows").fetchone() == (0,)
    finally:
        store.close()


def test_a_migration_that_never_gets_its_table_gives_up_naming_who_holds_it(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store_with_a_pending_migration(
        pg_url, monkeypatch, MIGRATION_LOCK_TIMEOUT=0.1, MIGRATION_PATIENCE=0.5
    )
    try:
        with psycopg.connect(pg_url, application_name="nightly-report") as report:
            report.execute("SELECT count(*) FROM workflows")
            pid = report.info.backend_pid
            failed: list[BaseException] = []

            def migrate() -> None:
                try:
                    store.migrate()
                except BaseException as exc:
                    failed.append(exc)

            migrating = threading.Thread(target=migrate, daemon=True)
            migrating.start()
            migrating.join(10)
            assert not migrating.is_alive(), "the migration waited for the report for good"
        assert len(failed) == 1 and isinstance(failed[0], StoreUnavailable), failed
        message = str(failed[0])
        assert "stayed in use; gave up " in message and "(MIGRATION_PATIENCE 0.5 s)" in message
        assert f"pid {pid} (idle in transaction, nightly-report, " in message
        # Nothing of the try is left: the schema is the last version's, and the next try applies it.
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (
                store.migration_scripts()[-2][0],
            )
        assert store.migrate() == store.migration_scripts()[-1][0]
    finally:
        store.close()


def test_a_column_that_changes_type_under_prepared_statements_costs_a_retry_not_an_hour(pg_url: str) -> None:
    """Every statement is prepared; PostgreSQL will not re-plan one whose result's columns
    changed type ("cached plan must not change result type"), and the pool keeps a connection
    for an hour. A future migration that changes a column's type does that to every process
    still running."""
    store = open_store(pg_url, pool_size=2)
    try:
        wf = a_workflow()
        store.insert([wf])
        for _ in range(3):
            assert store.get(wf.id) is not None  # prepared on the pool's connections
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("ALTER TABLE workflows ALTER COLUMN worker TYPE VARCHAR(200)")
        for _ in range(20):  # every call answers: the first on new connections, after one retry
            got = store.get(wf.id)
            assert got is not None and got.id == wf.id
    finally:
        store.close()


def test_a_migrating_process_that_stalls_does_not_hold_the_others_for_good(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGSTOP, a paused VM: the server ends the stalled session, and its locks with it."""
    open_store(pg_url).migrate()
    stalled = open_store(pg_url)
    monkeypatch.setattr(stalled, "EXCLUSIVE_IDLE_TIMEOUT", 1.0)
    scripts = stalled.migration_scripts()  # type: ignore[attr-defined]
    released = threading.Event()
    extra = (scripts[-1][0] + 1, "ALTER TABLE workflows ADD COLUMN test_extra integer;")
    monkeypatch.setattr(stalled, "migration_scripts", lambda: [*scripts, extra])
    real_run_script = stalled.run_script

    def run_then_stall(tx: Any, script: str) -> None:
        real_run_script(tx, script)
        released.wait(10)  # the process stops here, in its transaction, holding both locks

    monkeypatch.setattr(stalled, "run_script", run_then_stall)
    outcome: list[BaseException] = []

    def migrate() -> None:
        try:
            stalled.migrate()
        except StoreError as exc:
            outcome.append(exc)

    migrating = threading.Thread(target=migrate)
    migrating.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        assert _read_time(pg_url) < 5  # the server ended the stalled session after 1 s idle
        assert time.monotonic() - started >= 0.3
    finally:
        released.set()
        migrating.join(10)
        stalled.close()
    assert len(outcome) == 1 and "idle-in-transaction timeout" in str(outcome[0])  # told when it wakes
    with psycopg.connect(pg_url) as conn:  # its migration was rolled back with its session
        assert conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE column_name = 'test_extra'"
        ).fetchone() == (0,)


def test_threads_that_arrive_during_their_processs_first_migration_wait_for_it_without_a_connection(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With pool_size=1, a thread holding the one connection while it waits for the advisory
    lock its own process holds would fail every other thread with a pool timeout."""
    store = open_store(pg_url, pool_size=1, connect_timeout=1)
    real_migrate = store._migrate_locked  # type: ignore[attr-defined]

    def slow_migrate(conn: Any) -> int:
        time.sleep(2.5)  # on the pool's one connection, for longer than two of the pool's timeouts
        return int(real_migrate(conn))

    monkeypatch.setattr(store, "_migrate_locked", slow_migrate)
    failures: list[BaseException] = []

    def first_call() -> None:
        try:
            store.find(limit=1, filters={})
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=first_call) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert failures == []
    finally:
        store.close()


@contextlib.contextmanager
def _only_connection_held(pg_url: str) -> Iterator[Any]:
    """A store with pool_size=1 (1 s pool timeout) whose one connection another thread holds, in
    a transaction, for the block's duration; yields the store."""
    store = open_store(pg_url, pool_size=1, connect_timeout=1)
    store.insert([a_workflow()])
    release = threading.Event()

    def hold_the_only_connection() -> None:
        with store.transaction() as tx:  # type: ignore[attr-defined]
            tx.fetch("SELECT 1 AS one", {})
            release.wait(10)

    holder = threading.Thread(target=hold_the_only_connection)
    holder.start()
    try:
        time.sleep(0.2)
        yield store
    finally:
        release.set()
        holder.join(10)
        store.close()


def test_a_busy_pool_says_so_and_is_not_retried_as_if_the_server_were_down(pg_url: str) -> None:
    from workflow_engine.stores.base import StoreBusy

    with _only_connection_held(pg_url) as store:
        started = time.monotonic()
        with pytest.raises(StoreBusy) as busy:
            store.get("x")
        assert time.monotonic() - started < 1.8  # one pool timeout (1 s), not two or three
        assert isinstance(busy.value, StoreUnavailable)
        assert str(busy.value) == (
            "all 1 of this process's connections to PostgreSQL stayed in use for 1 s (pool_size=1): "
            "raise pool_size, or look for long transactions and waits on a row lock"
        )


def test_a_pool_that_cannot_reconnect_is_unavailable_not_busy(pg_url: str) -> None:
    """While the server refuses connections, the pool counts the ones it is remaking: that is
    an outage (retried once), not a pool too small for the process."""
    from workflow_engine.stores.base import StoreBusy

    name = pg_url.rsplit("/", 1)[1]
    store = open_store(pg_url, pool_size=1, connect_timeout=1)
    wf = a_workflow()
    store.insert([wf])
    with psycopg.connect(pg_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            with pytest.raises(StoreUnavailable) as down:
                store.get(wf.id)
            assert not isinstance(down.value, StoreBusy), down.value
        finally:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            store.close()


def test_a_first_use_migration_that_gives_up_is_not_retried_and_fails_its_waiting_threads_with_it(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the default patience (5 min), a retry would make a read wait 10 min and a write 15;
    threads queued behind it would each wait 5 min more, one after another."""
    from workflow_engine.stores.base import StoreBusy

    older = open_store(pg_url)
    scripts = older.migration_scripts()  # type: ignore[attr-defined]
    monkeypatch.setattr(older, "migration_scripts", lambda: scripts[:-1])
    older.migrate()
    older.close()
    store = open_store(pg_url, pool_size=4)
    monkeypatch.setattr(store, "MIGRATION_LOCK_TIMEOUT", 0.1)
    monkeypatch.setattr(store, "MIGRATION_PATIENCE", 1.0)
    failed: list[tuple[float, BaseException]] = []
    started = time.monotonic()

    def first_call() -> None:
        try:
            store.get("nothing")
        except BaseException as exc:
            failed.append((time.monotonic() - started, exc))

    try:
        with psycopg.connect(pg_url) as report:  # holds the table the pending migration changes
            report.execute("SELECT count(*) FROM workflows")
            threads = [threading.Thread(target=first_call) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        assert len(failed) == 3 and all(isinstance(exc, StoreBusy) for _, exc in failed), failed
        assert max(at for at, _ in failed) < 2.5  # one patience, not one each, nor a retry's
        assert "(MIGRATION_PATIENCE 1 s)" in str(failed[0][1])
    finally:
        store.close()


def test_a_first_use_waits_for_another_processs_migration_no_longer_than_its_patience(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workflow_engine.stores.base import StoreBusy
    from workflow_engine.stores.postgres import MIGRATION_LOCK_ID

    older = open_store(pg_url)
    scripts = older.migration_scripts()  # type: ignore[attr-defined]
    monkeypatch.setattr(older, "migration_scripts", lambda: scripts[:-1])
    older.migrate()
    older.close()
    store = open_store(pg_url)
    monkeypatch.setattr(store, "MIGRATION_PATIENCE", 1.0)
    try:
        failed: list[BaseException] = []

        def first_call() -> None:
            try:
                store.get("nothing")
            except BaseException as exc:
                failed.append(exc)

        with psycopg.connect(pg_url) as migrating:  # another process, in a long migration
            migrating.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            caller = threading.Thread(target=first_call, daemon=True)
            caller.start()
            caller.join(2.5)
            assert not caller.is_alive(), "it waited for the other migration past its patience"
        assert len(failed) == 1 and isinstance(failed[0], StoreBusy), failed
        assert "another process's migration held the migration lock" in str(failed[0])
        assert store.get("nothing") is None  # it has ended: the next call migrates
    finally:
        store.close()


def test_a_busy_pool_on_a_server_that_no_longer_answers_is_unavailable_not_busy(pg_url: str) -> None:
    """Every connection held, and no new one answers: a frozen host, a network cut, not a pool
    too small (the advice to raise pool_size would point the wrong way)."""
    from workflow_engine.stores.base import StoreBusy

    name = pg_url.rsplit("/", 1)[1]
    with (
        _only_connection_held(pg_url) as store,
        psycopg.connect(pg_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin,
    ):
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        try:
            with pytest.raises(StoreUnavailable) as down:
                store.get("x")
            assert not isinstance(down.value, StoreBusy), down.value
            assert "no connection of the pool came free in 1 s, and a new one failed" in str(down.value)
        finally:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')


def test_another_feature_not_supported_error_is_no_stale_plan(pg_url: str) -> None:
    """Only the server's plan-cache check means a column changed type: any other 0A000 is the
    statement's own error, and replaces no connection."""
    store = open_store(pg_url)
    try:
        store.migrate()
        with pytest.raises(StoreError) as refused:
            with store.transaction() as tx:  # type: ignore[attr-defined]
                tx.fetch("SELECT count(*) AS n FROM workflows FOR UPDATE", {})
        assert not isinstance(refused.value, StoreUnavailable)
        assert "changed type" not in str(refused.value)
    finally:
        store.close()


def test_a_statement_the_server_cancels_is_reported_busy_not_a_failure_and_not_retried(pg_url: str) -> None:
    """An operator's statement_timeout (here in the URL) bounds a call held up by a lock: the caller
    gets StoreBusy (a StoreUnavailable: a web app answers 503) once, not a StoreError (a 500), and
    not after a retry that would wait as long again."""
    engine = WorkflowEngine(
        database_url=f"{pg_url}?options=-c%20statement_timeout%3D300", redis_url="fakeredis://"
    )
    wid = engine.create_workflow(workflow_type_id="report")
    with psycopg.connect(pg_url, autocommit=True) as other:
        other.execute("BEGIN")
        other.execute("LOCK TABLE workflows IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(StoreBusy, match="statement_timeout"):
            engine.get_workflow(wid)
        assert time.monotonic() - started < 0.6 + 1.0  # one wait of 0.3 s, not two
        other.execute("ROLLBACK")
    assert engine.get_workflow(wid).status is S.PENDING
    engine.close()


def test_a_migration_is_not_cut_short_by_the_statement_timeout_meant_for_the_apps_queries(
    pg_url: str,
) -> None:
    store = open_store(f"{pg_url}?options=-c%20statement_timeout%3D1")
    try:
        assert store.migrate() >= 1
    finally:
        store.close()


def test_after_an_outage_a_process_is_back_on_the_database_within_seconds_not_as_long_again(
    pg_url: str,
) -> None:
    """psycopg_pool retries a failed connection 1, 2, 4, 8, … s apart, so a worker stayed off the
    database about as long again as an outage (28 s after one of 40 s), while its lease ran out and
    reconcile, connecting afresh, took its workflow to run it twice. The pool gives up a retry
    after a second, and the next call connects at once."""
    name = pg_url.rsplit("/", 1)[1]
    store = open_store(pg_url, pool_size=1)  # one connection: one chain of retries
    store.migrate()
    admin = psycopg.connect(pg_url.rsplit("/", 1)[0] + "/postgres", autocommit=True)
    successes: list[float] = []
    stop = threading.Event()

    def beat() -> None:  # as a worker's heartbeat thread, once a second
        while not stop.is_set():
            with contextlib.suppress(Exception):
                store.get("nothing")
                successes.append(time.monotonic())
            stop.wait(1)

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        wait_for(lambda: successes, 10, what="a first call")
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        # The pool's retries, 1, 3, 7 and 15 s after the first failure, fail; its next is at 31 s.
        time.sleep(20)
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        back = time.monotonic()
        wait_for(lambda: successes and successes[-1] > back, 20, what="a call after the outage")
        # A call that waits for the pool when the database comes back waits out its timeout (5 s),
        # and its retry connects at once; psycopg_pool's own next retry was 11 s or more away.
        assert successes[-1] - back < 9
    finally:
        stop.set()
        beater.join()
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()
        store.close()
