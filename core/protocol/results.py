"""The `/results` Socket.IO namespace: what a result server and a result client say to each other.

A result client connects with auth `{"token": "<results API token>"}` and calls `subscribe`
(a `Subscribe`; answered with `{"ok": true, "orders": {order id: cursor}}` or `{"error": …}`).
The server then calls `result` for every result in n order (`encode_result`: the `ResultMessage`
and the body as bytes beside it; answered with `{"ok": true}` once the result is on disk) and
sends `caught_up` (a `CaughtUp`) whenever an order's backlog is delivered.
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

    result = "result"
    caught_up = "caught_up"


class Subscribe(BaseModel):
    """A result client's subscription: order id → last repetition n it has (None: ask the server)."""

    model_config = ConfigDict(extra="forbid")
    orders: Annotated[dict[str, Annotated[int, Field(ge=0)] | None], Field(min_length=1, max_length=100)]


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
    extracted: str | None = Field(default=None, description="The order's extraction applied to the page.")
    changed: bool | None = Field(default=None, description="Differs from the previous valid result (None: not a "
                                                           "page to compare).")
    previous_n: int | None = Field(default=None, description="The valid result it was compared with.")
    diff: str | None = Field(default=None, description="Unified diff from `previous_n`, when it changed.")


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
