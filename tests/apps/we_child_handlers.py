"""The handlers of ``we_child_app``: a parent that starts a child through ``current_engine()``,
and the child, registered on the app's engine when this module is imported."""

from __future__ import annotations

from typing import Any

from we_child_app import engine

from workflow_engine import Workflow, current_engine

from we_test_handlers import record_success


def start_child(wf: Workflow) -> dict[str, str]:
    child = current_engine().create_workflow(
        workflow_type_id="child", inputs={"parent": wf.id}, idempotency_key=f"{wf.id}:child", enqueue=True
    )
    return {"child": child}


@engine.handler("child")
def child(wf: Workflow) -> dict[str, Any]:
    return record_success(wf)
