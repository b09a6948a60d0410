"""An app laid out as quickstart.md's, in two modules: this one builds the engine, and
``we_child_handlers`` (which imports it) registers the child's handler with the decorator.

Workers share this engine's registrations (``WORKFLOW_ENGINE_APP=we_child_app:engine`` or
``workflow-engine worker --app we_child_app:engine``), so that ``current_engine()`` can enqueue
the child type. Only worker processes import it: the test process registers by path.
"""

from __future__ import annotations

from workflow_engine import WorkflowEngine

engine = WorkflowEngine.from_env()
engine.register_handler("parent", "we_child_handlers:start_child")
