"""The council approval gate: a workflow that requires approval runs only once its council decides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workflow_engine import (
    InvalidTransition,
    StoreUnavailable,
    Workflow,
    WorkflowEngine,
    WorkflowNotFound,
    WorkflowStatus,
)
from workflow_engine.errors import DuplicateVote, InvalidInput, NotACouncilMember, UnknownWorkflowType
from workflow_engine.models import Vote

S = WorkflowStatus


def run_it(wf: Workflow) -> str:
    return "ran"


@pytest.fixture
def engine(workflow_engine: WorkflowEngine) -> WorkflowEngine:
    workflow_engine.register_handler("site", run_it)
    workflow_engine.configure_council("c1", members=["ana", "bo", "cy"], quorum=2)
    return workflow_engine


def gated(engine: WorkflowEngine) -> str:
    return engine.create_workflow(workflow_type_id="site", assigned_council_id="c1", requires_approval=True)


def test_a_workflow_requiring_approval_waits_and_cannot_be_enqueued(engine: WorkflowEngine) -> None:
    wid = gated(engine)
    assert engine.get_workflow(wid).status is S.AWAITING_APPROVAL
    with pytest.raises(InvalidTransition, match="awaiting its council's approval"):
        engine.enqueue_execution(wid)


def test_the_quorum_of_approvals_queues_and_runs_it(engine: WorkflowEngine) -> None:
    wid = gated(engine)
    tally = engine.vote(wid, voter_id="ana", approve=True, comment="looks good")
    assert (tally.approvals, tally.rejections, tally.status, tally.decided) == (
        1,
        0,
        S.AWAITING_APPROVAL,
        False,
    )
    tally = engine.vote(wid, voter_id="bo", approve=True)
    assert tally.approvals == 2 and tally.decided
    wf = engine.get_workflow(wid)
    assert (wf.status, wf.result) == (S.COMPLETED, "ran")  # in-process: ran when approved
    details = [e.detail or "" for e in engine.get_events(wid)]
    assert "vote: ana approves: looks good" in details and "vote: bo approves" in details
    assert any(d.startswith("approved by council c1") for d in details)


@pytest.mark.parametrize("retracted", [True, False], ids=["an approval retracted", "a rejection retracted"])
def test_a_vote_changed_while_another_decides_keeps_the_decision_from_acting_on_the_stale_count(
    database_url: str, retracted: bool
) -> None:
    """Two processes: bo's vote reaches the quorum, and its count is read; before the decision is
    made, ana (elsewhere) changes her vote, and the quorum is gone. Nothing is decided."""
    deciding, other = (
        WorkflowEngine(database_url=database_url, redis_url="fakeredis://", is_async=False) for _ in range(2)
    )
    try:
        for engine in (deciding, other):
            engine.register_handler("site", run_it)
        deciding.configure_council("c1", members=["ana", "bo", "cy"], quorum=2)
        wid = gated(deciding)
        deciding.vote(wid, voter_id="ana", approve=retracted)
        real_votes = deciding.store.votes

        def votes_then_ana_changes_hers(workflow_id: str) -> list[Vote]:
            counted = real_votes(workflow_id)
            if len(counted) == 2:  # bo's decision has its count: ana changes her vote now
                deciding.store.votes = real_votes  # type: ignore[method-assign]
                other.vote(wid, voter_id="ana", approve=not retracted, change=True)
            return counted

        deciding.store.votes = votes_then_ana_changes_hers  # type: ignore[method-assign]
        tally = deciding.vote(wid, voter_id="bo", approve=retracted)
        assert deciding.get_workflow(wid).status is S.AWAITING_APPROVAL
        assert (tally.status, tally.approvals, tally.rejections) == (S.AWAITING_APPROVAL, 1, 1)
        assert not any("by council" in (e.detail or "") for e in deciding.get_events(wid))
        # The quorum, once it is there, decides as before.
        decided = other.vote(wid, voter_id="cy", approve=retracted)
        assert decided.status is (S.COMPLETED if retracted else S.REJECTED)
    finally:
        deciding.close()
        other.close()


def test_the_quorum_of_rejections_rejects_it_for_good(engine: WorkflowEngine) -> None:
    wid = gated(engine)
    engine.vote(wid, voter_id="ana", approve=False)
    tally = engine.vote(wid, voter_id="cy", approve=False)
    assert tally.status is S.REJECTED and tally.rejections == 2
    with pytest.raises(InvalidTransition):
        engine.requeue(wid)
    with pytest.raises(
        InvalidTransition, match=f"workflow '{wid}' is rejected, not awaiting approval: votes are taken only"
    ) as raised:
        engine.vote(wid, voter_id="bo", approve=True)
    assert (raised.value.from_status, raised.value.to_status) == ("rejected", "awaiting_approval")


def test_a_quorum_lowered_under_a_split_vote_rejects_at_the_next_vote_as_a_quorum_objected(
    engine: WorkflowEngine,
) -> None:
    engine.configure_council("c1", members=["ana", "bo", "cy", "di", "ed"], quorum=3)
    wid = gated(engine)
    for voter, approve in (("ana", True), ("bo", True), ("cy", False), ("di", False)):
        assert not engine.vote(wid, voter_id=voter, approve=approve).decided
    engine.configure_council("c1", members=["ana", "bo", "cy", "di", "ed"], quorum=2)
    tally = engine.vote(wid, voter_id="ed", approve=True)
    assert (tally.approvals, tally.rejections, tally.status) == (3, 2, S.REJECTED)
    assert engine.get_workflow(wid).result is None  # it never ran


def test_a_vote_read_before_another_decided_it_names_the_status_the_workflow_has_now(
    engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    wid = gated(engine)
    awaiting = engine.get_workflow(wid)
    engine.vote(wid, voter_id="ana", approve=False)
    engine.vote(wid, voter_id="cy", approve=False)
    # The vote read the workflow while it still awaited approval; the store's check finds it decided.
    monkeypatch.setattr(engine, "get_workflow", lambda workflow_id: awaiting)
    with pytest.raises(InvalidTransition, match=f"workflow '{wid}' is rejected, not awaiting approval"):
        engine.vote(wid, voter_id="bo", approve=True)
    # And one whose row is gone by then is not found.
    gone = awaiting.model_copy(update={"id": "gone"})
    monkeypatch.setattr(engine, "get_workflow", lambda workflow_id: gone)
    with pytest.raises(WorkflowNotFound):
        engine.vote(wid, voter_id="bo", approve=True)
    assert [v.voter_id for v in engine.store.votes(wid)] == ["ana", "cy"]


def test_each_member_votes_once_unless_the_vote_is_explicitly_changed(engine: WorkflowEngine) -> None:
    wid = gated(engine)
    engine.vote(wid, voter_id="ana", approve=False)
    with pytest.raises(DuplicateVote, match="change=True"):
        engine.vote(wid, voter_id="ana", approve=True)
    tally = engine.vote(wid, voter_id="ana", approve=True, change=True)
    assert (tally.approvals, tally.rejections) == (1, 0)
    engine.vote(wid, voter_id="cy", approve=False, change=True, comment="no")  # a first vote: no change
    assert [e.detail for e in engine.get_events(wid)][1:] == [
        "vote: ana rejects",
        "vote: ana approves (changed)",
        "vote: cy rejects: no",
    ]


def test_retrying_a_vote_whose_call_failed_before_deciding_makes_the_decision(
    engine: WorkflowEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workflow_engine import approval

    wid = gated(engine)
    engine.vote(wid, voter_id="ana", approve=True)
    decide = approval.decide

    def lost(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("the database went away after the vote was recorded")

    monkeypatch.setattr(approval, "decide", lost)
    with pytest.raises(StoreUnavailable):
        engine.vote(wid, voter_id="bo", approve=True)  # the deciding vote, recorded; no decision
    assert engine.get_workflow(wid).status is S.AWAITING_APPROVAL
    monkeypatch.setattr(approval, "decide", decide)
    with pytest.raises(DuplicateVote):
        engine.vote(wid, voter_id="bo", approve=True)  # the caller retries
    assert engine.get_workflow(wid).status is S.COMPLETED


def test_a_workflow_cancelled_before_its_approval_cannot_be_requeued_past_the_council(
    engine: WorkflowEngine,
) -> None:
    wid = gated(engine)
    engine.cancel(wid)
    with pytest.raises(InvalidTransition, match="never approved"):
        engine.requeue(wid)
    with pytest.raises(InvalidTransition, match="never approved") as raised:
        engine.update_status(wid, "queued")
    assert "create a new workflow" in str(raised.value)  # no vote is taken on it any more
    assert engine.get_workflow(wid).status is S.CANCELLED


def test_only_the_council_moves_a_workflow_awaiting_approval_on_or_a_cancel(engine: WorkflowEngine) -> None:
    wid = gated(engine)
    for status in ("rejected", "queued"):
        with pytest.raises(InvalidTransition, match="council"):
            engine.update_status(wid, status)
    assert engine.get_workflow(wid).status is S.AWAITING_APPROVAL
    assert [e.to_status for e in engine.get_events(wid)] == [S.AWAITING_APPROVAL]
    assert engine.update_status(wid, "cancelled").status is S.CANCELLED


def test_an_approved_workflow_that_failed_or_was_cancelled_can_be_requeued(engine: WorkflowEngine) -> None:
    engine.register_handler("site", "we_test_handlers:always_fail", max_retries=0)
    wid = gated(engine)
    engine.vote(wid, voter_id="ana", approve=True)
    engine.vote(wid, voter_id="bo", approve=True)
    assert engine.get_workflow(wid).status is S.FAILED
    engine.register_handler("site", run_it)
    assert engine.requeue(wid).status is S.COMPLETED


def test_a_repeated_vote_that_differs_from_the_recorded_one_decides_nothing(engine: WorkflowEngine) -> None:
    wid = gated(engine)
    engine.vote(wid, voter_id="ana", approve=False)
    engine.configure_council("c1", members=["ana", "bo", "cy"], quorum=1)  # ana's rejection is now a quorum
    with pytest.raises(DuplicateVote):
        engine.vote(wid, voter_id="ana", approve=True)  # not a retry of her vote: no decision
    assert engine.get_workflow(wid).status is S.AWAITING_APPROVAL


def test_enqueue_many_leaves_alone_a_workflow_its_council_approved() -> None:
    engine = WorkflowEngine(
        database_url="sqlite:///:memory:", redis_url="fakeredis://"
    )  # async: it waits queued
    engine.register_handler("site", run_it)
    engine.configure_council("c1", members=["ana"], quorum=1)
    wid = gated(engine)
    engine.vote(wid, voter_id="ana", approve=True)
    engine.enqueue_many([wid])  # already queued: left alone, as documented
    assert engine.get_workflow(wid).status is S.QUEUED
    engine.close()


def test_a_voter_who_is_not_a_member_is_refused(engine: WorkflowEngine) -> None:
    wid = gated(engine)
    with pytest.raises(NotACouncilMember, match="'mallory' is not a member of council 'c1'"):
        engine.vote(wid, voter_id="mallory", approve=True)
    assert engine.vote(wid, voter_id="ana", approve=True).votes[0].voter_id == "ana"


def test_a_workflow_that_does_not_await_approval_takes_no_votes(engine: WorkflowEngine) -> None:
    wid = engine.create_workflow(workflow_type_id="site")
    with pytest.raises(InvalidTransition):
        engine.vote(wid, voter_id="ana", approve=True)


def test_approval_needs_a_configured_council_and_a_handler(engine: WorkflowEngine) -> None:
    with pytest.raises(InvalidInput, match="needs an assigned_council_id"):
        engine.create_workflow(workflow_type_id="site", requires_approval=True)
    with pytest.raises(InvalidInput, match="'nope' is not configured"):
        engine.create_workflow(workflow_type_id="site", assigned_council_id="nope", requires_approval=True)
    with pytest.raises(UnknownWorkflowType):
        engine.create_workflow(workflow_type_id="other", assigned_council_id="c1", requires_approval=True)


@pytest.mark.parametrize(
    ("members", "quorum", "message"),
    [
        ([], 1, "non-empty list"),
        (["a", "a"], 1, "must not repeat"),
        (["a", "b"], 3, "from 1 to 2"),
        (["a"], 0, "from 1 to 1"),
        (["a", "b\nforged"], 1, "a member must not contain control characters"),
        (["a", " a "], 1, "a member must not have whitespace around it"),
    ],
)
def test_a_council_is_validated(
    engine: WorkflowEngine, members: list[str], quorum: int, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        engine.configure_council("c2", members=members, quorum=quorum)


def test_a_council_id_with_a_control_character_is_refused(engine: WorkflowEngine) -> None:
    with pytest.raises(InvalidInput, match="council_id must not contain control characters"):
        engine.configure_council("c\x1b[31m", members=["a"], quorum=1)
    assert engine.get_council("c\x1b[31m") is None
    with pytest.raises(InvalidInput, match="council_id must not have whitespace around it"):
        engine.configure_council("c ", members=["a"], quorum=1)


def test_a_waiting_workflow_can_be_cancelled(engine: WorkflowEngine) -> None:
    wid = gated(engine)
    assert engine.cancel(wid).status is S.CANCELLED


_VOTER = """
import sys
from workflow_engine import WorkflowEngine
engine = WorkflowEngine(database_url=sys.argv[1], redis_url=sys.argv[2])
engine.register_handler("site", "we_test_handlers:record_success")
open(sys.argv[4], "w").close()
import os, time
while not os.path.exists(sys.argv[5]):
    time.sleep(0.001)
