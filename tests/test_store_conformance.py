"""The store contract. Every store must pass every test here: SQLite and PostgreSQL alike."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from workflow_engine.errors import ConfigurationError, StoreUnavailable
from workflow_engine.models import MAX_JSON_DEPTH, Council, Vote, Workflow, utcnow
from workflow_engine.status import WorkflowStatus
from workflow_engine.stores import Store, open_store
from workflow_engine.stores import queries as q
from workflow_engine.stores.base import Change, NewEvent

from support import a_workflow, create_index_statements

S = WorkflowStatus


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = open_store(database_url)
    try:
        yield s
    finally:
        s.close()


def new(type_id: str = "t", *, agent: str | None = "a", key: str | None = None, **inputs: object) -> Workflow:
    return a_workflow(
        workflow_type_id=type_id, created_by_agent=agent, inputs=dict(inputs), idempotency_key=key
    )


def lease(seconds: float = 30) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


def queued(store: Store, wf: Workflow, job_id: str = "job-1") -> Workflow:
    out = store.compare_and_set(
        wf.id,
        expected_status=S.PENDING,
        changes={"status": S.QUEUED, "job_id": job_id, "updated_at": utcnow()},
        event=NewEvent(S.PENDING, S.QUEUED),
    )
    assert out is not None
    return out


def test_a_workflow_reads_back_exactly_as_it_was_inserted(store: Store) -> None:
    wf = new(nested={"list": [1, 2.5, None, "é"], "flag": True}, quote='it\'s "quoted"')
    wf = wf.model_copy(update={"calculated_savings": {"weekly": 12.5}})
    [(stored, created)] = store.insert([wf])
    assert created and stored == wf
    assert store.get(wf.id) == wf


def test_json_nested_as_deep_as_allowed_reads_back_exactly(store: Store) -> None:
    deepest: list[object] = []
    for _ in range(MAX_JSON_DEPTH - 2):  # inside the inputs object and its "deep" key's list
        deepest = [deepest]
    wf = new(deep=deepest, big=2**70, small=1e-300, smile="\U0001f600").model_copy(
        update={"calculated_savings": {"deep": deepest}, "result": {"deep": deepest}}
    )
    store.insert([wf])
    assert store.get(wf.id) == wf
    assert store.find(limit=1, filters={}) == [wf]


def test_a_workflow_with_every_field_set_reads_back_exactly(store: Store) -> None:
    now = utcnow()
    wf = new(key="k-1", n=1).model_copy(
        update={
            "status": S.RUNNING,
            "calculated_savings": {"hours": 2},
            "assigned_council_id": "c",
            "result": [1, {"a": None}],
            "error": "boom",
            "traceback": "Traceback ...",
            "attempts": 2,
            "max_retries": 3,
            "max_attempts": 6,
            "retry_backoff": 0.5,
            "timeout": 9.5,
            "handler": "pkg.mod:fn",
            "job_id": "job-9",
            "worker": "w-1",
            "started_at": now - timedelta(seconds=3),
            "finished_at": now - timedelta(seconds=1),
            "heartbeat_at": now - timedelta(seconds=2),
            "lease_until": now + timedelta(seconds=30),
            "run_after": now + timedelta(seconds=60),
            "cancel_requested_at": now,
            "duration_s": 2.0,
            "queued_at": now - timedelta(seconds=4),
        }
    )
    assert all(value is not None for value in wf.model_dump().values())
    [(stored, created)] = store.insert([wf])
    assert created and stored == wf
    assert store.get(wf.id) == wf


def test_timestamps_that_share_one_value_and_ones_that_do_not_read_back_each_as_given(store: Store) -> None:
    now = utcnow()
    later = now + timedelta(seconds=1)
    wf = new().model_copy(
        update={
            "status": S.RUNNING,
            "created_at": now,
            "updated_at": now,
            "started_at": later,
            "finished_at": now,
            "heartbeat_at": later,
            "lease_until": later + timedelta(seconds=30),
            "queued_at": now,
        }
    )
    [(stored, _)] = store.insert([wf])
    assert store.get(wf.id) == stored == wf


def test_columns_added_to_every_table_while_the_store_runs_change_nothing_it_reads_or_writes(
    store: Store,
) -> None:
    """A newer release's migration while this one still runs, or an operator's column for reports:
    every read and every RETURNING names its columns, so neither the models nor a prepared
    statement meets one it does not know."""
    now = utcnow()
    council = store.save_council(Council(id="c", members=["ana"], quorum=1, updated_at=now))
    [(before, _)] = store.insert([a_workflow(status=S.AWAITING_APPROVAL, assigned_council_id="c")])
    store.get(before.id), store.find(limit=5, filters={}), store.events(before.id)  # prepared, warm

    with store.transaction() as tx:
        for table in ("workflows", "workflow_events", "councils", "workflow_votes"):
            tx.execute(f"ALTER TABLE {table} ADD COLUMN report_tag TEXT", {})

    [(wf, created)] = store.insert([a_workflow()])
    assert created and store.get(wf.id) == wf and store.get_many([wf.id]) == {wf.id: wf}
    assert [w.id for w in store.find(limit=5, filters={"status": "pending"})] == [wf.id]
    change = {"status": S.QUEUED, "job_id": "j1", "updated_at": utcnow()}
    [queued] = store.apply([Change(wf.id, S.PENDING, change, NewEvent(S.PENDING, S.QUEUED))])
    assert queued is not None and queued.job_id == "j1"
    claimed = store.claim(
        wf.id, job_id="j1", worker="w", now=utcnow(), lease_until=utcnow() + timedelta(seconds=30)
    )
    assert claimed is not None and claimed.status is S.RUNNING
    assert [e.to_status for e in store.events(wf.id)] == [S.PENDING, S.QUEUED, S.RUNNING]
    assert store.get_council("c") == council
    vote = Vote(workflow_id=before.id, voter_id="ana", approve=True, at=utcnow())
    assert store.record_vote(vote, change=False, detail="vote: ana approves") == "recorded"
    assert store.votes(before.id) == [vote]
    store.insert([a_workflow(calculated_savings={"hours": 2})])
    assert savings(store) == {"hours": 2.0}


def test_getting_a_missing_id_returns_none(store: Store) -> None:
    assert store.get("missing") is None
    assert store.events("missing") == []


def test_insert_records_a_creation_event(store: Store) -> None:
    wf = new()
    store.insert([wf])
    [event] = store.events(wf.id)
    assert (event.from_status, event.to_status, event.at) == (None, S.PENDING, wf.updated_at)


def test_insert_records_the_history_it_is_given_in_the_same_transaction(store: Store) -> None:
    wf = new().model_copy(update={"status": S.QUEUED, "job_id": "job-1"})
    taken = new(key="k")
    store.insert([taken])
    history = [(NewEvent(None, S.PENDING), NewEvent(S.PENDING, S.QUEUED, "enqueued")), ()]
    results = store.insert([wf, new(key="k")], history)
    assert [created for _, created in results] == [True, False]
    assert store.get(wf.id) == wf
    assert [(e.from_status, e.to_status, e.detail) for e in store.events(wf.id)] == [
        (None, S.PENDING, None),
        (S.PENDING, S.QUEUED, "enqueued"),
    ]
    assert len(store.events(taken.id)) == 1  # an existing workflow gets no event
    with pytest.raises(ValueError, match="one sequence of events per workflow"):
        store.insert([new()], [])


def test_a_taken_idempotency_key_returns_the_existing_workflow(store: Store) -> None:
    first = new(key="order-42", v=1)
    store.insert([first])
    [(existing, created)] = store.insert([new(key="order-42", v=2)])
    assert not created and existing == first
    assert len(store.events(first.id)) == 1


def test_a_batch_sent_again_returns_each_workflow_its_keys_already_took_and_writes_only_the_new(
    store: Store,
) -> None:
    batch = [new(key=f"order-{n}", n=n) for n in range(4)]
    first = store.insert(batch)
    assert [created for _, created in first] == [True] * 4
    again = [new(key=f"order-{n}", n=-n) for n in (3, 1)] + [new(key="order-9"), new()]
    out = store.insert(again)
    assert [(wf.id, created) for wf, created in out] == [
        (batch[3].id, False),
        (batch[1].id, False),
        (again[2].id, True),
        (again[3].id, True),
    ]
    assert [wf for wf, _ in out[:2]] == [batch[3], batch[1]]  # as first stored, not as sent again
    assert store.get(again[0].id) is None and store.get(again[1].id) is None
    assert all(len(store.events(wf.id)) == 1 for wf in batch + again[2:])


def test_of_two_workflows_with_one_idempotency_key_in_a_batch_the_first_is_stored(store: Store) -> None:
    first = new(key="k", n=1).model_copy(update={"id": "b-first"})
    second = new(key="k", n=2).model_copy(update={"id": "a-second"})  # an id that sorts first
    results = store.insert([first, second])
    assert [(wf.id, created) for wf, created in results] == [("b-first", True), ("b-first", False)]
    stored = store.get("b-first")
    assert stored is not None and stored.inputs == {"n": 1} and store.get("a-second") is None


def test_compare_and_set_applies_only_when_the_status_still_matches(store: Store) -> None:
    wf = new()
    store.insert([wf])
    moved = queued(store, wf)
    assert moved.status is S.QUEUED and moved.job_id == "job-1"
    again = store.compare_and_set(
        wf.id,
        expected_status=S.PENDING,
        changes={"status": S.CANCELLED, "updated_at": utcnow()},
        event=NewEvent(S.PENDING, S.CANCELLED),
    )
    assert again is None
    assert [e.to_status for e in store.events(wf.id)] == [S.PENDING, S.QUEUED]  # no event for the loser


def test_a_batch_of_changes_applies_each_that_still_matches_with_its_event_and_skips_the_others(
    store: Store,
) -> None:
    # Ids that sort against the order given: rows are locked in id order, and each result must
    # still come back in the place of its change.
    first, moved, last = (new().model_copy(update={"id": i}) for i in ("c-first", "b-moved", "a-last"))
    store.insert([first, moved, last])
    queued(store, moved)  # no longer pending: its change in the batch must miss, alone
    changes = [
        Change(
            wf.id,
            S.PENDING,
            {"status": S.QUEUED, "job_id": f"job-{wf.id}", "updated_at": utcnow()},
            NewEvent(S.PENDING, S.QUEUED, "enqueued"),
        )
        for wf in (first, moved, last)
    ]
    out = store.apply(changes)
    assert [None if wf is None else (wf.id, wf.status, wf.job_id) for wf in out] == [
        ("c-first", S.QUEUED, "job-c-first"),
        None,
        ("a-last", S.QUEUED, "job-a-last"),
    ]
    for wf, applied in ((first, out[0]), (last, out[2])):
        assert store.get(wf.id) == applied
        assert [(e.to_status, e.detail) for e in store.events(wf.id)] == [
            (S.PENDING, None),
            (S.QUEUED, "enqueued"),
        ]
    assert [e.to_status for e in store.events(moved.id)] == [S.PENDING, S.QUEUED]  # not a second one
    assert store.apply([]) == []


def test_compare_and_set_can_require_a_job_id_or_its_absence(store: Store) -> None:
    wf = new()
    store.insert([wf])
    queued(store, wf, "job-1")
    change = {"job_id": "job-2", "updated_at": utcnow()}
    assert (
        store.compare_and_set(
            wf.id, expected_status=S.QUEUED, changes=change, event=None, expected_job_id="other"
        )
        is None
    )
    assert (
        store.compare_and_set(
            wf.id, expected_status=S.QUEUED, changes=change, event=None, expected_job_id=None
        )
        is None
    )
    done = store.compare_and_set(
        wf.id,
        expected_status=S.QUEUED,
        changes={**change, "job_id": None},
        event=None,
        expected_job_id="job-1",
    )
    assert done is not None and done.job_id is None
    assert (
        store.compare_and_set(
            wf.id, expected_status=S.QUEUED, changes=change, event=None, expected_job_id=None
        )
        is not None
    )


def test_a_change_can_require_that_no_cancel_was_requested(store: Store) -> None:
    wf = new()
    store.insert([wf])
    queued(store, wf, "job-1")
    asked = store.compare_and_set(
        wf.id,
        expected_status=S.QUEUED,
        changes={"cancel_requested_at": utcnow(), "updated_at": utcnow()},
        event=None,
    )
    assert asked is not None
    retry = Change(
        wf.id, S.QUEUED, {"job_id": "job-2", "updated_at": utcnow()}, None, cancel_not_requested=True
    )
    assert store.apply([retry]) == [None]
    assert store.apply([replace(retry, cancel_not_requested=False)])[0] is not None


def test_compare_and_set_refuses_columns_that_never_change(store: Store) -> None:
    wf = new()
    store.insert([wf])
    with pytest.raises(ValueError, match="not updatable"):
        store.compare_and_set(wf.id, expected_status=S.PENDING, changes={"inputs": {}}, event=None)


def test_each_shape_of_compare_and_set_sql_is_built_once_and_keyed_by_what_it_checks() -> None:
    """``update_sql`` is cached: ``job_id`` True checks the job, None asks for none, anything else
    (False, a stray string or 1) sets no condition on it, each with a cache entry of its own."""

    def condition(job_id: Any) -> str:
        sql = q.update_sql(["status"], job_id=job_id, lease_expired=False)
        return sql.split(" WHERE ")[1].split(" RETURNING ")[0]

    checked = q.update_sql(["status"], job_id=True, lease_expired=False)
    assert q.update_sql(("status",), job_id=True, lease_expired=False) is checked
    assert condition(True).endswith("AND job_id = :expected_job_id")
    assert condition(None).endswith("AND job_id IS NULL")
    for unchecked in (False, 1, "job-1"):
        assert condition(unchecked) == "id = :id AND status = :expected_status"
    for _ in range(2):  # a refusal is raised every time, never cached
        with pytest.raises(ValueError, match="not updatable columns: \\['inputs'\\]"):
            q.update_sql(["inputs"], job_id=True, lease_expired=False)


def test_only_the_job_that_carries_a_workflow_can_claim_it_and_only_once(store: Store) -> None:
    wf = new()
    store.insert([wf])
    queued(store, wf, "job-1")
    assert store.claim(wf.id, job_id="stale-job", worker="w", now=utcnow(), lease_until=lease()) is None
    claimed = store.claim(wf.id, job_id="job-1", worker="w1", now=utcnow(), lease_until=lease())
    assert claimed is not None
    assert (claimed.status, claimed.attempts, claimed.worker) == (S.RUNNING, 1, "w1")
    assert claimed.started_at is not None and claimed.heartbeat_at is not None
    assert store.claim(wf.id, job_id="job-1", worker="w2", now=utcnow(), lease_until=lease()) is None
    assert store.events(wf.id)[-1].detail == "claimed by w1"


@contextmanager
def reply_lost_after_the_next_commit(store: Store) -> Iterator[None]:
    """The next write commits, then the connection fails before its reply arrives (a backend
    terminated at the wrong moment). The store is made to retry, as PostgreSQL's does."""
    with _the_next_write_fails(store, after_commit=True):
        yield


