"""Job functions the benchmarks enqueue. Workers import them with ``--path benchmarks``.

Each lives at module level in an importable module, because an RQ worker
imports a job's function by its dotted path and rejects ``__main__``. This
module imports nothing heavy at run time, so that a raw RQ job costs a
forked work-horse no more than RQ itself; a workflow job's work-horse imports
``workflow_engine`` (RQ imports ``workflow_engine.execution:run_workflow``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: a raw RQ work-horse must not pay for importing workflow_engine
    from workflow_engine import Workflow


def noop_workflow(wf: Workflow) -> None:
    """The workflow handler of the throughput benchmarks: does nothing."""
    return None


def noop() -> None:
    """The raw RQ job of the throughput benchmarks: does nothing."""
    return None


def sleepy_workflow(wf: Workflow) -> dict[str, Any]:
    """The recovery benchmark's handler: sleeps ``inputs['seconds']`` so that its worker can be killed."""
    deadline = time.monotonic() + float(wf.inputs.get("seconds", 60))
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return {"slept": wf.inputs.get("seconds", 60)}
