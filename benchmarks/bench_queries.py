"""``list_workflows`` and ``stats()`` on a large table: p50/p99 per filter and page depth.

Used by ``bench.py --only queries``; runnable alone too:

    python benchmarks/bench_queries.py --rows 100000,1000000
    python benchmarks/bench_queries.py --rows 100000 --postgres-url postgresql://postgres@127.0.0.1:5432/postgres

Rows are not created through the engine (a million ``create_workflow`` calls
would take ten minutes): the schema is created by the store's own migrations
(``open_store(url).migrate()``), the secondary indexes are dropped, realistic
rows go in with one ``executemany`` (SQLite) or ``COPY`` (PostgreSQL) in one
transaction, and the indexes are created again exactly as the migrations
wrote them. When the SQLite table of the same size was built first (as ``bench.py`` does),
PostgreSQL's COPY reads its rows from that file rather than generating them again (the rows are
the same; reading them back takes a fifth of the time). PostgreSQL's table is then analyzed, as
autovacuum would; SQLite's is not, since an app's SQLite file has no statistics. The SQLite
file is cached under ``/tmp/we-bench-rows/`` keyed by the row count and a hash of the migration
scripts, so a rerun reuses it, and a PostgreSQL table of the same size is kept in a database of its
own, ``we_bench_rows_<rows>_<hash>``; ``--rebuild`` forces fresh ones. (Tables under 50,000 rows are
built each run: a file in the run's temporary folder, a scratch database dropped on exit.)

What the rows look like (fixed seed, so every build is the same):

- ``created_at`` one a second or so, newest last, over ``rows`` seconds;
- status: 80 % completed, 6 % failed, 5 % queued, 4 % pending, 2 % cancelled,
  1 % awaiting_approval, 1 % rejected, and a rare 0.1 % running (about 1,000 at 1M);
- 20 workflow types with a skewed mix (the most common about 27 %, the rarest about 1.5 %);
- 500 agents (10 % of rows have none);
- small JSON inputs, a result on completed rows, calculated_savings on a third of them,
  an error and a short traceback on failed ones, timestamps and a lease on running ones.

The ``workflow_events`` table is left empty: no query measured here reads it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import BenchFailure

from workflow_engine import WorkflowEngine
from workflow_engine.stores import open_store
from workflow_engine.stores import queries as q

CACHE = Path("/tmp/we-bench-rows")
#: Tables this large or larger are kept between runs (SQLite's files and PostgreSQL's databases).
CACHE_MIN_ROWS = 50_000
#: The databases that keep large PostgreSQL tables between runs, and the comment that marks one built.
PG_CACHE_PREFIX = "we_bench_rows_"
PG_CACHE_DONE = "workflow_engine benchmark rows, built in"
PAGE = 50  # list_workflows' default limit
DEEP_PAGE = 1000
#: The smallest table on which every measured filter finds rows, but the sparse ones (combinations
#: that a small table may not have); the rows are the same on every build.
MIN_ROWS = 2000
SEED = 20260520
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)

STATUSES = [
    ("completed", 800),
    ("failed", 60),
    ("queued", 50),
    ("pending", 40),
    ("cancelled", 20),
    ("awaiting_approval", 10),
    ("rejected", 10),
    ("running", 1),
]
COMMON_STATUS, RARE_STATUS = "completed", "running"
TYPES = [f"type_{i:02d}" for i in range(20)]
TYPE_WEIGHTS = [round(300 / (i + 1)) + 1 for i in range(20)]  # type_00 ~27 %, type_19 ~1.5 %
COMMON_TYPE, RARE_TYPE = TYPES[0], TYPES[-1]
AGENTS = [f"agent-{i:03d}" for i in range(500)]
SOME_AGENT = AGENTS[7]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def schema_key() -> str:
    """A short hash of every migration script of both dialects: the cache key of a built file."""
    digest = hashlib.sha256()
    root = resources.files("workflow_engine.stores") / "migrations"
    for dialect in ("sqlite", "postgres"):
        folder = root / dialect
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".sql"):
                digest.update(entry.name.encode())
                digest.update(entry.read_bytes())
    digest.update(",".join(q.WORKFLOW_COLUMNS).encode())
    digest.update(b"rows v2: with duration_s")
    return digest.hexdigest()[:12]


# -- rows -------------------------------------------------------------------------------------
def _cumulative(weights: Sequence[int]) -> list[int]:
    out, total = [], 0
    for w in weights:
        total += w
        out.append(total)
    return out


def generate(rows: int, dialect: str) -> Iterator[tuple[Any, ...]]:
    """``rows`` realistic workflow rows, oldest first, as tuples in ``q.WORKFLOW_COLUMNS`` order.

    ``dialect`` "sqlite": timestamps as ISO text and JSON as text, as the SQLite store writes them;
    "postgres": text that COPY parses into timestamptz and jsonb.
    """
    import bisect

    rng = random.Random(SEED)
    status_names = [s for s, _ in STATUSES]
    status_cum = _cumulative([w for _, w in STATUSES])
    type_cum = _cumulative(TYPE_WEIGHTS)
    start = EPOCH
    columns = q.WORKFLOW_COLUMNS
    index = {c: i for i, c in enumerate(columns)}
    iso = (
        (lambda d: d.isoformat(timespec="microseconds")) if dialect == "sqlite" else (lambda d: d.isoformat())
    )
    for n in range(rows):
        created = start + timedelta(seconds=n, microseconds=rng.randrange(1_000_000))
        status = status_names[bisect.bisect_right(status_cum, rng.randrange(status_cum[-1]))]
        type_id = TYPES[bisect.bisect_right(type_cum, rng.randrange(type_cum[-1]))]
        agent = None if rng.random() < 0.1 else AGENTS[rng.randrange(len(AGENTS))]
        wid = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        row: list[Any] = [None] * len(columns)
        values: dict[str, Any] = {
            "id": wid,
            "workflow_type_id": type_id,
            "status": status,
            "created_by_agent": agent,
            "inputs": json.dumps({"invoice": n, "amount": round(rng.random() * 1000, 2), "currency": "EUR"}),
            "attempts": 0,
            "max_retries": 3,
            "max_attempts": 4,
            "retry_backoff": 1.0,
            "handler": f"app.jobs:{type_id}",
            "created_at": iso(created),
            "updated_at": iso(created),
        }
        if status not in ("pending", "awaiting_approval", "rejected"):
            values["job_id"] = f"{wid}-{rng.getrandbits(32):08x}"
        if status == "queued":
            values["queued_at"] = iso(created)
        if status in ("completed", "failed", "running", "cancelled"):
            started = created + timedelta(milliseconds=rng.randrange(5, 2000))
            values.update(attempts=1, worker=f"worker-{rng.randrange(8)}", started_at=iso(started))
            if status == "running":
                beat = started + timedelta(seconds=5)
                values.update(heartbeat_at=iso(beat), lease_until=iso(beat + timedelta(seconds=30)))
                values["updated_at"] = iso(beat)
            else:
                finished = started + timedelta(milliseconds=rng.randrange(10, 60_000))
                values.update(
                    finished_at=iso(finished),
                    updated_at=iso(finished),
                    duration_s=(finished - started).total_seconds(),
                )
        if status == "completed":
            values["result"] = json.dumps({"ok": True, "lines": rng.randrange(1, 50)})
            if rng.random() < 0.33:
                values["calculated_savings"] = json.dumps(
                    {"usd": round(rng.random() * 500, 2), "hours": round(rng.random() * 8, 1)}
                )
        elif status == "failed":
            values.update(
                attempts=4,
                error="ValueError: upstream said no",
                traceback='Traceback (most recent call last):\n  File "app/jobs.py", line 12\nValueError',
            )
        for key, value in values.items():
            row[index[key]] = value
        yield tuple(row)


def _sqlite_indexes(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return list(
        conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'workflows' "
            "AND sql IS NOT NULL"
        )
    )


def build_sqlite(path: Path, rows: int) -> float:
    """Create ``path`` with the store's schema and ``rows`` rows; return the seconds it took."""
    started = time.perf_counter()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = open_store(f"sqlite:///{path}")
    store.migrate()
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        indexes = _sqlite_indexes(conn)
        for name, _sql in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        placeholders = ", ".join("?" for _ in q.WORKFLOW_COLUMNS)
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO workflows ({', '.join(q.WORKFLOW_COLUMNS)}) VALUES ({placeholders})",
            generate(rows, "sqlite"),
        )
        conn.execute("COMMIT")
        for _name, sql in indexes:
            conn.execute(sql)
        # No ANALYZE: an app's SQLite file has no statistics either, and the plans must be good
        # without them. (PostgreSQL's autovacuum analyzes, so its table is analyzed below.)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - started


