"""The diagnosis as terminal text: the sections of the guide, biggest holders first.

Every line goes through `escaping.terminal` as it is written out, and every table cell before
the columns are measured: a name or query text can neither drive the terminal nor start a line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exporter.diagnose.analysis import (
    Report,
    format_bytes,
    format_seconds,
    holder_cells,
    session_cells,
)
from exporter.escaping import terminal

# Rows shown per list; the rest are counted ("... and 12 more"). JSON has them all.
MAX_ROWS = 20


def render_text(report: Report, target: str, max_rows: int = MAX_ROWS) -> str:
    out: list[str] = []
    server, slots = report.server, report.slots
    out.append(
        f"pg-connections-exporter diagnose: {target} (PostgreSQL {server['version']}, "
        f"as {server['role']}, {server['role_class']})"
    )
    out.append("")
    out.append("== Slots ==")
    utilization = slots["utilization"]
    out.append(
        f"used {slots['used']} of max_connections {slots['max_connections']}"
        f" (this session included), free {slots['free']}"
        + (f", utilization {utilization:.0%}" if utilization is not None else "")
    )
    reserved = slots["reserved_connections"]
    out.append(
        f"superuser_reserved_connections {slots['superuser_reserved_connections']}"
        + (f", reserved_connections {reserved}" if reserved is not None else "")
    )
    out.append(
        "who may still get in: "
        + "; ".join(f"{row['who']}: {row['slots']}" for row in slots["may_get_in"])
    )
    if slots["other_backends"]:
        out.append(
            "other backends (not in max_connections): "
            + ", ".join(f"{k} {v}" for k, v in sorted(slots["other_backends"].items()))
        )
    if slots["hidden"]:
        out.append(f"hidden sessions (state not visible to {server['role']}): {slots['hidden']}")
    for kind in ("databases", "roles"):
        rows = report.limits[kind]
        if rows:
            out.append(
                f"{kind[:-1]} limits: "
                + ", ".join(f"{r['name']} {r['used']}/{r['limit']}" for r in rows)
            )

    out.append("")
    out.append("== Holders (user, application, database), biggest first ==")
    out += _table(
        ["sessions", "user", "application", "database", "states", "longest in state"],
        [holder_cells(r) for r in report.holders],
        max_rows,
    )
    for name, title in (
        ("state", "By state"),
        ("application", "By application"),
        ("user", "By user"),
        ("client", "By client address"),
        ("database", "By database"),
    ):
        rows = report.breakdowns[name]
        out.append("")
        out.append(f"== {title} ==")
        out += _table([name, "sessions"], [[r["key"] or "-", r["count"]] for r in rows], max_rows)

    out.append("")
    out.append("== Long-running queries ==")
    out += _sessions(report.long_running, "query_seconds", "running", max_rows)
    out.append("")
    out.append("== Idle in transaction (and what they block) ==")
    out += _sessions(report.idle_in_transaction, "xact_seconds", "in transaction", max_rows)
    if report.lock_waits:
        out.append("")
        out.append("== Waiting on locks ==")
        out += _sessions(report.lock_waits, "state_seconds", "waiting", max_rows)

    candidates = report.candidates
    criteria = candidates["criteria"]
    out.append("")
    out.append(
        f"== Termination candidates: {', '.join(criteria['states'])} for "
        f"{format_seconds(criteria['idle_seconds'])} or more"
        + "".join(
            f", {label} {', '.join(criteria[key])}"
            for key, label in (
                ("applications", "application"),
                ("users", "user"),
                ("databases", "database"),
            )
            if criteria[key]
        )
        + " =="
    )
    if candidates["sessions"]:
        out += _table(
            ["sessions", "user", "application", "database", "states"],
            [
                [
                    r["count"],
                    r["user"],
                    r["application"] or "-",
                    r["database"],
                    ", ".join(f"{k} {v}" for k, v in r["states"].items()),
                ]
                for r in candidates["by_holder"]
            ],
            max_rows,
        )
        out += _sessions(candidates["sessions"], "state_seconds", "in state", max_rows)
        out.append("")
        out.append("To end them (each is re-checked when it runs), or run again with --terminate:")
        out += candidates["statement"].split("\n")  # pids and the operator's criteria only
    else:
        out.append("(none)")

    out.append("")
    out.append("== Settings ==")
    for s in report.settings:
        out.append(f"{s['name']} = {s['shown']}")
    memory = report.memory
    out.append(
        f"max_connections x 10 MB = {format_bytes(memory['connection_overhead_bytes'])} of "
        "connection overhead (guide: must fit in RAM)"
    )
    out.append(
        f"RAM the guide's work_mem formula implies: shared_buffers + 3 x max_connections x "
        f"work_mem = {format_bytes(memory['ram_implied_by_work_mem_bytes'])}"
    )
    if memory.get("ram_bytes"):
        out.append(
            f"with RAM {format_bytes(memory['ram_bytes'])}: shared_buffers "
            f"{format_bytes(memory['guide_shared_buffers_bytes'])}, work_mem "
            f"{format_bytes(memory['guide_work_mem_bytes'] or 0)}, max_connections at most "
            f"{memory['guide_max_connections_ceiling']}"
        )

    out.append("")
    out.append("== Recommendations (guide section) ==")
    if not report.recommendations:
        out.append("(nothing stands out)")
    for rec in report.recommendations:
        out.append(f"- [{rec['section']}] {rec['text']}")
    return "".join(terminal(line) + "\n" for line in out)


def _sessions(rows: Sequence[dict[str, Any]], age: str, age_title: str, max_rows: int) -> list[str]:
    if not rows:
        return ["(none)"]
    with_query = any(r["query"] is not None for r in rows)
    header = ["pid", "user", "application", "client", "state", age_title, "blocks", "blocked by"]
    if with_query:
        header.append("query")
    table = []
    for r in rows:
        row = session_cells(r, age)
        if with_query:
            row.append(" ".join((r["query"] or "").split())[:80])
        table.append(row)
    return _table(header, table, max_rows)


def _table(header: list[str], rows: list[list[Any]], max_rows: int) -> list[str]:
    if not rows:
        return ["(none)"]
    shown = [[terminal(c) for c in row] for row in rows[:max_rows]]
    widths = [max(len(h), *(len(row[i]) for row in shown)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in shown
    ]
    if len(rows) > max_rows:
        lines.append(f"... and {len(rows) - max_rows} more")
    return lines
