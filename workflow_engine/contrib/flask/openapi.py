"""The OpenAPI 3.1 document of the API, generated from the same pydantic models that validate it."""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from ...models import Tally, Workflow, WorkflowEvent
from . import schemas

REF = "#/components/schemas/{model}"
JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


@functools.lru_cache(maxsize=1)
def _components() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (Workflow, "serialization"),
        (WorkflowEvent, "serialization"),
        (Tally, "serialization"),
        (schemas.CreateWorkflow, "validation"),
        (schemas.UpdateStatus, "validation"),
        (schemas.CastVote, "validation"),
        (schemas.ListQuery, "validation"),
        (schemas.WorkflowQuery, "validation"),
        (schemas.AnalyticsQuery, "validation"),
    ]
    _, top = models_json_schema(models, ref_template=REF)
    defs: dict[str, Any] = top["$defs"]
    # ?events=1 adds the timeline to a workflow, whose own schema forbids extra properties.
    detail = copy.deepcopy(defs["Workflow"])
    detail["title"] = "WorkflowDetail"
    detail["description"] = (
        "A workflow, with its event timeline (oldest first) when asked for with ?events=1."
    )
    detail["properties"]["events"] = {"type": "array", "items": _ref("WorkflowEvent")}
    defs["WorkflowDetail"] = detail
    tally = defs["Tally"]
    tally["properties"]["decided"] = {"type": "boolean", "description": "False while it awaits approval."}
    tally["required"].append("decided")
    defs["WorkflowPage"] = {
        "type": "object",
        "properties": {
            "workflows": {"type": "array", "items": _ref("Workflow")},
            "next_cursor": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "Pass as ?cursor= for the next page; null on the last page.",
            },
        },
        "required": ["workflows", "next_cursor"],
        "additionalProperties": False,
    }
    defs["Error"] = {
        "type": "object",
        "description": "Every error: a stable code, a message that says what to do, and field errors.",
        "properties": {
            "error": {"type": "string", "examples": ["validation_error", "not_found", "invalid_transition"]},
            "message": {"type": "string"},
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "loc": {
                            "type": "array",
                            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                        },
                        "msg": {"type": "string"},
                        "type": {"type": "string"},
                    },
                },
            },
        },
        "required": ["error", "message", "details"],
    }
    defs["QueueUnavailableError"] = {
        "description": "The workflow was created (or changed) and is queued; it runs once Redis is back.",
        "allOf": [
            _ref("Error"),
            {
                "type": "object",
                "properties": {"workflow_id": {"type": "string"}, "workflow": _ref("Workflow")},
                "required": ["workflow_id", "workflow"],
            },
        ],
    }
    defs["Analytics"] = _ANALYTICS
    for name in ("ListQuery", "WorkflowQuery", "AnalyticsQuery"):
        defs.pop(name)
    return defs


_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}
_NUMBER_OR_NULL = {"anyOf": [{"type": "number"}, {"type": "null"}]}
_ANALYTICS: dict[str, Any] = {
    "type": "object",
    "description": "engine.stats(): counts, success rates, durations, queue depth and summed savings.",
    "properties": {
        "since": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
        "generated_at": {"type": "string", "format": "date-time"},
        "total": {"type": "integer"},
        "by_status": _COUNTS,
        "by_type": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "total": {"type": "integer"},
                    "by_status": _COUNTS,
                    "success_rate": _NUMBER_OR_NULL,
                    "duration_p50_s": _NUMBER_OR_NULL,
                    "duration_p95_s": _NUMBER_OR_NULL,
                },
            },
        },
        "queue_depth": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "oldest_queued_age_s": _NUMBER_OR_NULL,
        "running": {"type": "integer"},
        "throughput_per_min": {"type": "number"},
        # None for a sum too large for a float (docs/api.md, stats)
        "calculated_savings": {"type": "object", "additionalProperties": _NUMBER_OR_NULL},
    },
    "required": ["generated_at", "total", "by_status", "by_type", "calculated_savings"],
}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A query model's fields as OpenAPI parameters (optional; ``null`` is "leave it out")."""
    properties: dict[str, Any] = model.model_json_schema(ref_template=REF)["properties"]
    params = []
    for name, prop in properties.items():
        schema = {k: v for k, v in prop.items() if k not in ("title", "default")}
        options = [s for s in schema.pop("anyOf", []) if s != {"type": "null"}]
        if options:
            schema.update(options[0])
        params.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": schema,
                "description": model.model_fields[name].description or "",
            }
        )
    return params


def _error(description: str, schema: str = "Error") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


