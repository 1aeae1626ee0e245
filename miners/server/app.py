"""The mining server as an ASGI app: Socket.IO (websocket transport only) plus `/health` and `/metrics`.

Everything that opens a connection (store, Valkey) is built at start-up, from the settings.
"""

import asyncio
import json
import logging
import os
import secrets
import socket
from typing import Any

import socketio
from redis.asyncio import Redis

from core import metrics
from core.protocol.mining import NAMESPACE
from core.settings import Settings
from core.storage import Store, open_store
from core.trust import TrustBook
from core.valkey import valkey
from miners.server.checks import Checker
from miners.server.handout import Handout
from miners.server.namespace import MinerNamespace
from miners.server.pool import Held
from miners.server.stream import JobStream
from miners.server.writer import ResultWriter

log = logging.getLogger(__name__)
_FRAME_OVERHEAD = 64 * 1024  # room for the JSON part of a result next to its body


class IndexedManager(socketio.AsyncManager):
    """python-socketio's in-process manager, with the rooms of each connection indexed.

    Every connection has a room of its own, and the stock manager's disconnect looks through every
    room for the leaving one: time in proportion to the connections, and a burst of disconnects
    among ten thousand miners blocks the event loop long enough for other connections to miss their
    pings and drop too. Here a disconnect looks at the connection's own rooms only.
    """

    def __init__(self) -> None:
        super().__init__()
        self._rooms_of: dict[tuple[str, str], set[Any]] = {}

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._rooms_of.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        # The stock method, but for the loop over every room.
        if namespace not in self.rooms:
            return
        for room in list(self._rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]


def new_server_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class MiningServer:
    """One mining server process: consumer `server_id` of the job stream's mining group.

    Serve `MiningServer(settings).app` with uvicorn.
    """

    def __init__(self, settings: Settings, server_id: str | None = None) -> None:
        self.settings = settings
        self.server_id = server_id or new_server_id()
        self.max_message_bytes = settings.result_body_max_bytes + _FRAME_OVERHEAD
        self.sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"], client_manager=IndexedManager(),
                                        max_http_buffer_size=self.max_message_bytes)
        self.app = socketio.ASGIApp(self.sio, other_asgi_app=self._http, on_startup=self.start,
                                    on_shutdown=self.stop)
        self.redis: Redis | None = None
        self.store: Store | None = None
        self.handout: Handout | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        settings = self.settings
        self.redis = valkey(settings.resolved_redis_url)
        self.store = await asyncio.to_thread(open_store, settings.resolved_store_url)
        stream = JobStream(self.redis, self.server_id, settings.domain_rate_per_second)
        await stream.ensure_group()

        async def send(event: str, sid: str, payload: dict) -> None:
            await self.sio.emit(event, payload, to=sid, namespace=NAMESPACE)

        def fail(held: Held, why: str, avoid: str | None) -> None:
            metrics.job_finished_when_done(checker.failed(held, why, avoid), held.job.due_at)

        def close(held: Held) -> None:
            checker.close_soon(held)

        async def drop(sid: str, why: str) -> None:
            await namespace.drop(sid, why)

        handout = Handout(settings, stream, send, fail, close)
        writer = ResultWriter(settings, self.store, stream, handout)
        trust = TrustBook(self.redis, settings)
        checker = Checker(settings, handout, writer, trust, send, drop)
        namespace = MinerNamespace(settings, self.store, self.server_id, handout, checker, trust)
        self.handout = handout
        self.sio.register_namespace(namespace)
        for loop in (handout.run, handout.expire_leases, handout.keep_alive, handout.reclaim, writer.run,
                     checker.refresh):
            self._tasks.append(asyncio.create_task(loop(self._stopping), name=f"mining:{loop.__name__}"))
        log.info("mining server %s started", self.server_id)

    async def stop(self) -> None:
        self._stopping.set()
        done, pending = await asyncio.wait(self._tasks, timeout=5) if self._tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self.redis is not None:
            await self.redis.aclose()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    def _set_gauges(self) -> None:
        handout = self.handout
        metrics.MINERS_CONNECTED.set(len(handout.miners) if handout else 0)
        metrics.LEASES_OUTSTANDING.set(len(handout.leases) if handout else 0)

    async def _http(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        content_type = "application/json"
        if scope["path"] == "/health":
            miners = len(self.handout.miners) if self.handout else 0
            status, payload = 200, json.dumps({"status": "ok", "server_id": self.server_id, "miners": miners}).encode()
        elif scope["path"] == "/metrics":
            self._set_gauges()
            status, (payload, content_type) = 200, metrics.exposition()
        else:
            status, payload = 404, json.dumps(
                {"detail": "not found; miners connect with Socket.IO at /socket.io/"}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

