"""The `/results` Socket.IO namespace: what a result server and a result client say to each other.

A result client connects with auth `{"token": "<results API token>"}` and calls `subscribe`
(a `Subscribe`; answered with `{"ok": true, "orders": {order id: cursor}}` or `{"error": …}`).
The server then calls `results` with batches of one order's results in n order (`encode_batch`:
the `ResultMessage`s and the bodies, zlib-compressed as the store keeps them, as bytes beside
them; answered with `{"ok": true}` once every result of the batch is on disk), keeping at most the
client's `Window` in flight over the connection, and sends `caught_up` (a `CaughtUp`) whenever an
order's backlog is delivered.

Each `ResultMessage` carries what the watcher made of it (`extracted`, `changed`, `previous_n`,
`diff`) when the order has an extraction or the client subscribed with `changes`; otherwise those
are null and the results go out without waiting for the watcher.

A client that subscribes without a window (crawlcoin before batches) is called `result` for every
result instead (`encode_result`: one message, its body uncompressed), at most 16 at a time.
"""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

NAMESPACE = "/results"


class ClientEvent(StrEnum):
    """What a result client sends."""

    subscribe = "subscribe"


class ServerEvent(StrEnum):
    """What the result server sends a result client."""

    results = "results"
    result = "result"  # one result, to clients that subscribed without a window
    caught_up = "caught_up"


class Window(BaseModel):
    """How much a result client takes in flight at once over its connection, summed over its orders.

    The server sends batches of at most half of it, so the client writes one while the next arrives;
    one result larger than `bytes` is still sent, alone.
    """

    model_config = ConfigDict(extra="forbid")
    results: Annotated[int, Field(ge=1, le=4096)]
    bytes: Annotated[int, Field(ge=64 * 1024, le=1024 * 1024 * 1024, description="Of compressed bodies.")]


class Subscribe(BaseModel):
    """A result client's subscription: order id → last repetition n it has (None: ask the server)."""

    model_config = ConfigDict(extra="forbid")
    orders: Annotated[dict[str, Annotated[int, Field(ge=0)] | None], Field(min_length=1, max_length=100)]
    window: Window | None = Field(default=None, description="None: one `result` call per result (older clients).")
    changes: bool = Field(default=False, description=(
        "The client writes changes only: every result goes with whether it changed, even on orders without an "
        "extraction (sent only when true, so servers from before change records take the subscription)."))


class ResultMessage(BaseModel):
    """One result as the result server sends it; the body travels beside it as bytes."""

    key: str
    order_id: str
    n: int
    miner_id: str
    fetched_at: datetime
    status: int | None
    final_url: str
    headers: dict[str, str]
    body_size: int
    truncated: bool
    sha256: str
    elapsed_ms: int
    error: str | None
    error_text: str | None
    body_pruned_at: datetime | None = Field(
        default=None, description="When the store deleted the body, kept for its retention period after delivery.")
    extracted: str | None = Field(default=None, description="The order's extraction applied to the page.")
    changed: bool | None = Field(default=None, description="Differs from the previous valid result (None: not a "
                                                           "page to compare).")
    previous_n: int | None = Field(default=None, description="The valid result it was compared with.")
    diff: str | None = Field(default=None, description="Unified diff from `previous_n`, when it changed.")
    validation: str = Field(default="unchecked", description=(
        "validated: another miner's fetch of the repetition agreed with this page; unchecked: one miner's fetch; "
        "disputed: the checks disagreed and no two fetches agreed."))


class CaughtUp(BaseModel):
    """Every result of the order up to `cursor` was delivered; `finished`: none will follow."""

    order_id: str
    cursor: int
    finished: bool


def encode_result(msg: ResultMessage, body: bytes) -> dict[str, Any]:
    """The payload of a `result` call."""
    return {"result": msg.model_dump(mode="json"), "body": body}


def decode_result(data: Any) -> tuple[ResultMessage, bytes]:
    """The message and body of a `result` call; raises KeyError, TypeError or ValidationError."""
    msg = ResultMessage.model_validate(data["result"])
    body = data.get("body") or b""
    if not isinstance(body, bytes):
        raise TypeError("body is not bytes")
    return msg, body


def encode_batch(results: list[tuple[ResultMessage, bytes]]) -> dict[str, Any]:
    """The payload of a `results` call: messages, and their zlib-compressed bodies as bytes beside them."""
    return {"results": [msg.model_dump(mode="json") for msg, _ in results],
            "bodies": [body_zlib for _, body_zlib in results]}


def decode_batch(data: Any) -> list[tuple[ResultMessage, bytes]]:
    """The messages and zlib-compressed bodies of a `results` call; raises KeyError, TypeError or ValidationError."""
    messages, bodies = data["results"], data["bodies"]
    if not isinstance(messages, list) or not isinstance(bodies, list) or len(messages) != len(bodies):
        raise TypeError("results and bodies do not pair up")
    if not all(isinstance(body, bytes) for body in bodies):
        raise TypeError("a body is not bytes")
    return [(ResultMessage.model_validate(msg), body) for msg, body in zip(messages, bodies, strict=True)]
