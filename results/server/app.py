"""The result server as an ASGI app: Socket.IO (websocket transport only) plus `/health` and `/metrics`.

Mining servers announce every stored result on the result-notice stream (`core.protocol.notices`);
each result server reads it (every server reads every notice: they are tiny) and wakes the
deliveries of that order it holds. The store is the source of every result, so a result server
keeps no state a restart could lose: the client resumes from its cursor on any server.

Each result server also deletes, every `result_prune_interval_seconds`, the bodies of results
delivered longer than `result_body_retention_seconds` ago (`Store.prune_result_bodies`: safe from
several servers at once); the rest of each result stays. And each one runs the watcher
(`results.watch`) and a webhook sender, which share the work with the other servers' through the
store.
"""

import asyncio
import json
import logging
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import socketio
from redis.asyncio import Redis

from core import metrics
from core.outage import outage
from core.protocol.notices import NOTICES_STREAM, ResultNotice
from core.settings import Settings
from core.storage import Store, open_store
from core.valkey import valkey
from results.server.namespace import ResultNamespace, Wakeups
from results.watch.consumer import OBSERVED, Watcher
from results.watch.webhooks import WebhookSender

log = logging.getLogger("crawlcoin.results")
_FRAME_OVERHEAD = 64 * 1024
PRUNE_BATCH = 100
"""Delivered stretches a pruning pass handles per store call."""
WAKE_SPACING_SECONDS = 0.2
"""Deliveries are woken at most this often (the first notice after a quiet spell at once): results trickle in
from many orders, one each, and the deliveries woken together share each of their store calls (`gather`)."""


class ResultServer:
    """Serve `ResultServer(settings).app` with uvicorn."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"],
                                        max_http_buffer_size=_FRAME_OVERHEAD)
        self.app = socketio.ASGIApp(self.sio, other_asgi_app=self._http, on_startup=self.start,
                                    on_shutdown=self.stop)
        self.wakeups = Wakeups()
        self.redis: Redis | None = None
        self.store: Store | None = None
        self.namespace: ResultNamespace | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.redis = valkey(self.settings.resolved_redis_url)
        self.store = await asyncio.to_thread(open_store, self.settings.resolved_store_url)
        sender = WebhookSender(self.store, self.settings)
        watcher = Watcher(self.store, self.redis, on_observed=sender.wake)
        self.namespace = ResultNamespace(self.store, self.wakeups, observe=watcher.observe_batch)
        self.sio.register_namespace(self.namespace)
        self._tasks = [asyncio.create_task(self._listen(), name="results:notifications"),
                       asyncio.create_task(self._prune_loop(), name="results:retention"),
                       asyncio.create_task(watcher.run(self._stopping), name="results:watch"),
                       asyncio.create_task(sender.run(self._stopping), name="results:webhooks")]

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.redis is not None:
            await self.redis.aclose()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    async def _listen(self) -> None:
        assert self.redis is not None
        last = "$"
        missed = False
        loop = asyncio.get_running_loop()
        woke = float("-inf")
        while not self._stopping.is_set():
            try:
                reply = await self.redis.xread({NOTICES_STREAM: last}, block=2000, count=1000)
                if reply and (wait := woke + WAKE_SPACING_SECONDS - loop.time()) > 0:
                    await asyncio.sleep(wait)  # the notices of the spacing wake their deliveries together
                    last = reply[0][1][-1][0]
                    reply += await self.redis.xread({NOTICES_STREAM: last}, count=1000) or []
                woke = loop.time()
            except Exception as e:  # Valkey restarting: deliveries fall back to polling meanwhile
                outage("Valkey").failed(e, "result notifications")
                missed = True
                await asyncio.sleep(1)
                continue
            outage("Valkey").ok()
            if missed:  # notices may have been lost while Valkey was away: every delivery looks again
                missed = False
                self.wakeups.wake_all()
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    notice = ResultNotice.decode(fields)
                    if notice is not None and notice.outcome != OBSERVED:
                        self.wakeups.wake(notice.order_id)

    def prune(self) -> int:
        """Delete the bodies whose retention is over; how many."""
        assert self.store is not None
        now = datetime.now(UTC)
        before = now - timedelta(seconds=self.settings.result_body_retention_seconds)
        bodies = 0
        while True:
            pruned = self.store.prune_result_bodies(before, now, PRUNE_BATCH)
            bodies += pruned.bodies
            if pruned.deliveries < PRUNE_BATCH:
                return bodies

    async def _prune_loop(self) -> None:
        interval = self.settings.result_prune_interval_seconds
        while not self._stopping.is_set():
            try:  # the replicas' passes spread out; a pass from several at once is safe too
                await asyncio.wait_for(self._stopping.wait(), timeout=interval * random.uniform(0.5, 1.0))
                return
            except TimeoutError:
                pass
            try:
                bodies = await asyncio.to_thread(self.prune)
            except Exception as e:  # the store is down: the next pass catches up
                outage("store").failed(e, "deleting delivered bodies")
                continue
            outage("store").ok()
            if bodies:
                log.info("deleted %d result bodies delivered over %d s ago", bodies,
                         self.settings.result_body_retention_seconds)

    async def _http(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        content_type = "application/json"
        if scope["path"] == "/health":
            status, payload = 200, json.dumps({"status": "ok"}).encode()
        elif scope["path"] == "/metrics":
            metrics.RESULT_CLIENTS_CONNECTED.set(len(self.namespace.tasks) if self.namespace else 0)
            status, (payload, content_type) = 200, metrics.exposition()
        else:
            status, payload = 404, json.dumps(
                {"detail": "not found; result clients connect with Socket.IO at /socket.io/"}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
