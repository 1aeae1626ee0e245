"""Rules an order must satisfy before any coin moves: request shape, schedule, start date."""

import re
import zoneinfo
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from core import extraction, schedules
from core.errors import InvalidInput
from core.schemas import CronSchedule, IntervalSchedule, OrderCreate
from core.settings import Settings

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Hop-by-hop and framing headers are the fetcher's business, never the customer's.
FORBIDDEN_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
     "expect", "proxy-authorization", "proxy-connection"}
)


def check_headers(headers: dict[str, str], settings: Settings) -> dict[str, str]:
    if len(headers) > settings.max_headers:
        raise InvalidInput(f"at most {settings.max_headers} headers are allowed")
    seen: set[str] = set()
    total = 0
    for name, value in headers.items():
        lower = name.lower()
        if not _TOKEN.match(name):
            raise InvalidInput(f"header name {name[:40]!r} is not a valid HTTP header name")
        if lower in FORBIDDEN_HEADERS or lower.startswith("proxy-"):
            raise InvalidInput(f"header {name!r} is set by the fetcher and cannot be given")
        if lower in seen:
            raise InvalidInput(f"header {name!r} is given twice")
        if any((c < " " and c != "\t") or c == "\x7f" for c in value):
            raise InvalidInput(f"header {name!r} contains a line break, NUL or other control character")
        seen.add(lower)
        total += len(name.encode()) + len(value.encode())
    if total > settings.max_headers_bytes:
        raise InvalidInput(f"headers are larger than {settings.max_headers_bytes} bytes")
    return dict(headers)


def check_body(method: str, body: str | None, settings: Settings) -> str | None:
    if body is None:
        return None
    if method != "POST":
        raise InvalidInput("a request body is allowed only with method POST")
    if "\0" in body:
        raise InvalidInput("body must not contain NUL characters")
    if len(body.encode()) > settings.max_body_bytes:
        raise InvalidInput(f"body is larger than {settings.max_body_bytes} bytes")
    return body


def check_start(start_at: datetime | None, settings: Settings, now: datetime) -> datetime:
    if start_at is None:
        return now
    if start_at.tzinfo is None:
        raise InvalidInput("start_at needs a timezone, e.g. 2030-01-01T09:00:00Z")
    if start_at < now - timedelta(seconds=settings.start_at_grace_seconds):
        raise InvalidInput("start_at is in the past")
    if start_at > now + timedelta(days=settings.start_at_max_ahead_days):
        raise InvalidInput(f"start_at is more than {settings.start_at_max_ahead_days} days ahead")
    return start_at.astimezone(UTC)


def check_timezone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown timezone {name[:64]!r}; use an IANA name such as Europe/Berlin") from None


def check_schedule(schedule: IntervalSchedule | CronSchedule, start_at: datetime, settings: Settings) -> None:
    if isinstance(schedule, IntervalSchedule):
        if not settings.min_interval_seconds <= schedule.every_seconds <= settings.max_interval_seconds:
            raise InvalidInput(
                f"every_seconds must be between {settings.min_interval_seconds} and {settings.max_interval_seconds}"
            )
        return
    tz = check_timezone(schedule.timezone)
    problem = schedules.cron_problem(schedule.cron)
    if problem is not None:
        raise InvalidInput(problem)
    try:
        croniter(schedule.cron, start_at.astimezone(tz)).get_next(datetime)
    except (CroniterBadCronError, CroniterBadDateError, ValueError):
        raise InvalidInput("this cron expression never fires") from None


def check_order(req: OrderCreate, settings: Settings, now: datetime) -> datetime:
    """Validate everything about a new order but its URL; return its start time in UTC."""
    if req.max_runs > settings.max_runs_cap:
        raise InvalidInput(f"max_runs must be at most {settings.max_runs_cap}")
    check_headers(req.headers, settings)
    check_body(req.method, req.body, settings)
    start_at = check_start(req.start_at, settings, now)
    check_schedule(req.schedule, start_at, settings)
    if req.extraction is not None:
        extraction.check(req.extraction)
    return start_at
