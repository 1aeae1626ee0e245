"""How the dashboard words things: coins, times, schedules, waits, and the client commands."""

import shlex
from datetime import UTC, datetime, tzinfo
from http import HTTPStatus
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.schemas import CronSchedule, IntervalSchedule, Lateness, OrderOut, ResultOut, every

LEDGER_KINDS = {
    "faucet": "Test coins",
    "hold": "Order placed (held in escrow)",
    "refund": "Refund",
    "reward": "Mining reward",
}

FETCH_ERRORS = {
    "invalid_url": "Invalid URL",
    "invalid_request": "Request not sendable",
    "refused_target": "Target refused by policy",
    "robots_disallowed": "Disallowed by robots.txt",
    "dns_error": "DNS lookup failed",
    "connection_error": "Connection failed",
    "tls_error": "TLS error",
    "timeout": "Timed out",
    "too_many_redirects": "Too many redirects",
    "http_error": "Malformed HTTP response",
}

BadgeColor = Literal["green", "orange", "blue", "gray"]
STATUS_COLORS: dict[str, BadgeColor] = {"active": "green", "paused": "orange", "completed": "blue", "cancelled": "gray"}

_UNITS = (("day", 86400), ("h", 3600), ("min", 60), ("s", 1))


def coins(n: int) -> str:
    return f"{n:,} coin" if abs(n) == 1 else f"{n:,} coins"


def signed_coins(n: int) -> str:
    return f"+{n:,}" if n > 0 else f"{n:,}"


def timezone_of(name: str | None) -> tzinfo:
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def when(dt: datetime | None, tz: tzinfo = UTC) -> str:
    """An absolute time in the viewer's timezone, e.g. '2030-01-01 09:00 CET'."""
    if dt is None:
        return "—"
    local = dt.astimezone(tz)
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or "")


def duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '2 h 5 min', '3 days'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    parts: list[str] = []
    for name, size in _UNITS:
        value, seconds = divmod(seconds, size)
        if value:
            parts.append(f"{value} {name}s" if name == "day" and value != 1 else f"{value} {name}")
        if len(parts) == 2:
            break
    return " ".join(parts)


def relative(dt: datetime | None, now: datetime | None = None) -> str:
    if dt is None:
        return ""
    delta = (dt - (now or datetime.now(UTC))).total_seconds()
    if delta >= 1:
        return f"in {duration(delta)}"
    return "due now" if delta > -60 else f"due {duration(-delta)} ago"


def late_text(late: Lateness, now: datetime | None = None) -> str:
    """What the order card says while an order runs late."""
    waited = ((now or datetime.now(UTC)) - late.oldest_due_at).total_seconds()
    reps = "repetition is" if late.overdue == 1 else "repetitions are"
    return (f"Running late: {late.overdue:,} {reps} not delivered {duration(late.late_after_seconds)} after "
            f"their due time (the oldest has waited {duration(waited)}). The marketplace's operator is alerted, and "
            "they are fetched as soon as a miner takes them.")


def schedule_text(schedule: IntervalSchedule | CronSchedule) -> str:
    if isinstance(schedule, IntervalSchedule):
        return every(schedule.every_seconds)
    return f"cron `{schedule.cron}` ({schedule.timezone})"


def order_title(order: OrderOut) -> str:
    return f"{order.method} {order.url}"


def short_id(order_id: str) -> str:
    return order_id.split("-")[0]


def mine_command(server: str, token: str, private_targets: bool = False) -> str:
    return shlex.join(["crawlcoin", "mine", "--server", server, "--token", token]
                      + (["--allow-private-targets"] if private_targets else []))


def results_command(server: str, token: str, order_id: str, out_dir: str) -> str:
    return shlex.join(["crawlcoin", "results", "--server", server, "--token", token, "--order", order_id,
                       "--out", out_dir])


def latency(seconds: float | None) -> str:
    """A delivery or fetch time: '850 ms', '2.4 s', '3 min 20 s'."""
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    return duration(seconds)


def size(n: int) -> str:
    if n < 1024:
        return f"{n:,} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / 1024 / 1024:.1f} MB"


def http_status(code: int) -> str:
    """'200 OK', '404 Not Found'; the bare number for codes without a standard phrase."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def result_status(result: ResultOut) -> str:
    """The HTTP status a repetition got, or why it got no page."""
    if result.error:
        return FETCH_ERRORS.get(result.error, result.error.replace("_", " ").capitalize())
    if result.status is None:
        return "No answer"
    return http_status(result.status)


def result_ok(result: ResultOut) -> bool:
    return not result.error and result.status is not None and result.status < 400


# The repetition states as the API names them (`OrderOut.repetitions`), in the dashboard's words.
TO_COME = {"fetching": "being fetched", "queued": "queued for a miner", "waiting": "queued ahead of time",
           "scheduled": "scheduled"}
SETTLED = {"delivered": "delivered", "refunded": "refunded", "failed": "failed"}


def repetition_parts(counts: dict[str, int], words: dict[str, str]) -> str:
    """`1 queued for a miner · 25 scheduled`: the non-zero states among `words`."""
    return " · ".join(f"{counts[k]:,} {w}" for k, w in words.items() if counts.get(k)) or "none"
