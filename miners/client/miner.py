"""The volunteer's mining loop: connect, announce a policy, fetch leased jobs, return results.

The connection is a python-socketio AsyncClient on the websocket transport. Reconnecting is
done here rather than by the library, so that a refusal (bad or revoked token) ends the run
with its message while an unreachable server is retried with exponential backoff. A lease
belongs to one connection: jobs in flight when the connection drops are abandoned (the
server has already given them to someone else).

The miner asks for batches (`core.protocol.mining`): a server that takes them may send the jobs
of one hand-out pass in one `jobs` message, and gets the results that are ready together in one
`results` message. With a server that does not, it sends one `result` per job.
"""

import asyncio
import functools
import logging
import random
import time
from collections import deque
from typing import Any

import aiohttp
import socketio
from pydantic import ValidationError

from core.errors import AuthenticationFailed, CrawlcoinError
from core.protocol.mining import (
    MAX_BATCH,
    NAMESPACE,
    Checked,
    FetchError,
    JobOffer,
    JobOffers,
    MinedResult,
    MinerEvent,
    MinerPolicy,
    Problem,
    ResultAck,
    Revoke,
    ServerEvent,
    Welcome,
    batch_of_results,
)
from miners.client.fetch import Fetcher
from miners.client.models import FetchPolicy, FetchRequest, FetchResult
from miners.client.stats import MinerStats

log = logging.getLogger(__name__)

BACKOFF_START, BACKOFF_MAX = 1.0, 30.0


