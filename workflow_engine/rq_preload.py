"""Preload workflow_engine in a stock forking ``rq worker`` before it forks.

    rq worker workflows -c workflow_engine.rq_preload --url redis://… --path /srv/app

RQ imports this "settings" module in the worker's parent process. It defines no
settings (RQ reads only UPPERCASE names); importing it builds the worker engine
from ``WORKFLOW_ENGINE_DATABASE_URL`` and opens the database, so each work-horse
starts with the package loaded instead of importing it again (about 60 ms a job).
It also imports the modules that ``WORKFLOW_ENGINE_PRELOAD`` names (your handler
modules, comma-separated), so that no work-horse imports your app again either.
And it sends the engine's log records to stderr, as ``workflow-engine worker`` does
(``WORKFLOW_ENGINE_LOG_FORMAT``, ``WORKFLOW_ENGINE_LOG_LEVEL``), unless logging is
configured already.
"""

from __future__ import annotations

from .execution import preload
from .logs import configure_worker_logging

preload()
configure_worker_logging()  # RQ shows only its own logger's records; show the engine's too
