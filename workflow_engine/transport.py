"""RQ as the transport: it only moves a workflow id to a worker.

Nothing here decides anything about a workflow. The job carries the
workflow id, its handler's import path and the id of the job itself; no
inputs, results or credentials.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import os
import re
import secrets
import socket
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime, timezone
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.retry import Retry
from rq import Callback, Queue
from rq import __version__ as rq_version
from rq.job import Job, validate_job_id
from rq.utils import get_version, utcformat, utcparse
from rq.utils import now as rq_now

from .config import KEEPALIVE_COUNT, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, unclean
from .errors import ConfigurationError, QueueUnavailable
from .models import Workflow
from .stores.urls import scheme_of, shown

#: Seconds RQ keeps a finished job. The database holds the result; a short TTL is cheaper than 0,
#: which makes RQ delete the job and its keys at once (measured: about 0.5 ms a job more).
RESULT_TTL = 60
#: Seconds added to a handler's timeout for RQ's own backstop; our timer fires first. It also
#: bounds the claim before the handler and the outcome's write after it, which may each wait for
#: SQLite's write lock for its busy timeout (30 s): a backstop inside them would lose an attempt
#: that ended in time.
TIMEOUT_GRACE = 60
#: RQ job statuses that mean "this job will still run, or is running".
#: Not an RQ status: the job is ``queued`` in RQ's eyes, but a worker has moved it off the queue
#: onto the queue's intermediate list and not started it (yet: or that worker died in between).
TAKEN = b"taken"
#: Not an RQ status either: the job is ``queued`` in RQ's eyes, but on neither the queue's list nor
#: its intermediate list. A worker popped it outright (one on several queues, or on a Redis older
#: than 6.2) and has not marked it started yet, or died before it could; or Redis lost the list
#: and kept the job (a ``DEL`` of the list's key, an eviction): then no worker will ever take it.
OFF_THE_QUEUE = b"off the queue"
LIVE_JOB_STATUSES = frozenset({b"queued", b"started", b"deferred", b"scheduled", TAKEN, OFF_THE_QUEUE})
#: Those of a job a worker took, or may have taken, and has not claimed: what :meth:`Transport.taken_at`
#: times, and what reconcile gives up on once it has stayed so for ``stale_after``.
TAKEN_STATUSES = frozenset({b"started", TAKEN, OFF_THE_QUEUE})
#: The longest queue whose list a reconcile pass reads whole (``LRANGE``, about 4 MB at this
#: length); a longer one is not read, and a lost job in it waits until the queue is shorter.
QUEUE_SCAN_LIMIT = 100_000
#: Where :meth:`Transport.taken_at` notes when it first saw a job taken or off the queue. Each
#: sighting keeps the note for ``keep`` seconds more: one seen so again only after a while (put
#: back on the queue by ``rq requeue``, then taken) is timed from then, not from long ago.
TAKEN_MARK = "workflow_engine:taken:{job_id}"

log = logging.getLogger("workflow_engine.transport")

#: What a workflow job runs, and the callback RQ runs when its work-horse is stopped, by name:
#: the job records names either way, and RQ resolves a function to its name on every job
#: (``workflow_engine.execution`` imports this module, so naming them also avoids an import).
RUN_WORKFLOW = "workflow_engine.execution.run_workflow"
ON_JOB_STOPPED = Callback("workflow_engine.execution.on_job_stopped")
#: The key of a workflow job's ``meta`` that holds a :class:`Preload`.
META_KEY = "workflow_engine"


class Preload(str):
    """What a workflow job carries in ``job.meta["workflow_engine"]``: unpickling it imports workflow_engine.

    RQ's worker unpickles a job's meta in its own process as it takes the job, before a forking
    worker forks the work-horse (``Job.restore``). Pickle finds :func:`_unpickle_preload` by its
    module, so a plain ``rq worker workflows`` imports the package at its first workflow job, and the
    store's driver with it, and every later work-horse inherits them instead of importing pydantic,
    the package and the driver again (60-85 ms a job). It also builds the worker's engine from the
    environment (:func:`execution.prepare_worker_engine`), which every work-horse inherits instead
    of building it (about 1 ms of CPU a job), but connects nothing and imports no handler module or app, and
    logs nothing (``-c workflow_engine.rq_preload`` does those).

    It is the string ``"preload"`` to everything else (``==``, ``json.dumps``). A process without
    workflow_engine that reads the job gets RQ's ``{"unserialized": ...}`` meta from ``Job.fetch``,
    and RQ writes those bytes back unchanged; RQ's ``Job.get_meta()`` raises there instead.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # Jobs already in Redis name this function: never rename or move it.
        return (_unpickle_preload, ())


