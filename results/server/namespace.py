"""The result server's side of the `/results` namespace (`core.protocol.results`): result clients
subscribe to their orders' results."""

import asyncio
import logging
from typing import Any

import socketio
from anyio import to_thread
from pydantic import ValidationError

from core import metrics
from core.errors import CrawlcoinError
from core.outage import outage
from core.protocol.results import (
    NAMESPACE,
    CaughtUp,
    ClientEvent,
    ServerEvent,
    Subscribe,
    encode_batch,
    encode_result,
)
from core.schemas import Scope
from core.storage import ApiToken, Observation, Result, Store
from core.tokens import authenticate_api_token
from results.server.delivery import ObserveBatch, OrderDelivery, Window, message
from results.server.gather import StoreCalls

log = logging.getLogger("crawlcoin.results")
MAX_WINDOW_BYTES = 64 * 1024 * 1024
"""The most compressed body bytes in flight to one connection, whatever its client takes."""
LEGACY_WINDOW = 32
"""Results in flight to a client that subscribed without a window (one `result` call each, 16 at a time)."""
ACK_SECONDS = 120
STORE_RETRY_SECONDS = 1.0
"""After a store call of a delivery failed, it starts again this much later, from what its client acknowledged."""


class Wakeups:
    """asyncio events per order, set when the notification stream reports a new result."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}

    def register(self, order_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(order_id, set()).add(event)
        return event

    def unregister(self, order_id: str, event: asyncio.Event) -> None:
        events = self._events.get(order_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[order_id]

    def wake(self, order_id: str) -> None:
        for event in self._events.get(order_id, ()):
            event.set()

    def wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()


class ResultNamespace(socketio.AsyncNamespace):
    def __init__(self, store: Store, wakeups: Wakeups, observe: ObserveBatch | None = None) -> None:
        super().__init__(NAMESPACE)
        self.store = store
        self.observe = observe
        self.wakeups = wakeups
        self.calls = StoreCalls(store)
        self.tasks: dict[str, dict[str, asyncio.Task[None]]] = {}
        self.windows: dict[str, tuple[Window, bool]] = {}  # per connection: its window, whether it takes batches

    async def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        raw = auth.get("token") if isinstance(auth, dict) else None
        try:
            token = await to_thread.run_sync(authenticate_api_token, self.store, raw, Scope.results)
        except CrawlcoinError as e:
            raise socketio.exceptions.ConnectionRefusedError(e.message) from None
        await self.save_session(sid, {"token": token})
        self.tasks[sid] = {}

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        for task in self.tasks.pop(sid, {}).values():
            task.cancel()
        self.windows.pop(sid, None)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event == ClientEvent.subscribe:
            return await self._subscribe(*args)
        return await super().trigger_event(event, *args)  # connect, disconnect

    async def _subscribe(self, sid: str, data: Any) -> dict[str, Any]:
        try:
            sub = Subscribe.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            return {"error": f"invalid subscription: {'.'.join(map(str, first['loc']))}: {first['msg']}"}
        token: ApiToken = (await self.get_session(sid))["token"]
        observing: dict[str, bool] = {}  # per order: observe before sending (an extraction, or changes asked for)
        if token.order_id is not None and any(order_id != token.order_id for order_id in sub.orders):
            return {"error": f"this token is limited to order {token.order_id}"}
        orders = {o.id: o for o in await to_thread.run_sync(self.store.get_orders, list(sub.orders))}
        for order_id in sub.orders:
            order = orders.get(order_id)
            if order is None or order.owner_id != token.owner_id:
                return {"error": f"order {order_id} not found"}
            observing[order_id] = sub.changes or order.extraction is not None
        if sid not in self.windows:  # the connection's first subscription says how much its client takes
            self.windows[sid] = ((Window(sub.window.results, min(sub.window.bytes, MAX_WINDOW_BYTES)), True)
                                 if sub.window else (Window(LEGACY_WINDOW, MAX_WINDOW_BYTES), False))
        started = {}
        for order_id, after in sub.orders.items():
            if after is None:
                after = await to_thread.run_sync(self.store.get_delivery_cursor, token.id, order_id)
            running = self.tasks.setdefault(sid, {}).pop(order_id, None)
            if running is not None:
                running.cancel()
            self.tasks[sid][order_id] = asyncio.create_task(self._deliver(sid, token, order_id, after,
                                                                         observing[order_id]))
            started[order_id] = after
        return {"ok": True, "orders": started}

    async def _deliver(self, sid: str, token: ApiToken, order_id: str, after: int, observing: bool) -> None:
        window, batches = self.windows[sid]

        async def send_batch(results: list[Result], observations: dict[int, Observation]) -> bool:
            payload = encode_batch([(message(r, observations.get(r.n)), r.body_zlib) for r in results])
            return _delivered(results, await self.call(ServerEvent.results, payload, to=sid, timeout=ACK_SECONDS))

        async def send_each(results: list[Result], observations: dict[int, Observation]) -> bool:
            acks = await asyncio.gather(*(self.call(ServerEvent.result, encode_result(message(r, observations.get(r.n)),
                                                                                      r.body), to=sid,
                                                    timeout=ACK_SECONDS) for r in results))
            return _delivered(results, *acks)

        async def caught_up(cursor: int, finished: bool) -> None:
            caught = CaughtUp(order_id=order_id, cursor=cursor, finished=finished)
            await self.emit(ServerEvent.caught_up, caught.model_dump(), to=sid)

        wake = self.wakeups.register(order_id)
        try:
            while True:
                delivery = OrderDelivery(self.calls, token.id, order_id, after, send_batch if batches else send_each,
                                         caught_up, wake, window, self.observe if observing else None)
                try:
                    await delivery.run()
                    return
                except (TimeoutError, ConnectionError, socketio.exceptions.SocketIOError) as e:
                    log.info("delivery of order %s to %s stopped: %s", order_id, sid, e)
                    return
                except Exception as e:  # the store failed (a gathered call fails for each of its callers)
                    outage("the store").failed(e, "delivering results")
                    after = delivery.cursor  # again from what the client acknowledged; it skips what it has
                    await asyncio.sleep(STORE_RETRY_SECONDS)
        finally:
            self.wakeups.unregister(order_id, wake)


def _acknowledged(ack: Any) -> bool:
    return isinstance(ack, dict) and ack.get("ok") is True


def _delivered(results: list[Result], *acks: Any) -> bool:
    """Whether the client acknowledged every result sent (counted delivered if so)."""
    if not all(map(_acknowledged, acks)):
        return False
    metrics.RESULTS_DELIVERED.inc(len(results))
    return True
