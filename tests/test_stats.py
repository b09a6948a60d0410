"""engine.stats(), checked against a hand-computed fixture on every store."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from workflow_engine import WorkflowEngine, WorkflowStatus
from workflow_engine.analytics import Stats, TypeStats
from workflow_engine.errors import InvalidInput
from workflow_engine.models import MAX_JSON_DEPTH, utcnow

S = WorkflowStatus


def finish(engine: WorkflowEngine, wid: str, status: WorkflowStatus, seconds: float, ago: float = 60) -> None:
    """Give a workflow a status and a duration, as if a worker had run it."""
    end = utcnow() - timedelta(seconds=ago)
    done = engine.store.compare_and_set(
        wid,
        expected_status=S.PENDING,
        changes={
            "status": status,
            "started_at": end - timedelta(seconds=seconds),
            "finished_at": end,
            "duration_s": seconds,
            "updated_at": end,
        },
        event=None,
    )
    assert done is not None


@pytest.fixture
def engine(database_url: str) -> WorkflowEngine:
    e = WorkflowEngine(database_url=database_url, redis_url="fakeredis://")
    e.register_handler("site", "we_test_handlers:noop")
    return e


def test_stats_match_a_hand_computed_fixture(engine: WorkflowEngine) -> None:
    site = [
        engine.create_workflow(
            workflow_type_id="site", calculated_savings={"weekly": 10, "yearly": 520.5, "n": "x"}
        )
        for _ in range(4)
    ]
    report = engine.create_workflow(
        workflow_type_id="report", calculated_savings={"weekly": 2.5, "flag": True}
    )
    engine.create_workflow(workflow_type_id="report")  # pending, no savings
    for wid, seconds in zip(site[:3], (1.0, 2.0, 10.0), strict=True):
        finish(engine, wid, S.COMPLETED, seconds)
    finish(engine, report, S.FAILED, 3.0, ago=3600)  # finished an hour ago: not in the throughput window
    engine.enqueue_execution(site[3])

    stats = engine.stats()
    assert stats["total"] == 6
    assert stats["by_status"] == {
        "pending": 1,
        "queued": 1,
        "running": 0,
        "completed": 3,
        "failed": 1,
        "cancelled": 0,
        "awaiting_approval": 0,
        "rejected": 0,
    }
    s = stats["by_type"]["site"]
    assert (s["total"], s["by_status"]["completed"], s["by_status"]["queued"]) == (4, 3, 1)
    assert s["success_rate"] == 1.0
    assert s["duration_p50_s"] == pytest.approx(2.0, abs=0.01)  # nearest rank: the 2nd of 3
    assert s["duration_p95_s"] == pytest.approx(10.0, abs=0.01)  # the 3rd of 3
    r = stats["by_type"]["report"]
    assert (r["success_rate"], r["duration_p50_s"]) == (0.0, None)
    assert stats["calculated_savings"] == {"weekly": pytest.approx(42.5), "yearly": pytest.approx(2082.0)}
    assert stats["queue_depth"] == 1
    assert stats["running"] == 0
    assert stats["throughput_per_min"] == pytest.approx(3 / 15)
    assert 0 <= stats["oldest_queued_age_s"] < 5


def test_a_finished_workflow_records_its_duration(workflow_engine: WorkflowEngine) -> None:
    workflow_engine.register_handler("site", "we_test_handlers:noop")
    wid = workflow_engine.create_workflow(workflow_type_id="site")
    workflow_engine.enqueue_execution(wid)
    wf = workflow_engine.get_workflow(wid)
    assert wf.duration_s is not None and wf.started_at and wf.finished_at
    assert wf.duration_s == pytest.approx((wf.finished_at - wf.started_at).total_seconds())
    assert workflow_engine.stats()["by_type"]["site"]["duration_p50_s"] == pytest.approx(wf.duration_s)


def test_stats_since_counts_only_newer_workflows(engine: WorkflowEngine) -> None:
    engine.create_workflow(workflow_type_id="site", calculated_savings={"weekly": 1})
    cut = utcnow()
    engine.create_workflow(workflow_type_id="site", calculated_savings={"weekly": 5})
    stats = engine.stats(since=cut)
    assert stats["total"] == 1 and stats["calculated_savings"] == {"weekly": 5.0}
    with pytest.raises(InvalidInput):
        engine.stats(since=cut.replace(tzinfo=None))


def test_duration_percentiles_since_a_time_rank_only_the_workflows_created_since(
    engine: WorkflowEngine,
) -> None:
    older = [engine.create_workflow(workflow_type_id="site") for _ in range(3)]
    cut = utcnow()
    newer = [engine.create_workflow(workflow_type_id="site") for _ in range(3)]
    for wid, seconds in zip(older + newer, (100.0, 200.0, 300.0, 1.0, 2.0, 3.0), strict=True):
        finish(engine, wid, S.COMPLETED, seconds)
    window = engine.stats(since=cut)["by_type"]["site"]
    assert (window["duration_p50_s"], window["duration_p95_s"]) == (pytest.approx(2.0), pytest.approx(3.0))
    whole = engine.stats()["by_type"]["site"]  # nearest rank of six: the 3rd and the 6th
    assert (whole["duration_p50_s"], whole["duration_p95_s"]) == (pytest.approx(3.0), pytest.approx(300.0))


@pytest.mark.parametrize(
    "since",
    [
        datetime.min.replace(tzinfo=timezone(timedelta(hours=1))),
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))),
    ],
)
def test_a_since_outside_the_calendar_in_utc_is_invalid_input(
    engine: WorkflowEngine, since: datetime
) -> None:
    with pytest.raises(InvalidInput, match="since is out of range"):
        engine.stats(since=since)


def backdate(engine: WorkflowEngine, wid: str, seconds: float, **changes: object) -> None:
    then = utcnow() - timedelta(seconds=seconds)
    done = engine.store.compare_and_set(
        wid,
        expected_status=S.QUEUED,
        changes={"updated_at": then, "queued_at": then, **changes},
        event=None,
    )
    assert done is not None


def test_the_oldest_queued_age_keeps_counting_while_reconcile_redelivers(engine: WorkflowEngine) -> None:
    """A workflow whose job Redis keeps losing (or that no worker with the right database ever
    claims) is redelivered every pass: its wait, which health and the alert watch, goes on."""
    wid = engine.create_workflow(workflow_type_id="site", enqueue=True)
    backdate(engine, wid, 120)
    engine.redis.flushall()  # Redis forgot the job
    assert engine.reconcile().redelivered == [wid]
    assert engine.stats()["oldest_queued_age_s"] >= 120


def test_a_delayed_retry_waits_in_the_queue_from_when_it_was_due(engine: WorkflowEngine) -> None:
    wid = engine.create_workflow(workflow_type_id="site", enqueue=True)
    due = utcnow() - timedelta(seconds=60)
    backdate(engine, wid, 3600, job_id=None, run_after=due)  # failed an hour ago, retry due a minute ago
    assert 59 <= engine.stats()["oldest_queued_age_s"] < 120
    assert engine.reconcile().redelivered == [wid]
    assert engine.get_workflow(wid).queued_at == due
    assert 59 <= engine.stats()["oldest_queued_age_s"] < 120


def test_stats_of_an_empty_database_has_every_key(engine: WorkflowEngine) -> None:
    stats = engine.stats()
    assert stats["total"] == 0 and set(stats["by_status"].values()) == {0}
    assert stats["by_type"] == {} and stats["calculated_savings"] == {}
    assert stats["oldest_queued_age_s"] is None


def test_stats_have_exactly_the_keys_their_typed_shape_names(engine: WorkflowEngine) -> None:
    engine.create_workflow(workflow_type_id="site")
    stats = engine.stats()
    assert set(stats) == Stats.__required_keys__
    assert set(stats["by_type"]["site"]) == TypeStats.__required_keys__


def test_huge_savings_are_summed_without_overflow(engine: WorkflowEngine) -> None:
    for _ in range(3):
        engine.create_workflow(workflow_type_id="site", calculated_savings={"big": 2**62})
    assert engine.stats()["calculated_savings"]["big"] == pytest.approx(3 * 2.0**62)


def test_savings_nested_as_deep_as_allowed_leave_the_stats_working(engine: WorkflowEngine) -> None:
    """Every store can query what it accepted: SQLite's JSON functions have a depth limit too."""
    deep: list[Any] = []
    for _ in range(MAX_JSON_DEPTH - 2):
        deep = [deep]
    engine.create_workflow(workflow_type_id="site", calculated_savings={"usd": 5, "tree": deep})
    assert engine.stats()["calculated_savings"] == {"usd": 5.0}


def test_a_sum_too_large_for_a_float_is_none_and_the_stats_stay_valid_json(engine: WorkflowEngine) -> None:
    for _ in range(2):
        engine.create_workflow(workflow_type_id="site", calculated_savings={"usd": 1e308, "hours": 1})
    stats = engine.stats()
    assert stats["calculated_savings"] == {"hours": 2.0, "usd": None}
    json.dumps(stats, allow_nan=False)