@contextmanager
def _the_next_write_fails(store: Store, *, after_commit: bool) -> Iterator[None]:
    """The next write's connection fails: after its commit, or before anything was sent. The
    store is made to retry, as PostgreSQL's does."""
    real = store.transaction  # type: ignore[attr-defined]
    lost: list[bool] = []

    @contextmanager
    def transaction(*, write: bool = True, single: bool = False) -> Iterator[Any]:
        if write and not lost and not after_commit:
            lost.append(True)
            raise StoreUnavailable("the connection failed before the statement")
        with real(write=write, single=single) as tx:
            yield tx
        if write and not lost:
            lost.append(True)
            raise StoreUnavailable("the connection failed after the commit")

    retries = store.retry_unavailable  # type: ignore[attr-defined]
    store.transaction = transaction  # type: ignore[attr-defined]
    store.retry_unavailable = True  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del store.transaction  # type: ignore[attr-defined]
        store.retry_unavailable = retries  # type: ignore[attr-defined]
    assert lost, "no write was interrupted"


def test_a_claim_whose_reply_was_lost_after_its_commit_is_still_won(store: Store) -> None:
    wf = new()
    store.insert([wf])
    queued(store, wf, "job-1")
    with reply_lost_after_the_next_commit(store):
        claimed = store.claim(wf.id, job_id="job-1", worker="w1", now=utcnow(), lease_until=lease())
    assert claimed is not None and (claimed.status, claimed.attempts, claimed.job_id) == (
        S.RUNNING,
        1,
        "job-1",
    )
    assert [e.to_status for e in store.events(wf.id)] == [S.PENDING, S.QUEUED, S.RUNNING]


