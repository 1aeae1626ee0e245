"""The lateness check: tell the operator once when an order runs late, and once when it is on time again.

An order is late while a repetition of it is due more than `late_after_seconds` ago and not settled
(`core.lateness`, the same rule the API applies when it shows an order). Each pass reads the open claims
(`Store.open_claims`: every claim with a repetition not yet settled, across all orders), finds the late orders,
and compares them with the *episodes* it keeps in Valkey (one hash entry per order that is late or whose recovery
is not told yet):

- an order late now without an episode starts one, and the operator gets one alert through the alert channel
  (`alert_urls`, any apprise URL; without one, the worker's log only);
- an order with an episode that is no longer late (its own repetitions checked, not only the open claims read)
  ends it: one "on time again" notice, then the episode is deleted. The next lateness starts a new episode.

A notice is marked in the episode only after the channel accepted it, so a channel that is down is tried again on
the next pass, and a worker killed between sending and marking sends that one notice again (at least once, never
lost); an episode whose late alert never went out ends without a notice either way.

Every crawlcoin worker runs the check every `lateness_interval_seconds`, but a lease in Valkey makes it one pass
at a time across all of them: a pass holds the lease while it runs (extended before every notice, so a pass that
lost it stops before telling anyone twice) and keeps it for most of the interval after, so the workers together
run about one pass per interval, whichever of them is alive.
"""

import asyncio
import logging
import re
from collections import defaultdict
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import apprise
from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from core.errors import CrawlcoinError
from core.lateness import EPISODES, Episode, lateness
from core.metrics import LATENESS_NOTICES
from core.schemas import Lateness
from core.settings import Settings
from core.storage import Order, Repetition, Store

log = logging.getLogger("crawlcoin.lateness")

LEASE = "crawlcoin:lock:lateness"
LEASE_SECONDS = 60.0
"""How long a pass holds the lease before it must extend it (it does, after every order it reads or tells)."""
BATCH = 1000
"""Most open claims one pass reads, oldest first (the ones likeliest to be late)."""


@dataclass
class Checked:
    """What one pass did."""

    ran: bool = False
    late: int = 0
    alerted: int = 0
    recovered: int = 0

    def summary(self) -> str:
        return f"{self.late} order(s) late; {self.alerted} alert(s) and {self.recovered} recovery notice(s) sent"


class Alerts:
    """The operator's alert channel: apprise URLs (`alert_urls`); every notice is also logged."""

    def __init__(self, urls: str | None) -> None:
        self._apprise: apprise.Apprise | None = None
        entries = [u for u in re.split(r"[\s,]+", urls or "") if u]
        if not entries:
            return
        self._apprise = apprise.Apprise()
        apprise_log = logging.getLogger("apprise")
        for i, url in enumerate(entries, 1):
            level = apprise_log.level
            apprise_log.setLevel(logging.CRITICAL)  # apprise would log the whole URL, token included
            try:
                added = self._apprise.add(url)
            finally:
                apprise_log.setLevel(level)
            if not added:  # the URL may hold a token: name its scheme only
                what = f"{url.split('://', 1)[0]}://…" if "://" in url else "no scheme"
                raise CrawlcoinError(f"CRAWLCOIN_ALERT_URLS: entry {i} ({what}) is not a URL apprise can send to; "
                                     "see https://github.com/caronc/apprise/wiki for the formats")

    @property
    def configured(self) -> bool:
        return self._apprise is not None

    async def send(self, kind: str, title: str, body: str) -> bool:
        """Send one notice; True once the channel accepted it (or there is no channel but the log)."""
        log.warning("%s — %s", title, body)  # the log says it too (crawlcoin logs warnings and up)
        if self._apprise is None:
            return True
        notify_type = apprise.NotifyType.WARNING if kind == "late" else apprise.NotifyType.SUCCESS
        ok = bool(await self._apprise.async_notify(body=body, title=title, notify_type=notify_type))
        LATENESS_NOTICES.labels(kind=kind, outcome="sent" if ok else "failed").inc()
        if not ok:
            log.warning("the alert channel did not take the %s notice of %s; trying again on the next pass", kind,
                        title)
        return ok


