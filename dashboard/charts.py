"""The dashboard's charts (Altair, which Streamlit ships with)."""

from collections.abc import Sequence
from datetime import datetime

import altair as alt
import pandas as pd


def steps(times: Sequence[datetime], values: Sequence[int], title: str) -> alt.Chart:
    """A value that changes at instants and holds in between (a balance, a running total)."""
    frame = pd.DataFrame({"time": pd.to_datetime(list(times), utc=True), "value": list(values)})
    return (
        alt.Chart(frame, height=260)
        .mark_line(interpolate="step-after", point=True)
        .encode(
            x=alt.X("time:T", title=None),
            y=alt.Y("value:Q", title=title),
            tooltip=[alt.Tooltip("time:T", title="When", format="%Y-%m-%d %H:%M:%S"),
                     alt.Tooltip("value:Q", title=title)],
        )
    )


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
