"""The dashboard's workflow handlers: the web process registers them by import path, workers import them."""

from __future__ import annotations

import re
from typing import Any

from workflow_engine import Workflow


def calculated_savings(
    tasks_per_week: float, minutes_per_task: float, hourly_wage: float
) -> dict[str, float]:
    """Hours saved = tasks a week * minutes a task / 60; savings = hours * hourly wage (52 weeks a year)."""
    hours = tasks_per_week * minutes_per_task / 60
    return {
        "hours_saved_per_week": round(hours, 2),
        "weekly_savings": round(hours * hourly_wage, 2),
        "yearly_savings": round(hours * hourly_wage * 52, 2),
    }


def create_website(workflow: Workflow) -> dict[str, Any]:
    """Pretend to build a website for the business named in the inputs."""
    name = str(workflow.inputs.get("business", "example"))
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "site"
    return {"url": f"https://{slug}.example.com", "pages": ["home", "about", "contact"]}


def weekly_report(workflow: Workflow) -> dict[str, Any]:
    """Pretend to email a savings report."""
    savings = workflow.calculated_savings or {}
    return {
        "sent_to": workflow.inputs.get("recipient", "owner@example.com"),
        "weekly_savings": savings.get("weekly_savings"),
    }
