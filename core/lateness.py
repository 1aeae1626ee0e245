"""When an order runs late, decided in one place for the API, the dashboard and the operator's alerts.

An order is late while one of its repetitions is due more than `late_after_seconds` ago and not settled: no miner
took its job yet (miners gone, the queue behind) or the one that took it has not delivered. It is on time again once
every such repetition is delivered, refunded or failed. The API applies this to an order's repetitions when it
answers; the lateness check (`flows/lateness.py`) applies it to every open claim to alert the operator, and keeps
each order's late episode in Valkey (`EPISODES`), which the API's metrics count.
"""

from collections.abc import Iterable
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from core.schemas import Lateness
from core.storage.records import Repetition
from core.storage.rules import OPEN

EPISODES = "crawlcoin:lateness:episodes"
"""Valkey hash: order id → `Episode` (JSON), for every order in a late episode."""


class Episode(BaseModel):
    """One order running late, from the pass that found it late until the operator is told it is on time again."""

    order_id: str
    url: str
    since: datetime = Field(description="When a pass first found the order late.")
    overdue: int = Field(description="Repetitions overdue at the latest pass that found it late.")
    oldest_due_at: datetime
    alerted: bool = Field(default=False, description="The alert channel accepted the late alert.")
    recovered_at: datetime | None = Field(default=None, description="When a pass found it on time again.")


def lateness(reps: Iterable[Repetition], now: datetime, late_after_seconds: float) -> Lateness | None:
    """How late these repetitions of one order run at `now`; None when on time."""
    cutoff = now - timedelta(seconds=late_after_seconds)
    overdue = [r.due_at for r in reps if r.state in OPEN and r.due_at < cutoff]
    if not overdue:
        return None
    return Lateness(overdue=len(overdue), oldest_due_at=min(overdue), late_after_seconds=late_after_seconds)
