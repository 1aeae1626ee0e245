"""Delivering one order's results to one result client: backlog first, then live, in n order.

Repetition n is sent only when every repetition before it is final (done, failed or refunded), so the
client's cursor — the highest n it acknowledged — never skips a result that is still on its way.
Results are read from the store a page at a time and sent in batches; the connection's `Window`
(as much as the client said it takes) bounds what is in flight, so the client writes one batch to
disk while the next ones travel. Acknowledgements are taken in n order: the cursor advances over
the acknowledged prefix only, so a client that dies mid-way gets the rest again, and each
acknowledged stretch is recorded as delivered, which starts its bodies' retention period.

When the order has an extraction or the client asked for changes, each page read is observed
before it is sent (`observe`, the watcher's `observe_batch`): one store read when the watcher
observed those results already, else one write of what it had not. Otherwise results go out
without waiting for the watcher, and their `extracted`/`changed` are null.

A delivery is woken by the notices on the results stream (a result stored, repetitions refunded,
the order ended; not the watcher's "observed", which a delivery that observes does itself). Per
result delivered live it reads the store twice (the repetitions, the result) and writes once
(delivered); it reads the order only when woken by something other than a result, or when its
cursor reached the repetitions the order had claimed. Its store calls are gathered with those of
the server's other deliveries (`gather`): at a busy minute one store call serves many orders.
When the result server's notice reader gets back to Valkey after an outage (notices may have been
lost meanwhile), it wakes every delivery. A delivery also looks again on its own every `SAFETY_POLL_SECONDS` (± 20 %, so
many idle deliveries do not poll the store in step), in case a notice was lost otherwise: that
costs at most that much delay. Each look is two store reads; measured with bench/e2e.py, polling
every 5 s took more CPU in the result server than delivering the results at 200 orders, and at
1,000 orders polling every 30 s made a quarter of its store reads.
"""

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from core.protocol.results import ResultMessage
from core.schemas import OrderStatus, RepetitionState
from core.storage import Acknowledged, Observation, Result
from results.server.gather import StoreCalls

log = logging.getLogger("crawlcoin.results")

FINAL = {RepetitionState.done, RepetitionState.failed, RepetitionState.refunded}
SendBatch = Callable[[list[Result], dict[int, Observation]], Awaitable[bool]]
"""Send results (with their observations by n, if observed) to the client; True once it acknowledged them all."""
ObserveBatch = Callable[[str, list[int], dict[int, Result]], Awaitable[dict[int, Observation]]]
"""The observations of settled repetitions (order id, their n, their results as read): `Watcher.observe_batch`."""
SAFETY_POLL_SECONDS = 120.0
FIRST_PAGE = 64
"""Repetitions read at once after being idle: the first batch goes out soon; the page doubles from there."""
MAX_PAGE = 1024
"""Most repetitions read from the store at once."""


def message(result: Result, obs: Observation | None = None) -> ResultMessage:
    return ResultMessage(key=result.job_key, order_id=result.order_id, n=result.n, miner_id=result.miner_id,
                         fetched_at=result.fetched_at, status=result.status, final_url=result.final_url,
                         headers=result.headers, body_size=result.body_size, truncated=result.truncated,
                         sha256=result.sha256, elapsed_ms=result.elapsed_ms, error=result.error,
                         error_text=result.error_text, body_pruned_at=result.body_pruned_at,
                         extracted=obs.value if obs else None, changed=obs.changed if obs and obs.valid else None,
                         previous_n=obs.previous_n if obs else None, diff=obs.diff if obs else None,
                         validation=result.validation.value)