from workflow_engine import InvalidTransition
try:
    print(engine.vote(sys.argv[3], voter_id=sys.argv[6], approve=True).status.value)
except InvalidTransition:
    print("late")  # the other vote decided first: a vote on a decided workflow is refused
"""


@pytest.mark.slow
def test_two_processes_casting_the_deciding_vote_at_once_enqueue_it_once(
    database_url: str, redis_server: object, tmp_path: Path
) -> None:
    redis_url = redis_server.url  # type: ignore[attr-defined]
    engine = WorkflowEngine(database_url=database_url, redis_url=redis_url)
    engine.register_handler("site", "we_test_handlers:record_success")
    engine.configure_council("c1", members=["ana", "bo", "cy"], quorum=2)
    for attempt in range(5):
        wid = gated(engine)
        engine.vote(wid, voter_id="ana", approve=True)
        go = tmp_path / f"go-{attempt}"
        procs = []
        for voter in ("bo", "cy"):
            ready = tmp_path / f"ready-{attempt}-{voter}"
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _VOTER, database_url, redis_url, wid, str(ready), str(go), voter],
                    stdout=subprocess.PIPE,
                    text=True,
                    env={"PYTHONPATH": str(Path(__file__).parent / "apps"), "PATH": "/usr/bin:/bin"},
                )
            )
            while not ready.exists() and procs[-1].poll() is None:
                pass
        go.touch()
        outs = [p.communicate(timeout=60)[0].strip() for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
        assert "queued" in outs and set(outs) <= {"queued", "late"}
        assert engine.queue.count == attempt + 1  # exactly one job per approved workflow
        approvals = [e for e in engine.get_events(wid) if (e.detail or "").startswith("approved")]
        assert len(approvals) == 1
    engine.close()


def test_the_tally_can_be_read_without_voting(engine: WorkflowEngine) -> None:
    wid = gated(engine)
    engine.vote(wid, voter_id="ana", approve=False, comment="too expensive")
    tally = engine.tally(wid)
    assert (tally.approvals, tally.rejections, tally.status) == (0, 1, S.AWAITING_APPROVAL)
    assert tally.votes[0].comment == "too expensive"
