"""The mining server's side of the `/mine` namespace (`core.protocol.mining`): how each message is checked.

An event a miner does not send, anything malformed and anything about a job the connection
does not hold is answered with an error and counted; a connection that keeps
sending such messages, or more messages than any honest miner would, is dropped. Nothing it
sent is stored and no coin moves.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import socketio
from pydantic import ValidationError
from socketio.exceptions import ConnectionRefusedError as SocketRefused

from core import metrics
from core.client_address import network_of, real_client
from core.errors import CrawlcoinError
from core.protocol.mining import (
    MAX_BATCH,
    NAMESPACE,
    Drained,
    FetchError,
    MinedResult,
    MinerEvent,
    MinerPolicy,
    Problem,
    ResultAck,
    ServerEvent,
    Welcome,
    results_of_batch,
)
from core.schemas import Scope
from core.settings import Settings
from core.storage import Result, Store
from core.tokens import authenticate_api_token
from core.trust import Reputation, Standing, TrustBook
from miners.server.checks import Checker
from miners.server.handout import Handout
from miners.server.pool import MinerConn

log = logging.getLogger(__name__)

# Errors no other miner could avoid: the result settles the job (and refunds it).
SETTLING_ERRORS = frozenset({FetchError.refused_target, FetchError.robots_disallowed, FetchError.invalid_url,
                             FetchError.invalid_request, FetchError.too_many_redirects})
MAX_STRIKES = 20  # invalid messages one connection may send before it is dropped
BURST_EVENTS = 200  # messages per connection beyond the refill rate…
EVENTS_PER_SECOND = 100.0  # …and the refill rate


@dataclass(eq=False)
class Connection:
    """Per-connection state: who it is and how well it has behaved."""

    user_id: str
    username: str
    network: str | None = None  # where it connects from, when that can be told (core.client_address)
    tokens: float = BURST_EVENTS
    refilled: float = field(default_factory=time.monotonic)
    strikes: int = 0
    announced: bool = False
    batches: bool = False  # it said it takes `jobs` (auth "batches": true)

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST_EVENTS, self.tokens + (now - self.refilled) * EVENTS_PER_SECOND)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def give_back(self) -> None:
        """A result for a job this connection holds costs nothing: those come no faster than jobs are handed
        out, which a miner's capacity bounds, and a fast miner on a fast site returns more than the refill rate."""
        self.tokens = min(BURST_EVENTS, self.tokens + 1)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"]) or "payload"
    return f"{where}: {err['msg']}"[:300]


