"""The worker classes of ``workflow-engine worker``: RQ's workers with one-round-trip heartbeats.

Their behaviour end to end (jobs run, cancels, kills, recovery) is covered wherever the
tests start ``workflow-engine worker``; here, what they change and what they must not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.connection
from rq import Queue, SimpleWorker, Worker

from workflow_engine.workers import SimpleWorkflowWorker, WorkflowWorker

from support import RedisServer


@pytest.fixture
def connection(redis_server: RedisServer) -> Iterator[Any]:
    conn = redis.Redis.from_url(redis_server.url)
    try:
        yield conn
    finally:
        conn.close()


def round_trips(monkeypatch: pytest.MonkeyPatch, action: Any) -> int:
    """How many times ``action()`` sends something to Redis and waits for the answer."""
    sent = 0
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        sent += 1
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
        action()
    return sent


@pytest.mark.parametrize(("ours", "stock"), [(SimpleWorkflowWorker, SimpleWorker), (WorkflowWorker, Worker)])
def test_a_heartbeat_is_one_round_trip_instead_of_three_with_the_same_effect(
    ours: type[Any], stock: type[Any], connection: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue("workflows", connection=connection)
    workers = {"ours": ours([queue], connection=connection), "stock": stock([queue], connection=connection)}
    trips = {}
    for kind, worker in workers.items():
        worker.register_birth()
        connection.sadd(worker.executions_key, "an-execution")  # so that its TTL can be read
        connection.persist(worker.key)
        connection.hdel(worker.key, "last_heartbeat")
        trips[kind] = round_trips(monkeypatch, lambda worker=worker: worker.heartbeat(90))

    assert trips == {"ours": 1, "stock": 3}
    for worker in workers.values():
        assert connection.hget(worker.key, "last_heartbeat") is not None
        assert 85 <= connection.ttl(worker.key) <= 90
        assert 85 <= connection.ttl(worker.executions_key) <= 90


def test_a_heartbeat_inside_rqs_own_pipeline_stays_in_it(
    connection: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = SimpleWorkflowWorker([Queue("workflows", connection=connection)], connection=connection)
    worker.register_birth()
    with connection.pipeline() as pipe:
        assert round_trips(monkeypatch, lambda: worker.heartbeat(pipeline=pipe)) == 0
        assert round_trips(monkeypatch, pipe.execute) == 1
    assert connection.hget(worker.key, "last_heartbeat") is not None


@pytest.mark.parametrize("cls", [SimpleWorkflowWorker, WorkflowWorker])
def test_a_heartbeat_after_redis_lost_its_data_registers_the_worker_again(
    cls: type[Any], connection: Any
) -> None:
    """A Redis restarted without persistence: RQ registers a worker only at its start, so a live
    one stayed out of rq info and workflow-engine health (0 live workers) until it restarted."""
    worker = cls([Queue("workflows", connection=connection)], connection=connection)
    worker.register_birth()
    assert [w.name for w in Worker.all(connection=connection)] == [worker.name]
    connection.flushall()
    assert Worker.all(connection=connection) == []
    worker.heartbeat()
    assert [w.name for w in Worker.all(connection=connection)] == [worker.name]
    [found] = Worker.all(queue=Queue("workflows", connection=connection))
    assert (found.name, found.pid, found.queue_names(), found.hostname) == (
        worker.name,
        worker.pid,
        ["workflows"],
        worker.hostname,
    )  # the whole record, as `rq info` shows it, not the one field a heartbeat writes
    assert 0 < connection.ttl(worker.key) <= worker.worker_ttl + 60
