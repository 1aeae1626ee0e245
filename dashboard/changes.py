"""An order's changes on the Results page (a timeline, and each change's diff side by side) and its export."""

import html
import re
from datetime import datetime, time, timedelta

import pandas as pd
import streamlit as st

from core.schemas import ChangeOut, OrderOut
from dashboard import format as fmt
from dashboard import ui

_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")
_REMOVED, _ADDED = "background:#fde2e1", "background:#d8f5dd"
_CELL = "padding:1px 8px;vertical-align:top;white-space:pre-wrap;word-break:break-word"
_NUMBER = "padding:1px 6px;vertical-align:top;color:#888;text-align:right;user-select:none"


def side_by_side(diff: str) -> pd.DataFrame:
    """A unified diff as rows of (line before, text before, line after, text after): removed lines beside the
    lines that replaced them, context on both sides, and a gap row between hunks."""
    rows: list[tuple[str, str, str, str]] = []
    removed: list[tuple[int, str]] = []
    added: list[tuple[int, str]] = []
    old = new = 0

    def flush() -> None:
        for i in range(max(len(removed), len(added))):
            left = removed[i] if i < len(removed) else None
            right = added[i] if i < len(added) else None
            rows.append((str(left[0]) if left else "", f"− {left[1]}" if left else "",
                         str(right[0]) if right else "", f"+ {right[1]}" if right else ""))
        removed.clear()
        added.clear()

    for line in diff.splitlines():
        if line.startswith(("--- ", "+++ ")) and not removed and not added and (old, new) == (0, 0):
            continue
        if hunk := _HUNK.match(line):
            flush()
            if rows:
                rows.append(("…", "", "…", ""))
            old, new = int(hunk[1]), int(hunk[2])
        elif line.startswith("-"):
            removed.append((old, line[1:]))
            old += 1
        elif line.startswith("+"):
            added.append((new, line[1:]))
            new += 1
        elif line.startswith(" "):
            flush()
            rows.append((str(old), f"  {line[1:]}", str(new), f"  {line[1:]}"))
            old, new = old + 1, new + 1
    flush()
    return pd.DataFrame(rows, columns=["#", "Before", "# ", "After"])


def as_html(frame: pd.DataFrame, before: str, after: str) -> str:
    """The side-by-side rows as an HTML table (every text escaped): removed lines red, added ones green."""
    head = (f"<tr><th style='{_NUMBER}'></th><th style='{_CELL};text-align:left'>{html.escape(before)}</th>"
            f"<th style='{_NUMBER}'></th><th style='{_CELL};text-align:left'>{html.escape(after)}</th></tr>")
    rows = []
    for old_n, old, new_n, new in frame.itertuples(index=False):
        left = _REMOVED if old.startswith("−") else ""
        right = _ADDED if new.startswith("+") else ""
        rows.append(f"<tr><td style='{_NUMBER}'>{html.escape(old_n)}</td><td style='{_CELL};{left}'>"
                    f"{html.escape(old)}</td><td style='{_NUMBER}'>{html.escape(new_n)}</td>"
                    f"<td style='{_CELL};{right}'>{html.escape(new)}</td></tr>")
    return ("<table style='width:100%;border-collapse:collapse;font-family:monospace;font-size:0.85rem;"
            f"table-layout:fixed'><colgroup><col style='width:3.5em'><col><col style='width:3.5em'><col>"
            f"</colgroup>{head}{''.join(rows)}</table>")


def timeline(order: OrderOut) -> None:
    """Every change of the order, newest first; the one picked is shown side by side and as a unified diff."""
    st.subheader("Changes")
    watched = (f"the {order.extraction.kind.upper()} `{order.extraction.selector}`" if order.extraction
               and order.extraction.selector else "the page's visible text" if order.extraction else "the whole page")
    with ui.reporting("The changes of this order could not be loaded:") as outcome:
        changes = ui.api().changes(order.id)
    if outcome.error:
        return
    if not changes:
        st.info(f"No change yet: every page so far shows the same as the one before in {watched}.")
        return
    tz = ui.viewer_timezone()
    st.caption(f"{len(changes):,} change(s) of {watched}, compared with the previous valid result (a page fetched "
               "without an error, status 2xx).")
    by_n = {c.n: c for c in reversed(changes)}
    st.dataframe(pd.DataFrame({"Repetition": [f"#{c.n:,}" for c in by_n.values()],
                               "Compared with": [f"#{c.previous_n:,}" for c in by_n.values()],
                               "Fetched": [fmt.when(c.fetched_at, tz) for c in by_n.values()],
                               "Now": [_first_line(c) for c in by_n.values()]}),
                 hide_index=True, width="stretch", key="changes_timeline")
    n = st.selectbox("Change", list(by_n), key=f"change_pick_{order.id}",
                     format_func=lambda i: f"#{i:,} (against #{by_n[i].previous_n:,}) · "
                                           f"{fmt.when(by_n[i].fetched_at, tz)}")
    _diff(by_n[n])


def _first_line(change: ChangeOut) -> str:
    if change.extracted is None:
        return "(whole page)"
    first = change.extracted.splitlines()[0] if change.extracted else "(nothing matched)"
    return first if len(first) <= 80 else first[:79] + "…"


def _diff(change: ChangeOut) -> None:
    if change.diff is None:
        st.info(f"Repetition #{change.n:,} differs from #{change.previous_n:,}, but the page is not text: "
                "download both to compare them.")
        return
    with st.container(key="change_side_by_side", border=True):
        st.html(as_html(side_by_side(change.diff), f"#{change.previous_n:,} (before)", f"#{change.n:,} (after)"))
    with st.expander("Unified diff"):
        st.code(change.diff, language="diff", wrap_lines=True)


EXPORTS = {"JSON Lines (metadata and extracted values)": "jsonl", "CSV (metadata and extracted values)": "csv",
           "ZIP of the pages": "zip"}
_MIME = {"jsonl": "application/x-ndjson", "csv": "text/csv", "zip": "application/zip"}


def export(order: OrderOut) -> None:
    """Download the order's results as a file, for all of its time or a range of days."""
    st.subheader("Export")
    kind_col, range_col = st.columns(2)
    kind = EXPORTS[kind_col.selectbox("Format", list(EXPORTS), key=f"export_format_{order.id}")]
    days = range_col.date_input("Fetched between (optional)", value=[], key=f"export_days_{order.id}",
                                help="Leave empty for every result; pick one day or a first and last day.")
    picked = list(days) if isinstance(days, tuple | list) else [days] if days else []
    tz = ui.viewer_timezone()
    since = until = None
    if picked:
        since = datetime.combine(picked[0], time(), tz).isoformat()
        until = datetime.combine(picked[-1] + timedelta(days=1), time(), tz).isoformat()
    api = ui.api()
    st.download_button("Download the export", data=lambda: api.export(order.id, kind, since, until),
                       file_name=f"{fmt.short_id(order.id)}-results.{kind}", mime=_MIME[kind], on_click="ignore",
                       key=f"export_{order.id}", icon=":material/download:")
    st.caption("Large exports are streamed by the API: `GET /orders/{id}/export?format=jsonl|csv|zip&since=…&until=…`.")
