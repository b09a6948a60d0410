"""The pytest plugin, registered through the ``pytest11`` entry point.

Fixture ``workflow_engine``: an in-process engine on a fresh in-memory
database. ``enqueue_execution`` runs the workflow to its end before it
returns, through the same state machine as production; only the transport
is fakeredis.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .engine import WorkflowEngine


def in_process_engine() -> WorkflowEngine:
    """A new in-process engine: SQLite in memory, fakeredis, ``is_async=False``."""
    return WorkflowEngine(database_url="sqlite:///:memory:", redis_url="fakeredis://", is_async=False)


@pytest.fixture
def workflow_engine() -> Iterator[WorkflowEngine]:
    """An in-process WorkflowEngine on a fresh in-memory database; register handlers on it."""
    engine = in_process_engine()
    try:
        yield engine
    finally:
        engine.close()
