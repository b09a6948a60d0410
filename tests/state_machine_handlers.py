"""A handler for the state-machine test: it fails when the workflow's inputs say so."""

from __future__ import annotations

from workflow_engine import Workflow


def maybe_fail(wf: Workflow) -> dict[str, int]:
    if wf.inputs.get("fail"):
        raise RuntimeError("asked to fail")
    return {"attempts": wf.attempts}
