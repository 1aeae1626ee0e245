"""Webhooks from a running result server to a real receiver on 127.0.0.1: signed, retried, logged, never lost.

Run on every store backend (the root `store_url`, not result delivery's SQLite-only one): the sender's
claims and leases are store operations.
"""

import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
from redis import Redis

from core.schemas import Extraction
from core.settings import Settings
from core.storage import DeliveryState, Store, Webhook, WebhookDelivery, WebhookEvent, delivery_id
from results.server.app import ResultServer
from tests import conftest
from tests.conftest import ThreadedServer, make_settings
from tests.results.server.conftest import Customer
from tests.results.watch.test_changes_delivered import order_with_pages
from tests.webhook_receiver import Receiver

store_url = conftest.store_url  # every backend, not result delivery's SQLite alone


def sender_settings(tmp_path: Path, store_url: str, valkey_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"allow_private_targets": True, "webhook_retry_seconds": 0.3}
    return make_settings(tmp_path, store_url, valkey_url, **(values | overrides))


@contextmanager
def result_server(settings: Settings) -> Iterator[str]:
    with ThreadedServer(ResultServer(settings).app) as server:
        yield server.url


def add_webhook(customer: Customer, url: str, order_id: str | None = None,
                event: WebhookEvent = WebhookEvent.change) -> Webhook:
    hook = Webhook(id=str(uuid.uuid4()), owner_id=customer.user.id, order_id=order_id, url=url,
                   secret=f"whsec_{uuid.uuid4().hex}", event=event, created_at=datetime.now(UTC))
    customer.store.create_webhook(hook)
    return hook


