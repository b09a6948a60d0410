"""Human output of the ``workflow-engine`` commands: rich tables on a terminal, plain columns elsewhere.

Scripts should use ``--json``; the plain form only keeps pipes (``| grep``) readable.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from .analytics import Stats
    from .health import HealthReport
    from .models import Workflow, WorkflowEvent

T = TypeVar("T")

#: Colours of statuses on a terminal.
STATUS_STYLES = {
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "rejected": "yellow",
    "running": "cyan",
    "queued": "blue",
    "ok": "green",
    "fail": "bold red",
    "skip": "yellow",
}


#: Control characters (C0, DEL, C1), each written out as ``\xNN``: a terminal would obey them. Stored
#: text (a type id, an agent, a handler's error quoting its inputs) could otherwise retitle the window,
#: clear the screen, or forge a row of ``list`` with a newline.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
#: The same, keeping line breaks and tabs: for a traceback or an error message of several lines.
_CONTROLS_IN_LINES = {c: e for c, e in _CONTROLS.items() if chr(c) not in "\n\t"}


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with its control characters written out (but line breaks and tabs if ``lines``)."""
    return text.translate(_CONTROLS_IN_LINES if lines else _CONTROLS)


def is_tty() -> bool:
    """True when standard output is a terminal."""
    return sys.stdout.isatty()


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        # Every digit of the shortest repr, never an exponent: 3703703.67 (not 3.7037e+06), 1e-07 as
        # 0.0000001, 2.0 as 2, -0.0 as 0.
        text = format(Decimal(repr(value)).normalize(), "f")
        return "0" if text in ("-0", "0") else text
    return printable(str(value))


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    styled: Sequence[str] = ("status",),
    optional: Sequence[str] = (),
) -> None:
    """Print ``rows`` under ``columns``; columns named in ``styled`` are coloured by value on a TTY.
    An ``id`` or a ``status`` is never cut. On a terminal too narrow for them all, the ``optional``
    columns are left out, in that order, until the others fit (the last one wraps, at 16
    characters or more)."""
    cells = [[_cell(v) for v in row] for row in rows]
    if is_tty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        console = Console(soft_wrap=False, highlight=False)

        def wanted(names: Sequence[str]) -> int:
            widths = [max([len(n)] + [len(row[columns.index(n)]) for row in cells]) for n in names]
            widths[-1] = min(widths[-1], 16)  # the last column wraps
            return sum(widths) + 2 * (len(names) - 1)

        shown = list(columns)
        for name in optional:
            if wanted(shown) <= console.width:
                break
            shown.remove(name)
        keep = [columns.index(name) for name in shown]
        columns, cells = shown, [[row[i] for i in keep] for row in cells]
        if title:
            console.print(Text(title, style="bold"))
        from rich import box

        out = Table(
            header_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
        )
        for i, name in enumerate(columns):
            last = i == len(columns) - 1  # only the last column (an error, a detail) wraps
            # an id is never cut (it is what the next command needs), nor a status
            whole = max([len(name)] + [len(row[i]) for row in cells]) if name in ("id", "status") else None
            out.add_column(
                name,
                no_wrap=not last,
                overflow="fold" if last else "ellipsis",
                min_width=whole if whole is not None else (16 if last else None),
            )
        for row in cells:
            out.add_row(
                *(
                    Text(v, style=STATUS_STYLES.get(v, "")) if name in styled else Text(v)
                    for name, v in zip(columns, row, strict=True)
                )
            )
        console.print(out)
        return
    if title:
        click.echo(f"{title}:")
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def key_values(pairs: Sequence[tuple[str, Any]], *, title: str | None = None) -> None:
    """Print one ``key  value`` line per pair (a two-column table on a TTY)."""
    if is_tty():
        table(["field", "value"], pairs, title=title, styled=("value",))
        return
    if title:
        click.echo(f"{title}:")
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        click.echo(f"{key.ljust(width)}  {_cell(value)}")


