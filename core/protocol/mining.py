"""The `/mine` Socket.IO namespace: what a mining server and a miner say to each other.

A miner connects with auth `{"token": "<mine API token>"}` and then calls `hello` (its
`MinerPolicy`; answered with the `Welcome` terms), `result` (a `MinedResult` for a job it holds;
answered with a `ResultAck`) and `drain` (send me nothing new; answered with `Drained`). The
server sends `job` (a `JobOffer`), `revoke` (a `Revoke`: a lease ended), `problem` (a
`Problem`: what was wrong with the last message) and `checked` (a `Checked`: a result whose pay
was held for a check was decided, and the miner's reputation after it).

Batches. A miner that connects with auth `{"token": …, "batches": true}` may be sent `jobs` (a
`JobOffers`: the jobs one hand-out pass leased to it) as well as `job`. A server whose `Welcome`
says `batches` takes `results`: several results in one message, their bodies joined in one
binary attachment (`batch_of_results`), answered with `{"acks": [...]}`: one `ResultAck` per
result, in order. Each result in it is judged as a `result` alone would be. Both ends fall back
to one message per job with a peer that does not say it takes batches, so miners and servers
of either kind work together.
"""

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field, Strict

from core.protocol.jobs import JobKey
from core.schemas import HttpMethod, Request, RequestSpec

NAMESPACE = "/mine"


class MinerEvent(StrEnum):
    """What a miner sends; each is a call the server answers."""

    hello = "hello"
    result = "result"
    results = "results"
    drain = "drain"


class ServerEvent(StrEnum):
    """What the mining server sends a miner."""

    job = "job"
    jobs = "jobs"
    revoke = "revoke"
    problem = "problem"
    checked = "checked"


class FetchError(StrEnum):
    """Why a fetch produced no page. An HTTP 4xx/5xx answer is a page, not an error."""

    invalid_url = "invalid_url"  # the URL (or a redirect's Location) does not parse
    invalid_request = "invalid_request"  # method or headers the fetcher will not send
    refused_target = "refused_target"  # URL policy, block-list or a forbidden resolved address
    robots_disallowed = "robots_disallowed"
    dns_error = "dns_error"
    connection_error = "connection_error"
    tls_error = "tls_error"
    timeout = "timeout"
    too_many_redirects = "too_many_redirects"
    http_error = "http_error"  # malformed response: oversized headers, bad encoding, cut-off body


class MinerPolicy(Request):
    """What a miner announces after connecting (`hello`): how many jobs at once, which ones."""

    capacity: Annotated[int, Field(ge=1, le=1024, description="Jobs the miner runs at the same time.")] = 4
    methods: Annotated[list[HttpMethod], Field(min_length=1, max_length=3)] = Field(
        default_factory=lambda: list[HttpMethod](("GET", "HEAD")))
    blocked_domains: Annotated[list[Annotated[str, Field(min_length=1, max_length=253)]], Field(max_length=1000)] = (
        Field(default_factory=list, description="Domains (and their subdomains) the miner never fetches."))
    max_body_bytes: Annotated[int, Field(ge=1024, description="The miner keeps at most this much of a page.")] = (
        2 * 1024 * 1024)
    client: Annotated[str, Field(max_length=100)] = ""


class Welcome(BaseModel):
    """The server's answer to `hello`: the terms this connection mines under."""

    server_id: str
    miner: str = Field(description="The volunteer's username.")
    capacity: int
    max_body_bytes: int
    lease_seconds: float
    reputation: float | None = Field(default=None, description="The account's reputation, 0…1 (core.trust).")
    standing: str | None = Field(default=None, description="new, trusted or suspect: how often its results are "
                                                           "checked.")
    batches: bool = Field(default=False, description="The server takes `results` (several results in a message).")


class JobOffer(RequestSpec, JobKey):
    """A job leased to one miner (server → miner, event `job`)."""

    lease_seconds: float


class JobOffers(BaseModel):
    """The jobs one hand-out pass leased to a miner that takes batches (server → miner, event `jobs`)."""

    jobs: list[JobOffer]