def _ok(description: str, schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": _ref(schema)}}}
    if headers:
        out["headers"] = headers
    return out


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": _ref(schema)}}}


_E400 = _error("Invalid JSON, a wrong field type, an unknown status or a missing field; see details.")
_E401 = _error("The auth hook (on a vote, or the voter hook) refused the request: not authenticated.")
_E403 = _error("The auth hook (on a vote, or the voter hook) refused the request: not allowed.")
_E404 = _error("No workflow has that id.")
_E409 = _error("The state machine does not allow it (for example a vote on a decided workflow).")
_E413 = _error("The body is larger than max_body_bytes.")
_E503 = _error(
    "store_unavailable: the database could not be reached, and nothing was done; try again (a create "
    "with an idempotency_key, so that one that did commit is not repeated)."
)


def _queued_anyway(description: str) -> dict[str, Any]:
    """503 on a call that queues: Redis down after the change (queue_unavailable: done, do not repeat
    it) or the database down before it (store_unavailable: not done)."""
    schema = {"anyOf": [_ref("QueueUnavailableError"), _ref("Error")]}
    return {
        "description": f"queue_unavailable: {description} store_unavailable: the database could not be "
        "reached, and nothing was done; try again.",
        "content": {JSON: {"schema": schema}},
    }


_LOCATION = {
    "Location": {"required": True, "schema": {"type": "string"}, "description": "The workflow's URL."}
}
_ID = {"name": "workflow_id", "in": "path", "required": True, "schema": {"type": "string"}}
#: What a client can do with the workflow it just created.
_LINKS = {
    "GetWorkflow": {"operationId": "getWorkflow", "parameters": {"workflow_id": "$response.body#/id"}},
    "GetWorkflowAction": {
        "operationId": "getWorkflowAction",
        "parameters": {"workflow_id": "$response.body#/id"},
    },
    "UpdateWorkflowStatus": {
        "operationId": "updateWorkflowStatus",
        "parameters": {"workflow_id": "$response.body#/id"},
    },
    "Vote": {"operationId": "vote", "requestBody": {"workflow_id": "$response.body#/id"}},
}


def _guarded(responses: dict[str, Any], *, reads_the_store: bool = True) -> dict[str, Any]:
    unavailable = {"503": _E503} if reads_the_store else {}
    return {"401": _E401, "403": _E403, **unavailable, **responses}


def document(prefix: str, *, server: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for endpoints mounted at ``prefix``."""
    p = prefix
    get_workflow = {
        "parameters": [_ID, *_query_parameters(schemas.WorkflowQuery)],
        "responses": _guarded({"200": _ok("The workflow.", "WorkflowDetail"), "400": _E400, "404": _E404}),
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "workflow_engine",
            "version": _version(),
            "description": "Durable workflows: create, read, change status, vote, analytics.",
        },
        "paths": {
            f"{p}/workflow_actions": {
                "post": {
                    "operationId": "createWorkflow",
                    "summary": "Create a workflow, and enqueue it unless it requires approval.",
                    "requestBody": _body("CreateWorkflow"),
                    "responses": _guarded(
                        {
                            "201": {**_ok("Created (and enqueued).", "Workflow", _LOCATION), "links": _LINKS},
                            "200": _ok("An idempotent replay: the first workflow, unchanged.", "Workflow"),
                            "400": _E400,
                            "413": _E413,
                            "503": _queued_anyway(
                                "created and queued, but Redis is unavailable: it runs once Redis is back; "
                                "do not create it again."
                            ),
                        }
                    ),
                }
            },
            f"{p}/workflow_actions/{{workflow_id}}": {
                "get": {"operationId": "getWorkflowAction", "summary": "A workflow.", **get_workflow},
                "patch": {
                    "operationId": "updateWorkflowStatus",
                    "summary": "Change a workflow's status: queued enqueues or requeues, cancelled cancels.",
                    "parameters": [_ID],
                    "requestBody": _body("UpdateStatus"),
                    "responses": _guarded(
                        {
                            "200": _ok("The workflow, changed.", "Workflow"),
                            "400": _E400,
                            "404": _E404,
                            "409": _E409,
                            "413": _E413,
                            "503": _queued_anyway(
                                "queued, but Redis is unavailable: it runs once Redis is back."
                            ),
                        }
                    ),
                },
            },
            f"{p}/workflows": {
                "get": {
                    "operationId": "listWorkflows",
                    "summary": "Workflows, newest first, filtered and paged with next_cursor.",
                    "parameters": _query_parameters(schemas.ListQuery),
                    "responses": _guarded({"200": _ok("A page of workflows.", "WorkflowPage"), "400": _E400}),
                }
            },
            f"{p}/workflows/{{workflow_id}}": {
                "get": {"operationId": "getWorkflow", "summary": "A workflow.", **get_workflow}
            },
            f"{p}/council/vote": {
                "post": {
                    "operationId": "vote",
                    "summary": "A council member's vote on a workflow awaiting approval.",
                    "requestBody": _body("CastVote"),
                    "responses": _guarded(
                        {
                            "200": _ok("The tally, with the workflow's status.", "Tally"),
                            "400": _E400,
                            "403": _error(
                                "The voter is not a member of the workflow's council "
                                "(not_a_council_member); the app's voter hook names another member for "
                                "the caller, or none (wrong_voter); or the auth or voter hook refused "
                                "the request (forbidden)."
                            ),
                            "404": _E404,
                            "409": _error("A duplicate vote, or a vote on a workflow not awaiting approval."),
                            "413": _E413,
                        }
                    ),
                }
            },
            f"{p}/analytics": {
                "get": {
                    "operationId": "analytics",
                    "summary": "engine.stats().",
                    "parameters": _query_parameters(schemas.AnalyticsQuery),
                    "responses": _guarded({"200": _ok("The analytics.", "Analytics"), "400": _E400}),
                }
            },
            f"{p}/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": _guarded(
                        {
                            "200": {
                                "description": "OpenAPI 3.1",
                                "content": {JSON: {"schema": {"type": "object"}}},
                            }
                        },
                        reads_the_store=False,  # the document is built from code alone
                    ),
                }
            },
        },
        "components": {"schemas": _components()},
    }
    if server:
        doc["servers"] = [{"url": server}]
    return copy.deepcopy(doc)


def _version() -> str:
    from ... import __version__

    return __version__
