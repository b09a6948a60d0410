"""Test support: real servers and real worker processes, started and stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from workflow_engine.models import Workflow, utcnow
from workflow_engine.status import WorkflowStatus

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
BIN = Path(sys.executable).parent
REQUIRE_SERVICES = os.environ.get("WORKFLOW_ENGINE_REQUIRE_SERVICES") == "1"
PG_ADMIN_URL = os.environ.get("WORKFLOW_ENGINE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

T = TypeVar("T")


def a_workflow(**fields: Any) -> Workflow:
    """A workflow as a store holds a new one: a fresh id, type ``t``, ``pending``, no inputs, created
    now. ``fields`` set anything else, or replace any of that."""
    now = utcnow()
    defaults: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "workflow_type_id": "t",
        "status": WorkflowStatus.PENDING,
        "inputs": {},
        "created_at": now,
        "updated_at": now,
    }
    return Workflow(**{**defaults, **fields})


def service_unavailable(message: str) -> None:
    """Skip, or fail under WORKFLOW_ENGINE_REQUIRE_SERVICES=1."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (WORKFLOW_ENGINE_REQUIRE_SERVICES=1)")
    pytest.skip(message)


def held(real: Callable[..., T], until: threading.Event) -> Callable[..., T]:
    """``real``, made to wait for ``until`` first (30 s at most): a server that accepts a request
    and does not answer it, or a table a migration or a backup holds locked."""

    def waits_then(*args: Any, **kwargs: Any) -> T:
        until.wait(30)
        return real(*args, **kwargs)

    return waits_then


def true_in_a_forked_child(body: Callable[[], bool]) -> bool:
    """Whether ``body()`` is true in a child forked now (which exits at once; any exception is
    false): what a process forked at that moment, a work-horse, say, would find."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ok = body()
        except BaseException:
            ok = False
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    try:
        return os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


class RedisServer:
    """A private redis-server on a free port, which a test may flush, stop and start again."""

    def __init__(self, tmp: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            service_unavailable("redis-server is not installed")
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, timeout=10, what=f"redis-server on port {self.port}")

    def ping(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def flushall(self) -> None:
        import redis

        with redis.Redis(port=self.port) as client:
            client.flushall()


class Worker:
    """A real worker subprocess in its own session, so a test can kill it and every work-horse with it."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)

    def kill_session(self) -> None:
        """kill -9 every process in the worker's session: the worker and its work-horse (which setpgrp()s)."""
        sid = self.proc.pid
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                if os.getsid(int(pid_dir.name)) == sid:
                    os.kill(int(pid_dir.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill_session()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_worker(
    tmp: Path,
    *,
    redis_url: str,
    database_url: str,
    effects: Path | None = None,
    kind: str = "rq",
    worker_class: str = "fork",
    burst: bool = True,
    queue: str = "workflows",
    extra_args: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> Worker:
    """Start ``rq worker <queue>`` (kind="rq") or ``workflow-engine worker`` (kind="engine")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKFLOW_ENGINE_", "RQ_"))}
    env["WORKFLOW_ENGINE_DATABASE_URL"] = database_url
    env["WORKFLOW_ENGINE_REDIS_URL"] = redis_url
    env["WORKFLOW_ENGINE_QUEUE"] = queue
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if effects is not None:
        env["WE_TEST_EFFECTS"] = str(effects)
    env.update(extra_env or {})
    if kind == "rq":
        cmd = [str(BIN / "rq"), "worker", queue, "--url", redis_url, "--path", str(APPS)]
        if worker_class == "simple":
            cmd += ["-w", "rq.SimpleWorker"]
    else:
        cmd = [str(BIN / "workflow-engine"), "worker", "--worker-class", worker_class]
    if burst:
        cmd.append("--burst")
    cmd += extra_args or []
    log = tmp / f"worker-{uuid.uuid4().hex[:8]}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Worker(proc, log)


def effects_of(folder: Path, workflow_id: str) -> list[str]:
    """The side-effect lines a handler wrote for one workflow: 'success 1 <pid>', 'failure 1 <pid>', …"""
    path = folder / workflow_id
    return path.read_text().splitlines() if path.exists() else []


def successes(folder: Path, workflow_id: str) -> int:
    return sum(1 for line in effects_of(folder, workflow_id) if line.startswith("success"))


def create_index_statements(sql: str) -> list[str]:
    """The ``CREATE INDEX`` statements of a migration script or a docs block, comment lines left out."""
    statements = [
        "\n".join(line for line in chunk.splitlines() if not line.lstrip().startswith("--")).strip()
        for chunk in sql.split(";")
    ]
    return [st for st in statements if st.startswith("CREATE INDEX")]