@contextmanager
def sqlite_table(rows: int, rebuild: bool, tmp: Path) -> Iterator[tuple[str, str]]:
    """A SQLite database URL with ``rows`` rows (cached under /tmp when large); yields (url, how)."""
    if rows < CACHE_MIN_ROWS:  # small: build it fresh, in the run's temporary folder
        path = tmp / f"rows-{rows}.db"
        seconds = build_sqlite(path, rows)
        yield f"sqlite:///{path}", f"built in {seconds:.1f} s"
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"rows-{rows}-{schema_key()}.db"
    done = Path(f"{path}.ok")
    if rebuild or not done.exists() or not path.exists():
        done.unlink(missing_ok=True)
        for stale in CACHE.glob(f"rows-{rows}-*"):  # files built for an older schema
            if not stale.name.startswith(path.name):
                stale.unlink(missing_ok=True)
        say(f"  building {path} ({rows:,} rows; cached for later runs)")
        seconds = build_sqlite(path, rows)
        done.write_text(f"{seconds:.1f}\n")
        how = f"built in {seconds:.1f} s, cached at {path}"
    else:
        how = f"cached at {path} (built in {done.read_text().strip()} s)"
    yield f"sqlite:///{path}", how


def copied_rows(source: Path) -> Iterator[tuple[Any, ...]]:
    """The rows of a SQLite file that ``build_sqlite`` made, in ``q.WORKFLOW_COLUMNS`` order.

    The same rows ``generate`` makes, read back in a fifth of the time: SQLite's ISO timestamps
    and JSON text are what COPY parses into timestamptz and jsonb.
    """
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        yield from conn.execute(f"SELECT {', '.join(q.WORKFLOW_COLUMNS)} FROM workflows ORDER BY rowid")
    finally:
        conn.close()


