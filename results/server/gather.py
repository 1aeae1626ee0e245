"""The store calls of all the deliveries of one result server, gathered.

A result server runs a delivery per order and client: at a marketplace's minute, a thousand of them
wake within seconds, one result each, and each would read the store three times and write once on
its own. Here each kind of call (read the orders, the repetitions, the results; record what clients
acknowledged) is one store call for all the deliveries that made it while the previous one ran
(`core.gathered`).
"""

from collections import defaultdict

from core.gathered import Gathered
from core.storage import Acknowledged, Order, Repetition, Result, Store, job_key


class StoreCalls:
    """The store calls deliveries make, gathered across orders: each one store call for all its callers."""

    def __init__(self, store: Store) -> None:
        def repetitions(keys: list[tuple[str, int]]) -> dict[tuple[str, int], Repetition]:
            wanted: dict[str, list[int]] = defaultdict(list)
            for order_id, n in keys:
                wanted[order_id].append(n)
            # Only the settled: a delivery reads a page ahead and stops at the first unsettled one, and at a
            # marketplace's trickle the page holds one settled repetition among a window's claimed ones.
            return {(r.order_id, r.n): r for r in store.get_repetitions_of(wanted, settled_only=True)}

        def results(keys: list[tuple[str, int]]) -> dict[tuple[str, int], Result]:
            return {(r.order_id, r.n): r for r in store.get_results([job_key(o, n) for o, n in keys])}

        def record(acknowledged: list[Acknowledged]) -> dict[Acknowledged, bool]:
            store.record_deliveries(acknowledged)
            return dict.fromkeys(acknowledged, True)

        self.orders: Gathered[str, Order] = Gathered(lambda ids: {o.id: o for o in store.get_orders(ids)})
        self.repetitions: Gathered[tuple[str, int], Repetition] = Gathered(repetitions)
        self.results: Gathered[tuple[str, int], Result] = Gathered(results)
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