def test_an_insert_whose_reply_was_lost_after_its_commit_is_not_repeated(store: Store) -> None:
    keyed = new(key="order-1")
    store.insert([keyed])
    fresh, again, fresh_keyed = new(), new(key="order-1"), new(key="order-2")
    with reply_lost_after_the_next_commit(store):
        out = store.insert([fresh, again, fresh_keyed])
    assert [(wf.id, created) for wf, created in out] == [
        (fresh.id, True),
        (keyed.id, False),
        (fresh_keyed.id, True),  # its key was taken by this very insert's first attempt: created
    ]
    for wf in (fresh, fresh_keyed):
        assert [e.to_status for e in store.events(wf.id)] == [S.PENDING]  # one row, one event
    assert store.get(again.id) is None


def test_an_insert_that_failed_before_its_commit_is_run_again(store: Store) -> None:
    wf = new()
    with _the_next_write_fails(store, after_commit=False):  # it asserts that the write failed
        [(stored, created)] = store.insert([wf])
    assert created and stored.id == wf.id and store.get(wf.id) is not None


def test_a_landed_claim_is_still_won_when_a_cancel_request_came_in_between(store: Store) -> None:
    wf = new()
    store.insert([wf])
    queued(store, wf, "job-1")
    real_get = store.get

    def get_after_a_cancel(workflow_id: str) -> Workflow | None:
        store.compare_and_set(  # a user's cancel request lands before the store looks
            workflow_id,
            expected_status=S.RUNNING,
            changes={"cancel_requested_at": utcnow(), "updated_at": utcnow()},
            event=None,
        )
        return real_get(workflow_id)

    with reply_lost_after_the_next_commit(store):
        store.get = get_after_a_cancel  # type: ignore[method-assign]
        try:
            claimed = store.claim(wf.id, job_id="job-1", worker="w1", now=utcnow(), lease_until=lease())
        finally:
            del store.get
    assert claimed is not None and claimed.cancel_requested_at is not None and claimed.attempts == 1


