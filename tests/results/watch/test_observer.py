"""Observing an order's results: extracted values, exactly one change record per change, right diffs."""

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from core import ledger, schedules
from core.schemas import Extraction
from core.storage import Order, Result, Store, User, Webhook, WebhookEvent, open_store
from results.watch.observer import observe_order, observe_orders
from tests.conftest import store_url as every_backend

store_url = every_backend  # this module runs on every backend (the result-delivery tests beside it on SQLite)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:  # noqa: F811 - the fixture above, by name
    s = open_store(store_url)
    yield s
    s.close()


def place(store: Store, runs: int, extraction: Extraction | None = None) -> Order:
    user = User(id=str(uuid.uuid4()), username=f"w{uuid.uuid4().hex[:10]}", password_hash="x",
                created_at=datetime.now(UTC))
    store.create_user(user)
    store.transfer(f"grant-{user.id}", ledger.MINT, ledger.user_account(user.id), runs, "grant")
    now = datetime.now(UTC)
    order = Order(id=str(uuid.uuid4()), owner_id=user.id, url="https://example.com/", method="GET",
                  schedule_kind="interval", every_seconds=1, start_at=now, max_runs=runs, extraction=extraction,
                  price_per_run=1, request_hash="h", created_at=now, updated_at=now)
    order.next_due_at = schedules.first_due(order)
    store.create_order(order)
    store.claim_repetitions(order.id, f"run-{order.id}", now + timedelta(seconds=runs + 5), now, 600)
    return order


def deliver(store: Store, order: Order, ns: list[int], page: Callable[[int], bytes], status: int | None = 200,
            error: str | None = None) -> None:
    store.record_results([Result.with_body(page(n), 1 << 20, job_key=f"{order.id}:{n}", order_id=order.id, n=n,
                                           miner_id="miner", fetched_at=datetime.now(UTC), status=status,
                                           final_url=order.url, headers={"content-type": "text/html"},
                                           error=error, stored_at=datetime.now(UTC)) for n in ns])


def price_page(n: int) -> bytes:
    """A page whose price changes at repetitions 3 and 6, and whose clock changes every time."""
    price = 10 if n < 3 else 12 if n < 6 else 9
    return (f"<html><body><p class=clock>{n}:00</p><h1>Widget</h1>\n<p class=price>{price} coins</p>\n"
            f"<p>in stock</p></body></html>").encode()


def test_a_page_changing_at_3_and_6_gives_exactly_two_changes_with_their_diffs(store: Store) -> None:
    order = place(store, 8, Extraction(kind="css", selector="h1, .price"))
    deliver(store, order, list(range(1, 9)), price_page)
    assert observe_order(store, order.id).last_n == 8
    observed = store.list_observations(order.id)
    assert [o.value for o in observed] == ["Widget\n10 coins"] * 2 + ["Widget\n12 coins"] * 3 + ["Widget\n9 coins"] * 3
    changes = store.list_observations(order.id, changes_only=True)
    assert [(c.n, c.previous_n) for c in changes] == [(3, 2), (6, 5)]
    assert changes[0].diff == "--- repetition 2\n+++ repetition 3\n@@ -1,2 +1,2 @@\n Widget\n-10 coins\n+12 coins"
    assert changes[1].diff == "--- repetition 5\n+++ repetition 6\n@@ -1,2 +1,2 @@\n Widget\n-12 coins\n+9 coins"
    assert observe_order(store, order.id).last_n == 8  # again: nothing new
    assert len(store.list_observations(order.id, changes_only=True)) == 2


def test_without_extraction_the_whole_page_is_compared(store: Store) -> None:
    order = place(store, 4)
    deliver(store, order, [1, 2, 3, 4], lambda n: f"<p>a</p>\n<p>{'b' if n < 4 else 'c'}</p>".encode())
    observe_order(store, order.id)
    [change] = store.list_observations(order.id, changes_only=True)
    assert (change.n, change.value) == (4, None)
    assert change.diff is not None and change.diff.endswith(" <p>a</p>\n-<p>b</p>\n+<p>c</p>")


