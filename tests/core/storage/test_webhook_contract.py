"""The store's webhooks and their delivery outbox, on every backend (parametrised by the `store_url` fixture)."""

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from core.storage import DeliveryState, Store, Webhook, WebhookDelivery, WebhookEvent, delivery_id
from tests.core.storage.test_contract import new_user, now, store  # noqa: F401 - `store` is a fixture


def webhook(owner_id: str, order_id: str | None = None) -> Webhook:
    return Webhook(id=str(uuid.uuid4()), owner_id=owner_id, order_id=order_id, url="https://example.com/hook",
                   secret="whsec_test", created_at=now())


def delivery(hook: Webhook, order_id: str, n: int, due: datetime, created: datetime | None = None) -> WebhookDelivery:
    return WebhookDelivery(id=delivery_id(hook.id, order_id, n), webhook_id=hook.id, order_id=order_id, n=n,
                           event=WebhookEvent.change, payload=f'{{"n": {n}}}', created_at=created or now(),
                           next_attempt_at=due)


def test_webhooks_are_listed_per_owner_until_deleted(store: Store) -> None:  # noqa: F811
    alice, bob = new_user(store), new_user(store)
    first, second = webhook(alice.id), webhook(alice.id, order_id=str(uuid.uuid4()))
    store.create_webhook(first)
    store.create_webhook(second)
    assert store.list_webhooks(alice.id) == [first, second]
    assert store.list_webhooks(bob.id) == []
    assert not store.delete_webhook(bob.id, first.id, now()), "only the owner deletes a webhook"
    assert store.delete_webhook(alice.id, first.id, now())
    assert not store.delete_webhook(alice.id, first.id, now())
    assert store.list_webhooks(alice.id) == [second]
    gone = store.get_webhook(first.id)
    assert gone is not None and gone.deleted_at is not None


def test_a_delivery_is_stored_once_and_claimed_by_one_sender_at_a_time(store: Store) -> None:  # noqa: F811
    hook = webhook(new_user(store).id)
    store.create_webhook(hook)
    order_id, t = str(uuid.uuid4()), now()
    first = delivery(hook, order_id, 3, t - timedelta(seconds=1))
    store.add_webhook_deliveries([first])
    store.add_webhook_deliveries([delivery(hook, order_id, 3, t, created=t + timedelta(seconds=5))])  # fanned out again
    assert store.list_webhook_deliveries(hook.id) == [first]
    lease = t + timedelta(seconds=60)
    with ThreadPoolExecutor(4) as pool:
        claims = list(pool.map(lambda _: store.claim_webhook_deliveries(now(), lease, 10), range(4)))
    assert sorted(len(c) for c in claims) == [0, 0, 0, 1], "one sender gets it"
    claimed = next(c[0] for c in claims if c)
    assert claimed.id == first.id and claimed.next_attempt_at == lease
    assert store.claim_webhook_deliveries(now(), lease, 10) == [], "leased: not due before the lease ends"
    assert [d.id for d in store.claim_webhook_deliveries(lease, lease + timedelta(seconds=60), 10)] == [first.id], \
        "a sender that died holding it leaves it due at the end of its lease"


def test_attempts_are_logged_until_delivered_or_given_up(store: Store) -> None:  # noqa: F811
    hook = webhook(new_user(store).id)
    store.create_webhook(hook)
    order_id, t = str(uuid.uuid4()), now()
    store.add_webhook_deliveries([delivery(hook, order_id, n, t - timedelta(seconds=1)) for n in (1, 2)])
    lease = t + timedelta(seconds=30)
    claimed = {d.n: d for d in store.claim_webhook_deliveries(now(), lease, 10)}
    assert sorted(claimed) == [1, 2]
    retry = t + timedelta(seconds=1)
    store.finish_webhook_attempt(claimed[1], t, 500, "HTTP 500", delivered=False, retry_at=retry)
    store.finish_webhook_attempt(claimed[2], t, None, "connection refused", delivered=False, retry_at=None)
    one = store.get_webhook_delivery(delivery_id(hook.id, order_id, 1))
    two = store.get_webhook_delivery(delivery_id(hook.id, order_id, 2))
    assert one is not None and (one.state, one.attempts, one.last_status, one.next_attempt_at) == (
        DeliveryState.pending, 1, 500, retry)
    assert two is not None and (two.state, two.attempts, two.last_error, two.next_attempt_at) == (
        DeliveryState.failed, 1, "connection refused", None)
    store.finish_webhook_attempt(claimed[1], t, 200, None, delivered=True, retry_at=None)
    assert store.get_webhook_delivery(one.id) == one, "an attempt on a lease that moved on changes nothing"
    assert store.claim_webhook_deliveries(t, lease, 10) == []
    again = store.claim_webhook_deliveries(retry, lease, 10)
    assert [d.id for d in again] == [one.id]
    store.finish_webhook_attempt(again[0], retry, 200, None, delivered=True, retry_at=None)
    done = store.get_webhook_delivery(one.id)
    assert done is not None and (done.state, done.attempts, done.last_status, done.delivered_at) == (
        DeliveryState.delivered, 2, 200, retry)
    assert store.claim_webhook_deliveries(now() + timedelta(hours=1), lease, 10) == []


def test_the_delivery_log_pages_newest_first(store: Store) -> None:  # noqa: F811
    hook = webhook(new_user(store).id)
    store.create_webhook(hook)
    order_id, t = str(uuid.uuid4()), now()
    store.add_webhook_deliveries([delivery(hook, order_id, n, t, created=t + timedelta(seconds=n))
                                  for n in range(1, 8)])
    page = store.list_webhook_deliveries(hook.id, limit=3)
    assert [d.n for d in page] == [7, 6, 5]
    more = store.list_webhook_deliveries(hook.id, limit=10, before=(page[-1].created_at, page[-1].id))
    assert [d.n for d in more] == [4, 3, 2, 1]
    assert store.list_webhook_deliveries(str(uuid.uuid4())) == []