def test_a_change_whose_reply_was_lost_after_its_commit_is_applied_once(store: Store) -> None:
    wf = new()
    store.insert([wf])
    queued(store, wf, "job-1")
    claimed = store.claim(wf.id, job_id="job-1", worker="w1", now=utcnow(), lease_until=lease())
    assert claimed is not None
    with reply_lost_after_the_next_commit(store):
        asked = store.compare_and_set(  # a change that would still match if it ran twice
            wf.id,
            expected_status=S.RUNNING,
            changes={"cancel_requested_at": utcnow(), "updated_at": utcnow()},
            event=NewEvent(S.RUNNING, S.RUNNING, "cancel requested"),
            expected_job_id="job-1",
        )
    assert asked is not None and asked.cancel_requested_at is not None
    assert [e.detail for e in store.events(wf.id)].count("cancel requested") == 1
    with reply_lost_after_the_next_commit(store):
        done = store.compare_and_set(  # and one that would miss
            wf.id,
            expected_status=S.RUNNING,
            changes={"status": S.COMPLETED, "updated_at": utcnow()},
            event=NewEvent(S.RUNNING, S.COMPLETED),
            expected_job_id="job-1",
        )
    assert done is not None and done.status is S.COMPLETED


def test_each_change_records_one_event_stamped_with_the_new_row(store: Store) -> None:
    wf = new()
    store.insert([wf])
    queued(store, wf, "job-1")
    claimed = store.claim(wf.id, job_id="job-1", worker="w1", now=utcnow(), lease_until=lease())
    assert claimed is not None
    done = store.compare_and_set(
        wf.id,
        expected_status=S.RUNNING,
        changes={"status": S.COMPLETED, "updated_at": utcnow()},
        event=NewEvent(S.RUNNING, S.COMPLETED, None),
        expected_job_id="job-1",
    )
    assert done is not None
    lost = store.compare_and_set(
        wf.id,
        expected_status=S.RUNNING,
        changes={"updated_at": utcnow()},
        event=NewEvent(S.RUNNING, S.FAILED),
    )
    assert lost is None  # not as expected: nothing changed, no event
    events = store.events(wf.id)
    assert [(e.from_status, e.to_status) for e in events] == [
        (None, S.PENDING),
        (S.PENDING, S.QUEUED),
        (S.QUEUED, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
    ]
    assert (events[2].at, events[2].attempt, events[2].detail) == (claimed.updated_at, 1, "claimed by w1")
    assert (events[3].at, events[3].attempt, events[3].detail) == (done.updated_at, 1, None)


def test_concurrent_claims_from_many_connections_have_exactly_one_winner(database_url: str) -> None:
    stores = [open_store(database_url) for _ in range(6)]
    wf = new()
    stores[0].insert([wf])
    queued(stores[0], wf, "job-1")
    barrier = threading.Barrier(len(stores))
    wins: list[Workflow] = []

    def claim(s: Store) -> None:
        barrier.wait()
        got = s.claim(wf.id, job_id="job-1", worker="w", now=utcnow(), lease_until=lease())
        if got is not None:
            wins.append(got)

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert len(wins) == 1


def test_a_heartbeat_reports_ownership_and_a_cancel_request(store: Store) -> None:
    wf = new()
    store.insert([wf])
    queued(store, wf, "job-1")
    store.claim(wf.id, job_id="job-1", worker="w", now=utcnow(), lease_until=lease())
    later = utcnow() + timedelta(seconds=1)
    beat = store.heartbeat(wf.id, job_id="job-1", now=later, lease_until=later + timedelta(seconds=30))
    assert beat.owned and not beat.cancel_requested
    got = store.get(wf.id)
    assert got is not None and got.heartbeat_at == later and got.lease_until == later + timedelta(seconds=30)
    assert not store.heartbeat(wf.id, job_id="another-job", now=later, lease_until=later).owned
    store.compare_and_set(
        wf.id, expected_status=S.RUNNING, changes={"cancel_requested_at": later}, event=None
    )
    assert store.heartbeat(wf.id, job_id="job-1", now=later, lease_until=later).cancel_requested


def test_find_is_newest_first_filtered_and_paged_by_cursor(store: Store) -> None:
    workflows = []
    base = utcnow()
    for i in range(6):
        wf = new("a" if i % 2 else "b", agent=f"agent{i % 3}")
        at = base + timedelta(milliseconds=i)
        workflows.append(wf.model_copy(update={"created_at": at, "updated_at": at}))
    store.insert(workflows)
    newest_first = [w.id for w in reversed(workflows)]
    assert [w.id for w in store.find(limit=10, filters={})] == newest_first
    assert [w.id for w in store.find(limit=10, filters={"workflow_type_id": "a"})] == newest_first[0::2]
    assert [w.id for w in store.find(limit=10, filters={"created_by_agent": "agent0"})] == [
        workflows[3].id,
        workflows[0].id,
    ]
    assert store.find(limit=10, filters={"status": "completed"}) == []
    page = store.find(limit=4, filters={})
    rest = store.find(limit=4, filters={}, cursor=(page[-1].created_at, page[-1].id))
    assert [w.id for w in page + rest] == newest_first


def test_find_with_any_combination_of_filters_returns_exactly_the_matches_newest_first(store: Store) -> None:
    base = utcnow()
    workflows = []
    for i in range(12):
        wf = new(f"type{i % 2}", agent=f"agent{i % 3}" if i % 4 else None)
        at = base + timedelta(milliseconds=i)
        workflows.append(wf.model_copy(update={"created_at": at, "updated_at": at}))
    store.insert(workflows)
    for wf in workflows[::3]:
        queued(store, wf)
    current = {wf.id: wf for wf in store.get_many([w.id for w in workflows]).values()}
    values = {
        "status": ["pending", "queued"],
        "workflow_type_id": ["type0", "type1"],
        "created_by_agent": ["agent0", "agent1", "agent2"],
    }
    combos = [{}] + [{k: v} for k in values for v in values[k]]
    combos += [
        {"status": s, "workflow_type_id": t} for s in values["status"] for t in values["workflow_type_id"]
    ]
    combos += [
        {"status": s, "created_by_agent": a} for s in values["status"] for a in values["created_by_agent"]
    ]
    combos += [
        {"workflow_type_id": t, "created_by_agent": a, "status": "pending"}
        for t in ("type0", "type1")
        for a in ("agent1", "agent2")
    ]
    for filters in combos:
        expected = [
            w.id
            for w in reversed(workflows)
            if all(
                (current[w.id].status.value if k == "status" else getattr(current[w.id], k)) == v
                for k, v in filters.items()
            )
        ]
        assert [w.id for w in store.find(limit=20, filters=filters)] == expected, filters
        if len(expected) > 1:  # the second page starts after the first one's last row
            first = store.find(limit=1, filters=filters)
            after = store.find(limit=20, filters=filters, cursor=(first[0].created_at, first[0].id))
            assert [w.id for w in after] == expected[1:], filters


def test_find_refuses_to_filter_on_other_columns(store: Store) -> None:
    with pytest.raises(ValueError, match="cannot filter"):
        store.find(limit=1, filters={"inputs": "x"})


def test_stale_running_finds_workflows_whose_lease_expired(store: Store) -> None:
    fresh, stale = new(), new()
    store.insert([fresh, stale])
    for wf in (fresh, stale):
        queued(store, wf, f"job-{wf.id}")
    now = utcnow()
    store.claim(
        fresh.id, job_id=f"job-{fresh.id}", worker="w", now=now, lease_until=now + timedelta(seconds=30)
    )
    store.claim(
        stale.id,
        job_id=f"job-{stale.id}",
        worker="w",
        now=now - timedelta(seconds=60),
        lease_until=now - timedelta(seconds=30),
    )
    found = store.stale_running(now=now, limit=10)
    assert [w.id for w in found] == [stale.id]


def test_deliverable_queued_finds_due_retries_and_long_queued_workflows(store: Store) -> None:
    now = utcnow()
    due, waiting, recent, old = new(), new(), new(), new()
    store.insert([due, waiting, recent, old])
    for wf, changes in (
        (due, {"job_id": None, "run_after": now - timedelta(seconds=1)}),
        (waiting, {"job_id": None, "run_after": now + timedelta(seconds=60)}),
        (recent, {"job_id": "j-recent", "updated_at": now}),
        (old, {"job_id": "j-old", "updated_at": now - timedelta(seconds=60)}),
    ):
        out = store.compare_and_set(
            wf.id,
            expected_status=S.PENDING,
            changes={"status": S.QUEUED, "updated_at": now, **changes},
            event=None,
        )
        assert out is not None
    found = store.deliverable_queued(now=now, queued_before=now - timedelta(seconds=5), limit=10)
    assert {w.id for w in found} == {due.id, old.id}


def test_a_read_of_several_statements_sees_one_snapshot(store: Store, database_url: str) -> None:
    """stats() reads in several statements: a write committed between two of them (a worker's
    claim, say) must not make its figures disagree."""
    other = open_store(database_url)
    store.insert([new()])
    count = store.sql("SELECT COUNT(*) AS n FROM workflows")  # type: ignore[attr-defined]
    with store.transaction(write=False) as tx:  # type: ignore[attr-defined]
        before = tx.fetch(count, {})
        other.insert([new()])  # committed meanwhile, through another connection
        after = tx.fetch(count, {})
    assert before == after == [{"n": 1}]
    assert len(store.find(limit=10, filters={})) == 2  # the next read sees it
    other.close()


def test_migrations_are_numbered_and_idempotent(store: Store) -> None:
    latest = max(n for n, _ in store.migration_scripts())  # type: ignore[attr-defined]
    assert latest >= 2
    assert store.migrate() == latest
    assert store.migrate() == latest


def test_a_database_migrated_by_newer_code_is_refused_with_a_clear_error(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During a rolling upgrade, a process still on the older package meets a newer schema: it
    says so at the start, instead of failing later on rows its models do not know."""
    store = open_store(database_url)
    store.migrate()
    scripts = store.migration_scripts()  # type: ignore[attr-defined]
    monkeypatch.setattr(store, "migration_scripts", lambda: scripts[:-1])
    with pytest.raises(ConfigurationError, match=f"schema version {scripts[-1][0]}, newer than"):
        store.migrate()
    store.close()
    older = open_store(database_url)  # a process that starts on the older code
    monkeypatch.setattr(older, "migration_scripts", lambda: scripts[:-1])
    for _ in range(3):  # every call, not only the first
        with pytest.raises(ConfigurationError, match="newer than"):
            older.insert([new()])
    older.close()


def _tables(store: Store) -> set[str]:
    """The tables in the store's database, read past the store (which would migrate it)."""
    if store.url.startswith("sqlite"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(store.path)) as conn:  # type: ignore[attr-defined]
            return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    import psycopg

    with psycopg.connect(store.url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {name for (name,) in rows}


def test_a_store_opened_with_create_false_refuses_a_database_without_our_tables_and_creates_none(
    database_url: str,
) -> None:
    """A command that only reads, pointed by a mistyped URL at another database (the app's own),
    must not write five tables into it, nor show an empty list as if all were well."""
    if database_url.startswith("sqlite"):
        sqlite3.connect(database_url.removeprefix("sqlite:///")).close()  # an empty file: another database
    store = open_store(database_url, create=False)
    for _ in range(2):  # every call, not only the first
        with pytest.raises(ConfigurationError, match="no workflow_engine tables in the database at"):
            store.find(limit=10, filters={})
    assert _tables(store) == set()
    assert store.migrate() >= 6  # asked for: it creates them
    assert store.find(limit=10, filters={}) == []
    store.close()


def test_a_store_opened_with_create_false_still_applies_a_pending_migration_on_first_use(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = open_store(database_url)  # the database as the previous release left it
    scripts = older.migration_scripts()  # type: ignore[attr-defined]
    monkeypatch.setattr(older, "migration_scripts", lambda: scripts[:-1])
    older.migrate()
    older.insert([new()])
    older.close()
    store = open_store(database_url, create=False)
    assert len(store.find(limit=10, filters={})) == 1
    assert store.migrate() == scripts[-1][0]  # the first use migrated it
    store.close()


def test_a_sqlite_store_opened_with_create_false_refuses_a_missing_file_leaving_none(tmp_path: Path) -> None:
    typo = tmp_path / "workflow.db"
    store = open_store(f"sqlite:///{typo}", create=False)
    with pytest.raises(ConfigurationError, match=f"no database file at {typo}"):
        store.find(limit=10, filters={})
    assert not typo.exists()


@pytest.mark.parametrize("value", ["no", 0, None])
def test_the_create_option_must_be_true_or_false(database_url: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match="create must be true or false"):
        open_store(database_url, create=value)


def test_migration_0004_keeps_indexes_built_beforehand_and_migrates_the_rows_in_place(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator may build 0004's indexes before upgrading (on PostgreSQL with CREATE INDEX
    CONCURRENTLY, so that writes never wait): the migration then keeps them and only drops the
    old ones. Workflows written at version 3 read back the same at version 4."""
    store = open_store(database_url)
    scripts = store.migration_scripts()  # type: ignore[attr-defined]
    monkeypatch.setattr(store, "migration_scripts", lambda: [(n, t) for n, t in scripts if n <= 3])
    assert store.migrate() == 3
    wf = new(agent="agent0")
    at_3 = [c for c in q.WORKFLOW_COLUMNS if c != "queued_at"]  # as version 3 code wrote them
    params = {c: v for c, v in store._workflow_params(wf).items() if c in at_3}  # type: ignore[attr-defined]
    with store.transaction() as tx:  # type: ignore[attr-defined]
        tx.fetch(
            store.sql(
                f"INSERT INTO workflows ({', '.join(at_3)}) VALUES ({', '.join(':' + c for c in at_3)})"
            ),  # type: ignore[attr-defined]
            params,
        )
    creates = [st.replace(" IF NOT EXISTS", "") for st in create_index_statements(dict(scripts)[4])]
    assert len(creates) == 5
    with store.transaction() as tx:  # type: ignore[attr-defined]
        for statement in creates:  # built beforehand, as docs/production.md describes
            tx.fetch(statement, {})
    monkeypatch.setattr(store, "migration_scripts", lambda: scripts)
    assert store.migrate() == scripts[-1][0]
    assert store.get(wf.id) == wf
    assert [
        w.id for w in store.find(limit=5, filters={"created_by_agent": "agent0", "status": "pending"})
    ] == [wf.id]
    store.close()


def test_concurrent_first_use_migrates_once(database_url: str) -> None:
    stores = [open_store(database_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def use(s: Store) -> None:
        barrier.wait()
        try:
            s.insert([new()])
        except BaseException as exc:  # pragma: no cover - the assertion reports it
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(stores[0].find(limit=100, filters={})) == 4
    for s in stores:
        s.close()


def test_sql_metacharacters_in_every_field_are_stored_as_data(store: Store) -> None:
    nasty = "'; DROP TABLE workflows; -- %s %(x)s :name ?"
    wf = new(nasty, agent=nasty, key=nasty, **{nasty: nasty})
    store.insert([wf])
    assert store.get(wf.id) == wf
    assert [w.id for w in store.find(limit=5, filters={"workflow_type_id": nasty})] == [wf.id]


def test_a_council_is_saved_replaced_and_read_back(store: Store) -> None:
    council = Council(id="c1", members=["ana", "bo"], quorum=1, updated_at=utcnow())
    assert store.save_council(council) == council
    bigger = council.model_copy(update={"members": ["ana", "bo", "cy"], "quorum": 2})
    store.save_council(bigger)
    assert store.get_council("c1") == bigger
    assert store.get_council("nope") is None


def test_votes_are_recorded_once_per_voter_only_while_awaiting_approval(store: Store) -> None:
    wf = new().model_copy(update={"status": S.AWAITING_APPROVAL})
    store.insert([wf])
    vote = Vote(workflow_id=wf.id, voter_id="ana", approve=True, comment="ok", at=utcnow())
    assert store.record_vote(vote, change=False, detail="vote: ana approves") == "recorded"
    assert (
        store.record_vote(vote.model_copy(update={"approve": False}), change=False, detail="x") == "duplicate"
    )
    changed = vote.model_copy(update={"approve": False})
    outcome = store.record_vote(
        changed, change=True, detail="vote: ana rejects", changed_detail="ana changed"
    )
    assert outcome == "recorded"
    assert store.votes(wf.id) == [changed]
    first = Vote(workflow_id=wf.id, voter_id="bo", approve=True, at=utcnow())  # change=True, no earlier vote
    assert store.record_vote(first, change=True, detail="vote: bo approves", changed_detail="bo changed") == (
        "recorded"
    )
    assert [e.detail for e in store.events(wf.id)][1:] == [
        "vote: ana approves",
        "ana changed",
        "vote: bo approves",
    ]
    store.compare_and_set(
        wf.id, expected_status=S.AWAITING_APPROVAL, changes={"status": S.REJECTED}, event=None
    )
    late = Vote(workflow_id=wf.id, voter_id="bo", approve=True, at=utcnow())
    assert store.record_vote(late, change=False, detail="x") == "rejected"
    assert (
        store.record_vote(late.model_copy(update={"workflow_id": "missing"}), change=False, detail="x")
        == "missing"
    )


def test_the_deciding_change_applies_only_while_the_members_votes_still_reach_the_quorum(
    store: Store,
) -> None:
    wf = new().model_copy(update={"status": S.AWAITING_APPROVAL})
    store.insert([wf])

    def approve(voter: str, yes: bool = True) -> None:
        vote = Vote(workflow_id=wf.id, voter_id=voter, approve=yes, at=utcnow())
        assert store.record_vote(vote, change=True, detail=f"vote: {voter}") == "recorded"

    def approved() -> Change:
        now = utcnow()
        changes = {"status": S.QUEUED, "job_id": "job-1", "updated_at": now, "queued_at": now}
        return Change(
            wf.id, S.AWAITING_APPROVAL, changes, NewEvent(S.AWAITING_APPROVAL, S.QUEUED, "approved")
        )

    members = ["ana", "bo", "cy"]
    approve("ana")
    approve("zed")  # not a member: not counted
    assert store.apply_if_voted(approved(), members=members, quorum=2, approve=True) is None
    approve("bo")
    approve("ana", False)  # changed after a count that saw two approvals: one is left
    assert store.apply_if_voted(approved(), members=members, quorum=2, approve=True) is None
    assert store.apply_if_voted(approved(), members=members, quorum=1, approve=False) is not None
    assert store.get(wf.id).status is S.QUEUED  # type: ignore[union-attr]
    assert [e.detail for e in store.events(wf.id)][-1] == "approved"
    # Decided: the row is no longer as the change expects, whatever the votes say.
    assert store.apply_if_voted(approved(), members=members, quorum=1, approve=False) is None


def test_the_gauges_count_every_workflow_by_type_and_status_the_oldest_queued_and_the_stale(
    store: Store,
) -> None:
    now = utcnow()
    hour_ago = now - timedelta(hours=1)
    a, b, c, d = new("a"), new("a"), new("b"), new("b")
    store.insert([a, b, c, d])
    queued(store, a)
    store.apply(
        [
            Change(c.id, S.PENDING, {"status": S.RUNNING, "updated_at": now, "lease_until": hour_ago}, None),
            Change(
                d.id,
                S.PENDING,
                {"status": S.RUNNING, "updated_at": now, "lease_until": now + timedelta(hours=1)},
                None,
            ),
        ]
    )
    rows = store.gauges(now=now)
    assert sorted(rows.counts) == [("a", "pending", 1), ("a", "queued", 1), ("b", "running", 2)]
    assert rows.stale == 1  # c's lease expired; d's holds
    stats = store.stats(since=None, recent=now)
    assert rows.oldest_queued == stats.oldest_queued is not None
    assert sorted(rows.counts) == sorted(stats.counts)


# -- calculated_savings in stats() ----------------------------------------------------------------
def savings(store: Store) -> dict[str, float]:
    return store.stats(since=None, recent=utcnow()).savings


def test_savings_that_are_not_a_json_object_count_for_nothing_and_leave_stats_working(store: Store) -> None:
    """Only an operator's SQL could store them: PostgreSQL refused to read them (jsonb_each of an
    array), and SQLite counted an array's indexes as keys."""
    [(wf, _)] = store.insert([a_workflow(calculated_savings={"hours": 1})])
    store.insert([a_workflow(calculated_savings={"hours": 2})])
    for value in ("'[1, 2]'", "'3'", "'\"text\"'", "'null'"):
        with store.transaction() as tx:  # type: ignore[attr-defined]
            tx.execute(f"UPDATE workflows SET calculated_savings = {value} WHERE id = '{wf.id}'", {})
        assert savings(store) == {"hours": 2.0}


def test_savings_sum_each_top_level_number_by_key_and_nothing_else(store: Store) -> None:
    store.insert([a_workflow(calculated_savings={"usd": 1, "hours": 2.5, "flag": True, "note": "7"})])
    store.insert([a_workflow(calculated_savings={"usd": 2.25, "off": False, "none": None})])
    store.insert([a_workflow(calculated_savings={"nested": {"usd": 100}, "list": [1, 2], "usd": -0.25})])
    store.insert([a_workflow(calculated_savings={}), a_workflow(calculated_savings=None)])
    assert savings(store) == {"usd": 3.0, "hours": 2.5}


def test_savings_in_a_stats_window_sum_only_the_workflows_created_in_it(store: Store) -> None:
    now = utcnow()
    store.insert([a_workflow(calculated_savings={"usd": 1}, created_at=now - timedelta(days=2))])
    store.insert([a_workflow(calculated_savings={"usd": 10, "hours": 3}, created_at=now)])
    since = store.stats(since=now - timedelta(days=1), recent=now)
    assert since.savings == {"usd": 10.0, "hours": 3.0}
    assert savings(store) == {"usd": 11.0, "hours": 3.0}


# -- rows an operator wrote by hand ---------------------------------------------------------------
def test_a_row_this_version_cannot_read_raises_a_store_error_that_names_it(store: Store) -> None:
    """A status of a newer version, or inputs that are not a JSON object, written by an operator's
    SQL: reading the row says which one and why, in one line, instead of a model's traceback."""
    from workflow_engine.errors import StoreError

    [(wf, _)] = store.insert([new()])
    [(other, _)] = store.insert([new()])
    with store.transaction() as tx:  # type: ignore[attr-defined]
        tx.execute(f"UPDATE workflows SET status = 'paused' WHERE id = '{wf.id}'", {})
        tx.execute(f"UPDATE workflows SET inputs = '[1, 2]' WHERE id = '{other.id}'", {})
    for read in (lambda: store.get(wf.id), lambda: store.find(limit=10, filters={"status": "paused"})):
        with pytest.raises(StoreError, match=rf"the workflow '{wf.id}' has a row .* \(status: Input should"):
            read()
    with pytest.raises(StoreError, match=rf"the workflow '{other.id}' .* \(inputs: .*dictionary"):
        store.get(other.id)
    with store.transaction() as tx:  # type: ignore[attr-defined]
        tx.execute(f"UPDATE workflow_events SET to_status = 'paused' WHERE workflow_id = '{wf.id}'", {})
    with pytest.raises(StoreError, match=rf"the event of workflow '{wf.id}' .* \(to_status: "):
        store.events(wf.id)
