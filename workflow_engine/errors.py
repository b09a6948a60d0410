"""One exception tree.

Every error this package raises on purpose is a :class:`WorkflowEngineError`.
Each class's docstring is its default message, so ``raise StoreUnavailable()``
still says something useful; callers pass a more specific message when they
have one. Errors from sqlite3, psycopg and redis are wrapped with
``raise ... from exc`` so the original stays on ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence

_NOT_GIVEN: object = object()


class WorkflowEngineError(Exception):
    """workflow_engine failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(WorkflowEngineError, ValueError):
    """The engine is misconfigured: check the database URL, the Redis URL and the environment."""


class MissingDependency(ConfigurationError, ImportError):
    """An optional dependency is missing: install the extra that the message names."""


class InvalidInput(WorkflowEngineError, ValueError):
    """An argument is invalid: the message says which one and why."""


class WorkflowNotFound(WorkflowEngineError, LookupError):
    """No workflow has that id."""

    def __init__(self, workflow_id: object = _NOT_GIVEN) -> None:
        msg = None
        if isinstance(workflow_id, str):  # a long one is cut: the message is for a log line
            if len(workflow_id) > 200:
                msg = f"no workflow with id {workflow_id[:100]!r}… ({len(workflow_id)} characters)"
            else:
                msg = f"no workflow with id {workflow_id!r}"
        elif workflow_id is not _NOT_GIVEN:  # looked up by what no id could be: the caller's mistake
            kind = type(workflow_id).__name__
            msg = f"no workflow with id {repr(workflow_id)[:100]}: a workflow id is a string, not {kind}"
        super().__init__(msg)
        #: The id asked for; a value that is not a string, as its repr; None if not given.
        self.workflow_id: str | None = (
            None
            if workflow_id is _NOT_GIVEN
            else workflow_id
            if isinstance(workflow_id, str)
            else repr(workflow_id)
        )


class InvalidTransition(WorkflowEngineError):
    """The state machine does not allow that status change."""

    def __init__(
        self,
        workflow_id: str | None = None,
        from_status: str | None = None,
        to_status: str | None = None,
        hint: str | None = None,
        *,
        message: str | None = None,
    ) -> None:
        msg = message
        if msg is None and workflow_id is not None:
            msg = f"workflow {workflow_id!r} cannot go from {from_status!r} to {to_status!r}"
            if hint:
                msg += f": {hint}"
        super().__init__(msg)
        self.workflow_id = workflow_id
        self.from_status = from_status
        self.to_status = to_status


class UnknownWorkflowType(WorkflowEngineError, LookupError):
    """No handler is registered for that workflow type."""

    def __init__(
        self, workflow_type_id: str | None = None, detail: str | None = None, *, message: str | None = None
    ) -> None:
        msg = message
        if msg is None and workflow_type_id is not None:
            msg = (
                f"no handler is registered for workflow type {workflow_type_id!r}; register one with "
                f"@engine.handler({workflow_type_id!r}) or "
                f"engine.register_handler({workflow_type_id!r}, 'package.module:function')"
            )
            if detail:
                msg += f" ({detail})"
        super().__init__(msg)
        self.workflow_type_id = workflow_type_id


class InvalidVote(WorkflowEngineError, ValueError):
    """The vote is not allowed."""


class NotACouncilMember(InvalidVote):
    """Only members of the workflow's council may vote on it."""


class DuplicateVote(InvalidVote):
    """This voter has already voted on this workflow; pass change=True to change the vote."""


class StoreError(WorkflowEngineError):
    """The database failed."""


class StoreUnavailable(StoreError):
    """The database cannot be reached: check that it is running and that the database URL is right."""


class QueueUnavailable(WorkflowEngineError):
    """Redis cannot be reached. The workflow is recorded as queued and `engine.reconcile()` will deliver it
    once Redis is back."""

    def __init__(self, message: str | None = None, *, workflow_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        #: The workflows recorded ``queued`` whose jobs did not reach Redis; reconcile delivers them.
        self.workflow_ids = tuple(workflow_ids)


class HandlerTimeout(BaseException):
    """A handler attempt ran past its timeout.

    It derives from BaseException, not Exception, so that a handler's own
    ``except Exception:`` cannot swallow its timeout. The engine catches it
    and records the attempt as failed.
    """
