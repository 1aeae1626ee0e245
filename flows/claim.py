"""Claiming an order's repetitions due soon and queueing their jobs: what a dispatch run does, and
what the sync pass does at once for a new (or resumed) order, before its deployment exists."""

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from core import schedules
from core.errors import NotFound
from core.protocol.jobs import Job
from core.queue import JobQueue
from core.schemas import OrderStatus, RepetitionState
from core.settings import Settings
from core.storage import Order, Store

RECHECK_MAX = 1000  # most recent claims looked at again per run
RECHECK_CRON = 50


@dataclass
class Dispatched:
    order_id: str
    queued: list[int]
    refunded: list[int]
    newly_queued: int
    replay: bool
    status: OrderStatus

    def summary(self) -> str:
        def span(ns: list[int]) -> str:
            return "none" if not ns else (f"#{ns[0]}" if len(ns) == 1 else f"#{ns[0]}–#{ns[-1]}")

        text = f"queued {span(self.queued)}"
        if self.refunded:
            text += f", refunded missed {span(self.refunded)}"
        if self.replay:
            text += " (replayed claim)"
        return text + f"; order {self.status.value}"


async def dispatch_order(
    store: Store, queue: JobQueue, settings: Settings, order_id: str, flow_run_id: str, now: datetime | None = None,
    window_seconds: int | None = None, order: Order | None = None,
) -> Dispatched:
    """Claim the order's repetitions due before the next dispatch run (plus lead) and queue them.

    `window_seconds` claims a shorter window than the order's dispatch period (an activation)."""
    now = now or datetime.now(UTC)
    order = order or await asyncio.to_thread(store.get_order, order_id)
    if order is None:
        raise NotFound(f"order {order_id} not found")
    period = schedules.dispatch_period_seconds(order, settings.dispatch_window_seconds)
    start = now + timedelta(seconds=settings.dispatch_lead_seconds)
    if window_seconds is None and order.next_due_at is not None and order.next_due_at > start:
        start = order.next_due_at  # a run started early (spread, see `first_run_at`) claims one period all the same
    horizon = start + timedelta(seconds=min(period, window_seconds or period))
    # A run that died between claiming and queueing (worker killed) left repetitions claimed but
    # never queued: queue again whatever the last runs claimed that is still waiting. Enqueueing
    # is idempotent (a job queued or ever released is not added again), so this is always safe.
    per_run = period // order.every_seconds if order.every_seconds else RECHECK_CRON
    recent = list(range(max(1, order.runs_claimed - min(2 * per_run, RECHECK_MAX) + 1), order.runs_claimed + 1))
    stale = [r for r in await asyncio.to_thread(store.get_repetitions, order_id, recent)
             if r.state is RepetitionState.queued] if recent else []
    claim = await asyncio.to_thread(store.claim_repetitions, order_id, flow_run_id, horizon, now,
                                    settings.catchup_seconds)
    o = claim.order
    jobs = [Job(key=r.key, order_id=o.id, n=r.n, url=o.url, method=o.method, headers=o.headers, body=o.body,
                due_at=r.due_at) for r in stale + claim.queued]
    added = await queue.enqueue(jobs)
    if claim.queued:  # until confirmed, the requeue pass (flows/requeue.py) enqueues them again
        await asyncio.to_thread(store.confirm_queued, flow_run_id)
    if claim.refunded:  # final without a result: deliveries waiting on them may move on
        await queue.announce(o.id, RepetitionState.refunded.value)
    return Dispatched(order_id, [r.n for r in claim.queued], [r.n for r in claim.refunded], added, claim.replay,
                      o.status)
