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
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from core.protocol.jobs import Job
from core.queue import JobQueue
from core.schemas import OrderStatus, RepetitionState
from core.storage import OpenClaim, Order, Repetition, Store
from core.storage.rules import OPEN
from flows.prefect_sync import LOCK_SECONDS, LOCK_WAIT_SECONDS, SYNC_LOCK

log = logging.getLogger("crawlcoin.requeue")

INTERVAL_SECONDS = 5.0
GRACE = timedelta(seconds=10)
"""How old a claim (and how late a job) must be before the pass looks: a dispatch enqueues well within it."""
BATCH = 1000


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
        for claim in await asyncio.to_thread(store.open_claims, now - GRACE, BATCH):
            await _check(store, queue, claim, now, done)
            await lock.extend(LOCK_SECONDS, replace_ttl=True)
        return done
    finally:
        await lock.release()


async def _check(store: Store, queue: JobQueue, claim: OpenClaim, now: datetime, done: Requeued) -> None:
    order = await asyncio.to_thread(store.get_order, claim.order_id)
    ns = list(range(claim.first_n, claim.last_n + 1))
    # rows of this claim only: after an unclaim, a later claim may hold the same n
    reps = [r for r in await asyncio.to_thread(store.get_repetitions, claim.order_id, ns)
            if r.flow_run_id == claim.flow_run_id]
    if order is None or not any(r.state in OPEN for r in reps):
        await asyncio.to_thread(store.close_claim, claim.flow_run_id)
        done.closed += 1
        return
    waiting = [r for r in reps if r.state is RepetitionState.queued]
    if order.status is OrderStatus.paused:
        return
    held = dict(zip([r.key for r in waiting], await queue.held([r.key for r in waiting]), strict=True))
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
