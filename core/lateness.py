"""When an order runs late, decided in one place for the API, the dashboard and the operator's alerts.

An order is late while one of its repetitions is due more than `late_after_seconds` ago and not settled: no miner
took its job yet (miners gone, the queue behind) or the one that took it has not delivered. It is on time again once
every such repetition is delivered, refunded or failed. The API applies this to an order's repetitions when it
answers; the lateness check (`flows/lateness.py`) applies it to every open claim to alert the operator.
"""

from collections.abc import Iterable
from datetime import datetime, timedelta

from core.schemas import Lateness
from core.storage.records import Repetition
from core.storage.rules import OPEN


def lateness(reps: Iterable[Repetition], now: datetime, late_after_seconds: float) -> Lateness | None:
    """How late these repetitions of one order run at `now`; None when on time."""
    cutoff = now - timedelta(seconds=late_after_seconds)
    overdue = [r.due_at for r in reps if r.state in OPEN and r.due_at < cutoff]
    if not overdue:
        return None
    return Lateness(overdue=len(overdue), oldest_due_at=min(overdue), late_after_seconds=late_after_seconds)