@contextmanager
def postgres_table(
    admin_url: str, rows: int, source: Path | None = None, rebuild: bool = False
) -> Iterator[tuple[str, str]]:
    """A PostgreSQL database with ``rows`` rows (COPY); yields (url, how).

    With ``source``, a SQLite file of the same rows that ``sqlite_table`` built, the rows are
    copied from it instead of generated again. A small table is built in a scratch database,
    dropped on exit. A large one (as large as ``sqlite_table`` caches) is kept, as the SQLite
    file is: in the database ``we_bench_rows_<rows>_<schema key>`` on that server, marked
    complete by its comment once built, and reused by later runs unless ``rebuild``; a database
    kept for another schema, or left incomplete, is dropped first. Nothing measured here
    writes to it.
    """
    if rows < CACHE_MIN_ROWS:
        with harness.scratch_postgres(admin_url) as url:
            seconds = build_postgres(url, rows, source)
            yield url, f"built in {seconds:.1f} s (COPY of rows {_origin(source)}, scratch database)"
        return
    import psycopg

    name = f"{PG_CACHE_PREFIX}{rows}_{schema_key()}"
    url = harness.with_dbname(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        pattern = f"{PG_CACHE_PREFIX}{rows}_".replace("_", "\\_") + "%"
        kept = dict(
            conn.execute(
                "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
                "WHERE datname LIKE %s",
                (pattern,),
            ).fetchall()
        )
        exists, comment = name in kept, kept.pop(name, None)
        for stale in kept:  # kept for an older schema
            harness.drop_database(conn, stale)
        if exists and not rebuild and comment is not None and comment.startswith(PG_CACHE_DONE):
            how = f"cached in database {name} (built in {comment.removeprefix(PG_CACHE_DONE).strip()})"
        else:
            if exists:  # never finished, or --rebuild
                harness.drop_database(conn, name)
            say(f"  building database {name} ({rows:,} rows; kept for later runs)")
            conn.execute(f'CREATE DATABASE "{name}"')
            try:
                seconds = build_postgres(url, rows, source)
            except BaseException:
                harness.drop_database(conn, name)
                raise
            conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{PG_CACHE_DONE} {seconds:.1f} s'")
            how = f"built in {seconds:.1f} s (COPY of rows {_origin(source)}), cached in database {name}"
    yield url, how


def _origin(source: Path | None) -> str:
    return "copied from the SQLite file" if source is not None else "generated"


def build_postgres(url: str, rows: int, source: Path | None = None) -> float:
    """Give the empty database at ``url`` the store's schema and ``rows`` rows; return the seconds it took."""
    import psycopg

    started = time.perf_counter()
    store = open_store(url)
    store.migrate()
    store.close()
    with psycopg.connect(url) as conn:
        indexes = conn.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i "
            "JOIN pg_class c ON c.relname = i.indexname JOIN pg_index x ON x.indexrelid = c.oid "
            "WHERE i.tablename = 'workflows' AND NOT x.indisprimary"
        ).fetchall()
        for name, _sql in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        with conn.cursor().copy(f"COPY workflows ({', '.join(q.WORKFLOW_COLUMNS)}) FROM STDIN") as copy:
            for row in copied_rows(source) if source is not None else generate(rows, "postgres"):
                copy.write_row(row)
        conn.execute("SET maintenance_work_mem = '256MB'")
        for _name, sql in indexes:
            conn.execute(sql)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE workflows")
    return time.perf_counter() - started


