"""The status state machine: one enum, one transition table, named sets."""

from __future__ import annotations

from enum import Enum


class WorkflowStatus(str, Enum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    AWAITING_APPROVAL = "awaiting_approval"
    REJECTED = "rejected"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | WorkflowStatus) -> WorkflowStatus:
        """Return the status named by ``value``, or raise InvalidInput listing the valid ones."""
        if isinstance(value, WorkflowStatus):
            return value
        try:
            return cls(value)
        except ValueError:
            from .errors import InvalidInput

            valid = ", ".join(s.value for s in cls)
            raise InvalidInput(f"unknown status {value!r}; valid statuses are: {valid}") from None


S = WorkflowStatus

#: Every allowed status change. A change that is not here raises InvalidTransition.
#: ``queued -> queued`` is a redelivery (a new RQ job for the same workflow);
#: ``running -> queued`` is a retry, or a recovery after a worker died.
TRANSITIONS: dict[WorkflowStatus, frozenset[WorkflowStatus]] = {
    S.PENDING: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset({S.QUEUED, S.RUNNING, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.QUEUED, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
    # the council approval gate
    S.AWAITING_APPROVAL: frozenset({S.QUEUED, S.REJECTED, S.CANCELLED}),
    S.REJECTED: frozenset(),
}

#: A workflow in one of these has finished; only ``requeue`` moves it on.
TERMINAL: frozenset[WorkflowStatus] = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.REJECTED})
#: A workflow in one of these is on its way through a worker.
ACTIVE: frozenset[WorkflowStatus] = frozenset({S.QUEUED, S.RUNNING})


def can_transition(from_status: WorkflowStatus, to_status: WorkflowStatus) -> bool:
    return to_status in TRANSITIONS[from_status]


def sources_of(to_status: WorkflowStatus) -> frozenset[WorkflowStatus]:
    """Every status from which ``to_status`` may be reached."""
    return frozenset(s for s, targets in TRANSITIONS.items() if to_status in targets)