PRELOAD = Preload("preload")
_store_driver_imported = False


def _unpickle_preload() -> Preload:
    """A job's meta being read: import the driver of the store the environment names and build the
    worker's engine, unconnected, once per process.

    Every failure is left to the work-horse, which reports it on the workflow or in its log.
    """
    global _store_driver_imported
    if not _store_driver_imported:
        _store_driver_imported = True
        try:
            from .config import Settings
            from .stores import parse_database_url

            backend = parse_database_url(Settings.from_env().database_url).backend
            importlib.import_module(f"{__package__}.stores.{backend}")  # "sqlite" or "postgres"
            from .execution import prepare_worker_engine

            prepare_worker_engine()
        except Exception:  # a bad setting or a missing driver: the work-horse says so
            pass
    return PRELOAD


#: The sync-mode jobs this thread still has to perform, while it performs one (else None).
_sync = threading.local()
#: The ids of every sync-mode job in this process that some thread has still to perform or is
#: performing: what another thread's reconcile or enqueue must take for live, as a job in Redis.
_sync_pending: set[str] = set()
_sync_pending_lock = threading.Lock()


def _sync_live(job_ids: Iterable[str]) -> set[str]:
    with _sync_pending_lock:
        return {job_id for job_id in job_ids if job_id in _sync_pending}


def _pending(job_ids: Iterable[str]) -> None:
    with _sync_pending_lock:
        _sync_pending.update(job_ids)


def _settled(job_ids: Iterable[str]) -> None:
    """Performed, or dropped unperformed: no longer live."""
    with _sync_pending_lock:
        _sync_pending.difference_update(job_ids)


def _after_fork_in_child() -> None:
    global _sync_pending, _sync_pending_lock
    _sync_pending_lock = threading.Lock()  # another thread may have held it as the process forked
    _sync_pending = set()  # the parent's threads perform those jobs, not the child's


os.register_at_fork(after_in_child=_after_fork_in_child)


#: Any Redis failure (down, READONLY replica, OOM, a broken reply) means the queue is unavailable.
_REDIS_ERRORS = (redis.exceptions.RedisError,)


def new_job_id(workflow_id: str) -> str:
    """A fresh RQ job id for one delivery of a workflow (RQ accepts ``[A-Za-z0-9_-]``)."""
    return f"{workflow_id}-{secrets.token_hex(4)}"


def connect(url: str, *, connect_timeout: float = 2.0, socket_timeout: float = 5.0) -> redis.Redis:
    """A Redis connection for ``redis://``, ``rediss://``, ``unix://`` or an in-process ``fakeredis://``."""
    if not isinstance(url, str) or scheme_of(url) is None:
        raise ConfigurationError(
            f"malformed Redis URL {shown(url) if isinstance(url, str) else url!r}; "
            "use redis://host:6379/0, rediss://…, unix:///path or fakeredis://"
        )
    if unclean(url):
        raise ConfigurationError(
            f"malformed Redis URL {shown(url)!r}: it has whitespace around it or a control character in it"
        )
    scheme = scheme_of(url)
    if scheme == "fakeredis":
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"unsupported Redis URL scheme {scheme!r}; use redis://, rediss://, unix:// or fakeredis://"
        )
    parts = _split(url)
    path = "" if parts is None or scheme == "unix" else parts.path
    if not re.fullmatch("/?[0-9]*/?", path):  # redis-py would take db 0
        raise ConfigurationError(
            f"malformed Redis URL {shown(url)!r}: its path must be a database number, as in redis://host:6379/0"
        )
    query = {} if parts is None else parse_qs(parts.query)
    for db in [path.strip("/"), *query.get("db", [])]:
        # Redis's SELECT takes a 32-bit number (compared by length first: int() refuses 4,300 digits).
        if db and (not (db.isascii() and db.isdigit()) or len(db) > 10 or int(db) >= 2**31):
            raise ConfigurationError(
                f"malformed Redis URL {shown(url)!r}: database {db[:20]!r} is not a number "
                "from 0 to 2147483647"
            )
    # TCP keepalives (a probe after 30 s of quiet, then every 10 s, 3 unanswered end it), as on
    # PostgreSQL: they keep a NAT's or a load balancer's entry for an idle connection alive, and
    # turn a peer that vanished silently into a connection error, which is retried.
    keepalive: dict[str, Any] = {}
    if scheme != "unix" and hasattr(socket, "TCP_KEEPIDLE"):
        keepalive = {
            "socket_keepalive": True,
            "socket_keepalive_options": {
                socket.TCP_KEEPIDLE: KEEPALIVE_IDLE,
                socket.TCP_KEEPINTVL: KEEPALIVE_INTERVAL,
                socket.TCP_KEEPCNT: KEEPALIVE_COUNT,
            },
        }
    try:
        return redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            # One retry for a connection found closed (a restart, an idle timeout, a peer that
            # failed its keepalives), none for a timeout: redis-py would retry the handshake and
            # then the command, so that a Redis that accepts connections and never answers held a
            # call for 2 to 4 socket timeouts, not one.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
            **keepalive,
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ConfigurationError(f"malformed Redis URL: {exc}") from exc