class MinerNamespace(socketio.AsyncNamespace):
    def __init__(self, settings: Settings, store: Store, server_id: str, handout: Handout, checker: Checker,
                 trust: TrustBook) -> None:
        super().__init__(NAMESPACE)
        self.settings = settings
        self.store = store
        self.server_id = server_id
        self.handout = handout
        self.checker = checker
        self.trust = trust
        self.connections: dict[str, Connection] = {}

    # --- connection ---------------------------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        raw = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(raw, str) or not raw:
            raise SocketRefused("authentication failed: connect with auth {\"token\": \"<mine API token>\"}")
        try:
            token = await asyncio.to_thread(authenticate_api_token, self.store, raw, Scope.mine)
            user = await asyncio.to_thread(self.store.get_user, token.owner_id)
        except CrawlcoinError as e:
            raise SocketRefused(f"authentication failed: {e.message}") from None
        if (await self._reputation(token.owner_id)).barred_at is not None:
            raise SocketRefused("this account is barred from mining: its results were outvoted by other miners' "
                                "fetches of the same pages")
        forwarded = [environ["HTTP_X_FORWARDED_FOR"]] if environ.get("HTTP_X_FORWARDED_FOR") else []
        address = real_client(environ.get("REMOTE_ADDR"), forwarded, self.settings.trusted_proxy_networks)
        self.connections[sid] = Connection(token.owner_id, user.username if user else token.owner_id,
                                           network_of(address), batches=auth.get("batches") is True)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.connections.pop(sid, None)
        self.handout.remove_miner(sid)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid = args[0] if args else None
        if not isinstance(sid, str) or (conn := self.connections.get(sid)) is None:
            return None
        if not conn.take():
            await self._drop(sid, "too many messages; disconnecting")
            return None
        handlers = {MinerEvent.hello: self._hello, MinerEvent.result: self._result, MinerEvent.results: self._results,
                    MinerEvent.drain: self._drain}
        handler = handlers.get(MinerEvent(event)) if event in handlers else None
        try:
            if handler is None:
                raise _Refused(f"unknown event {str(event)[:50]!r}; a miner sends {_KNOWN_EVENTS}")
            if len(args) != 2:
                raise _Refused(f"{event} takes exactly one argument")
            answer = await handler(sid, conn, args[1])
        except _Refused as e:
            return await self._strike(sid, conn, e.message)
        except Exception:
            log.exception("error handling %s from %s", event, sid)
            return {"ok": False, "error": "internal error; the message was not processed"}
        return answer

    async def _strike(self, sid: str, conn: Connection, message: str) -> dict:
        conn.strikes += 1
        if conn.strikes >= MAX_STRIKES:
            await self._drop(sid, f"{message} (too many invalid messages; disconnecting)")
        else:
            await self.emit(ServerEvent.problem, Problem(message=message).payload(), to=sid)
        return ResultAck(ok=False, error=message).model_dump()

    async def drop(self, sid: str, message: str) -> None:
        """Disconnect a connection, telling it why (a barred account)."""
        await self._drop(sid, message)

    async def _drop(self, sid: str, message: str) -> None:
        log.warning("dropping miner connection %s: %s", sid, message)
        await self.emit(ServerEvent.problem, Problem(message=message, fatal=True).payload(), to=sid)
        await self.disconnect(sid)

    # --- events -------------------------------------------------------------------------------

    async def _hello(self, sid: str, conn: Connection, data: Any) -> dict:
        if conn.announced:
            raise _Refused("hello was already sent on this connection")
        try:
            policy = MinerPolicy.model_validate(data)
        except ValidationError as e:
            raise _Refused(f"invalid policy: {_first_error(e)}") from None
        blocked = frozenset(d.strip().strip(".").lower() for d in policy.blocked_domains if d.strip().strip("."))
        reputation = await self._reputation(conn.user_id)
        miner = MinerConn(sid=sid, user_id=conn.user_id, username=conn.username, policy=policy,
                          announced=min(policy.capacity, self.settings.miner_max_capacity),
                          max_body_bytes=min(policy.max_body_bytes, self.settings.result_body_max_bytes),
                          blocked=blocked, settings=self.settings, network=conn.network, reputation=reputation,
                          batches=conn.batches)
        if miner.standing is Standing.barred:  # barred since it connected: it gets no job
            return ResultAck(ok=False, error="this account is barred from mining").model_dump()
        conn.announced = True
        self.handout.add_miner(miner)
        return Welcome(server_id=self.server_id, miner=conn.username, capacity=miner.capacity,
                       max_body_bytes=miner.max_body_bytes, lease_seconds=self.settings.lease_seconds,
                       reputation=round(reputation.score, 3), standing=miner.standing.value,
                       batches=True).model_dump()

    async def _reputation(self, user_id: str) -> Reputation:
        """The account's reputation; a new account's while Valkey cannot say (checked in full: the safe side)."""
        try:
            return (await self.trust.get_many([user_id]))[user_id]
        except Exception as e:
            log.warning("could not read the reputation of %s: %s", user_id, e)
            return Reputation()

    async def _drain(self, sid: str, conn: Connection, data: Any) -> dict:
        return Drained(in_flight=self.handout.drain(sid)).model_dump()

    async def _results(self, sid: str, conn: Connection, data: Any) -> dict:
        """Several results in one message, each judged as `result` judges one: a bad one is refused (and counts
        a strike) without holding up the others."""
        miner = self.handout.miners.get(sid)
        if miner is None:
            raise _Refused("send hello before results")
        try:
            items = results_of_batch(data, min(MAX_BATCH, miner.policy.capacity))
        except ValueError as e:
            raise _Refused(f"malformed results: {e}") from None

        async def one(item: dict) -> dict:
            try:
                return await self._result(sid, conn, item)
            except _Refused as e:
                return await self._strike(sid, conn, e.message)
            except Exception:
                log.exception("error handling a result of a batch from %s", sid)
                return ResultAck(ok=False, error="internal error; the result was not processed").model_dump()

        return {"acks": await asyncio.gather(*(one(item) for item in items))}

    async def _result(self, sid: str, conn: Connection, data: Any) -> dict:
        miner = self.handout.miners.get(sid)
        if miner is None:
            raise _Refused("send hello before results")
        if isinstance(data, dict) and isinstance(data.get("body"), bytes | bytearray):
            size = len(data["body"])
            if size > miner.max_body_bytes:
                key = data.get("key")
                lease = self.handout.lease_of(sid, key) if isinstance(key, str) else None
                if lease is not None:  # the job goes to another miner
                    self.handout.end_lease(lease)
                    metrics.job_finished_when_done(self.checker.failed(lease.held, "the result was too large", None),
                                                   lease.held.job.due_at)
                raise _Refused(f"result body of {size} bytes exceeds this connection's cap of "
                               f"{miner.max_body_bytes} bytes; truncate it and set truncated")
        try:
            mined = MinedResult.model_validate(data)
        except ValidationError as e:
            raise _Refused(f"malformed result: {_first_error(e)}") from None
        if mined.error is None and mined.status is None:
            raise _Refused("malformed result: a result without an error needs a status")
        lease = self.handout.lease_of(sid, mined.key)
        if lease is None:
            raise _Refused(f"job {mined.key[:100]!r} is not leased to this connection")
        conn.give_back()
        # The slot stays taken until the result is written: miners cannot outrun the store.
        lease.delivered = True
        job = lease.held.job
        now = datetime.now(UTC)
        result = Result.with_body(
            mined.body, miner.max_body_bytes, job_key=job.key, order_id=job.order_id, n=job.n,
            miner_id=miner.user_id, fetched_at=now - timedelta(milliseconds=mined.elapsed_ms), status=mined.status,
            final_url=mined.final_url, headers=mined.headers, truncated=mined.truncated,
            elapsed_ms=mined.elapsed_ms, error=mined.error.value if mined.error else None,
            error_text=mined.error_text, stored_at=now,
        )
        try:
            if mined.error is None or mined.error in SETTLING_ERRORS:
                ack = await self.checker.settle(miner, lease.held, result)
            else:  # the site or this miner's network failed: another miner tries
                ack = await self.checker.failed(lease.held, f"{mined.error.value}: {mined.error_text}", sid,
                                                last=result)
        finally:
            self.handout.end_lease(lease)
        metrics.job_finished(ack, job.due_at)
        return ack.model_dump()


*_FIRST, _LAST = MinerEvent
_KNOWN_EVENTS = f"{', '.join(_FIRST)} and {_LAST}"  # "hello, result, results and drain"


class _Refused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

