"""When an order's repetitions are due, and how its Prefect deployment is scheduled.

The store's counters are the truth: repetition n (1..max_runs) is due at the n-th slot of the
order's schedule at or after start_at (interval: start_at + (n-1)·every; cron: the n-th fire
time in the order's timezone). Prefect only decides *when a dispatch run looks ahead*: each
run claims every repetition due before `now + lead + period`, and the runs come `period`
apart, so one flow run covers several repetitions of a fast order.
"""

import math
import zoneinfo
from datetime import UTC, datetime, timedelta

from croniter import croniter

from core.storage import Order


def _cron_next(order: Order, after: datetime) -> datetime:
    tz = zoneinfo.ZoneInfo(order.timezone or "UTC")
    nxt = croniter(order.cron, after.astimezone(tz)).get_next(datetime)
    return nxt.astimezone(UTC)


def first_due(order: Order) -> datetime:
    """Due time of repetition 1."""
    if order.schedule_kind == "interval":
        return order.start_at
    return _cron_next(order, order.start_at - timedelta(microseconds=1))


def next_due(order: Order, previous: datetime) -> datetime:
    """Due time of the repetition after one due at `previous`."""
    if order.schedule_kind == "interval":
        return previous + timedelta(seconds=order.every_seconds or 0)
    return _cron_next(order, previous)


def first_due_at_or_after(order: Order, moment: datetime) -> datetime:
    """The first slot of the schedule at or after `moment` (for resuming a paused order)."""
    start = first_due(order)
    if moment <= start:
        return start
    if order.schedule_kind == "interval":
        every = order.every_seconds or 1
        steps = math.ceil((moment - order.start_at).total_seconds() / every)
        return order.start_at + timedelta(seconds=steps * every)
    return _cron_next(order, moment - timedelta(microseconds=1))


def dispatch_period_seconds(order: Order, window_seconds: int) -> int:
    """Seconds between two dispatch runs of the order: whole intervals covering the window."""
    if order.schedule_kind == "interval":
        every = order.every_seconds or 1
        return every * max(1, math.ceil(window_seconds / every))
    return window_seconds
