"""schemathesis against the API's own openapi.json, in-process over WSGI.

Every operation gets generated requests, valid and invalid (30 of each kind a
operation, so the file runs in seconds): no response may be a 5xx, have an
undocumented status, content type or header, or break its schema, and no
schema-violating request may be accepted.

``positive_data_acceptance`` is off: a schema-valid request may still be refused by
a rule the schema cannot express (an unregistered workflow type, a council that is
not configured, a cursor the API never issued), and those are 400s by design.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from workflow_engine import Workflow
from workflow_engine.contrib.flask import WorkflowEngineFlask
from workflow_engine.pytest_plugin import in_process_engine


def run_site(wf: Workflow) -> dict[str, Any]:
    return {"echo": wf.inputs}


def always_fail(wf: Workflow) -> None:
    raise ValueError("fails")


# schemathesis generates its tests at import time, so the app is built here, once for the module.
engine = in_process_engine()
engine.register_handler("site", run_site)
engine.register_handler("boom", always_fail, max_retries=0)
engine.configure_council("c1", members=["ana", "bo"], quorum=1)
app = Flask(__name__)
WorkflowEngineFlask(app, engine, url_prefix="/api")
config = SchemathesisConfig.from_dict({"checks": {"positive_data_acceptance": {"enabled": False}}})
schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app, config=config)


@pytest.fixture(scope="module", autouse=True)
def some_workflows() -> Iterator[None]:
    """A completed, a failed and a waiting workflow, so that lists and analytics have rows."""
    for type_id in ("site", "boom"):
        engine.enqueue_execution(engine.create_workflow(workflow_type_id=type_id))
    engine.create_workflow(workflow_type_id="site", assigned_council_id="c1", requires_approval=True)
    yield
    engine.close()


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_5xx_or_a_response_that_breaks_the_schema(case: Any) -> None:
    case.call_and_validate()
