"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that notes every request and answers as told."""

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core import webhooks
from tests.conftest import ThreadedServer


@dataclass
class Received:
    delivery_id: str
    event: str
    signature: str
    body: bytes
    status: int
    at: float

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)

    def signed_by(self, secret: str) -> bool:
        return webhooks.verify(secret, self.signature, self.body, time.time())


@dataclass
class Receiver:
    """Answers each request with `answer(delivery id, how many times it came before)` (200 unless told)."""

    answer: Callable[[str, int], int] = lambda _id, _seen: 200
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadedServer | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        delivery_id = headers.get(webhooks.DELIVERY_HEADER.lower(), "")
        with self.lock:
            seen = sum(1 for r in self.received if r.delivery_id == delivery_id)
            status = self.answer(delivery_id, seen)
            self.received.append(Received(delivery_id, headers.get(webhooks.EVENT_HEADER.lower(), ""),
                                          headers.get(webhooks.SIGNATURE_HEADER.lower(), ""), body, status,
                                          time.time()))
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    def delivered(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if 200 <= r.status < 300]

    def all(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def __enter__(self) -> "Receiver":
        self.server = ThreadedServer(self).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.__exit__(*exc)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url + "/hook"