class MinedResult(Request):
    """What a miner sends back for a job it holds (miner → server, event `result`)."""

    key: Annotated[str, Field(min_length=3, max_length=100)]
    status: Annotated[int, Field(ge=100, le=599)] | None = None
    final_url: Annotated[str, Field(max_length=8192)]
    headers: Annotated[dict[Annotated[str, Field(max_length=100)], Annotated[str, Field(max_length=1024)]],
                       Field(max_length=50)] = Field(default_factory=dict)
    body: bytes = b""
    truncated: bool = False
    elapsed_ms: Annotated[int, Field(ge=0, le=24 * 3600 * 1000)] = 0
    error: Annotated[FetchError, Strict(False)] | None = None
    error_text: Annotated[str, Field(max_length=1000)] | None = None


class ResultAck(BaseModel):
    """The server's answer to `result`: what became of it, or why it was refused."""

    ok: bool
    outcome: str | None = Field(default=None, description=(
        "paid, refunded, retry, failed, duplicate, closed; held: the result waits for another miner's fetch to "
        "check it (a `checked` event follows); refused: the account is barred."))
    coins: int = 0
    error: str | None = None


MAX_BATCH = 1024  # results in one `results` message, and no more than the miner's announced capacity
BATCH_BODIES = "bodies"
BATCH_RESULTS = "results"
BODY_BYTES = "body_bytes"


def batch_of_results(results: list[dict]) -> dict:
    """The `results` payload of `MinedResult` payloads: each result without its body but with
    its `body_bytes`, and the bodies joined, in order, in one binary attachment."""
    items = [{**{k: v for k, v in r.items() if k != "body"}, BODY_BYTES: len(r.get("body") or b"")} for r in results]
    return {BATCH_RESULTS: items, BATCH_BODIES: b"".join(r.get("body") or b"" for r in results)}


def results_of_batch(data: object, limit: int) -> list[dict]:
    """The `MinedResult` payloads of a `results` payload, bodies cut back out of the attachment; a ValueError
    saying what is wrong if it is not one of at most `limit` results. The results themselves are not checked."""
    if not isinstance(data, dict) or set(data) != {BATCH_RESULTS, BATCH_BODIES}:
        raise ValueError(f"results takes an object with exactly {BATCH_RESULTS!r} (a list of results, each with its "
                         f"{BODY_BYTES!r}) and {BATCH_BODIES!r} (their bodies joined, as binary)")
    items, bodies = data[BATCH_RESULTS], data[BATCH_BODIES]
    if not isinstance(items, list) or not items or len(items) > limit:
        raise ValueError(f"{BATCH_RESULTS} must be a list of 1 to {limit} results (the jobs this connection may hold)")
    if not isinstance(bodies, bytes | bytearray):
        raise ValueError(f"{BATCH_BODIES} must be binary (the bodies joined), not {type(bodies).__name__}")
    out, offset = [], 0
    for i, item in enumerate(items):
        size = item.get(BODY_BYTES) if isinstance(item, dict) else None
        if type(size) is not int or size < 0:
            raise ValueError(f"{BATCH_RESULTS}.{i}.{BODY_BYTES} must be the length of its body in {BATCH_BODIES}, "
                             f"a whole number ≥ 0")
        assert isinstance(item, dict)
        out.append({**{k: v for k, v in item.items() if k != BODY_BYTES}, "body": bytes(bodies[offset:offset + size])})
        offset += size
    if offset != len(bodies):
        raise ValueError(f"the {BODY_BYTES} of the results add up to {offset} bytes but {BATCH_BODIES} holds "
                         f"{len(bodies)}")
    return out


class Checked(BaseModel):
    """A result held for a check was decided (server → miner, event `checked`)."""

    key: str
    outcome: str = Field(description=(
        "paid: the page was delivered and paid; fee: it checked the delivered page and was paid a fee; "
        "unpaid: another fetch was delivered; outvoted: two other fetches agreed against it."))
    coins: int = 0
    validation: str = Field(description="The delivered result's validation: validated, unchecked or disputed.")
    reputation: float | None = None
    standing: str | None = None


class Drained(BaseModel):
    """The server's answer to `drain`: no new jobs come; this many are still leased to the miner."""

    ok: bool = True
    in_flight: int


class Revoke(BaseModel):
    """A lease ended before the miner's result came (server → miner, event `revoke`)."""

    key: str
    reason: str


class Problem(BaseModel):
    """What was wrong with the miner's last message (server → miner, event `problem`).

    `fatal` is sent only when true: the server disconnects right after.
    """

    message: str
    fatal: bool = False

    def payload(self) -> dict:
        return self.model_dump(exclude_defaults=True)
