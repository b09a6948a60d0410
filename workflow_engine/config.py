"""Configuration: the one place that reads the environment.

``WorkflowEngine.from_env()`` and the CLI read these variables; nothing else does.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///workflows.db"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_QUEUE = "workflows"
DEFAULT_HEARTBEAT_INTERVAL = 5.0
DEFAULT_STALE_AFTER = 30.0
#: TCP keepalives on every database and Redis connection: a probe after this many seconds of
#: quiet, then one every interval, and this many unanswered end the connection (about a minute).
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 30, 10, 3
#: The longest span of seconds the engine takes for a timing, a timeout or a backoff: ten years.
#: Past it, datetime arithmetic overflows.
MAX_SECONDS = 10 * 365 * 86400.0

#: Every environment variable the package reads, with what it sets.
ENVIRONMENT: dict[str, str] = {
    "WORKFLOW_ENGINE_DATABASE_URL": f"database URL (default {DEFAULT_DATABASE_URL})",
    "WORKFLOW_ENGINE_REDIS_URL": f"Redis URL; falls back to REDIS_URL, then {DEFAULT_REDIS_URL}",
    "REDIS_URL": "Redis URL, when WORKFLOW_ENGINE_REDIS_URL is not set",
    "WORKFLOW_ENGINE_QUEUE": f"RQ queue name (default {DEFAULT_QUEUE})",
    "WORKFLOW_ENGINE_HEARTBEAT_INTERVAL": f"seconds between a running workflow's heartbeats "
    f"(default {DEFAULT_HEARTBEAT_INTERVAL:g})",
    "WORKFLOW_ENGINE_STALE_AFTER": "seconds without a heartbeat before reconcile recovers a running workflow "
    f"(default {DEFAULT_STALE_AFTER:g})",
    "WORKFLOW_ENGINE_PRELOAD": "modules (or handler paths) a worker imports before it forks, "
    "comma-separated: read by `rq worker -c workflow_engine.rq_preload` and `workflow-engine worker`",
    "WORKFLOW_ENGINE_APP": "the app's engine, as package.module:attribute, whose handler registrations "
    "a worker's engine shares, so that handlers can create and enqueue workflows through current_engine()",
    # read by the CLI (and the logs of `rq worker -c workflow_engine.rq_preload`) only
    "WORKFLOW_ENGINE_LOG_FORMAT": "log format: text or json (default text)",
    "WORKFLOW_ENGINE_LOG_LEVEL": "log level (default INFO)",
    "WORKFLOW_ENGINE_METRICS_PORT": "port for /metrics of `workflow-engine worker` and `reconcile`",
    "WORKFLOW_ENGINE_METRICS_HOST": "address /metrics listens on (default 0.0.0.0)",
}


#: C0 controls, DEL and C1 controls: no URL or queue name holds one, and no name the engine
#: writes (a type id, an agent, a council or a member), where it would forge a line of output.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def unclean(value: str) -> bool:
    """True if ``value`` (a URL, a queue name) has whitespace around it or a control character in
    it: a CRLF ``.env`` file or a pasted newline, which would name another file or queue silently."""
    return value != value.strip() or CONTROL_CHARACTERS.search(value) is not None


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    queue_name: str = DEFAULT_QUEUE
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    stale_after: float = DEFAULT_STALE_AFTER

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            database_url=_text(env, "WORKFLOW_ENGINE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=_text(env, "WORKFLOW_ENGINE_REDIS_URL") or _text(env, "REDIS_URL") or DEFAULT_REDIS_URL,
            queue_name=_text(env, "WORKFLOW_ENGINE_QUEUE") or DEFAULT_QUEUE,
            heartbeat_interval=_seconds(
                env, "WORKFLOW_ENGINE_HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_INTERVAL
            ),
            stale_after=_seconds(env, "WORKFLOW_ENGINE_STALE_AFTER", DEFAULT_STALE_AFTER),
        )


def preload_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """The modules or handler paths ``WORKFLOW_ENGINE_PRELOAD`` names (comma- or space-separated)."""
    env = os.environ if environ is None else environ
    return split_names(env.get("WORKFLOW_ENGINE_PRELOAD", ""))


def app_name(environ: Mapping[str, str] | None = None) -> str:
    """What ``WORKFLOW_ENGINE_APP`` names (``package.module:engine``), or "" if it is unset."""
    return _text(os.environ if environ is None else environ, "WORKFLOW_ENGINE_APP")


def split_names(text: str) -> list[str]:
    """Module names or handler paths, separated by commas or spaces."""
    return text.replace(",", " ").split()


def _text(env: Mapping[str, str], name: str) -> str:
    """The variable's value without the whitespace around it (a CRLF ``.env`` file's ``\\r``); "" if unset."""
    return (env.get(name) or "").strip()


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _text(env, name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of seconds, got {raw!r}") from None
    _check_seconds(name, value)  # named as the variable, not the argument it becomes
    return value


def _check_seconds(name: str, value: object) -> None:
    """``value`` is a timing: a number of seconds above 0 and at most ten years."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= MAX_SECONDS
    ):
        raise ConfigurationError(
            f"{name} must be a number of seconds > 0 and at most {MAX_SECONDS:.0f} (ten years), got {value!r}"
        )


def check_timing(heartbeat_interval: float, stale_after: float) -> None:
    _check_seconds("heartbeat_interval", heartbeat_interval)
    _check_seconds("stale_after", stale_after)
    if stale_after < 2 * heartbeat_interval:
        raise ConfigurationError(
            f"stale_after ({stale_after:g} s) must be at least twice heartbeat_interval "
            f"({heartbeat_interval:g} s), or a live worker would be taken for dead"
        )
