"""The table issue 12 asks for, in the terminal and as Markdown.

Per fault: time to recover, sends failed, lost, duplicated, gaps, out-of-order,
undelivered without notice. One row builder, two renderings (a terminal table and
Markdown for docs/chaos.md).

Example:
    >>> from tools.chaos.checker import check
    >>> from tools.chaos.recording import Recording, Window
    >>> rec = Recording("dev", ["us-east"], "us-east", [], windows=[Window(0, "baseline", "baseline", 0, 0, 5)])
    >>> print(markdown(rec, check(rec)).splitlines()[0][:40])
    | # | fault | who restarted | recover wr
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tools.chaos.checker import Counts, Report, WindowReport
from tools.chaos.recording import Recording

__all__ = ["HEADERS", "markdown", "print_table", "rows"]

HEADERS = (
    "#",
    "fault",
    "who restarted",
    "recover write (s)",
    "recover delivery (s)",
    "mirror behind (s)",
    "sends",
    "failed",
    "lost hist",
    "lost live",
    "dup",
    "gaps (seqs)",
    "out-of-order",
    "undelivered w/o notice",
    "w/ notice",
)


def _seconds(values: dict[str, float | None], regions: list[str]) -> str:
    parts = []
    for region in regions:
        v = values.get(region)
        parts.append(f"{region} {'-' if v is None else f'{v:.1f}'}")
    return " · ".join(parts)


def _who(wr: WindowReport) -> str:
    notes = wr.window.notes
    if "error" in notes:
        return f"ERROR: {notes['error'][:60]}"
    by = notes.get("restarted_by")
    if by is None:
        back = notes.get("back_after_s")
        return f"back {back}s" if back is not None else ""
    after = notes.get("down_s", notes.get("back_after_s"))
    return f"{by} ({after}s)"


def _counts(c: Counts) -> list[str]:
    return [
        str(c.sends),
        str(c.failed),
        str(c.lost_history),
        str(c.lost_stream),
        str(c.duplicated),
        f"{c.gaps} ({c.gap_seqs})",
        str(c.out_of_order),
        str(c.undelivered_without_notice),
        str(c.undelivered_with_notice),
    ]


def rows(rec: Recording, report: Report) -> list[list[str]]:
    """The table's rows: one per window, then the total."""
    out = []
    for wr in report.windows:
        out.append(
            [
                str(wr.window.index + 1),
                wr.window.name,
                _who(wr),
                _seconds(wr.recover_write, rec.regions),
                _seconds(wr.recover_delivery, rec.regions),
                _seconds(wr.mirror_behind, [r for r in rec.regions if r != rec.primary]),
                *_counts(wr.counts),
            ]
        )
    out.append(["", "total", "", "", "", "", *_counts(report.total)])
    return out


def markdown(rec: Recording, report: Report) -> str:
    """The table as Markdown."""
    lines = [
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join("---" for _ in HEADERS) + "|",
    ]
    for row in rows(rec, report):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def print_table(console: Console, rec: Recording, report: Report) -> None:
    """Prints the table, the verdict and the first findings."""
    table = Table(title=f"chaos: {rec.topology} ({rec.params.get('stores', '')} stores)")
    for h in HEADERS:
        table.add_column(h, overflow="fold")
    for row in rows(rec, report):
        table.add_row(*row)
    console.print(table)
    t = report.total
    verdict = "[green]CLEAN[/green]" if report.clean else "[red]NOT CLEAN[/red]"
    console.print(
        f"{verdict}: lost {t.lost} (history {t.lost_history}, streams {t.lost_stream}; "
        f"without notice {t.undelivered_without_notice}), duplicated {t.duplicated}, "
        f"out-of-order {t.out_of_order}, gaps {t.gaps} ({t.gap_seqs} seqs), "
        f"sends failed {t.failed} of {t.sends} ({t.failed_but_stored} stored anyway)"
    )
    for line in report.examples[:15]:
        console.print(f"  {line}")
