"""A handler module that records each import of itself, with the importing process's pid.

A preloaded forking worker imports it once, in its parent; a plain one imports it again
in every work-horse. Lines go to ``$WE_TEST_EFFECTS/imports``.
"""

from __future__ import annotations

import os

from workflow_engine import Workflow

_folder = os.environ.get("WE_TEST_EFFECTS")
if _folder:
    with open(os.path.join(_folder, "imports"), "a", encoding="utf-8") as _f:
        _f.write(f"imported {os.getpid()}\n")


def record_pid(wf: Workflow) -> int:
    """Succeeds, and records the pid of the process that ran it."""
    if _folder:
        with open(os.path.join(_folder, wf.id), "a", encoding="utf-8") as f:
            f.write(f"success {wf.attempts} {os.getpid()}\n")
    return os.getpid()


not_a_function = 42