class Miner:
    def __init__(self, server_url: str, token: str, policy: MinerPolicy, fetch_policy: FetchPolicy,
                 stats: MinerStats | None = None) -> None:
        self.server_url = server_url
        self.token = token
        self.policy = policy
        self.fetch_policy = fetch_policy
        self.stats = stats or MinerStats(server_url)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._refusal: str | None = None
        self._fatal: str | None = None
        self._held: set[str] = set()  # keys of results held for a check
        self._send_lock = asyncio.Lock()
        self._disconnected = asyncio.Event()
        self._fetcher: Fetcher | None = None
        self._batches = False  # the server takes `results`
        self._batch_limits = (1, 0)  # results and bytes in one `results` message, as the Welcome allows
        self._outbox: deque[tuple[dict[str, Any], asyncio.Future[Any]]] = deque()  # results to send in a batch
        self._sender: asyncio.Task[None] | None = None
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False, logger=False,
                                       engineio_logger=False)
        self.sio.on("connect", self._on_connect, namespace=NAMESPACE)
        self.sio.on("connect_error", self._on_connect_error, namespace=NAMESPACE)
        self.sio.on("disconnect", self._on_disconnect, namespace=NAMESPACE)
        self.sio.on(ServerEvent.job, self._on_job, namespace=NAMESPACE)
        self.sio.on(ServerEvent.jobs, self._on_jobs, namespace=NAMESPACE)
        self.sio.on(ServerEvent.revoke, self._on_revoke, namespace=NAMESPACE)
        self.sio.on(ServerEvent.problem, self._on_problem, namespace=NAMESPACE)
        self.sio.on(ServerEvent.checked, self._on_checked, namespace=NAMESPACE)

    async def run(self, stop: asyncio.Event) -> None:
        """Mine until `stop` is set; then let in-flight jobs finish and return.

        Raises AuthenticationFailed if the server refuses the token.
        """
        backoff = BACKOFF_START
        async with Fetcher(self.fetch_policy) as fetcher:
            self._fetcher = fetcher
            while not stop.is_set():
                self._disconnected.clear()
                self.stats.state = "connecting"
                try:
                    await self.sio.connect(self.server_url, auth={"token": self.token, "batches": True},
                                           namespaces=[NAMESPACE],
                                           transports=["websocket"], wait_timeout=10)
                except socketio.exceptions.ConnectionError as e:
                    await self._close()
                    if self._refusal is not None:
                        self.stats.state = "refused"
                        raise AuthenticationFailed(f"the mining server refused this miner: {self._refusal}") from None
                    self.stats.state = f"cannot reach the server ({e}); retrying in {backoff:.0f} s"
                    await _wait(stop, backoff * random.uniform(0.8, 1.2))
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                connected_at = time.monotonic()
                await _first(stop.wait(), self._disconnected.wait())
                if stop.is_set():
                    await self._drain()
                    break
                await self._abandon_jobs()
                if self._fatal is not None:
                    raise CrawlcoinError(self._fatal)
                if time.monotonic() - connected_at > BACKOFF_MAX:
                    backoff = BACKOFF_START
                self.stats.state = f"disconnected; reconnecting in {backoff:.0f} s"
                await _wait(stop, backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, BACKOFF_MAX)
            self.stats.state = "stopped"
        self._fetcher = None

    async def _drain(self) -> None:
        """Ctrl-C: ask for nothing new, finish and deliver what is in flight, then disconnect."""
        self.stats.state = f"stopping: finishing {len(self._tasks)} job(s) in flight"
        try:
            await self.sio.call(MinerEvent.drain, {}, namespace=NAMESPACE, timeout=10)
        except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError):
            pass  # the server is gone or stuck: then in-flight results cannot be delivered anyway
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=self.fetch_policy.total_timeout + 15)
        await self._close()

    async def _close(self) -> None:
        try:
            await self.sio.disconnect()
        except (OSError, aiohttp.ClientError):
            pass  # the transport died under us: there is nothing left to close
        except Exception:
            log.warning("could not close the connection to the mining server cleanly", exc_info=True)
        # A failed connection attempt leaves the transport's aiohttp session open; close it (no "Unclosed" warning).
        http = getattr(self.sio.eio, "http", None)
        if http is not None and not http.closed:
            await http.close()

    async def _abandon_jobs(self) -> None:
        self._outbox.clear()  # results of this connection's leases: a new connection holds none of them
        if self._sender is not None:
            self._sender.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- events ---------------------------------------------------------------------------

    async def _on_connect(self) -> None:
        self._refusal = None
        asyncio.create_task(self._hello())

    async def _hello(self) -> None:
        try:
            answer = await self.sio.call(MinerEvent.hello, self.policy.model_dump(), namespace=NAMESPACE, timeout=15)
        except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError):
            await self._close()  # reconnect and try again
            return
        try:
            welcome = Welcome.model_validate(answer)
        except ValidationError:
            error = answer.get("error") if isinstance(answer, dict) else None
            self._fatal = f"the mining server did not accept this miner's policy: {error or answer!r}"[:500]
            await self._close()
            return
        self.stats.capacity = welcome.capacity
        self._batches = welcome.batches
        # As many results as it runs jobs (not the capacity its standing allows now, which grows as it is trusted).
        self._batch_limits = (min(MAX_BATCH, self.policy.capacity), welcome.max_body_bytes)
        self.stats.reputation, self.stats.standing = welcome.reputation, welcome.standing
        self.stats.state = f"mining as {welcome.miner} on {welcome.server_id}"

    async def _on_connect_error(self, data: Any = None) -> None:
        # The server's refusal of the namespace carries {"message": …}; a transport failure
        # (server down, restarting) is a plain string and must only lead to a retry.
        if isinstance(data, dict) and data.get("message"):
            self._refusal = str(data["message"])

    async def _on_disconnect(self, reason: Any = None) -> None:
        self._disconnected.set()

    async def _on_problem(self, data: Any = None) -> None:
        try:
            message = Problem.model_validate(data).message
        except ValidationError:
            message = str(data)
        self.stats.last_problem = message[:300]
        log.warning("mining server: %s", message)

    async def _on_checked(self, data: Any = None) -> None:
        try:
            checked = Checked.model_validate(data)
        except ValidationError:
            return
        if checked.reputation is not None:
            self.stats.reputation, self.stats.standing = checked.reputation, checked.standing
        if checked.key not in self._held:  # the check this miner's own answer decided: its ack said it all
            return
        self._held.discard(checked.key)
        self.stats.held = len(self._held)
        if checked.coins > 0:
            self.stats.done += 1
            self.stats.coins += checked.coins
        elif checked.outcome in ("outvoted", "unpaid"):
            self.stats.unpaid += 1
            cause = "outvoted by other miners" if checked.outcome == "outvoted" else "another miner's fetch delivered"
            self.stats.unpaid_reasons[cause] += 1

    async def _on_revoke(self, data: Any = None) -> None:
        try:
            key = Revoke.model_validate(data).key
        except ValidationError:
            return
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
            self.stats.failed += 1

    async def _on_job(self, data: Any = None) -> None:
        try:
            offer = JobOffer.model_validate(data)
        except ValidationError:
            self.stats.last_problem = "the server sent an unreadable job"
            return
        self._take_job(offer)

    async def _on_jobs(self, data: Any = None) -> None:
        try:
            offers = JobOffers.model_validate(data).jobs
        except ValidationError:
            self.stats.last_problem = "the server sent unreadable jobs"
            return
        for offer in offers:
            self._take_job(offer)

    def _take_job(self, offer: JobOffer) -> None:
        if offer.key in self._tasks:
            return
        task = asyncio.create_task(self._run_job(offer))
        self._tasks[offer.key] = task
        task.add_done_callback(functools.partial(self._job_done, offer.key))

    def _job_done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        self.stats.in_flight = len(self._tasks)

    async def _send_result(self, payload: dict[str, Any]) -> Any:
        """The server's answer to this result: sent alone (`result`), the sending serialised (a body travels
        as separate binary frames, and two results sent at once could interleave them), or in the next
        `results` batch when the server takes batches."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_ack(*args: Any) -> None:
            if not answer.done():
                answer.set_result(args[0] if args else None)

        if self._batches:
            self._outbox.append((payload, answer))
            if self._sender is None or self._sender.done():
                self._sender = asyncio.create_task(self._send_batches())
        else:
            async with self._send_lock:
                await self.sio.emit(MinerEvent.result, payload, namespace=NAMESPACE, callback=on_ack)
        return await asyncio.wait_for(answer, timeout=60)

    async def _send_batches(self) -> None:
        """Send what the outbox holds, as `results` messages, until it is empty. No result waits for another:
        those that finish while a message is being sent go together in the next."""
        while self._outbox:
            await asyncio.sleep(0)  # results finishing in this turn of the loop join the batch
            batch = self._next_batch()
            if not batch:
                continue
            answers = [answer for _, answer in batch]

            def on_ack(*args: Any, answers: list[asyncio.Future[Any]] = answers) -> None:
                reply = args[0] if args else None
                acks = reply.get("acks") if isinstance(reply, dict) else None
                for i, answer in enumerate(answers):  # a refusal of the whole message is each result's answer
                    if not answer.done():
                        answer.set_result(acks[i] if isinstance(acks, list) and len(acks) == len(answers) else reply)

            try:
                async with self._send_lock:
                    await self.sio.emit(MinerEvent.results, batch_of_results([p for p, _ in batch]),
                                        namespace=NAMESPACE, callback=on_ack)
            except Exception as e:  # the connection is gone: these results are lost with it
                for answer in answers:
                    if not answer.done():
                        answer.set_exception(e)

    def _next_batch(self) -> list[tuple[dict[str, Any], asyncio.Future[Any]]]:
        """The results waiting, oldest first, as many as one message may carry; one at least."""
        most, room = self._batch_limits
        batch: list[tuple[dict[str, Any], asyncio.Future[Any]]] = []
        while self._outbox and len(batch) < most:
            payload, answer = self._outbox[0]
            if answer.done():  # its job was revoked or abandoned meanwhile
                self._outbox.popleft()
                continue
            size = _size(payload)
            if batch and size > room:
                break
            room -= size
            batch.append(self._outbox.popleft())
        return batch

    async def _run_job(self, offer: JobOffer) -> None:
        assert self._fetcher is not None
        self.stats.in_flight = len(self._tasks)
        fetched = await self._fetcher.fetch(FetchRequest(**offer.request_fields()))
        try:
            ack = ResultAck.model_validate(await self._send_result(_payload(offer.key, fetched)))
        except (TimeoutError, socketio.exceptions.BadNamespaceError, ValidationError):
            self.stats.failed += 1
            return
        self.stats.finished_at.append(time.monotonic())
        if not ack.ok:
            self.stats.failed += 1
            self.stats.last_problem = ack.error
        elif ack.outcome == "held":  # a `checked` event says what became of it
            self._held.add(offer.key)
            self.stats.held = len(self._held)
        elif ack.coins > 0:
            self.stats.done += 1
            self.stats.coins += ack.coins
        else:
            self.stats.unpaid += 1
            cause = fetched.error.value.replace("_", " ") if fetched.error else f"{ack.outcome or 'unpaid'}"
            self.stats.unpaid_reasons[cause] += 1
            if fetched.error_text:
                self.stats.last_unpaid = fetched.error_text[:200]
                if (fetched.error is FetchError.refused_target and " address" in fetched.error_text
                        and not self.fetch_policy.allow_private_targets):
                    self.stats.last_unpaid += "; only a miner run with --allow-private-targets fetches it"


def _payload(key: str, r: FetchResult) -> dict[str, Any]:
    # Not validated here: the server judges the result and says what is wrong with it.
    return MinedResult.model_construct(
        key=key, status=r.status, final_url=r.final_url[:8192], headers=dict(r.headers), body=r.body,
        truncated=r.truncated, elapsed_ms=r.elapsed_ms, error=r.error,
        error_text=(r.error_text or "")[:1000] or None,
    ).model_dump()


def _size(payload: dict[str, Any]) -> int:
    """About what a result adds to a message: its body and, generously, its other fields."""
    headers = payload.get("headers") or {}
    return (len(payload.get("body") or b"") + len(payload.get("final_url") or "") + len(payload.get("error_text") or "")
            + sum(len(k) + len(v) + 8 for k, v in headers.items()) + 256)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
