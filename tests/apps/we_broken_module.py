"""A handler module whose import fails: it reads a settings file that is not there."""

from __future__ import annotations

from pathlib import Path

SETTINGS = Path("/nonexistent/we-settings.toml").read_text()


def run(wf: object) -> None:  # never reached
    return None
