"""Handlers that test workers import (``rq worker --path tests/apps``).

Each records its side effects as lines appended to ``$WE_TEST_EFFECTS/<workflow id>``,
so a test counts what a handler did, not only the statuses the engine wrote.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from workflow_engine import Workflow, cancel_requested


def _record(wf: Workflow, what: str) -> None:
    folder = os.environ.get("WE_TEST_EFFECTS")
    if not folder:
        return
    with open(os.path.join(folder, wf.id), "a", encoding="utf-8") as f:
        f.write(f"{what} {wf.attempts} {os.getpid()}\n")


def record_success(wf: Workflow) -> dict[str, Any]:
    """Succeeds, and records one 'success' line."""
    _record(wf, "success")
    return {"echo": wf.inputs}


def noop(wf: Workflow) -> None:
    return None


def flaky(wf: Workflow) -> dict[str, Any]:
    """Fails while ``attempts <= inputs['fail_times']``, then succeeds."""
    if wf.attempts <= int(wf.inputs.get("fail_times", 1)):
        _record(wf, "failure")
        raise RuntimeError(f"flaky failure on attempt {wf.attempts}")
    _record(wf, "success")
    return {"attempts": wf.attempts}


def always_fail(wf: Workflow) -> None:
    _record(wf, "failure")
    raise ValueError("this handler always fails")


def exits_first(wf: Workflow) -> dict[str, Any]:
    """Calls ``sys.exit(3)`` on its first attempt (as a CLI library would), then succeeds."""
    if wf.attempts == 1:
        _record(wf, "exit")
        sys.exit(3)
    _record(wf, "success")
    return {"attempts": wf.attempts}


def sleepy(wf: Workflow) -> dict[str, Any]:
    """Sleeps ``inputs['seconds']`` in small steps, stopping early if a cancel is requested."""
    _record(wf, "start")
    deadline = time.monotonic() + float(wf.inputs.get("seconds", 1))
    while time.monotonic() < deadline:
        if wf.inputs.get("watch_cancel") and cancel_requested():
            _record(wf, "cancelled")
            raise RuntimeError("stopping: cancel requested")
        time.sleep(0.05)
    _record(wf, "success")
    return {"slept": wf.inputs.get("seconds", 1)}


def swallow_everything(wf: Workflow) -> str:
    """Sleeps inside ``except Exception``: a timeout must still stop it."""
    _record(wf, "start")
    try:
        time.sleep(float(wf.inputs.get("seconds", 5)))
    except Exception:
        pass
    _record(wf, "success")
    return "slept"


async def async_handler(wf: Workflow) -> str:
    """An ``async def``: called, it only makes a coroutine; its body never runs."""
    _record(wf, "start")
    return "ran"
