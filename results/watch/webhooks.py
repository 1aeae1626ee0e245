"""Webhooks: what the watcher observed, told to the customers' endpoints, at least once.

Fan-out (`store_deliveries`): the observer stores one delivery per observation and matching webhook
(the order's own, and its owner's for all orders; on every result or on changes only) before it
records the observations, so a watcher that dies in between observes them again and stores the
same deliveries, which the store keeps once (their ids are deterministic). The store is the
outbox: nothing sent is only in memory.

Sending (`WebhookSender`): runs in every result server, next to the watcher that wakes it when it
observed something (and polls every second besides). It claims due deliveries under a lease, so
several result servers share them and a server that dies mid-send leaves its deliveries due again
when the lease ends; posts each one signed (`core.webhooks`) to an address checked like a miner's
target (no private, loopback or reserved address unless `allow_private_targets`, checked after
DNS and connected to as checked); and logs the attempt: delivered on a 2xx answer, else retried
after `webhook_retry_seconds`, doubling each time, until `webhook_max_attempts`.
"""

import asyncio
import json
import logging
import random
import socket
import time
from datetime import UTC, datetime, timedelta

import ada_url
import httpx

from core import metrics
from core import webhooks as signing
from core.errors import InvalidInput
from core.gathered import Gathered
from core.outage import outage
from core.settings import Settings
from core.storage import (
    Observation,
    Order,
    Store,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
    delivery_id,
)
from core.urls import check_target_url, forbidden_ip_reason

log = logging.getLogger("crawlcoin.webhooks")

BATCH = 200
"""Deliveries one sender claims at a time."""
CONCURRENCY = 64
"""Requests one sender has in flight at once."""
POLL_SECONDS = 1.0
MAX_ERROR_CHARS = 300


def payload(webhook: Webhook, order: Order, obs: Observation, event: WebhookEvent) -> str:
    return json.dumps({
        "id": delivery_id(webhook.id, order.id, obs.n), "event": event.value, "webhook_id": webhook.id,
        "order_id": order.id, "url": order.url, "n": obs.n, "fetched_at": obs.fetched_at.isoformat(),
        "valid": obs.valid, "changed": obs.changed, "previous_n": obs.previous_n, "value": obs.value,
        "value_truncated": obs.value_truncated, "diff": obs.diff,
    })


def webhooks_of(store: Store, order: Order) -> list[Webhook]:
    """The webhooks told about the order's results: its own and its owner's for all orders (one store read)."""
    return [w for w in store.list_webhooks(order.owner_id) if w.order_id in (None, order.id)]


def deliveries_for(hooks: list[Webhook], order: Order, observations: list[Observation],
                   now: datetime) -> list[WebhookDelivery]:
    """The deliveries the observations of an order make to `hooks` (`webhooks_of` the order)."""
    out = []
    for hook in hooks:
        for obs in observations:
            if hook.event is WebhookEvent.change and not obs.changed:
                continue
            event = WebhookEvent.change if obs.changed else WebhookEvent.result
            out.append(WebhookDelivery(id=delivery_id(hook.id, order.id, obs.n), webhook_id=hook.id,
                                       order_id=order.id, n=obs.n, event=event,
                                       payload=payload(hook, order, obs, event), created_at=now, next_attempt_at=now))
    return out


def store_deliveries(store: Store, order: Order, observations: list[Observation], now: datetime) -> None:
    """Store the deliveries the observations make (the outbox), before the observations themselves are recorded."""
    if observations:
        store.add_webhook_deliveries(deliveries_for(webhooks_of(store, order), order, observations, now))