def _status_line(status: str, name: str, detail: str) -> None:
    """One health-check line: ``ok``/``FAIL``/``skip``, the check, what was seen."""
    label = {"ok": "ok", "fail": "FAIL", "skip": "skip"}[status]
    detail = printable(detail)  # it may quote a server's error
    if is_tty():
        from rich.console import Console
        from rich.text import Text

        line = Text.assemble((f"{label:<5}", STATUS_STYLES[status]), f" {name:<13} {detail}")
        Console(soft_wrap=True, highlight=False).print(line)
        return
    click.echo(f"{label:<5} {name:<13} {detail}")


# -- the commands' human output ------------------------------------------------------
def workflows(rows: Sequence[Workflow]) -> None:
    """``list``: one row per workflow."""
    table(
        ["id", "type", "status", "attempts", "created (UTC)", "error"],
        [
            (
                wf.id,
                wf.workflow_type_id,
                wf.status.value,
                wf.attempts,
                f"{wf.created_at:%Y-%m-%d %H:%M:%S}",
                (wf.error or "")[:60],
            )
            for wf in rows
        ],
        optional=("created (UTC)", "attempts", "type"),  # on a narrow terminal, the error matters more
    )


def workflow(wf: Workflow, events: Sequence[WorkflowEvent]) -> None:
    """``show``: every field, the last traceback, then the event timeline."""
    key_values(
        [
            (key, json.dumps(value) if isinstance(value, (dict, list)) else value)
            for key, value in wf.to_dict().items()
            if key != "traceback"
        ]
    )
    if wf.traceback:
        click.echo("\ntraceback:\n" + printable(wf.traceback.rstrip(), lines=True))
    click.echo()
    table(
        ["at", "from", "to", "attempt", "detail"],
        [
            (
                ev.at.isoformat(timespec="milliseconds"),
                ev.from_status.value if ev.from_status else "-",
                ev.to_status.value,
                ev.attempt,
                ev.detail or "",
            )
            for ev in events
        ],
        title="events",
        styled=("to",),
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def stats(report: Stats) -> None:
    """``stats``: the present state, then counts by status and by type, then the savings."""
    age = report["oldest_queued_age_s"]
    depth = report["queue_depth"]
    key_values(
        [
            ("total", report["total"]),
            ("running", report["running"]),
            ("queue depth", "unknown (Redis is unreachable)" if depth is None else depth),
            ("oldest queued", "-" if age is None else f"{age:.1f} s"),
            ("throughput", f"{report['throughput_per_min']:g} finished/min over the last 15 min"),
        ]
    )
    click.echo()
    table(["status", "workflows"], list(report["by_status"].items()), title="by status")
    click.echo()
    table(
        ["type", "total", "completed", "failed", "success rate", "p50 s", "p95 s"],
        [
            (
                type_id,
                entry["total"],
                entry["by_status"]["completed"],
                entry["by_status"]["failed"],
                "-" if entry["success_rate"] is None else f"{entry['success_rate']:.1%}",
                _seconds(entry["duration_p50_s"]),
                _seconds(entry["duration_p95_s"]),
            )
            for type_id, entry in report["by_type"].items()
        ],
        title="by type",
    )
    if report["calculated_savings"]:
        click.echo()
        table(["field", "sum"], list(report["calculated_savings"].items()), title="calculated savings")


def health(report: HealthReport) -> None:
    """``health``: one line per check, then the verdict naming the failing checks."""
    for check in report.checks:
        _status_line(check.status, check.name, check.detail)
    click.echo("healthy" if report.healthy else f"UNHEALTHY: {', '.join(report.failing)}")


def progress(items: Sequence[T], what: str) -> Iterable[T]:
    """``items``, drawing a progress bar on stderr while they are iterated, when stderr is a terminal."""
    if not stderr_is_tty():
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, description=what, total=len(items), console=Console(stderr=True, force_terminal=True))