def wait_for(what: str, check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def delivery(store: Store, hook: Webhook, order_id: str, n: int) -> WebhookDelivery:
    found = store.get_webhook_delivery(delivery_id(hook.id, order_id, n))
    assert found is not None, f"no delivery of repetition {n}"
    return found


def test_each_change_reaches_the_receiver_once_with_a_valid_signature(
        tmp_path: Path, store_url: str, valkey_url: str, redis: Redis, customer: Customer) -> None:
    with Receiver() as receiver, result_server(sender_settings(tmp_path, store_url, valkey_url)):
        on_changes = add_webhook(customer, receiver.url)  # the account's: every order, changes only
        order_id = str(uuid.uuid4())
        every_result = add_webhook(customer, receiver.url, order_id=order_id, event=WebhookEvent.result)
        order_id = order_with_pages(customer, 8, Extraction(kind="css", selector="h1, .price"), order_id=order_id)
        wait_for("the receiver got 2 changes and 8 results", lambda: len(receiver.delivered()) == 10)
        wait_for("the sender logged them", lambda: all(d.state is DeliveryState.delivered for d in
                                                       customer.store.list_webhook_deliveries(on_changes.id)))
        time.sleep(1.5)  # time for a duplicate to show up, were there one
        got = receiver.all()
        assert len(got) == 10 and len({r.delivery_id for r in got}) == 10, "each delivered once"
        changes = [r for r in got if r.payload["webhook_id"] == on_changes.id]
        assert sorted(r.payload["n"] for r in changes) == [3, 6]
        assert all(r.signed_by(on_changes.secret) and not r.signed_by(every_result.secret) for r in changes)
        six = next(r.payload for r in changes if r.payload["n"] == 6)
        assert (six["event"], six["changed"], six["previous_n"], six["value"]) == ("change", True, 5, "Widget\n9 coins")
        assert six["diff"].endswith(" Widget\n-12 coins\n+9 coins") and six["id"] == delivery_id(on_changes.id,
                                                                                                 order_id, 6)
        results = sorted((r for r in got if r.payload["webhook_id"] == every_result.id), key=lambda r: r.payload["n"])
        assert [(r.payload["n"], r.event) for r in results] == [(n, "change" if n in (3, 6) else "result")
                                                                for n in range(1, 9)]
        assert all(r.signed_by(every_result.secret) for r in results)
        logged = customer.store.list_webhook_deliveries(on_changes.id)
        assert [(d.n, d.state, d.attempts, d.last_status) for d in sorted(logged, key=lambda d: d.n)] == [
            (3, DeliveryState.delivered, 1, 200), (6, DeliveryState.delivered, 1, 200)]


def test_a_receiver_answering_500_twice_gets_it_on_the_third_try(
        tmp_path: Path, store_url: str, valkey_url: str, redis: Redis, customer: Customer) -> None:
    with Receiver(answer=lambda _id, seen: 500 if seen < 2 else 200) as receiver, \
            result_server(sender_settings(tmp_path, store_url, valkey_url)) as server:
        hook = add_webhook(customer, receiver.url)
        order_id = order_with_pages(customer, 4, Extraction(kind="css", selector=".price"))
        wait_for("the change was delivered and logged", lambda: len(receiver.delivered()) == 1 and delivery(
            customer.store, hook, order_id, 3).state is DeliveryState.delivered)
        assert [r.status for r in receiver.all()] == [500, 500, 200]
        assert len({r.delivery_id for r in receiver.all()}) == 1, "every attempt carries the same idempotency id"
        first, last = receiver.all()[0], receiver.all()[-1]
        assert last.at - first.at >= 0.3 * 0.9 * 3, "waits 0.3 s, then 0.6 s (less 10 % jitter)"
        assert all(r.signed_by(hook.secret) for r in receiver.all())
        logged = delivery(customer.store, hook, order_id, 3)
        assert (logged.state, logged.attempts, logged.last_status, logged.last_error) == (DeliveryState.delivered, 3,
                                                                                         200, None)
        scraped = httpx.get(f"{server}/metrics").text  # counters of this process: at least this test's attempts
        counts = {o: float(re.search(rf'crawlcoin_webhook_attempts_total{{outcome="{o}"}} (\S+)', scraped)[1])  # type: ignore
                  for o in ("retry", "delivered")}
        assert counts["retry"] >= 2 and counts["delivered"] >= 1, counts


def test_a_restart_of_the_sending_result_server_loses_nothing(
        tmp_path: Path, store_url: str, valkey_url: str, redis: Redis, customer: Customer) -> None:
    answers = {"status": 500}
    with Receiver(answer=lambda _id, _seen: answers["status"]) as receiver:
        hook = add_webhook(customer, receiver.url)
        settings = sender_settings(tmp_path, store_url, valkey_url, webhook_retry_seconds=5.0)
        with result_server(settings):
            order_id = order_with_pages(customer, 8, Extraction(kind="css", selector=".price"))
            wait_for("both changes were tried once and logged", lambda: all(
                (d := customer.store.get_webhook_delivery(delivery_id(hook.id, order_id, n))) is not None
                and d.attempts == 1 for n in (3, 6)))
            assert len(receiver.all()) == 2
        answers["status"] = 200  # the receiver comes back while no result server runs
        assert [d.state for d in customer.store.list_webhook_deliveries(hook.id)] == [DeliveryState.pending] * 2
        with result_server(settings):
            wait_for("the changes were delivered after the restart", lambda: len(receiver.delivered()) == 2 and all(
                delivery(customer.store, hook, order_id, n).state is DeliveryState.delivered for n in (3, 6)))
            time.sleep(1)
        assert sorted(r.payload["n"] for r in receiver.delivered()) == [3, 6]
        assert len(receiver.all()) == 4, "each change tried once before the restart and delivered once after"
        assert all(delivery(customer.store, hook, order_id, n).state is DeliveryState.delivered for n in (3, 6))


def test_without_private_targets_the_sender_refuses_a_loopback_receiver(
        tmp_path: Path, store_url: str, valkey_url: str, redis: Redis, customer: Customer) -> None:
    settings = sender_settings(tmp_path, store_url, valkey_url, allow_private_targets=False, webhook_max_attempts=1)
    with Receiver() as receiver, result_server(settings):
        hook = add_webhook(customer, receiver.url)  # stored directly: the API refuses it (tests/api/test_webhooks.py)
        order_id = order_with_pages(customer, 4, Extraction(kind="css", selector=".price"))
        key = delivery_id(hook.id, order_id, 3)

        def given_up() -> bool:
            found = customer.store.get_webhook_delivery(key)
            return found is not None and found.state is DeliveryState.failed

        wait_for("the delivery was given up", given_up)
        logged = delivery(customer.store, hook, order_id, 3)
        assert logged.last_error == "refused target: url host is not allowed: 127.0.0.1 is a loopback address"
        assert receiver.all() == []
