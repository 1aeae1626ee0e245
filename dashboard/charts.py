"""The dashboard's charts (Altair, which Streamlit ships with)."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import altair as alt
import pandas as pd


def steps(times: Sequence[datetime], values: Sequence[int], title: str, until: datetime | None = None) -> alt.Chart:
    """A value that changes at instants and holds in between (a balance, a running total), drawn up to
    `until` (default: now) so the last level shows as a line, not a dot."""
    until = until or datetime.now(UTC)
    stamps = [*times, max(until, times[-1])]
    frame = pd.DataFrame({"time": pd.to_datetime(stamps, utc=True), "value": [*values, values[-1]]})
    start, end = _padded(stamps[0], stamps[-1])
    return (
        alt.Chart(frame, height=260)
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("time:T", title=None, scale=alt.Scale(domain=[start.isoformat(), end.isoformat()]),
                    axis=alt.Axis(format=_time_format(end - start), labelOverlap=True, tickCount=6)),
            y=alt.Y("value:Q", title=title),
            tooltip=[alt.Tooltip("time:T", title="When", format="%Y-%m-%d %H:%M:%S"),
                     alt.Tooltip("value:Q", title=title)],
        )
    )


def _padded(first: datetime, last: datetime) -> tuple[datetime, datetime]:
    """The data's time range with a margin, so that moments seconds apart stay apart."""
    pad = max((last - first) * 0.05, timedelta(seconds=15))
    return first - pad, last + pad


def _time_format(span: timedelta) -> str:
    if span <= timedelta(minutes=10):
        return "%H:%M:%S"
    if span <= timedelta(days=1):
        return "%H:%M"
    if span <= timedelta(days=60):
        return "%b %d"
    return "%Y-%m"


def daily_totals(times: Sequence[datetime], amounts: Sequence[int], title: str) -> alt.Chart:
    """Sum of amounts per calendar day (UTC), as bars."""
    frame = pd.DataFrame({"time": pd.to_datetime(list(times), utc=True), "amount": list(amounts)})
    frame["day"] = frame["time"].dt.floor("D")
    per_day = frame.groupby("day", as_index=False)["amount"].sum()
    return (
        alt.Chart(per_day, height=220)
        .mark_bar()
        .encode(
            x=alt.X("day:T", title=None, timeUnit="yearmonthdate"),
            y=alt.Y("amount:Q", title=title),
            tooltip=[alt.Tooltip("day:T", title="Day", format="%Y-%m-%d"), alt.Tooltip("amount:Q", title=title)],
        )
    )
