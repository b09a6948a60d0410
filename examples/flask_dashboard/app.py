"""A small dashboard on workflow_engine, mirroring the app the library comes from.

An agent's "execute" chat message creates a workflow with its calculated savings;
the ops council approves it on the workflows page (or through the API); a worker
runs it; the dashboard shows the totals.

    python examples/flask_dashboard/app.py                                   # in-process queue
    python examples/flask_dashboard/app.py --redis redis://localhost:6379/0  # real Redis + a worker
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from flask import Flask, jsonify, render_template
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workflow_engine import WorkflowEngine
from workflow_engine.contrib.flask import WorkflowEngineFlask
from workflow_engine.errors import InvalidInput

HERE = Path(__file__).resolve().parent
COUNCIL = "ops"
COUNCIL_MEMBERS = ["ana", "bo", "cy"]
HANDLERS = {
    "website_creation": "dashboard_handlers:create_website",
    "weekly_report": "dashboard_handlers:weekly_report",
}


class ChatMessage(BaseModel):
    """A message to an agent; "execute" starts a workflow with these numbers."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(max_length=2000)
    workflow_type_id: Literal["website_creation", "weekly_report"] = "website_creation"
    tasks_per_week: float = Field(10, ge=0, le=10_000)
    minutes_per_task: float = Field(15, ge=0, le=24 * 60)
    hourly_wage: float = Field(30, ge=0, le=10_000)
    inputs: dict[str, Any] = Field(default_factory=dict)


def create_app(*, database_url: str, redis_url: str | None = None) -> Flask:
    """The dashboard; with no ``redis_url`` the queue is in-process (an approved workflow runs at once)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))  # so that the in-process queue can import dashboard_handlers
    if redis_url is None:
        engine = WorkflowEngine(database_url=database_url, redis_url="fakeredis://", is_async=False)
    else:
        engine = WorkflowEngine(database_url=database_url, redis_url=redis_url)
    for type_id, path in HANDLERS.items():
        engine.register_handler(type_id, path, max_retries=2)
    # A write: fine for this demo, but an app that writes at start cannot start while its database
    # is down; a production app runs it as a deploy step (docs/flask.md, Setup).
    engine.configure_council(COUNCIL, members=COUNCIL_MEMBERS, quorum=2)

    app = Flask(__name__, template_folder=str(HERE / "templates"))
    WorkflowEngineFlask(app, engine, url_prefix="/api", ui=True)

    @app.template_global()
    def money(value: object, places: int) -> str:
        """A saving as a number with thousands separators; anything else (any client may store
        any JSON through the API) as "n/a", never an error that takes the dashboard down."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "n/a" if value is not None else f"{0:,.{places}f}"
        return f"{value:,.{places}f}"

    @app.get("/")
    def dashboard() -> ResponseReturnValue:
        return render_template(
            "dashboard.html",
            stats=engine.stats(),
            recent=engine.list_workflows(limit=8),
            council=COUNCIL_MEMBERS,
        )

    @app.post("/api/agents/<agent_id>/chat")
    def chat(agent_id: str) -> ResponseReturnValue:
        from flask import request

        try:  # as the extension parses its bodies: one nested past Python's stack is a 400 too
            body = json.loads(request.get_data(cache=True) or b"null")
        except (ValueError, RecursionError):
            message = "the body is not JSON, or is nested too deeply"
            return jsonify(error="invalid_json", message=message, details=[]), 400
        try:
            msg = ChatMessage.model_validate(body)
        except ValidationError as exc:
            details = [
                {"loc": ["body", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False, include_input=False, include_context=False)
            ]
            return jsonify(error="validation_error", message="invalid chat message", details=details), 400
        if "execute" not in msg.message.lower():
            reply = "Tell me your numbers and say 'execute' to start the workflow."
            return jsonify(reply=reply, workflow=None)
        from dashboard_handlers import calculated_savings

        savings = calculated_savings(msg.tasks_per_week, msg.minutes_per_task, msg.hourly_wage)
        try:
            wid = engine.create_workflow(
                workflow_type_id=msg.workflow_type_id,
                created_by_agent=agent_id,
                inputs=msg.inputs,
                calculated_savings=savings,
                assigned_council_id=COUNCIL,
                requires_approval=True,
            )
        except InvalidInput as exc:  # NaN, NUL, an agent id too long…: the client's mistake
            return jsonify(error="invalid_input", message=str(exc), details=[]), 400
        reply = (
            f"Started {msg.workflow_type_id}: it saves {savings['hours_saved_per_week']:g} h a week "
            f"(${savings['weekly_savings']:,.2f} a week, ${savings['yearly_savings']:,.2f} a year). "
            f"It runs once 2 of {', '.join(COUNCIL_MEMBERS)} approve it."
        )
        return jsonify(reply=reply, workflow=engine.get_workflow(wid).to_dict()), 201

    return app


def start_worker(database_url: str, redis_url: str) -> subprocess.Popen[bytes]:
    """A worker for the dashboard, stopped when the app exits: ``workflow-engine worker``, a stock
    forking RQ worker that also reconciles (it delivers retries after their backoff, and recovers
    a workflow whose worker died), with the handlers' module loaded once, before it forks."""
    here_first = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    command = shutil.which("workflow-engine", path=here_first)
    if command is None:
        sys.exit("the workflow-engine command is not installed; pip install workflow_engine")
    urls = ["--database-url", database_url, "--redis-url", redis_url]
    app_dir = ["--path", str(HERE), "--preload", "dashboard_handlers"]
    worker = subprocess.Popen([command, "worker", *urls, *app_dir])
    atexit.register(worker.terminate)
    return worker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--redis", metavar="URL", help="use this Redis and start a worker (default: in-process)"
    )
    parser.add_argument(
        "--database", metavar="URL", default=f"sqlite:///{Path.cwd() / 'dashboard.db'}", help="database URL"
    )
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    app = create_app(database_url=args.database, redis_url=args.redis)
    if args.redis:
        start_worker(args.database, args.redis)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that atexit stops the worker on a kill too
    print(f"dashboard: http://127.0.0.1:{args.port}/   workflows: http://127.0.0.1:{args.port}/workflows")
    app.run(port=args.port, threaded=True)


if __name__ == "__main__":
    main()
