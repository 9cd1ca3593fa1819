"""``collector status``'s text: the report :func:`collector.status.collect` makes, as a terminal
shows it (a table of jobs, a line per stream, the accounts, the ledgers, the spool, the verdict).
Every value is escaped (:func:`collector.sanitize.text`): each line is one line, whatever the
database holds. ``--json`` prints the report itself."""

from __future__ import annotations

from typing import Any

from .sanitize import text
from .streamstatus import connection_text


def _short(iso: str | None) -> str:
    """``2024-05-01 12:00:00`` (UTC) from an ISO time; ``-`` for none."""
    return iso[:19].replace("T", " ") if iso else "-"


def _paging(job: dict[str, Any]) -> str:
    """`` (paging 600 of 10,000)`` while a history window is being paged."""
    if not job.get("paging"):
        return ""
    paged = job.get("paged")
    return f" (paging {paged['entries']:,} of {paged['of']:,})" if paged else " (paging)"


def _table(lines: list[tuple[str, ...]]) -> list[str]:
    """Rows as aligned columns, every value escaped (:func:`sanitize.text`)."""
    lines = [tuple(text(c) for c in row) for row in lines]
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines
    ]


def _streams(streams: list[dict[str, Any]]) -> list[str]:
    """A line per stream under its own header: its channel and pairs, its connection, the
    messages of its connections of the last day, its reconnects and gaps in the last day, its
    last batch and last data, its state."""
    header = (
        "stream",
        "channel",
        "pairs",
        "connection",
        "messages",
        "reconnects 24h",
        "gaps 24h",
        "last batch",
        "last data",
        "state",
    )
    lines: list[tuple[str, ...]] = [header]
    for s in streams:
        last = _short(s["last_batch"])
        if s["last_status"] not in (None, "ok"):
            last += f" {s['last_status']}"
        lines.append(
            (
                s["name"],
                s["channel"],
                s["pairs"],
                connection_text(s),
                f"{s['messages']:,}",
                str(s["reconnects_24h"]),
                str(s["gaps_24h"]),
                last,
                _short(s["last_data"]),
                s["state"],
            )
        )
    return _table(lines)


def render(report: dict[str, Any]) -> str:
    """The report as a table, then the spool, the oldest run kept and the verdict. Each line is
    one line whatever the database holds: every value is escaped (:func:`sanitize.text`)."""
    header = (
        "job",
        "method",
        "account",
        "last run",
        "status",
        "last success",
        "failures 24h",
        "rows",
        "newest",
        "cursor",
        "gaps",
        "state",
    )
    lines: list[tuple[str, ...]] = [header]
    for j in report["jobs"]:
        failures = ", ".join(f"{s} {n}" for s, n in sorted(j["failures_24h"].items())) or "-"
        lines.append(
            (
                j["name"],
                j["method"],
                j.get("account") or "-",
                _short(j["last_run"]),
                j["last_status"] or "-",
                _short(j["last_success"]),
                failures,
                "-" if j["rows"] is None else f"{j['rows']:,}",
                _short(j["newest"]),
                _short(j["cursor"]) + _paging(j),
                str(j["gaps"]),
                j["state"],
            )
        )
    # A file of streams alone has no jobs: no table of none.
    out = _table(lines) if report["jobs"] or not report.get("streams") else []
    for j in report["jobs"]:
        if j.get("progress") and j["state"] != "stale":  # a stale one says it in its problem
            out.append(f"job {j['name']}: {j['progress']}")
    if report.get("streams"):
        out.extend(_streams(report["streams"]))
    for a in report.get("accounts", []):
        counter = "-" if a["counter"] is None else f"{a['counter']:g} of {a['counter_max']:g}"
        line = f"account {a['name']}: key counter {counter}"
        if a["rate_limit_refusals_1h"]:
            line += (
                f"; Kraken refused it for the rate limit {a['rate_limit_refusals_1h']} times in "
                f"the last hour (last {_short(a['last_refusal'])}): is another program using it?"
            )
        out.append(text(line))
    for ledger in report.get("ledgers", []):
        who = f"ledger of account {text(ledger['account'])}"
        size = f"{ledger['assets']} assets, {ledger['entries']:,} entries"
        if ledger["verified"]:
            out.append(f"{who}: verified to {_short(ledger['verified_to'])} ({size})")
        else:
            n = ledger["breaks"]
            out.append(
                f"{who}: UNVERIFIED: {n} break{'s' if n > 1 else ''} recorded up to "
                f"{_short(ledger['verified_to'])} ({size}); collector verify shows them"
            )
    waiting = report["spool_waiting"]
    out.append(f"spool: {f'{waiting:,} runs waiting' if waiting else 'empty'}")
    out.append(f"oldest run kept: {_short(report['oldest_run'])} (times in UTC)")
    if report["healthy"]:
        out.append("healthy")
    else:
        out.extend(f"UNHEALTHY: {text(p)}" for p in report["problems"])
    return "\n".join(out)
