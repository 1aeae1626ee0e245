"""When an order's repetitions are due, and how its Prefect deployment is scheduled.

The store's counters are the truth: repetition n (1..max_runs) is due at the n-th slot of the
order's schedule at or after start_at (interval: start_at + (n-1)·every; cron: the n-th fire
time in the order's timezone). Prefect only decides *when a dispatch run looks ahead*: each
run claims every repetition due before `now + lead + period`, and the runs come `period`
apart, so one flow run covers several repetitions of a fast order.
"""

import math
import re
import zoneinfo
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from core.schemas import every
from core.storage import Order


def in_words(order: Order) -> str:
    """The customer's schedule in words, as the dashboard and the order's Prefect deployment show it."""
    how = every(order.every_seconds) if order.every_seconds else f"on cron `{order.cron}` ({order.timezone or 'UTC'})"
    runs = "once" if order.max_runs == 1 else f"{order.max_runs} times"
    return f"{how} from {order.start_at:%Y-%m-%d %H:%M:%S} UTC, {runs}"


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


CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 7))
_CRON_PART = re.compile(r"^(\*|[a-z]+|\d+)(?:-([a-z]+|\d+))?(?:/(\d+))?$", re.IGNORECASE)


def cron_problem(expr: str) -> str | None:
    """What is wrong with a five-field cron expression, naming the field and its range; None if it is valid."""
    fields = expr.split()
    if len(fields) != 5:
        return (f"cron must have five fields (minute hour day-of-month month day-of-week), not {len(fields)}: "
                f"{expr.strip()[:60]!r}")
    for text, (name, low, high) in zip(fields, CRON_FIELDS, strict=True):
        for part in text.split(","):
            m = _CRON_PART.match(part)
            if m is None:
                return f"cron field {name} ({text!r}) is not a number, range, list or step (e.g. 5, 1-5, */15)"
            for value in (m.group(1), m.group(2)):
                if value is not None and value.isdigit() and not low <= int(value) <= high:
                    return f"cron field {name} is {value}: it must be between {low} and {high}"
            if m.group(3) is not None and int(m.group(3)) == 0:
                return f"cron field {name} has a step of 0 ({text!r})"
    if not croniter.is_valid(expr):
        return f"cron expression {expr.strip()[:60]!r} is not valid (a name in the wrong field?)"
    return None


def next_fires(expr: str, timezone: str, after: datetime, count: int) -> list[datetime]:
    """The next `count` fire times of a valid cron expression (in `timezone`); fewer if it stops firing."""
    it = croniter(expr, after.astimezone(zoneinfo.ZoneInfo(timezone)))
    fires = []
    try:
        for _ in range(count):
            fires.append(it.get_next(datetime))
    except (CroniterBadCronError, CroniterBadDateError, ValueError):
        pass
    return fires