def _job_options(wf: Workflow, *, engine_key: str | None) -> dict[str, Any]:
    """RQ's ``prepare_data`` arguments for a workflow's job.

    Only the arguments, the job id, the description and the timeout vary from job to job; the
    result TTL, the stop callback and the meta are the same for every workflow job (see ``_kind``).
    """
    # RQ int()s its timeout and caps an unset one at 180 s: "none" is -1, and a set
    # timeout gets a grace so that our own, exact timer fires first.
    timeout = -1 if wf.timeout is None else math.ceil(wf.timeout) + TIMEOUT_GRACE
    return {
        "args": (wf.id, wf.handler, wf.job_id),
        "kwargs": None if engine_key is None else {"engine_key": engine_key},
        "timeout": timeout,
        "result_ttl": RESULT_TTL,
        "job_id": wf.job_id,
        "description": f"workflow {wf.workflow_type_id} {wf.id}",
        "on_stopped": ON_JOB_STOPPED,
        "meta": {META_KEY: PRELOAD},
    }


#: RQ's hash of a workflow job of each kind (see ``_kind``), learnt from RQ once a process, for
#: every job of that kind to copy; None for a kind whose hash cannot be copied (``_learn``).
_templates: dict[tuple[Any, ...], dict[Any, Any] | None] = {}
#: Kinds of job whose hash is kept; more are forgotten and learnt again.
_TEMPLATES_KEPT = 64
#: The fields of a job's hash that ``_job_hash`` writes for the job itself.
_TIMES = ("created_at", "enqueued_at")
_copy_refused_logged = False


