"""What the benchmark scripts share: a private redis-server, worker subprocesses, a scratch PG database.

Everything started here is stopped by its own PID (or, for a worker, by its own session id).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
QUEUE = "workflows"
T = TypeVar("T")


class BenchFailure(Exception):
    """Something did not run as it must (a workflow not completed, a worker that failed)."""


def alternating(
    kinds: Sequence[str], rounds: int, run: Callable[[str], T], describe: Callable[[T], str]
) -> dict[str, list[T]]:
    """Run every kind once a round for ``rounds`` rounds, alternating the order (A B C, then
    C B A, …) so that no kind always runs first after a quiet spell; print each round as it ends."""
    results: dict[str, list[T]] = {kind: [] for kind in kinds}
    for r in range(rounds):
        for kind in kinds if r % 2 == 0 else tuple(reversed(kinds)):
            results[kind].append(run(kind))
        figures = ", ".join(f"{kind} {describe(done[-1])}" for kind, done in results.items())
        print(f"round {r + 1}/{rounds}: {figures}", flush=True)
    return results


def workflows_in(engine: Any, status: str, at_most: int) -> list[Any]:
    """Up to ``at_most`` of ``engine``'s workflows in ``status``, newest first, read in pages of at
    most 10,000 (``list_workflows``' largest limit)."""
    found: list[Any] = []
    while len(found) < at_most:
        want = min(at_most - len(found), 10_000)
        page = engine.list_workflows(limit=want, status=status, before=found[-1] if found else None)
        found += page
        if len(page) < want:
            break
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise BenchFailure(f"timed out after {timeout:g} s waiting for {what}")


class RedisServer:
    """A private redis-server on a free port in ``folder``: no persistence, stopped by PID."""

    def __init__(self, folder: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.binary is None:
            raise BenchFailure("redis-server is not on the PATH (apt-get install redis-server)")
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
                str(self.folder),
                "--logfile",
                str(self.folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, timeout=10, what=f"redis-server on port {self.port}")

    def ping(self) -> bool:
        import redis

        if self.proc is not None and self.proc.poll() is not None:
            raise BenchFailure(f"redis-server exited with code {self.proc.returncode}")
        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2).ping())
        except redis.exceptions.ConnectionError:
            return False

    def flushall(self) -> None:
        import redis

        redis.Redis(host="127.0.0.1", port=self.port).flushall()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


class Worker:
    """A worker subprocess in its own session, so that it can be killed together with its work-horse."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, cmd: Sequence[str]) -> None:
        self.proc = proc
        self.log = log
        self.cmd = list(cmd)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_session()
            raise BenchFailure(f"worker did not exit within {timeout:g} s\n{self.tail()}") from None

    def session_pids(self) -> list[int]:
        sid = self.proc.pid
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getsid(int(entry.name)) == sid:
                        pids.append(int(entry.name))
                except (ProcessLookupError, PermissionError):
                    continue
        return pids

    def kill_session(self) -> None:
        """``kill -9`` every process in the worker's session: the worker and its work-horse.

        Killing the process group would miss the work-horse, which RQ moves to a group of its own.
        """
        for pid in self.session_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill_session()

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return "(no worker output)"
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"$ {' '.join(self.cmd)}\n" + "\n".join(text)


def cpu_times() -> list[int] | None:
    """The machine's CPU time counters from /proc/stat (Linux only), or None."""
    try:
        with open("/proc/stat") as stat:
            return [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_percent(before: list[int] | None, after: list[int] | None) -> str:
    """The share of CPU time the hypervisor took from this VM between two ``cpu_times()``."""
    if before is None or after is None or len(before) < 8 or len(after) < 8:
        return "?"
    delta = [b - a for a, b in zip(before, after, strict=False)]
    return f"{100 * delta[7] / max(sum(delta), 1):.1f} %"


def compile_bytecode() -> str:
    """Write the bytecode of ``workflow_engine`` and of the benchmark jobs, as ``pip install`` does.

    A worker process (and every work-horse of a forking worker) imports the package; without
    cached bytecode each one compiles its source first. That happens with an editable install
    under ``PYTHONDONTWRITEBYTECODE=1``, which no deployment runs with, and would charge the
    workflow side alone about 30 ms a process. ``py_compile`` writes the caches whatever that
    variable says; the interpreters then read them.
    """
    import compileall

    import workflow_engine

    folders = [Path(workflow_engine.__file__).resolve().parent, HERE]
    ok = all(compileall.compile_dir(str(folder), quiet=1) for folder in folders)
    cached = "cached" if ok else "NOT cached (compileall failed)"
    return f"bytecode of workflow_engine and the benchmark jobs {cached}"


def worker_env(
    database_url: str | None, redis_url: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKFLOW_ENGINE_", "RQ_"))}
    if database_url is not None:
        env["WORKFLOW_ENGINE_DATABASE_URL"] = database_url
    env["WORKFLOW_ENGINE_REDIS_URL"] = redis_url
    env["WORKFLOW_ENGINE_QUEUE"] = QUEUE
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


def rq_worker_cmd(
    redis_url: str, worker_class: str, *, burst: bool = True, name: str | None = None
) -> list[str]:
    """The stock command: ``rq worker workflows --url … --path benchmarks [-w rq.SimpleWorker] [--burst]``."""
    cmd = [str(BIN / "rq"), "worker", QUEUE, "--url", redis_url, "--path", str(HERE)]
    if worker_class == "simple":
        cmd += ["-w", "rq.SimpleWorker"]
    if burst:
        cmd.append("--burst")
    if name:
        cmd += ["--name", name]
    return cmd


def start(cmd: Sequence[str], env: dict[str, str], log_dir: Path) -> Worker:
    log = log_dir / f"worker-{uuid.uuid4().hex[:8]}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Worker(proc, log, cmd)


# -- PostgreSQL ----------------------------------------------------------------
def with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str]:
    """A fresh database on the server of ``admin_url``, dropped on exit. Yields its URL."""
    try:
        import psycopg
    except ImportError as exc:
        raise BenchFailure('PostgreSQL needs psycopg: pip install ".[postgres]" in the checkout') from exc
    name = f"we_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_dbname(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            drop_database(conn, name)


def drop_database(admin: Any, name: str) -> None:
    """Drop the database ``name``, if there is one, over ``admin`` (an autocommit psycopg connection
    to another database of that server), its sessions closed first."""
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
