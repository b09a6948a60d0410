"""The council approval gate: councils, votes, and the vote that decides."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .errors import (
    DuplicateVote,
    InvalidInput,
    InvalidTransition,
    InvalidVote,
    NotACouncilMember,
    QueueUnavailable,
    WorkflowNotFound,
)
from .handlers import check_id, check_new_id, check_text
from .models import Council, Tally, Vote, Workflow, utcnow
from .status import WorkflowStatus

if TYPE_CHECKING:
    from .engine import WorkflowEngine
    from .stores.base import Change

log = logging.getLogger("workflow_engine")
S = WorkflowStatus


def configure_council(
    engine: WorkflowEngine, council_id: str, *, members: Sequence[str], quorum: int
) -> Council:
    """Create or replace a council.

    ``quorum`` approvals approve a workflow; ``quorum`` rejections reject it.
    """
    if not isinstance(council_id, str) or not council_id.strip():
        raise InvalidInput("council_id must be a non-empty string")
    if (
        not isinstance(members, (list, tuple))
        or not members
        or not all(isinstance(m, str) and m.strip() for m in members)
    ):
        raise InvalidInput("members must be a non-empty list of non-empty strings")
    if len(set(members)) != len(members):
        raise InvalidInput("members must not repeat")
    check_new_id("council_id", council_id)
    for member in members:
        check_new_id("a member", member)
    if isinstance(quorum, bool) or not isinstance(quorum, int) or not 1 <= quorum <= len(members):
        raise InvalidInput(f"quorum must be an integer from 1 to {len(members)} (the number of members)")
    return engine.store.save_council(
        Council(id=council_id, members=list(members), quorum=quorum, updated_at=utcnow())
    )


def vote(
    engine: WorkflowEngine,
    workflow_id: str,
    *,
    voter_id: str,
    approve: bool,
    comment: str | None = None,
    change: bool = False,
) -> Tally:
    """``engine.vote()``: record the vote in one transaction, then let :func:`decide` act on it."""
    if not isinstance(voter_id, str) or not voter_id.strip():
        raise InvalidInput("voter_id must be a non-empty string")
    if not isinstance(approve, bool):
        raise InvalidInput(f"approve must be true or false, got {approve!r}")
    if not isinstance(change, bool):
        raise InvalidInput(f"change must be true or false, got {change!r}")
    check_text("comment", comment)
    check_id("voter_id", voter_id)
    if comment and "\x00" in comment:
        raise InvalidInput("comment must not contain NUL characters")
    wf = engine.get_workflow(workflow_id)
    council = engine.store.get_council(wf.assigned_council_id) if wf.assigned_council_id else None
    if wf.status is not S.AWAITING_APPROVAL:
        raise _not_awaiting(wf.id, wf.status.value)
    if council is None:
        raise InvalidVote(f"workflow {wf.id!r} has no configured council to vote")
    if voter_id not in council.members:
        raise NotACouncilMember(f"{voter_id!r} is not a member of council {council.id!r}")
    said, why = f"vote: {voter_id} {'approves' if approve else 'rejects'}", f": {comment}" if comment else ""
    vote = Vote(workflow_id=wf.id, voter_id=voter_id, approve=approve, comment=comment, at=utcnow())
    # " (changed)" only where it replaces the voter's earlier vote: a first vote with change=True is not.
    outcome = engine.store.record_vote(
        vote, change=change, detail=said + why, changed_detail=f"{said} (changed){why}"
    )
    if outcome == "duplicate":
        # The earlier vote may have been recorded by a call that failed before it decided (the
        # database or the process went away): a retry of that same vote completes the decision.
        earlier = next((v for v in engine.store.votes(wf.id) if v.voter_id == voter_id), None)
        if earlier is not None and earlier.approve == approve:
            decide(engine, wf.id, council)
        raise DuplicateVote(
            f"{voter_id!r} has already voted on workflow {wf.id!r}; "
            'to change the vote, pass change=True (in the REST API, "change": true)'
        )
    if outcome == "missing":
        raise WorkflowNotFound(wf.id)
    if outcome != "recorded":  # decided by another vote since it was read: the status it has now
        raise _not_awaiting(wf.id, outcome)
    return decide(engine, wf.id, council)


def _not_awaiting(workflow_id: str, status: str) -> InvalidTransition:
    """A vote on a workflow that is not awaiting approval: it says the status, not a transition."""
    return InvalidTransition(
        workflow_id,
        status,
        S.AWAITING_APPROVAL.value,
        message=f"workflow {workflow_id!r} is {status}, not awaiting approval: "
        "votes are taken only while it awaits approval",
    )


def tally(engine: WorkflowEngine, workflow_id: str) -> Tally:
    """Where the vote on a workflow stands, without voting. InvalidVote if it has no council."""
    wf = engine.get_workflow(workflow_id)
    council = engine.store.get_council(wf.assigned_council_id) if wf.assigned_council_id else None
    if council is None:
        raise InvalidVote(f"workflow {wf.id!r} has no configured council")
    votes = [v for v in engine.store.votes(workflow_id) if v.voter_id in council.members]
    approvals = sum(v.approve for v in votes)
    return Tally(
        workflow_id=wf.id,
        council_id=council.id,
        status=wf.status,
        quorum=council.quorum,
        approvals=approvals,
        rejections=len(votes) - approvals,
        votes=votes,
    )


def decide(engine: WorkflowEngine, workflow_id: str, council: Council) -> Tally:
    votes = [v for v in engine.store.votes(workflow_id) if v.voter_id in council.members]
    approvals = sum(v.approve for v in votes)
    rejections = len(votes) - approvals
    wf = engine.get_workflow(workflow_id)

    def if_still(approve: bool) -> Callable[[Change], Workflow | None]:
        # The count above may be stale by the time the change is made (a member changed a vote
        # in between): the store counts again, under the lock every vote takes, and changes
        # nothing if the quorum is no longer there. The vote that moved it decides after it.
        def apply(change: Change) -> Workflow | None:
            return engine.store.apply_if_voted(
                change, members=council.members, quorum=council.quorum, approve=approve
            )

        return apply

    decided = True
    # Rejections first: both sides reach the quorum only once a council's quorum was lowered
    # under votes already cast, and then a quorum that objects keeps the workflow from running.
    if wf.status is S.AWAITING_APPROVAL and rejections >= council.quorum:
        now = utcnow()
        decided = (
            engine._change(
                wf,
                S.REJECTED,
                {"finished_at": now, "updated_at": now},
                detail=f"rejected by council {council.id} ({rejections} of {council.quorum})",
                apply=if_still(False),
            )
            is not None
        )
    elif wf.status is S.AWAITING_APPROVAL and approvals >= council.quorum:
        try:
            decided = engine._queue(
                wf,
                detail=f"approved by council {council.id} ({approvals} of {council.quorum})",
                apply=if_still(True),
            )
        except QueueUnavailable:
            pass  # approved and queued in the database (the engine logged it): reconcile delivers it
    if not decided:  # the votes moved, or another process decided first: where it stands now
        return tally(engine, workflow_id)
    return Tally(
        workflow_id=workflow_id,
        council_id=council.id,
        status=engine.get_workflow(workflow_id).status,
        quorum=council.quorum,
        approvals=approvals,
        rejections=rejections,
        votes=votes,
    )