def retry_delay(settings: Settings, attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: doubling, capped, with a little jitter."""
    base = settings.webhook_retry_seconds * 2 ** (attempts - 1)
    return min(base, settings.webhook_retry_max_seconds) * random.uniform(0.9, 1.1)


class Refused(Exception):
    """The webhook's address is one the sender must not connect to."""


async def pinned_request(url: str, allow_private: bool) -> tuple[str, dict[str, str], dict[str, str]]:
    """The URL to request, with its host replaced by an address checked after DNS; the Host header and SNI name."""
    try:
        check_target_url(url, allow_private=allow_private)
    except InvalidInput as e:
        raise Refused(str(e)) from None
    parsed = ada_url.URL(url)
    host, host_header = parsed.hostname, parsed.host
    port = int(parsed.port) if parsed.port else (443 if parsed.protocol == "https:" else 80)
    literal = host[1:-1] if host.startswith("[") else host
    infos = await asyncio.get_running_loop().getaddrinfo(literal, port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise Refused(f"{host} has no address")
    if not allow_private:
        for address in addresses:
            reason = forbidden_ip_reason(address)
            if reason:
                raise Refused(f"{host} resolves to {reason}")
    address = addresses[0]
    parsed.hostname = f"[{address}]" if ":" in address else address
    return parsed.href, {"host": host_header}, {"sni_hostname": literal}


class WebhookSender:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._wake = asyncio.Event()

        def log_attempts(attempts: list[WebhookAttempt]) -> dict[WebhookAttempt, bool]:
            store.finish_webhook_attempts(attempts)
            return dict.fromkeys(attempts, True)

        self._attempts = Gathered(log_attempts)  # the attempts finishing meanwhile logged in one store call

    def wake(self) -> None:
        """Something was observed: look for due deliveries now rather than at the next poll."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        timeout = httpx.Timeout(self.settings.webhook_timeout_seconds)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            while not stopping.is_set():
                try:
                    sent = await self.run_once(client)
                    outage("the store").ok()
                except Exception as e:  # the store is down: the deliveries wait in it
                    outage("the store").failed(e, "sending webhooks")
                    sent = 0
                if sent < BATCH:
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout=POLL_SECONDS)
                    except TimeoutError:
                        pass
                    self._wake.clear()

    async def run_once(self, client: httpx.AsyncClient) -> int:
        """Claim the due deliveries (a batch), send them, log each attempt; how many were claimed."""
        now = datetime.now(UTC)
        # long enough for the whole batch to be tried, CONCURRENCY at a time, each request taking its longest
        rounds = -(-BATCH // CONCURRENCY)
        lease = now + timedelta(seconds=self.settings.webhook_timeout_seconds * rounds + 30)
        claimed = await asyncio.to_thread(self.store.claim_webhook_deliveries, now, lease, BATCH)
        if not claimed:
            return 0
        found = await asyncio.to_thread(self.store.get_webhooks, list({d.webhook_id for d in claimed}))
        hooks = {h.id: h for h in found}
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(d: WebhookDelivery) -> None:
            async with slots:
                await self.send(client, d, hooks.get(d.webhook_id))

        await asyncio.gather(*(one(d) for d in claimed))
        return len(claimed)

    async def send(self, client: httpx.AsyncClient, delivery: WebhookDelivery, webhook: Webhook | None) -> None:
        at = datetime.now(UTC)
        status: int | None = None
        error: str | None = None
        if webhook is None or webhook.deleted_at is not None:
            await self._attempts.get([WebhookAttempt.of(delivery, at, None, "the webhook was deleted", False, None)])
            return
        body = delivery.payload.encode()
        try:
            url, host, extensions = await pinned_request(webhook.url, self.settings.allow_private_targets)
            headers = {"content-type": "application/json", "user-agent": "crawlcoin-webhooks",
                       signing.DELIVERY_HEADER: delivery.id, signing.EVENT_HEADER: delivery.event.value,
                       signing.SIGNATURE_HEADER: signing.sign(webhook.secret, int(time.time()), body), **host}
            response = await client.post(url, content=body, headers=headers, extensions=extensions)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except Refused as e:
            error = f"refused target: {e}"
        except (httpx.HTTPError, OSError) as e:
            error = f"{type(e).__name__}: {e}"[:MAX_ERROR_CHARS]
        delivered = error is None
        attempts = delivery.attempts + 1
        retry_at = None
        if not delivered and attempts < self.settings.webhook_max_attempts:
            retry_at = datetime.now(UTC) + timedelta(seconds=retry_delay(self.settings, attempts))
        if delivered:
            metrics.WEBHOOK_LATENESS.observe((datetime.now(UTC) - delivery.created_at).total_seconds())
        metrics.WEBHOOK_ATTEMPTS.labels("delivered" if delivered else "retry" if retry_at else "failed").inc()
        if not delivered:
            log.info("webhook %s: delivery %s attempt %d failed (%s)%s", webhook.id, delivery.id, attempts, error,
                     "" if retry_at else "; giving up")
        await self._attempts.get([WebhookAttempt.of(delivery, at, status, error, delivered, retry_at)])