# -- measuring ---------------------------------------------------------------------------------
@dataclass
class Query:
    label: str
    kwargs: dict[str, Any]
    page: int = 1  # the page ``before`` points at (1: no cursor)
    before: Any = None
    #: So rare that a small table may have no match (at 2,000 rows, say): measured all the same, and
    #: an empty page is not a failure. At 1M rows every one of them finds rows.
    sparse: bool = False
    samples: list[float] = field(default_factory=list)
    returned: int = 0


@dataclass
class QueryResult:
    backend: str
    rows: int
    how: str
    queries: list[Query]
    walk: str
    stats_seconds: list[float]
    offset_ms: float | None
    stats_total: int
    #: ``stats(since=EPOCH)``: a window that holds every row, which reads other indexes than ``stats()``.
    since_seconds: list[float] = field(default_factory=list)


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _walk(engine: WorkflowEngine, kwargs: dict[str, Any], pages: int) -> tuple[Any, list[float], int]:
    """Page through ``pages`` pages with keyset ``before=``; return the cursor of the last page,
    the time of each page, and how many pages there were."""
    before, times, done = None, [], 0
    for _ in range(pages):
        start = time.perf_counter()
        page = engine.list_workflows(limit=PAGE, before=before, **kwargs)
        times.append(time.perf_counter() - start)
        if not page:
            break
        done += 1
        if len(page) < PAGE:
            break
        before = page[-1]
    return before, times, done


