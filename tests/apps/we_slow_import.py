"""A handler module that takes a while to import, as one that loads a model when imported does."""

from __future__ import annotations

import time

from workflow_engine import Workflow

time.sleep(1.0)


def run(workflow: Workflow) -> dict[str, bool]:
    return {"imported": True}
