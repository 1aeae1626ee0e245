"""The store calls of all the deliveries of one result server, gathered.

A result server runs a delivery per order and client: at a marketplace's minute, a thousand of them
wake within seconds, one result each, and each would read the store three times and write once on
its own. Here each kind of call (read the orders, the repetitions, the results; record what clients
acknowledged) is one store call for every delivery that made it: the first caller's goes at once,
alone; what others ask for while it runs goes together in the next call. An idle server calls the
store as soon as asked; a busy one makes fewer, larger calls, the more so the busier it is. A call
that fails fails for each of its callers alike.
"""

import asyncio
from collections import defaultdict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from anyio import to_thread

from core.storage import Acknowledged, Order, Repetition, Result, Store, job_key

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Gathered(Generic[K, V]):
    """One bulk call (keys → what exists of them), shared by the coroutines that ask while it runs."""

    def __init__(self, read: Callable[[list[K]], dict[K, V]]) -> None:
        self._read = read
        self._asked: list[tuple[list[K], asyncio.Future[dict[K, V]]]] = []
        self._reading: asyncio.Task[None] | None = None

    async def get(self, keys: list[K]) -> dict[K, V]:
        """What exists of `keys`."""
        answer: asyncio.Future[dict[K, V]] = asyncio.get_running_loop().create_future()
        self._asked.append((keys, answer))
        if self._reading is None:
            self._reading = asyncio.create_task(self._read_asked())
        return await answer

    async def _read_asked(self) -> None:
        try:
            while self._asked:
                asked, self._asked = self._asked, []
                keys = list(dict.fromkeys(k for some, _ in asked for k in some))
                try:
                    found = await to_thread.run_sync(self._read, keys)
                except Exception as e:
                    for _, answer in asked:
                        if not answer.done():
                            answer.set_exception(e)
                    continue
                for some, answer in asked:
                    if not answer.done():  # an asker cancelled meanwhile has none
                        answer.set_result({k: found[k] for k in some if k in found})
        finally:
            self._reading = None


class StoreCalls:
    """The store calls deliveries make, gathered across orders: each one store call for all its callers."""

    def __init__(self, store: Store) -> None:
        def repetitions(keys: list[tuple[str, int]]) -> dict[tuple[str, int], Repetition]:
            wanted: dict[str, list[int]] = defaultdict(list)
            for order_id, n in keys:
                wanted[order_id].append(n)
            return {(r.order_id, r.n): r for r in store.get_repetitions_of(wanted)}

        def results(keys: list[tuple[str, int]]) -> dict[tuple[str, int], Result]:
            return {(r.order_id, r.n): r for r in store.get_results([job_key(o, n) for o, n in keys])}

        self.orders: Gathered[str, Order] = Gathered(lambda ids: {o.id: o for o in store.get_orders(ids)})
        self.repetitions: Gathered[tuple[str, int], Repetition] = Gathered(repetitions)
        self.results: Gathered[tuple[str, int], Result] = Gathered(results)

        def record(acknowledged: list[Acknowledged]) -> dict[Acknowledged, bool]:
            store.record_deliveries(acknowledged)
            return dict.fromkeys(acknowledged, True)

        self.deliveries: Gathered[Acknowledged, bool] = Gathered(record)

    async def order(self, order_id: str) -> Order | None:
        return (await self.orders.get([order_id])).get(order_id)

    async def repetitions_of(self, order_id: str, ns: list[int]) -> list[Repetition]:
        found = await self.repetitions.get([(order_id, n) for n in ns])
        return [found[order_id, n] for n in ns if (order_id, n) in found]

    async def results_of(self, order_id: str, ns: list[int]) -> list[Result]:
        found = await self.results.get([(order_id, n) for n in ns])
        return [found[order_id, n] for n in ns if (order_id, n) in found]

    async def record_delivery(self, acknowledged: Acknowledged) -> None:
        await self.deliveries.get([acknowledged])
