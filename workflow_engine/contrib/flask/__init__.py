"""Flask integration: the dashboard's REST endpoints, an OpenAPI document and a workflows page.

    from flask import Flask
    from workflow_engine import WorkflowEngine
    from workflow_engine.contrib.flask import WorkflowEngineFlask

    app = Flask(__name__)
    engine = WorkflowEngine.from_env()
    WorkflowEngineFlask(app, engine, url_prefix="/api", ui=True)

Install it with ``pip install ".[flask]"`` in a checkout. See docs/flask.md.
"""

from __future__ import annotations

try:
    import flask as _flask  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    from ...errors import MissingDependency

    raise MissingDependency(
        'workflow_engine.contrib.flask needs Flask, the flask extra: pip install "flask>=3.1" '
        '(or pip install ".[flask]" in a checkout of workflow_engine)'
    ) from exc

from .errors import ApiError
from .extension import WorkflowEngineFlask
from .state import AuthHook

__all__ = ["ApiError", "AuthHook", "WorkflowEngineFlask"]
