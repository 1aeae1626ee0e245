"""The watcher: reads the result-notice stream through a consumer group and observes the orders it names.

Every result server runs one. A notice (a result stored, repetitions refunded, an order ended) is
read by one watcher of the group, which observes that order as far as it is settled (the orders of a
batch of notices together: `observer.observe_orders`), then acknowledges the notice; a watcher that
dies leaves its notices pending, and another takes them over after `RECLAIM_IDLE_MS`. When an
order's cursor moved, the watcher adds an `observed` notice, so the deliveries of that order on
every result server wake up (those that observe do so on their own too, a batch at a time, and
never wait for the watcher).

A delivery's observing of one order is serialised within a process (a lock per order); the
watcher's batch is not, and across processes nothing is: observing twice is safe (see `observer`).
"""

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from core.outage import VALKEY_DOWN, outage
from core.protocol.notices import NOTICES_MAXLEN, NOTICES_STREAM, ResultNotice
from core.storage import Observation, Result, Store, WatchCursor
from results.watch.observer import observe_orders, observe_ready

log = logging.getLogger("crawlcoin.watch")

GROUP = "watch"
OBSERVED = "observed"
"""Outcome of the notice a watcher adds when it observed more of an order (the watchers skip those)."""
RECLAIM_IDLE_MS = 60_000
ORDERS_AT_ONCE = 100
"""Orders observed in one batch: enough to make a busy minute a few store calls, few enough that the first
notifications go out while the rest are observed."""
PASS_SPACING_SECONDS = 0.5
"""A pass starts at most this long after the previous one started. Results trickle in from many orders, one
each; observed at once, each would cost a pass of seven store calls. Spaced, the notices of this long are one
pass (the first notice after a quiet spell is observed at once). What waits is the watcher's observations
(webhooks, and deliveries that observe do so themselves meanwhile), never a result's delivery."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Watcher:
    def __init__(self, store: Store, redis: Redis, on_observed: Callable[[], None] | None = None) -> None:
        self.store = store
        self.redis = redis
        self.on_observed = on_observed or (lambda: None)
        """Called when an order was observed further (the webhook sender looks for new deliveries)."""
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_pass = float("-inf")  # when the last pass started (event loop time)

    async def observe(self, order_ids: list[str]) -> dict[str, tuple[WatchCursor, WatchCursor]]:
        """Observe the orders as far as they are settled, all at once (`observer.observe_orders`): per order, the
        cursor before and the one reached. Not under the orders' locks: a delivery observing one of them meanwhile
        writes the same observations, and the store keeps the first."""
        return await asyncio.to_thread(observe_orders, self.store, order_ids)

    async def observe_batch(self, order_id: str, ns: list[int], results: dict[int, Result]) -> dict[int, Observation]:
        """A delivery's batch observed (`observer.observe_ready`): one store read when the watcher got there first."""
        lock = self._locks.setdefault(order_id, asyncio.Lock())
        try:
            async with lock:
                found = await asyncio.to_thread(observe_ready, self.store, order_id, ns, results)
            self.on_observed()
            return found
        finally:
            if not lock.locked() and self._locks.get(order_id) is lock:
                del self._locks[order_id]

    async def _ensure_group(self) -> None:
        try:
            # From the start of the stream: results stored before any watcher ran are observed too.
            await self.redis.xgroup_create(NOTICES_STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _read(self, block_ms: int | None) -> list[tuple[str, ResultNotice | None]]:
        """Notices new to the group and those another watcher left pending too long; `block_ms` None: what is
        there now."""
        try:
            reply = await self.redis.xreadgroup(GROUP, self.consumer, {NOTICES_STREAM: ">"}, count=500,
                                                block=block_ms)
            claimed = await self.redis.xautoclaim(NOTICES_STREAM, GROUP, self.consumer, RECLAIM_IDLE_MS, "0-0",
                                                  count=500)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self._ensure_group()  # the stream was deleted (e.g. FLUSHDB): start again
            return []
        entries = [e for _, es in reply or [] for e in es] + [e for e in claimed[1] if e[0] is not None]
        return [(_text(i), ResultNotice.decode(f) if f else None) for i, f in entries]

    async def run_once(self, block_ms: int = 2000) -> int:
        """Read a batch of notices, observe the orders they name, acknowledge them; how many were read."""
        entries = await self._read(block_ms)
        loop = asyncio.get_running_loop()
        if entries and (wait := self._last_pass + PASS_SPACING_SECONDS - loop.time()) > 0:
            await asyncio.sleep(wait)  # gather the notices of the spacing into this pass
            entries += await self._read(None)
        self._last_pass = loop.time()
        orders = list(dict.fromkeys(n.order_id for _, n in entries if n is not None and n.outcome != OBSERVED))
        failed: set[str] = set()
        moved: list[ResultNotice] = []
        for some in (orders[i:i + ORDERS_AT_ONCE] for i in range(0, len(orders), ORDERS_AT_ONCE)):
            try:
                observed = await self.observe(some)
            except Exception as e:  # the store is down: leave these notices pending for a later try
                outage("the store").failed(e, f"observing {len(some)} orders")
                failed.update(some)
                continue
            for order_id, (before, cursor) in observed.items():
                if cursor.last_n > before.last_n:
                    moved.append(ResultNotice(order_id=order_id, n=cursor.last_n, outcome=OBSERVED))
            if moved:
                self.on_observed()  # the webhook sender starts on these while the next orders are observed
        done = [i for i, n in entries if n is None or n.order_id not in failed]
        if done or moved:
            pipe = self.redis.pipeline(transaction=False)
            for notice in moved:
                pipe.xadd(NOTICES_STREAM, notice.encode(), maxlen=NOTICES_MAXLEN, approximate=True)
            if done:
                pipe.xack(NOTICES_STREAM, GROUP, *done)
            await pipe.execute()
        return len(entries)

    async def run(self, stopping: asyncio.Event) -> None:
        await self._ensure_group()
        while not stopping.is_set():
            try:
                await self.run_once()
                outage("Valkey").ok()
            except VALKEY_DOWN as e:  # Valkey restarting: deliveries still observe on their own meanwhile
                outage("Valkey").failed(e, "watching results")
                await asyncio.sleep(1)
            except Exception:
                log.exception("watching results failed; trying again in 1 s")
                await asyncio.sleep(1)