def test_results_are_observed_in_n_order_only_once_the_ones_before_are_settled(store: Store) -> None:
    order = place(store, 5, Extraction(kind="text"))
    deliver(store, order, [1, 3, 4], lambda n: f"<p>v{n}</p>".encode())
    assert observe_order(store, order.id).last_n == 1  # 2 is still out: 3 and 4 wait
    store.refund_repetitions(order.id, [2])  # 2 will never have a result
    deliver(store, order, [5], lambda n: b"<p>v4</p>")
    assert observe_order(store, order.id).last_n == 5
    changes = store.list_observations(order.id, changes_only=True)
    assert [(c.n, c.previous_n) for c in changes] == [(3, 1), (4, 3)]  # 5 equals 4


def test_error_pages_and_failed_fetches_are_no_change(store: Store) -> None:
    order = place(store, 5, Extraction(kind="xpath", selector="//p/text()"))
    deliver(store, order, [1], lambda n: b"<p>same</p>")
    deliver(store, order, [2], lambda n: b"<p>Internal error</p>", status=500)
    deliver(store, order, [3], lambda n: b"", status=None, error="timeout")
    deliver(store, order, [4, 5], lambda n: b"<p>same</p>")
    observe_order(store, order.id)
    observed = store.list_observations(order.id)
    assert [(o.n, o.valid, o.changed) for o in observed] == [(1, True, False), (2, False, False), (3, False, False),
                                                             (4, True, False), (5, True, False)]
    assert observed[3].previous_n == 1


def test_a_batch_of_orders_is_observed_exactly_as_each_order_alone(store: Store) -> None:
    """The watcher observes the orders of a batch of notices together (`observe_orders`): what it writes — the
    observations, the cursors, the webhook deliveries — is what observing each order alone writes."""

    def scenarios() -> list[Order]:
        with_extraction = place(store, 8, Extraction(kind="css", selector="h1, .price"))
        deliver(store, with_extraction, list(range(1, 9)), price_page)
        whole_page = place(store, 4)
        deliver(store, whole_page, [1, 2, 3, 4], lambda n: f"<p>a</p>\n<p>{'b' if n < 4 else 'c'}</p>".encode())
        waiting = place(store, 5, Extraction(kind="text"))  # 2 is out: only 1 can be observed
        deliver(store, waiting, [1, 3, 4], lambda n: f"<p>v{n}</p>".encode())
        backlog = place(store, 70)  # more settled than one batch takes
        deliver(store, backlog, list(range(1, 71)), lambda n: f"<p>{n // 10}</p>".encode())
        for order in (whole_page, backlog):  # webhooks on every result, and on changes, of the owner's orders
            for event in (WebhookEvent.result, WebhookEvent.change):
                store.create_webhook(Webhook(id=str(uuid.uuid4()), owner_id=order.owner_id, url="https://h.example/",
                                             secret="s", event=event, created_at=datetime.now(UTC)))
        return [with_extraction, whole_page, waiting, backlog]

    def seen(order: Order) -> list[tuple[object, ...]]:
        return [(o.n, o.valid, o.value, o.changed, o.previous_n, o.diff)
                for o in store.list_observations(order.id, 0, 100)]

    def told(order: Order) -> list[tuple[object, ...]]:
        return sorted((h.event.value, d.n, json.loads(d.payload)["diff"]) for h in store.list_webhooks(order.owner_id)
                      for d in store.list_webhook_deliveries(h.id, 200))

    alone, together = scenarios(), scenarios()
    for order in alone:
        observe_order(store, order.id)
    reached = observe_orders(store, [o.id for o in together] + [str(uuid.uuid4())])
    assert [reached[o.id][1].last_n for o in together] == [8, 4, 1, 70]
    assert all(before.last_n == 0 for before, _ in reached.values())
    for one, other in zip(alone, together, strict=True):
        assert seen(other) == seen(one) and seen(one)
        assert store.get_watch_cursor(other.id).last_n == store.get_watch_cursor(one.id).last_n
        assert told(other) == told(one)
    assert len(told(together[3])) == 70 + 7  # every result, and the changes at 10, 20, … 70
    assert [o.n for o in store.list_observations(together[1].id, changes_only=True)] == [4]
    store.refund_repetitions(together[2].id, [2])  # now the rest of `waiting` is settled
    assert observe_orders(store, [together[2].id])[together[2].id][1].last_n == 4
