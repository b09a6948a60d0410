"""workflow_engine: durable background workflows on RQ.

The database is the source of truth; RQ only moves work; ``rq worker workflows`` runs it.
"""

from .engine import WorkflowEngine
from .errors import (
    InvalidInput,
    InvalidTransition,
    QueueUnavailable,
    StoreError,
    StoreUnavailable,
    UnknownWorkflowType,
    WorkflowEngineError,
    WorkflowNotFound,
)
from .execution import cancel_requested, current_engine
from .models import Workflow, WorkflowEvent
from .status import WorkflowStatus

__version__ = "0.1.0"

__all__ = [
    # the engine
    "WorkflowEngine",
    "cancel_requested",
    "current_engine",
    # models
    "Workflow",
    "WorkflowEvent",
    "WorkflowStatus",
    # errors
    "InvalidInput",
    "InvalidTransition",
    "QueueUnavailable",
    "StoreError",
    "StoreUnavailable",
    "UnknownWorkflowType",
    "WorkflowEngineError",
    "WorkflowNotFound",
]