def measure(
    engine: WorkflowEngine, backend: str, rows: int, how: str, reps: int, stats_rounds: int
) -> QueryResult:
    deep_page = min(DEEP_PAGE, max(rows // PAGE // 2, 2))
    queries = [
        Query("unfiltered, page 1", {}),
        Query(f"status={COMMON_STATUS} (80 %)", {"status": COMMON_STATUS}),
        Query(f"status={RARE_STATUS} (0.1 %)", {"status": RARE_STATUS}),
        Query(f"type={COMMON_TYPE} (most common)", {"workflow_type_id": COMMON_TYPE}),
        Query(f"type={RARE_TYPE} (rarest)", {"workflow_type_id": RARE_TYPE}),
        Query(f"agent={SOME_AGENT} (0.2 %)", {"created_by_agent": SOME_AGENT}),
        Query(
            f"status=failed & type={RARE_TYPE} (two filters)",
            {"status": "failed", "workflow_type_id": RARE_TYPE},
        ),
        Query(
            f"status={COMMON_STATUS} & type={COMMON_TYPE} (two common filters)",
            {"status": COMMON_STATUS, "workflow_type_id": COMMON_TYPE},
        ),
        Query(
            f"status={RARE_STATUS} & type={COMMON_TYPE}",
            {"status": RARE_STATUS, "workflow_type_id": COMMON_TYPE},
            sparse=True,
        ),
        Query(
            f"status={RARE_STATUS} & agent={SOME_AGENT}",
            {"status": RARE_STATUS, "created_by_agent": SOME_AGENT},
            sparse=True,
        ),
        Query(
            f"status={COMMON_STATUS} & type={COMMON_TYPE} & agent={SOME_AGENT} (three filters)",
            {"status": COMMON_STATUS, "workflow_type_id": COMMON_TYPE, "created_by_agent": SOME_AGENT},
            sparse=True,
        ),
        Query(f"unfiltered, page {deep_page} (keyset)", {}, page=deep_page),
        Query(
            f"status={COMMON_STATUS}, page {deep_page} (keyset)", {"status": COMMON_STATUS}, page=deep_page
        ),
    ]
    # Walk to the deep pages through before= (as a client would), timing every page on the way.
    walk_notes = []
    for query in queries:
        if query.page > 1:
            query.before, times, pages = _walk(engine, query.kwargs, query.page - 1)
            if pages != query.page - 1:
                raise BenchFailure(f"{query.label}: only {pages} pages before page {query.page}")
            walk_notes.append(
                f"walking pages 1-{pages} of {query.kwargs or 'all'}: "
                f"p50 {percentile(times, 50) * 1000:.2f} ms, p99 {percentile(times, 99) * 1000:.2f} ms, "
                f"max {max(times) * 1000:.2f} ms a page"
            )
    for query in queries:  # warm up (page cache, prepared statements)
        for _ in range(3):
            engine.list_workflows(limit=PAGE, before=query.before, **query.kwargs)
    # Interleave the queries so that a burst of load on the machine hits them all alike.
    for _ in range(reps):
        for query in queries:
            start = time.perf_counter()
            page = engine.list_workflows(limit=PAGE, before=query.before, **query.kwargs)
            query.samples.append(time.perf_counter() - start)
            query.returned = len(page)
    for query in queries:
        if query.returned == 0 and not query.sparse:
            raise BenchFailure(f"{query.label} returned no rows on {backend} with {rows:,} rows")
    offset_ms = _offset_sql(engine, deep_page) if backend == "SQLite" else None
    stats_seconds, total = [], 0
    for _ in range(stats_rounds):
        start = time.perf_counter()
        stats = engine.stats()
        stats_seconds.append(time.perf_counter() - start)
        total = int(stats["total"])
    if total != rows:
        raise BenchFailure(f"stats() counted {total:,} workflows, expected {rows:,}")
    if not any(t["duration_p50_s"] is not None for t in stats["by_type"].values()):
        raise BenchFailure("stats() found no durations: the percentiles were not measured")
    since_seconds = []
    for _ in range(stats_rounds):
        start = time.perf_counter()
        windowed = engine.stats(since=EPOCH)
        since_seconds.append(time.perf_counter() - start)

    def ranks(report: Any) -> dict[str, tuple[Any, ...]]:
        by_type = report["by_type"].items()
        return {k: (v["total"], v["duration_p50_s"], v["duration_p95_s"]) for k, v in by_type}

    if windowed["total"] != rows or ranks(windowed) != ranks(stats):
        raise BenchFailure("stats(since=…) over a window of every row differs from stats()")
    return QueryResult(
        backend, rows, how, queries, "; ".join(walk_notes), stats_seconds, offset_ms, total, since_seconds
    )


def _offset_sql(engine: WorkflowEngine, page: int) -> float:
    """What offset paging would cost at ``page``: the raw SQL, no decoding (for contrast only)."""
    path = engine.database_url[len("sqlite:///") :]
    conn = sqlite3.connect(path)
    try:
        sql = (
            "SELECT * FROM workflows ORDER BY created_at DESC, id DESC "
            f"LIMIT {PAGE} OFFSET {(page - 1) * PAGE}"
        )
        conn.execute(sql).fetchall()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            conn.execute(sql).fetchall()
            times.append(time.perf_counter() - start)
    finally:
        conn.close()
    return statistics.median(times) * 1000


def run(
    backends: Sequence[str],
    rows_list: Sequence[int],
    *,
    tmp: Path,
    redis_url: str,
    postgres_url: str | None,
    reps: int,
    stats_rounds: int,
    rebuild: bool = False,
    progress: Callable[[str], None] = say,
) -> list[QueryResult]:
    results = []
    for rows in rows_list:
        built: Path | None = None  # this size's SQLite file, once built: PostgreSQL copies its rows
        for backend in backends:
            table = (
                sqlite_table(rows, rebuild, tmp)
                if backend == "sqlite"
                else postgres_table(str(postgres_url), rows, built, rebuild)
            )
            label = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[backend]
            progress(f"  {label}, {rows:,} rows: preparing")
            with table as (url, how):
                if backend == "sqlite":
                    built = Path(url.removeprefix("sqlite:///"))
                progress(f"  {label}, {rows:,} rows: {how}; measuring")
                engine = WorkflowEngine(database_url=url, redis_url=redis_url, queue_name=harness.QUEUE)
                try:
                    results.append(measure(engine, label, rows, how, reps, stats_rounds))
                finally:
                    engine.close()
            r = results[-1]
            progress(
                f"  {label}, {rows:,} rows: worst p50 "
                f"{max(percentile(x.samples, 50) for x in r.queries) * 1000:.2f} ms, "
                f"stats() {statistics.median(r.stats_seconds):.2f} s"
            )
    return results


def format_tables(results: Sequence[QueryResult]) -> str:
    lines = [
        f"| rows | database | `list_workflows(limit={PAGE}, …)` | p50 | p99 | rows returned |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for x in r.queries:
            lines.append(
                f"| {r.rows:,} | {r.backend} | {x.label} | {percentile(x.samples, 50) * 1000:.2f} ms | "
                f"{percentile(x.samples, 99) * 1000:.2f} ms | {x.returned} |"
            )
    lines += [
        "",
        "| rows | database | `engine.stats()` | runs | `stats(since=…)`, all rows in the window | runs |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        runs = ", ".join(f"{s:.2f}" for s in r.stats_seconds)
        since_runs = ", ".join(f"{s:.2f}" for s in r.since_seconds)
        lines.append(
            f"| {r.rows:,} | {r.backend} | {statistics.median(r.stats_seconds):.2f} s | {runs} s "
            f"| {statistics.median(r.since_seconds):.2f} s | {since_runs} s |"
        )
    lines.append("")
    for r in results:
        lines.append(f"- {r.backend}, {r.rows:,} rows: {r.how}.")
        if r.walk:
            lines.append(f"  Keyset walk: {r.walk}.")
        if r.offset_ms is not None:
            lines.append(
                f"  For contrast, offset paging to the same deep page (raw SQL `LIMIT {PAGE} OFFSET …`, "
                f"no decoding) takes {r.offset_ms:.2f} ms."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated row counts")
    parser.add_argument("--reps", type=int, default=300, help="timed runs of each query (interleaved)")
    parser.add_argument("--stats-rounds", type=int, default=3)
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--no-sqlite", action="store_true", help="only PostgreSQL")
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="build the cached tables again (SQLite files, PostgreSQL databases)",
    )
    args = parser.parse_args(argv)
    rows_list = [int(x.replace("_", "")) for x in args.rows.split(",") if x.strip()]
    if not rows_list or min(rows_list) < MIN_ROWS:
        parser.error(f"every --rows value must be at least {MIN_ROWS:,}")
    backends = ([] if args.no_sqlite else ["sqlite"]) + (["postgres"] if args.postgres_url else [])
    import tempfile

    with tempfile.TemporaryDirectory(prefix="we-queries-") as tmp_name:
        tmp = Path(tmp_name)
        redis = harness.RedisServer(tmp)
        redis.start()
        try:
            results = run(
                backends,
                rows_list,
                tmp=tmp,
                redis_url=redis.url,
                postgres_url=args.postgres_url,
                reps=args.reps,
                stats_rounds=args.stats_rounds,
                rebuild=args.rebuild,
            )
        finally:
            redis.stop()
    print(format_tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