class Window:
    """What one connection has in flight (results, compressed body bytes), within what its client takes.

    Shared by the deliveries of every order the client subscribed to. A batch is taken when it fits,
    or when nothing else is in flight (so one body larger than the window still goes, alone).
    """

    def __init__(self, results: int, nbytes: int) -> None:
        self.results, self.bytes = results, nbytes
        self._results = self._bytes = 0
        self._freed = asyncio.Event()

    @property
    def batch(self) -> tuple[int, int]:
        """The largest batch (results, bytes): half the window, so two are in flight."""
        return max(1, self.results // 2), max(1, self.bytes // 2)

    def _fits(self, count: int, size: int) -> bool:
        return self._results == 0 or (self._results + count <= self.results and self._bytes + size <= self.bytes)

    async def acquire(self, count: int, size: int) -> None:
        while not self._fits(count, size):
            self._freed.clear()
            await self._freed.wait()
        self._results += count
        self._bytes += size

    def release(self, count: int, size: int) -> None:
        self._results -= count
        self._bytes -= size
        self._freed.set()


class OrderDelivery:
    def __init__(self, calls: StoreCalls, token_id: str, order_id: str, cursor: int, send: SendBatch,
                 caught_up: Callable[[int, bool], Awaitable[None]], wake: asyncio.Event, window: Window,
                 observe: ObserveBatch | None = None) -> None:
        self.calls = calls  # the server's store calls, gathered across its deliveries
        self.token_id = token_id
        self.order_id = order_id
        self.cursor = cursor  # the highest n acknowledged (with every n before it)
        self.sent = cursor  # the highest n sent
        self.send = send
        self.caught_up = caught_up
        self.wake = wake
        self.window = window
        self.observe = observe  # None: results go out without what the watcher makes of them
        self._observations: dict[int, Observation] = {}  # of the repetitions `_ready` returned last
        self._page = FIRST_PAGE
        self._more = False  # whether the last page read was all ready: more may be settled after it
        # Batches sent and not yet taken, in n order: (n before the batch, last n, the call; None: nothing to send).
        self._acks: deque[tuple[int, int, asyncio.Task[bool] | None]] = deque()

    async def _ready(self) -> list[tuple[int, Result | None]]:
        """The next repetitions after those sent that may be delivered, in n order: (n, its result or None)."""
        ns = list(range(self.sent + 1, self.sent + 1 + self._page))
        reps = {r.n: r for r in await self.calls.repetitions_of(self.order_id, ns)}
        ready = []
        for n in ns:
            rep = reps.get(n)
            if rep is None or rep.state not in FINAL:
                break
            ready.append(n)
        self._more = len(ready) == len(ns)
        if not ready:
            return []
        results = {r.n: r for r in await self.calls.results_of(self.order_id, ready)}
        if results:  # twice as many next time, up to about a window's worth of bodies
            mean = max(1, sum(len(r.body_zlib) for r in results.values()) // len(results))
            self._page = max(1, min(2 * self._page, MAX_PAGE, self.window.results, self.window.bytes // mean))
        if self.observe is not None:  # the extracted value and the change go with each result: one store read per
            self._observations = await self.observe(self.order_id, ready, results)  # page when the watcher was first
        return [(n, results.get(n)) for n in ready]

    async def _send(self, ready: list[tuple[int, Result | None]]) -> None:
        most, most_bytes = self.window.batch
        batch: list[tuple[int, Result | None]] = []
        size = 0
        for n, result in ready:
            body = len(result.body_zlib) if result is not None else 0
            if batch and (len(batch) >= most or size + body > most_bytes):
                await self._send_batch(batch, size)
                batch, size = [], 0
            batch.append((n, result))
            size += body
        await self._send_batch(batch, size)

    async def _send_batch(self, batch: list[tuple[int, Result | None]], size: int) -> None:
        results = [r for _, r in batch if r is not None]  # refunded repetitions have none: nothing to send
        call = None
        if results:
            await self.window.acquire(len(results), size)
            observations = {r.n: self._observations[r.n] for r in results if r.n in self._observations}
            call = asyncio.create_task(self._call(results, observations, size))
        self._acks.append((self.sent, batch[-1][0], call))
        self.sent = batch[-1][0]
        await self._settle(wait=False)

    async def _call(self, results: list[Result], observations: dict[int, Observation], size: int) -> bool:
        try:
            return await self.send(results, observations)
        finally:
            self.window.release(len(results), size)

    async def _settle(self, wait: bool) -> None:
        """Take the acknowledgements in n order (all of them if `wait`) and record the stretch delivered."""
        after = last = self.cursor
        while self._acks and (wait or self._acks[0][2] is None or self._acks[0][2].done()):
            _, last, call = self._acks.popleft()
            if call is not None and not await call:
                raise ConnectionError("the result client did not acknowledge")
        if last > after:
            await self.calls.record_delivery(Acknowledged(token_id=self.token_id, order_id=self.order_id, after_n=after,
                                                          last_n=last, at=datetime.now(UTC)))
            self.cursor = last

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            for _, _, call in self._acks:
                if call is not None:
                    call.cancel()

    async def _run(self) -> None:
        told_caught_up = False
        claimed: int | None = None  # the order's runs_claimed when last read
        while True:
            self.wake.clear()
            ready = await self._ready()
            if ready:
                await self._send(ready)
                told_caught_up = False
                if self._more or self.wake.is_set():  # a full page, or a notice came meanwhile: look again
                    continue
                # Else the page stopped at a repetition not settled yet: its notice will wake us.
            await self._settle(wait=True)
            finished = False
            # The order cannot be finished while the cursor is below what it had claimed (results came in,
            # nothing else changed): read it only when woken by something else (a refund, the order ended) or
            # when the cursor reached its claimed repetitions.
            if not ready or claimed is None or self.cursor >= claimed:
                order = await self.calls.order(self.order_id)
                claimed = order.runs_claimed if order is not None else 0
                finished = order is None or (order.status in (OrderStatus.completed, OrderStatus.cancelled)
                                             and self.cursor >= order.runs_claimed)
            if finished or not told_caught_up:
                await self.caught_up(self.cursor, finished)
                told_caught_up = True
            if finished:
                return
            self._page = FIRST_PAGE
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=SAFETY_POLL_SECONDS * random.uniform(0.8, 1.2))
            except TimeoutError:
                pass  # a lost notice only costs this much delay
