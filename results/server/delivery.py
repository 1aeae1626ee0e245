"""Delivering one order's results to one result client: backlog first, then live, in n order.

Repetition n is sent only when every repetition before it is final (done, failed or
refunded), so the client's cursor — the highest n it acknowledged — never skips a result
that is still on its way. Up to `window` results are in flight at once; the cursor advances
over the acknowledged prefix only, so a client that dies mid-way gets the rest again.

A delivery is woken by the notices on the results stream (a result stored, repetitions refunded,
the order ended). It also looks again on its own every `SAFETY_POLL_SECONDS` (± 20 %, so many
idle deliveries do not poll the store in step) in case a notice was lost, e.g. while Valkey
restarted: a lost notice costs at most that much delay. Measured with bench/e2e.py at 200 orders,
polling every 5 s took more CPU in the result server than delivering the results.
"""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from anyio import to_thread

from core.protocol.results import ResultMessage
from core.schemas import OrderStatus, RepetitionState
from core.storage import Observation, Result, Store, WatchCursor

log = logging.getLogger("crawlcoin.results")

FINAL = {RepetitionState.done, RepetitionState.failed, RepetitionState.refunded}
Send = Callable[[ResultMessage, bytes], Awaitable[bool]]
Observe = Callable[[str, int], Awaitable[WatchCursor]]
SAFETY_POLL_SECONDS = 30.0


def message(result: Result, obs: Observation | None = None) -> ResultMessage:
    return ResultMessage(key=result.job_key, order_id=result.order_id, n=result.n, miner_id=result.miner_id,
                         fetched_at=result.fetched_at, status=result.status, final_url=result.final_url,
                         headers=result.headers, body_size=result.body_size, truncated=result.truncated,
                         sha256=result.sha256, elapsed_ms=result.elapsed_ms, error=result.error,
                         error_text=result.error_text, extracted=obs.value if obs else None,
                         changed=obs.changed if obs and obs.valid else None,
                         previous_n=obs.previous_n if obs else None, diff=obs.diff if obs else None)


class OrderDelivery:
    def __init__(self, store: Store, token_id: str, order_id: str, cursor: int, send: Send,
                 caught_up: Callable[[int, bool], Awaitable[None]], wake: asyncio.Event, window: int = 16,
                 observe: Observe | None = None) -> None:
        self.store = store
        self.token_id = token_id
        self.order_id = order_id
        self.cursor = cursor
        self.send = send
        self.caught_up = caught_up
        self.wake = wake
        self.window = window
        self.observe = observe
        self._observations: dict[int, Observation] = {}

    async def _ready(self) -> list[tuple[int, Result | None]]:
        """The next repetitions that may be delivered, in n order: (n, its result or None)."""
        ns = list(range(self.cursor + 1, self.cursor + 1 + 4 * self.window))
        reps = {r.n: r for r in await to_thread.run_sync(self.store.get_repetitions, self.order_id, ns)}
        ready = []
        for n in ns:
            rep = reps.get(n)
            if rep is None or rep.state not in FINAL:
                break
            ready.append(n)
        if ready and self.observe is not None:  # the watcher's extraction and change go with each result
            watched = await self.observe(self.order_id, ready[-1])
            ready = [n for n in ready if n <= watched.last_n]
            self._observations = {o.n: o for o in await to_thread.run_sync(
                self.store.list_observations, self.order_id, self.cursor, len(ns))}
        if not ready:
            return []
        results = {r.n: r for r in await to_thread.run_sync(self.store.list_results, self.order_id, self.cursor,
                                                              len(ns))}
        return [(n, results.get(n)) for n in ready]

    async def _deliver(self, batch: list[tuple[int, Result | None]]) -> None:
        for start in range(0, len(batch), self.window):
            chunk = batch[start:start + self.window]
            sends = [self.send(message(r, self._observations.get(n)), r.body) for n, r in chunk if r is not None]
            acks = await asyncio.gather(*sends)
            if not all(acks):
                raise ConnectionError("the result client did not acknowledge")
            self.cursor = chunk[-1][0]
            await to_thread.run_sync(self.store.advance_delivery_cursor, self.token_id, self.order_id, self.cursor)

    async def run(self) -> None:
        told_caught_up = False
        while True:
            self.wake.clear()
            batch = await self._ready()
            if batch:
                await self._deliver(batch)
                told_caught_up = False
                continue
            order = await to_thread.run_sync(self.store.get_order, self.order_id)
            finished = order is None or (order.status in (OrderStatus.completed, OrderStatus.cancelled)
                                         and self.cursor >= order.runs_claimed)
            if finished or not told_caught_up:
                await self.caught_up(self.cursor, finished)
                told_caught_up = True
            if finished:
                return
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=SAFETY_POLL_SECONDS * random.uniform(0.8, 1.2))
            except TimeoutError:
                pass  # a lost notice only costs this much delay
