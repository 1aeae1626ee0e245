"""Jobs the store claimed but Valkey does not hold: found across all orders and queued again.

A dispatch claims repetitions in the store, then enqueues their jobs in Valkey, then confirms the
claim queued. The store keeps every claim with queued repetitions open until they are all final
(`Store.open_claims`), so a job can go missing only for as long as this pass takes to look:

- Valkey was down (or the worker died) between the claim and the enqueue: the claim was never
  confirmed. Its queued repetitions are enqueued again and the claim confirmed.
- Valkey lost writes when it crashed (AOF fsyncs every second): a confirmed job is neither in the
  due-set nor released (`JobQueue.held`). Once it is `GRACE` past due it is enqueued again.

Enqueueing is idempotent (a job queued or ever released is not added twice), so a job that is
merely slow is never doubled. Repetitions of a cancelled (or completed) order that Valkey does not
hold will never run: they are refunded and the result servers told, so deliveries move on. A
paused order is left alone: its claim stays open and is looked at again once it is resumed.

Every worker runs the pass every `INTERVAL_SECONDS`, and so does the reconcile flow. It holds the
Prefect sync lock, so it never enqueues a job that a pause or cancel is withdrawing at that moment.

Unconfirmed claims are looked at on every pass. Confirmed ones only on a *full sweep*: when Valkey
may have lost writes since the last one — the `SWEPT` key is gone (a restart without its data, a
flush) or names another server (`run_id`: a restart, or a failover to a replica) — and at least
every `SWEEP_SECONDS` whatever happens. Measured with bench/e2e.py at 1,000 orders, looking at
every open claim every 5 s (a read of the order and of its repetitions each) was the worker's
largest cost; now a pass without a full sweep reads only the open claims, and a full one reads
the open repetitions of all the claims it looks at in one go (`Store.open_repetitions`), their orders in
one store call and what Valkey holds of them in one pipeline.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from core.protocol.jobs import Job
from core.queue import JobQueue
from core.schemas import OrderStatus, RepetitionState
from core.storage import OpenClaim, Order, Repetition, Store
from flows.prefect_sync import LOCK_SECONDS, LOCK_WAIT_SECONDS, SYNC_LOCK, release

log = logging.getLogger("crawlcoin.requeue")

INTERVAL_SECONDS = 5.0
GRACE = timedelta(seconds=10)
"""How old a claim (and how late a job) must be before the pass looks: a dispatch enqueues well within it."""
BATCH = 1000
SWEEP_SECONDS = 60
SWEPT = "crawlcoin:requeue:swept"
"""The `run_id` of the Valkey server the last full sweep started on; expires after `SWEEP_SECONDS`."""


@dataclass
class Requeued:
    queued: int = 0
    refunded: int = 0
    closed: int = 0

    def summary(self) -> str:
        return f"requeued {self.queued} lost job(s), refunded {self.refunded}, closed {self.closed} settled claim(s)"

    def __bool__(self) -> bool:
        return bool(self.queued or self.refunded)


def jobs_of(order: Order, reps: list[Repetition]) -> list[Job]:
    return [Job(key=r.key, order_id=order.id, n=r.n, url=order.url, method=order.method, headers=order.headers,
                body=order.body, due_at=r.due_at) for r in reps]


async def requeue_lost(store: Store, queue: JobQueue, redis: Redis, now: datetime | None = None) -> Requeued:
    """One pass over the open claims (see the module docstring); nothing if another process is doing one."""
    lock = redis.lock(SYNC_LOCK, timeout=LOCK_SECONDS, blocking_timeout=LOCK_WAIT_SECONDS)
    if not await lock.acquire():
        return Requeued()
    try:
        now = now or datetime.now(UTC)
        done = Requeued()
        server = str((await redis.info("server")).get("run_id", ""))
        swept = await redis.get(SWEPT)
        full = swept is None or (swept.decode() if isinstance(swept, bytes) else str(swept)) != server
        # A confirmed claim is skipped unless Valkey may have lost something since the last full sweep.
        claims = [c for c in await asyncio.to_thread(store.open_claims, now - GRACE, BATCH) if full or not c.queued]
        if claims:
            # Read at once for all the claims: their repetitions, their orders, and which queued jobs Valkey holds.
            reps = await asyncio.to_thread(store.open_repetitions, claims)
            orders = {o.id: o for o in await asyncio.to_thread(store.get_orders, [c.order_id for c in claims])}
            waiting = [r.key for c in claims for r in reps[c.flow_run_id] if r.state is RepetitionState.queued]
            held = dict(zip(waiting, await queue.held(waiting), strict=True))
            extended = time.monotonic()
            for claim in claims:
                await _check(store, queue, claim, orders.get(claim.order_id), reps[claim.flow_run_id], held, now, done)
                if time.monotonic() - extended > LOCK_SECONDS / 3:
                    await lock.extend(LOCK_SECONDS, replace_ttl=True)
                    extended = time.monotonic()
        if full:  # the server it started on: one that changed meanwhile makes the next pass sweep again
            await redis.set(SWEPT, server, ex=SWEEP_SECONDS)
        return done
    finally:
        await release(lock, "requeue")


async def _check(store: Store, queue: JobQueue, claim: OpenClaim, order: Order | None, reps: list[Repetition],
                 held: dict[str, bool], now: datetime, done: Requeued) -> None:
    """`order`: the claim's order as read (None: gone); `reps`: the open repetitions the claim holds
    (`Store.open_repetitions`); `held`: whether Valkey holds each queued one (`JobQueue.held`)."""
    if order is None or not reps:
        await asyncio.to_thread(store.close_claim, claim.flow_run_id)
        done.closed += 1
        return
    waiting = [r for r in reps if r.state is RepetitionState.queued]
    if order.status is OrderStatus.paused:
        return
    if order.status is not OrderStatus.active:  # cancelled: what Valkey does not hold will never run
        lost = [r.n for r in waiting if not held[r.key]]
        coins = await asyncio.to_thread(store.refund_repetitions, order.id, lost) if lost else 0
        if coins:
            await queue.announce(order.id, RepetitionState.refunded.value)
            done.refunded += len(lost)
            log.info("order %s: refunded repetitions %s, claimed but never queued", order.id, lost)
        return
    if claim.queued:  # confirmed once: only what Valkey forgot since
        lost_reps = [r for r in waiting if not held[r.key] and r.due_at < now - GRACE]
    else:
        lost_reps = [r for r in waiting if not held[r.key]]
    added = await queue.enqueue(jobs_of(order, lost_reps)) if lost_reps else 0
    if not claim.queued:
        await asyncio.to_thread(store.confirm_queued, claim.flow_run_id)
    if added:
        done.queued += added
        log.info("order %s: queued again %d job(s) Valkey did not hold (%s)", order.id, added,
                 ", ".join(f"#{r.n}" for r in lost_reps))
