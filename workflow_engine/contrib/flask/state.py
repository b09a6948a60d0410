"""The extension's per-app state, kept in ``app.extensions["workflow_engine"]``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from flask import Request, current_app

from ...engine import WorkflowEngine

#: ``auth(request)`` returns to allow the request and raises to refuse it: werkzeug's
#: ``Unauthorized`` (``abort(401)``) answers 401, ``Forbidden`` or ``PermissionError`` 403.
AuthHook = Callable[[Request], None]

#: ``voter(request)`` names the council member the caller votes as, or returns None for a caller
#: who may not vote. It may raise as ``auth`` does, which refuses the whole request.
VoterHook = Callable[[Request], str | None]

EXTENSION_KEY = "workflow_engine"


@dataclass(frozen=True)
class State:
    """What one app's views need."""

    engine: WorkflowEngine
    url_prefix: str
    auth: AuthHook | None
    voter: VoterHook | None
    max_body_bytes: int
    ui: bool


def state() -> State:
    """The extension's state for the current app."""
    return cast(State, current_app.extensions[EXTENSION_KEY])


def engine() -> WorkflowEngine:
    return state().engine