def _utc(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def late_notice(ep: Episode, late_after_seconds: float, now: datetime) -> tuple[str, str]:
    waited = (now - ep.oldest_due_at).total_seconds()
    return (f"crawlcoin: order {ep.order_id} is late",
            f"{ep.overdue} repetition(s) of order {ep.order_id} ({ep.url}) are not delivered {late_after_seconds:g} s "
            f"after their due time; the oldest was due at {_utc(ep.oldest_due_at)} ({waited:.0f} s ago). "
            "Are miners online? `crawlcoin status` shows them.")


def recovered_notice(ep: Episode, late_after_seconds: float) -> tuple[str, str]:
    assert ep.recovered_at is not None
    lasted = (ep.recovered_at - ep.since).total_seconds()
    return (f"crawlcoin: order {ep.order_id} is on time again",
            f"Order {ep.order_id} ({ep.url}) is on time again: no repetition of it is more than "
            f"{late_after_seconds:g} s overdue. It was late from {_utc(ep.since)} to {_utc(ep.recovered_at)} "
            f"(about {lasted:.0f} s).")


async def late_orders(store: Store, now: datetime, late_after_seconds: float) -> dict[str, tuple[Order, Lateness]]:
    """The orders late at `now`, read from the open claims (at most `BATCH`, oldest first)."""
    reps: defaultdict[str, list[Repetition]] = defaultdict(list)
    claims = await asyncio.to_thread(store.open_claims, now, BATCH)
    overdue_before = now - timedelta(seconds=late_after_seconds)  # only these can make an order late
    held = await asyncio.to_thread(store.open_repetitions, claims, overdue_before) if claims else {}
    for claim in claims:  # one read for all the claims' repetitions, each claim's own rows only
        reps[claim.order_id] += held[claim.flow_run_id]
    late = {}
    for order_id, order_reps in reps.items():
        found = lateness(order_reps, now, late_after_seconds)
        if found is not None and (order := await asyncio.to_thread(store.get_order, order_id)) is not None:
            late[order_id] = (order, found)
    return late


async def order_lateness(store: Store, order_id: str, now: datetime, late_after_seconds: float) -> Lateness | None:
    """How late one order runs, from all its claimed repetitions (as the API shows it)."""
    order = await asyncio.to_thread(store.get_order, order_id)
    if order is None or not order.runs_claimed:
        return None
    reps = await asyncio.to_thread(store.get_repetitions, order_id, list(range(1, order.runs_claimed + 1)))
    return lateness(reps, now, late_after_seconds)


async def check_lateness(store: Store, redis: Redis, alerts: Alerts, settings: Settings,
                         now: datetime | None = None) -> Checked:
    """One pass (see the module docstring); nothing if another worker holds the lease."""
    lease = redis.lock(LEASE, timeout=LEASE_SECONDS, blocking=False)
    if not await lease.acquire():
        return Checked()
    try:
        checked = await _check(store, redis, alerts, settings.late_after_seconds, lease, now or datetime.now(UTC))
    except LockError:  # the pass outlived its lease and another one started: that one tells what is left
        log.warning("the lateness check lost its lease in Valkey mid-pass; the next pass finishes it")
        return Checked(ran=True)
    except BaseException:
        with suppress(Exception):  # Valkey may be what failed: the lease then runs out by itself
            await lease.release()
        raise
    with suppress(LockError):  # keep it for most of the interval: the next pass, in any worker, comes then
        await lease.extend(settings.lateness_interval_seconds * 0.8, replace_ttl=True)
    return checked


async def _check(store: Store, redis: Redis, alerts: Alerts, late_after_seconds: float, lease: Lock,
                 now: datetime) -> Checked:
    checked = Checked(ran=True)
    late = await late_orders(store, now, late_after_seconds)
    checked.late = len(late)
    episodes = {k.decode(): Episode.model_validate_json(v) for k, v in (await redis.hgetall(EPISODES)).items()}
    changed: dict[str, Episode] = {}
    for order_id, (order, found) in late.items():
        ep = episodes.get(order_id) or Episode(order_id=order_id, url=order.url, since=now, overdue=found.overdue,
                                               oldest_due_at=found.oldest_due_at)
        changed[order_id] = episodes[order_id] = ep.model_copy(
            update={"overdue": found.overdue, "oldest_due_at": found.oldest_due_at, "recovered_at": None})
    for order_id, ep in episodes.items():
        if order_id in late or ep.recovered_at is not None:
            continue
        await lease.extend(LEASE_SECONDS, replace_ttl=True)
        # Not among the open claims read: on time, unless it is late beyond the claims one pass reads.
        if (still := await order_lateness(store, order_id, now, late_after_seconds)) is not None:
            changed[order_id] = episodes[order_id] = ep.model_copy(
                update={"overdue": still.overdue, "oldest_due_at": still.oldest_due_at})
        else:
            changed[order_id] = episodes[order_id] = ep.model_copy(update={"recovered_at": now})
    if changed:
        await redis.hset(EPISODES, mapping={k: ep.model_dump_json() for k, ep in changed.items()})

    for order_id, ep in episodes.items():
        await lease.extend(LEASE_SECONDS, replace_ttl=True)  # raises if another pass took over: it tells them now
        if ep.recovered_at is None:
            if not ep.alerted and await alerts.send("late", *late_notice(ep, late_after_seconds, now)):
                await redis.hset(EPISODES, order_id, ep.model_copy(update={"alerted": True}).model_dump_json())
                checked.alerted += 1
        elif not ep.alerted:  # on time again before the late alert got through: nothing to take back
            log.warning("order %s was late from %s to %s; the alert channel never took the alert", order_id,
                        _utc(ep.since), _utc(ep.recovered_at))
            await redis.hdel(EPISODES, order_id)
        elif await alerts.send("recovered", *recovered_notice(ep, late_after_seconds)):
            await redis.hdel(EPISODES, order_id)
            checked.recovered += 1
    return checked
