"""Preload workflow_engine in a stock forking ``rq worker`` before it forks.

    rq worker workflows -c workflow_engine.rq_preload --url redis://… --path /srv/app

RQ imports this "settings" module in the worker's parent process. It defines no
settings (RQ reads only UPPERCASE names); importing it builds the worker engine
from ``WORKFLOW_ENGINE_DATABASE_URL`` and checks the database, so that a bad URL
stops the worker at start and each work-horse inherits the engine (it reopens only
the connection). It also imports the modules that ``WORKFLOW_ENGINE_PRELOAD`` names
(your handler modules, comma-separated), so that no work-horse imports your app
again. (A plain ``rq worker`` loads the package itself once, at its first workflow
job: see ``transport.Preload``.)
And it sends the engine's log records to stderr, as ``workflow-engine worker`` does
(``WORKFLOW_ENGINE_LOG_FORMAT``, ``WORKFLOW_ENGINE_LOG_LEVEL``), unless logging is
configured already.

If that fails (a module that cannot be imported, a database that cannot be reached), the
worker stops with one line on stderr, ``Error: …``, and exit status 1.
"""

from __future__ import annotations

from .errors import WorkflowEngineError
from .execution import preload
from .logs import configure_worker_logging

try:
    preload()
except WorkflowEngineError as exc:  # a bad setting: one line, as `workflow-engine worker` says it
    raise SystemExit(f"Error: {exc}") from None
configure_worker_logging()  # RQ shows only its own logger's records; show the engine's too