def _kind(queue_name: str, opts: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a job's hash shares with other workflow jobs': everything but its arguments, id,
    description and times (the stop callback and the meta are constants, ``_job_options``)."""
    return (queue_name, opts["timeout"], opts["result_ttl"], opts["kwargs"] is None)


def _job_hash(
    template: Mapping[Any, Any], opts: Mapping[str, Any], serializer: Any, stamp: str
) -> dict[Any, Any]:
    """The hash RQ's enqueue writes for a workflow job, from one of its kind's (``template``)."""
    mapping = dict(template)
    # RQ's Job.data: the function's name, no instance, the arguments; stored compressed.
    job_tuple = (RUN_WORKFLOW, None, opts["args"], opts["kwargs"] or {})
    mapping["data"] = zlib.compress(serializer.dumps(job_tuple))
    mapping["description"] = opts["description"]
    for field in _TIMES:
        mapping[field] = stamp
    return mapping


class _NoConnections(redis.ConnectionPool):
    """A pool that gives out no connection: a client on it can fill a pipeline and send nothing."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        raise _SentOutsideThePipeline


class _SentOutsideThePipeline(Exception):
    pass


def _learn(queue: Queue, opts: Mapping[str, Any]) -> dict[Any, Any] | None:
    """RQ's hash of a job of this kind, as a template, if copying it gives exactly what RQ sends.

    RQ enqueues two jobs of the kind, ``opts`` and the same with another workflow, handler, job
    and engine key, into a pipeline of a client that can send nothing. Its commands must be the
    queue's registration, each job's hash (its status, then the whole hash) and each job's push,
    nothing else (no expiry, no registry, nothing sent outside the pipeline); and each job's hash,
    rebuilt by :func:`_job_hash` from the first's, must be RQ's own, field for field and byte for
    byte as redis-py encodes them, bar the two times, which RQ must write too. So a field that
    differs from job to job, another encoding, or another command in a later RQ is seen here, and
    every job of that kind is then written by RQ itself: slower, never different.
    """
    global _copy_refused_logged
    other_id = secrets.token_hex(16)
    samples = [
        dict(opts),
        {
            **opts,
            "args": (other_id, "another.module:handler", f"{other_id}-00000000"),
            "kwargs": None if opts["kwargs"] is None else {"engine_key": "another-engine"},
            "job_id": f"{other_id}-00000000",
            "description": f"workflow another_type {other_id}",
        },
    ]
    mute = redis.Redis(connection_pool=_NoConnections())
    rehearsal = Queue(queue.name, connection=mute, serializer=queue.serializer)
    rehearsal.redis_server_version = queue.get_redis_server_version()  # RQ asks once a connection
    differ: set[Any] = set()
    sent: list[Any] = []
    with mute.pipeline() as unsent:  # reset on leaving, never executed
        try:
            rehearsal.enqueue_many([Queue.prepare_data(RUN_WORKFLOW, **j) for j in samples], pipeline=unsent)
        except _SentOutsideThePipeline:
            differ.add("a command sent outside the pipeline")
        except Exception as exc:  # a later RQ that enqueues otherwise: its own enqueue will tell
            differ.add(f"the rehearsal raised {type(exc).__name__}: {exc}")
        sent = [args for args, _ in unsent.command_stack]
    encode: Callable[[Any], bytes] = mute.get_encoder().encode  # as redis-py will send it
    hashes: dict[Any, dict[Any, Any]] = {}
    pushed: list[Any] = []
    for name, *rest in sent:
        if name == "SADD" and rest == [queue.redis_queues_keys, queue.key]:
            continue
        if name == "HSET" and len(rest) % 2 == 1:
            hashes.setdefault(rest[0], {}).update(zip(rest[1::2], rest[2::2], strict=True))
        elif name == "RPUSH" and rest[:1] == [queue.key]:
            pushed.extend(rest[1:])
        else:
            differ.add(str(name))
    keys = [Job.key_for(job["job_id"]) for job in samples]
    template = hashes.get(keys[0])
    if list(hashes) != keys or pushed != [job["job_id"] for job in samples] or template is None:
        differ.add("the jobs' keys or pushes")
    else:
        differ.update(field for field in _TIMES if field not in template)
        for key, job in zip(keys, samples, strict=True):
            try:
                written = {encode(k): encode(v) for k, v in hashes[key].items() if k not in _TIMES}
                rebuilt = _job_hash(template, job, queue.serializer, "")
                mine = {encode(k): encode(v) for k, v in rebuilt.items() if k not in _TIMES}
            except Exception as exc:  # a value redis-py cannot send (RQ could not either)
                differ.add(f"a field that cannot be encoded ({type(exc).__name__}: {exc})")
                break
            differ.update(field for field in {*written, *mine} if written.get(field) != mine.get(field))
    if not differ:
        return template
    if not _copy_refused_logged:
        _copy_refused_logged = True
        log.warning(
            "RQ %s enqueues a job differently from what workflow_engine copies, so RQ writes each "
            "such job itself (slower). What differs: %s",
            rq_version,
            ", ".join(sorted(f.decode(errors="replace") if isinstance(f, bytes) else str(f) for f in differ)),
        )
    return None


def _split(url: str) -> SplitResult | None:
    try:
        return urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket: redis-py's to judge, in from_url
        return None


class Transport:
    """Puts workflow jobs on one RQ queue and asks Redis about them."""

    def __init__(
        self, connection: redis.Redis, queue_name: str, *, is_async: bool = True, in_process: bool = False
    ) -> None:
        self.connection = connection
        self.queue_name = queue_name
        self.is_async = is_async
        #: True when only this process can run the jobs (fakeredis): the job may then name its engine.
        self.in_process = in_process

    @functools.cached_property
    def queue(self) -> Queue:
        """The RQ queue, built on first use: a work-horse builds a transport per job and rarely needs it."""
        return Queue(self.queue_name, connection=self.connection, is_async=self.is_async)

    def deliver(self, workflows: Sequence[Workflow], *, engine_key: str | None = None) -> None:
        """Put a job for each workflow (carried by its ``job_id``) on the queue, in one round trip.

        In sync mode each job is performed before this returns, one by one.
        """
        if not workflows:
            return
        options = functools.partial(_job_options, engine_key=engine_key)
        try:
            if not self.is_async:
                # Sync mode: perform RQ's job right here, as RQ's own sync queue would, but
                # without its Redis bookkeeping (0.6 ms a job, more than the whole engine).
                # A job delivered while this thread runs one (a retry) runs after it, not inside
                # it, so that a long retry budget cannot exhaust the stack.
                # The queue holds the engine too: an engine that exists only inside a handler must
                # live until its job has run.
                from .engine import _ENGINES

                owner = _ENGINES.get(engine_key) if engine_key is not None else None
                jobs = [(self, options(wf), owner) for wf in workflows]
                running = getattr(_sync, "jobs", None)
                if running is not None:
                    running.extend(jobs)  # first: a job that is live must be one that runs
                    _pending(opts["job_id"] for _, opts, _ in jobs)
                    return
                _sync.jobs = deque(jobs)
                failure: BaseException | None = None
                stop: BaseException | None = None
                try:
                    _pending(opts["job_id"] for _, opts, _ in jobs)
                    while _sync.jobs:
                        transport, opts, _owner = _sync.jobs[0]  # pending until performed, as a started job
                        try:
                            transport._perform(opts)
                        except Exception as exc:  # a store failure: the others still run, then it is raised
                            log.exception("in-process job %s failed", opts["job_id"])
                            failure = failure or exc
                        except (KeyboardInterrupt, SystemExit) as exc:
                            # A handler's stop request, raised again once its attempt was recorded.
                            # A worker records that job and goes on with the next ones (retries and
                            # workflows it created included): so do these, then it is raised.
                            stop = stop or exc
                        finally:
                            _sync.jobs.popleft()
                            _settled([opts["job_id"]])
                finally:
                    # Jobs left unperformed (another BaseException) are lost, as Redis may lose
                    # them: no longer live, so that reconcile delivers their workflows again.
                    _settled(opts["job_id"] for _, opts, _ in _sync.jobs)
                    _sync.jobs = None
                if stop is not None:
                    raise stop
                if failure is not None:
                    raise failure
                return
            # One round trip for all, instead of RQ's two per job: one MULTI/EXEC pipeline.
            with self.connection.pipeline() as pipe:
                self._write_jobs(pipe, [options(wf) for wf in workflows])
                pipe.execute()
        except _REDIS_ERRORS as exc:
            raise QueueUnavailable(
                f"Redis is unavailable ({exc}); {_which(workflows)} stays queued in the database and "
                "engine.reconcile() will deliver it once Redis is back",
                workflow_ids=[wf.id for wf in workflows],
            ) from exc

    def _write_jobs(self, pipe: Pipeline, jobs: Sequence[dict[str, Any]]) -> None:
        """Write each job's hash and push the jobs onto the queue, in order, into ``pipe``.

        Each job's hash is the one RQ's enqueue writes, copied from its kind's (``_learn``), with
        the job's own arguments, description and times: RQ's ``Job.create`` and ``to_dict`` were
        about half of a delivery, and its three commands a job (the status, the hash, the push)
        become one, plus one push for the batch. A kind whose hash cannot be copied is enqueued
        by RQ itself.
        """
        job_ids = [opts["job_id"] for opts in jobs]
        for job_id in job_ids:
            validate_job_id(job_id)  # as RQ's Job does
        if len(set(job_ids)) != len(job_ids):  # as RQ's enqueue_many: one would overwrite the other
            raise ValueError("a job id appears more than once in one delivery")
        queue = self.queue
        pipe.sadd(queue.redis_queues_keys, queue.key)  # as RQ's enqueue does
        stamp = utcformat(rq_now())  # RQ's created_at and enqueued_at, a few µs apart on its own jobs
        copied: list[str] = []  # written here, not pushed yet
        by_rq: list[Any] = []  # for RQ to write and push, in one call
        for opts in jobs:
            kind = _kind(queue.name, opts)
            if kind not in _templates:
                if len(_templates) >= _TEMPLATES_KEPT:
                    _templates.clear()
                _templates[kind] = _learn(queue, opts)
            template = _templates.get(kind)
            if template is None:
                if copied:  # first, to keep the queue's order
                    pipe.rpush(queue.key, *copied)
                    copied.clear()
                by_rq.append(Queue.prepare_data(RUN_WORKFLOW, **opts))
                continue
            if by_rq:
                queue.enqueue_many(by_rq, pipeline=pipe)
                by_rq.clear()
            pipe.hset(Job.key_for(opts["job_id"]), mapping=_job_hash(template, opts, queue.serializer, stamp))
            copied.append(opts["job_id"])
        if copied:
            pipe.rpush(queue.key, *copied)
        if by_rq:
            queue.enqueue_many(by_rq, pipeline=pipe)

    def _perform(self, opts: dict[str, Any]) -> None:
        """Sync mode: run one job's function here, as RQ's own sync queue would."""
        from .execution import run_workflow

        Job.create(
            run_workflow,
            connection=self.connection,
            args=opts["args"],
            kwargs=opts["kwargs"],
            id=opts["job_id"],
            timeout=opts["timeout"],
            result_ttl=opts["result_ttl"],
            description=opts["description"],
            origin=self.queue_name,
        ).perform()

    def job_statuses(
        self, job_ids: Sequence[str], *, on_queue: AbstractSet[str] | None = None
    ) -> dict[str, bytes | None]:
        """Each job's RQ status (``b"queued"``, ``b"started"``, …), or None when Redis has no such job.

        A ``queued`` job that a worker has moved onto the queue's intermediate list (RQ's first
        step in taking a job) is reported as :data:`TAKEN`: if that worker died before starting
        it, nothing else will ever run it. With ``on_queue``, the ids :meth:`queued_ids` read off
        the queue's list *before* this call, a ``queued`` job on neither list is reported as
        :data:`OFF_THE_QUEUE`. Both count as live: reconcile gives up on one only once it has
        stayed so for ``stale_after``. The reads are one ``MULTI``: a job marked started and taken
        off the intermediate list between two of them would look as if it were on neither.
        """
        if not job_ids:
            return {}
        taken_list = f"{self.queue.key}:intermediate"
        try:
            # RQ moves jobs through the intermediate list only on Redis 6.2 and later (LMOVE);
            # older servers have no LPOS either. (RQ caches the version on the connection.)
            lists = get_version(self.connection) >= (6, 2, 0)
            with self.connection.pipeline(transaction=True) as pipe:
                for job_id in job_ids:
                    pipe.hget(Job.key_for(job_id), "status")
                    if lists:
                        pipe.lpos(taken_list, job_id)
                replies = pipe.execute()
        except _REDIS_ERRORS as exc:
            raise QueueUnavailable(f"Redis is unavailable: {exc}") from exc
        found = replies[::2] if lists else replies
        positions = replies[1::2] if lists else [None] * len(job_ids)
        statuses: dict[str, bytes | None] = {}
        # Sync mode: a job a thread of this process has still to perform is waiting, as on the
        # queue (it never reaches Redis); one in Redis (an engine in another mode, sharing it) too.
        waiting = _sync_live(job_ids) if not self.is_async else set()
        for job_id, status, position in zip(job_ids, found, positions, strict=True):
            if job_id in waiting:
                status = b"queued"
            elif status == b"queued" and position is not None:
                status = TAKEN
            elif status == b"queued" and on_queue is not None and job_id not in on_queue:
                status = OFF_THE_QUEUE
            statuses[job_id] = status
        return statuses

    def queued_ids(self) -> frozenset[str] | None:
        """Every job id on the queue's list now, in one read; None for a list longer than
        :data:`QUEUE_SCAN_LIMIT`, which is not read (a pass of reconcile reads it once)."""
        try:
            if self.connection.llen(self.queue.key) > QUEUE_SCAN_LIMIT:
                return None
            ids = self.connection.lrange(self.queue.key, 0, QUEUE_SCAN_LIMIT)  # one more: grown since?
        except _REDIS_ERRORS as exc:
            raise QueueUnavailable(f"Redis is unavailable: {exc}") from exc
        if len(ids) > QUEUE_SCAN_LIMIT:
            return None
        on_queue = frozenset(j.decode() if isinstance(j, bytes) else j for j in ids)
        if not self.is_async:  # and the jobs the threads of this process have still to perform
            with _sync_pending_lock:
                return on_queue | _sync_pending
        return on_queue

    def taken_at(
        self, statuses: Mapping[str, bytes | None], now: datetime, *, keep: float
    ) -> dict[str, datetime | None]:
        """When a worker took each ``started``, :data:`TAKEN` or :data:`OFF_THE_QUEUE` job of
        ``statuses``: RQ's ``started_at`` for a started job; for another, when this was first asked about it
        (noted in Redis, so that every process and every pass agrees), ``now`` the first time.
        None where Redis does not say. Other jobs are left out."""
        jobs = [(job_id, st) for job_id, st in statuses.items() if st in TAKEN_STATUSES]
        if not jobs:
            return {}
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                for job_id, status in jobs:
                    if status == b"started":
                        pipe.hget(Job.key_for(job_id), "started_at")
                    else:
                        mark = TAKEN_MARK.format(job_id=job_id)
                        pipe.set(mark, now.timestamp(), nx=True, ex=math.ceil(keep))
                        pipe.expire(mark, math.ceil(keep))
                        pipe.get(mark)
                replies = iter(pipe.execute())
        except _REDIS_ERRORS as exc:
            raise QueueUnavailable(f"Redis is unavailable: {exc}") from exc
        taken: dict[str, datetime | None] = {}
        for job_id, status in jobs:
            try:
                if status == b"started":
                    started = next(replies)
                    taken[job_id] = utcparse(started.decode()) if started else None
                else:
                    next(replies)  # the SET
                    next(replies)  # the EXPIRE
                    seen = next(replies)
                    taken[job_id] = datetime.fromtimestamp(float(seen), timezone.utc) if seen else None
            except ValueError:  # a value this version cannot read: as if Redis did not say
                taken[job_id] = None
        return taken

    def forget_taken(self, job_ids: Sequence[str]) -> None:
        """Drop the notes :meth:`taken_at` kept of these jobs (replaced by new ones): best effort."""
        if job_ids:
            with contextlib.suppress(*_REDIS_ERRORS):
                self.connection.delete(*(TAKEN_MARK.format(job_id=j) for j in job_ids))

    def live_jobs(self, job_ids: Sequence[str]) -> set[str]:
        """The subset of ``job_ids`` whose RQ job still exists and will run or is running.

        In sync mode no job of this engine reaches Redis: the live ones are those a thread of this
        process has still to perform (a workflow a handler queued, which runs after its parent's
        job), and any in Redis (an engine in another mode that shares it)."""
        return {jid for jid, st in self.job_statuses(job_ids).items() if st in LIVE_JOB_STATUSES}

    def stop(self, job_id: str, worker: str | None = None) -> bool:
        """Ask the forking worker running ``job_id`` to kill its work-horse. False if it is not running.

        RQ finds the worker in the job's hash. If Redis lost that hash (a restart while the job
        ran), ``worker``, the name the database recorded at the claim, is asked directly: a worker
        kills its horse only if that horse runs ``job_id``."""
        from rq.command import send_command, send_stop_job_command
        from rq.exceptions import InvalidJobOperation, NoSuchJobError

        try:
            try:
                send_stop_job_command(self.connection, job_id)
            except NoSuchJobError:
                if not worker:
                    return False
                send_command(self.connection, worker, "stop-job", job_id=job_id)
        except InvalidJobOperation:
            return False
        except _REDIS_ERRORS:
            return False
        return True

    def ping(self) -> None:
        try:
            self.connection.ping()
        except _REDIS_ERRORS as exc:
            raise QueueUnavailable(f"Redis is unavailable: {exc}") from exc

    def depth(self) -> int:
        try:
            return int(self.queue.count)
        except _REDIS_ERRORS as exc:
            raise QueueUnavailable(f"Redis is unavailable: {exc}") from exc


def _which(workflows: Sequence[Workflow]) -> str:
    if len(workflows) == 1:
        return f"workflow {workflows[0].id!r}"
    return f"each of the {len(workflows)} workflows"
