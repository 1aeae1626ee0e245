"""The customer's result client: subscribe to orders, write every result, acknowledge it."""

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import socketio
from pydantic import ValidationError

from core.errors import CrawlcoinError
from core.protocol.results import NAMESPACE, CaughtUp, ClientEvent, ServerEvent, Subscribe, Window, decode_batch
from results.client.files import ResultFiles

log = logging.getLogger("crawlcoin.results")
WINDOW = Window(results=512, bytes=16 * 1024 * 1024)
"""What this client takes in flight: batches of up to half of it are written while the next one arrives."""


@dataclass
class Progress:
    written: int = 0
    duplicates: int = 0
    pruned: int = 0  # written without their body: the store had deleted it (retention after delivery)
    unchanged: int = 0  # acknowledged without writing: --changes writes changes only
    errors: int = 0
    caught_up: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    last: str = ""
    stopped: bool = False  # ended by Ctrl-C (or SIGTERM) rather than by the orders finishing


class ResultClient:
    def __init__(self, server: str, token: str, orders: list[str], out: Path, once: bool = False,
                 changes_only: bool = False) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.orders = list(dict.fromkeys(orders))
        self.files = ResultFiles(out, diffs=changes_only)
        self.once = once
        self.changes_only = changes_only
        self.progress = Progress()
        self.done = asyncio.Event()
        self.refused: str | None = None
        self._lock = asyncio.Lock()
        # The command handles Ctrl-C itself (`stop`); the library's handler would cancel the run mid-await.
        self.sio = socketio.AsyncClient(reconnection=True, reconnection_delay=1, reconnection_delay_max=30,
                                        handle_sigint=False)
        self.sio.on("connect", self._subscribe, namespace=NAMESPACE)
        self.sio.on(ServerEvent.results, self._on_results, namespace=NAMESPACE)
        self.sio.on(ServerEvent.caught_up, self._on_caught_up, namespace=NAMESPACE)
        self.sio.on("connect_error", self._on_connect_error, namespace=NAMESPACE)

    async def _on_connect_error(self, data: Any) -> None:
        # Only the server's refusal carries {"message": …}; a transport failure is retried.
        if isinstance(data, dict) and data.get("message"):
            self.refused = str(data["message"])

    async def _subscribe(self) -> None:
        cursors = {o: self.files.cursors.get(o) for o in self.orders}
        # The server validates it and says what is wrong.
        # `changes` only when asked: a server from before change records takes the subscription as it was.
        subscription = Subscribe.model_construct(orders=cursors, window=WINDOW, changes=self.changes_only)
        reply = await self.sio.call(ClientEvent.subscribe, subscription.model_dump(exclude_defaults=True),
                                    namespace=NAMESPACE, timeout=30)
        if not isinstance(reply, dict) or not reply.get("ok"):
            self.refused = str(reply.get("error") if isinstance(reply, dict) else reply)
            self.done.set()

    async def _on_results(self, data: Any) -> dict[str, Any]:
        try:
            batch = decode_batch(data)
        except (KeyError, TypeError, ValidationError) as e:
            self.progress.errors += 1
            return {"ok": False, "error": f"malformed results: {e}"}
        async with self._lock:  # one writer: the cursor file and the once-per-n check stay consistent
            if self.changes_only:
                self.progress.unchanged += sum(not msg.changed for msg, _ in batch)
            keep = [(msg, body) for msg, body in batch if msg.changed or not self.changes_only]
            written = await asyncio.to_thread(self.files.write, keep) if keep else []
            for order_id in {msg.order_id for msg, _ in batch}:
                last = max(msg.n for msg, _ in batch if msg.order_id == order_id)
                await asyncio.to_thread(self.files.advance, order_id, last)
        for (msg, _), (path, new) in zip(keep, written, strict=True):
            if not new:
                self.progress.duplicates += 1
                continue
            self.progress.written += 1
            self.progress.pruned += msg.body_pruned_at is not None
            self.progress.last = str(path)
        return {"ok": True}

    async def _on_caught_up(self, data: Any) -> None:
        try:
            caught = CaughtUp.model_validate(data)
        except ValidationError:
            return
        if caught.order_id not in self.orders:
            return
        await asyncio.to_thread(self.files.advance, caught.order_id, caught.cursor)
        self.progress.caught_up.add(caught.order_id)
        if caught.finished:
            self.progress.finished.add(caught.order_id)
        if self.once and self.progress.caught_up >= set(self.orders):
            self.done.set()
        if self.progress.finished >= set(self.orders):
            self.done.set()

    def stop(self) -> None:
        """Ctrl-C: stop waiting. Every file written is acknowledged, so the next run resumes after it."""
        self.progress.stopped = True
        self.done.set()

    async def run(self) -> Progress:
        connect = asyncio.create_task(self.sio.connect(self.server, auth={"token": self.token}, namespaces=[NAMESPACE],
                                                       transports=["websocket"], wait_timeout=15))
        done = asyncio.create_task(self.done.wait())
        try:
            await asyncio.wait([connect, done], return_when=asyncio.FIRST_COMPLETED)
            if not connect.done():  # stopped, or the subscription refused, while still connecting
                connect.cancel()
                await asyncio.gather(connect, return_exceptions=True)
            else:
                try:
                    connect.result()
                except socketio.exceptions.ConnectionError as e:
                    if self.refused:
                        raise CrawlcoinError(f"the result server refused the connection: {self.refused}") from None
                    raise CrawlcoinError(f"cannot connect to the result server at {self.server} ({e}); is it "
                                         "running, and is --server its URL?") from None
                await done
        finally:
            done.cancel()
            await self._close()
            self.files.close()
        if self.refused:
            raise CrawlcoinError(f"the result server refused: {self.refused}")
        return self.progress

    async def _close(self) -> None:
        try:
            await self.sio.disconnect()
        except Exception:  # the transport died under us: there is nothing left to close
            log.debug("disconnect failed", exc_info=True)
        # A failed first connection leaves the transport's aiohttp session open; close it (no "Unclosed" warning).
        http = getattr(self.sio.eio, "http", None)
        if http is not None and not http.closed:
            await http.close()
