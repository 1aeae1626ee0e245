"""The result server's side of the `/results` namespace (`core.protocol.results`): result clients
subscribe to their orders' results."""

import asyncio
import logging
from typing import Any

import socketio
from anyio import to_thread
from pydantic import ValidationError

from core.errors import CrawlcoinError
from core.protocol.results import NAMESPACE, CaughtUp, ClientEvent, ResultMessage, ServerEvent, Subscribe, encode_result
from core.schemas import Scope
from core.storage import ApiToken, Store
from core.tokens import authenticate_api_token
from results.server.delivery import Observe, OrderDelivery

log = logging.getLogger("crawlcoin.results")


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


class ResultNamespace(socketio.AsyncNamespace):
    def __init__(self, store: Store, wakeups: Wakeups, window: int = 16, observe: Observe | None = None) -> None:
        super().__init__(NAMESPACE)
        self.store = store
        self.observe = observe
        self.wakeups = wakeups
        self.window = window
        self.tasks: dict[str, dict[str, asyncio.Task[None]]] = {}

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
        for order_id in sub.orders:
            if token.order_id is not None and token.order_id != order_id:
                return {"error": f"this token is limited to order {token.order_id}"}
            order = await to_thread.run_sync(self.store.get_order, order_id)
            if order is None or order.owner_id != token.owner_id:
                return {"error": f"order {order_id} not found"}
        started = {}
        for order_id, after in sub.orders.items():
            if after is None:
                after = await to_thread.run_sync(self.store.get_delivery_cursor, token.id, order_id)
            running = self.tasks.setdefault(sid, {}).pop(order_id, None)
            if running is not None:
                running.cancel()
            self.tasks[sid][order_id] = asyncio.create_task(self._deliver(sid, token, order_id, after))
            started[order_id] = after
        return {"ok": True, "orders": started}

    async def _deliver(self, sid: str, token: ApiToken, order_id: str, after: int) -> None:
        async def send(msg: ResultMessage, body: bytes) -> bool:
            ack = await self.call(ServerEvent.result, encode_result(msg, body), to=sid, timeout=120)
            return isinstance(ack, dict) and ack.get("ok") is True

        async def caught_up(cursor: int, finished: bool) -> None:
            caught = CaughtUp(order_id=order_id, cursor=cursor, finished=finished)
            await self.emit(ServerEvent.caught_up, caught.model_dump(), to=sid)

        wake = self.wakeups.register(order_id)
        try:
            await OrderDelivery(self.store, token.id, order_id, after, send, caught_up, wake, self.window,
                                self.observe).run()
        except (TimeoutError, ConnectionError, socketio.exceptions.SocketIOError) as e:
            log.info("delivery of order %s to %s stopped: %s", order_id, sid, e)
        finally:
            self.wakeups.unregister(order_id, wake)
