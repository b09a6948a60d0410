"""An app as quickstart.md lays one out, whose handler starts a child workflow.

Workers take this module's engine's registrations (``WORKFLOW_ENGINE_APP=we_child_app:engine`` or
``workflow-engine worker --app we_child_app:engine``), so that ``current_engine()`` can enqueue
the child type. Only worker processes import it: the test process registers by path.
"""

from __future__ import annotations

from workflow_engine import Workflow, WorkflowEngine, current_engine

engine = WorkflowEngine.from_env()
engine.register_handler("parent", "we_child_app:start_child")
engine.register_handler("child", "we_test_handlers:record_success")


def start_child(wf: Workflow) -> dict[str, str]:
    child = current_engine().create_workflow(
        workflow_type_id="child", inputs={"parent": wf.id}, idempotency_key=f"{wf.id}:child", enqueue=True
    )
    return {"child": child}
