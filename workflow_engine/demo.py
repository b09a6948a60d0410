"""Handlers for ``workflow-engine demo``: a small end-to-end run on embedded defaults."""

from __future__ import annotations

import re
from typing import Any

from .models import Workflow


def create_website(workflow: Workflow) -> dict[str, Any]:
    """Pretend to build a website for a business."""
    name = str(workflow.inputs.get("business", "example"))
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "site"
    return {"url": f"https://{slug}.example.com", "pages": ["home", "about", "contact"]}


def weekly_report(workflow: Workflow) -> dict[str, Any]:
    """Fails on its first attempt (a flaky API), then succeeds: the retry policy at work."""
    if workflow.attempts == 1:
        raise ConnectionError("reporting API timed out (transient)")
    savings = workflow.calculated_savings or {}
    return {"sent_to": workflow.inputs.get("recipient"), "weekly_savings": savings.get("weekly_savings")}


def import_contacts(workflow: Workflow) -> dict[str, Any]:
    """Always fails: shows where a dead-lettered workflow keeps its error."""
    raise ValueError(f"cannot parse {workflow.inputs.get('file')!r}: not a CSV file")


def calculated_savings(
    tasks_per_week: float, minutes_per_task: float, hourly_wage: float
) -> dict[str, float]:
    hours = tasks_per_week * minutes_per_task / 60
    return {
        "hours_saved_per_week": round(hours, 2),
        "weekly_savings": round(hours * hourly_wage, 2),
        "yearly_savings": round(hours * hourly_wage * 52, 2),
    }
