"""The store's reads and writes of several orders at once (what the watcher's batches use), on every backend.

Each must give exactly what the one-order call gives for each of its orders, and skip what does not exist.
"""

import uuid
from datetime import timedelta

from core.storage import (
    Acknowledged,
    DeliveryState,
    Order,
    Result,
    Store,
    WatchCursor,
    WebhookAttempt,
    delivery_id,
    job_key,
)
from tests.core.storage.test_contract import claimable, new_user, now, store  # noqa: F401 - `store` is a fixture
from tests.core.storage.test_watch_contract import obs
from tests.core.storage.test_webhook_contract import delivery, webhook


def result(order_id: str, n: int) -> Result:
    return Result.with_body(f"page {n}".encode(), 1 << 20, job_key=job_key(order_id, n), order_id=order_id, n=n,
                            miner_id="miner", fetched_at=now(), status=200, final_url="https://example.com/",
                            stored_at=now())


def claimed(store: Store, *runs: int) -> list[Order]:  # noqa: F811
    """Orders of one customer, started a minute ago every second, with every repetition claimed."""
    user = new_user(store, coins=100)
    t0 = now() - timedelta(seconds=60)
    orders = [claimable(store, user, runs=r, every=1, start=t0) for r in runs]
    for order in orders:
        store.claim_repetitions(order.id, f"run-{order.id}", now() + timedelta(seconds=5), now(), 3600)
    return orders


def test_orders_repetitions_and_results_of_several_orders_at_once(store: Store) -> None:  # noqa: F811
    a, b = claimed(store, 4, 3)
    store.record_results([result(a.id, 1), result(a.id, 2), result(b.id, 3)])
    missing = str(uuid.uuid4())

    assert sorted(o.id for o in store.get_orders([a.id, missing, b.id, a.id])) == sorted([a.id, b.id])
    assert {o.id: o for o in store.get_orders([a.id, b.id])} == {i: store.get_order(i) for i in (a.id, b.id)}
    assert store.get_orders([]) == []

    reps = store.get_repetitions_of({a.id: [2, 3, 9], b.id: [1, 3], missing: [1]})
    assert sorted((r.order_id, r.n) for r in reps) == sorted([(a.id, 2), (a.id, 3), (b.id, 1), (b.id, 3)])
    assert sorted(reps, key=lambda r: (r.order_id, r.n)) == sorted(
        store.get_repetitions(a.id, [2, 3]) + store.get_repetitions(b.id, [1, 3]), key=lambda r: (r.order_id, r.n))
    assert store.get_repetitions_of({}) == []
    settled = store.get_repetitions_of({a.id: [1, 2, 3, 9], b.id: [1, 3]}, settled_only=True)
    assert sorted((r.order_id, r.n) for r in settled) == sorted([(a.id, 1), (a.id, 2), (b.id, 3)]), \
        "only the repetitions with a result (the others are still queued)"

    found = store.get_results([job_key(a.id, 2), job_key(b.id, 3), job_key(b.id, 1), job_key(missing, 1)])
    assert sorted((r.order_id, r.n) for r in found) == sorted([(a.id, 2), (b.id, 3)])
    assert {r.job_key: r for r in found} == {k: store.get_result(k) for k in (job_key(a.id, 2), job_key(b.id, 3))}
    assert found[0].body in (b"page 2", b"page 3")
    assert store.get_results([]) == []


def test_watch_cursors_and_observations_of_several_orders_at_once(store: Store) -> None:  # noqa: F811
    user = new_user(store, coins=100)
    a, b = claimable(store, user, runs=10), claimable(store, user, runs=10)
    never = str(uuid.uuid4())
    of_a, of_b = [obs(a.id, n) for n in (1, 2, 3)], [obs(b.id, 1)]
    store.record_observations_of([
        (WatchCursor(order_id=a.id, last_n=3, last_valid_n=2), of_a),
        (WatchCursor(order_id=b.id, last_n=1, last_valid_n=1), of_b),
    ])
    assert store.get_watch_cursors([b.id, never, a.id]) == [
        WatchCursor(order_id=b.id, last_n=1, last_valid_n=1), WatchCursor(order_id=never),
        WatchCursor(order_id=a.id, last_n=3, last_valid_n=2)]
    assert store.get_watch_cursors([]) == []
    got = store.get_observations([(a.id, 2), (b.id, 1), (b.id, 2), (never, 1), (a.id, 2)])
    assert sorted(got, key=lambda o: (o.order_id, o.n)) == sorted([of_a[1], of_b[0]], key=lambda o: (o.order_id, o.n))
    assert store.get_observations([]) == []

    # Again, overlapping and behind for `a`: its first observations stay and its cursor does not go back;
    # `b` moves on, and the same order twice in one call keeps the furthest cursor.
    store.record_observations_of([
        (WatchCursor(order_id=a.id, last_n=2, last_valid_n=1), [obs(a.id, 2, changed=True, diff="other")]),
        (WatchCursor(order_id=b.id, last_n=2, last_valid_n=2), [obs(b.id, 2)]),
        (WatchCursor(order_id=b.id, last_n=4, last_valid_n=4), [obs(b.id, 3), obs(b.id, 4)]),
    ])
    assert store.list_observations(a.id) == of_a
    assert store.get_watch_cursor(a.id) == WatchCursor(order_id=a.id, last_n=3, last_valid_n=2)
    assert [o.n for o in store.list_observations(b.id)] == [1, 2, 3, 4]
    assert store.get_watch_cursor(b.id) == WatchCursor(order_id=b.id, last_n=4, last_valid_n=4)
    store.record_observations_of([])


def test_webhooks_of_several_owners_at_once(store: Store) -> None:  # noqa: F811
    alice, bob, carol = new_user(store), new_user(store), new_user(store)
    hooks = [webhook(alice.id), webhook(bob.id, order_id=str(uuid.uuid4())), webhook(alice.id)]
    for hook in hooks:
        store.create_webhook(hook)
    store.delete_webhook(alice.id, hooks[2].id, now())
    assert store.list_webhooks_of([bob.id, alice.id, carol.id, alice.id]) == hooks[:2]  # oldest first, none deleted
    assert store.list_webhooks_of([carol.id]) == store.list_webhooks_of([]) == []


def test_deliveries_of_several_orders_and_clients_recorded_at_once(store: Store) -> None:  # noqa: F811
    a, b = claimed(store, 4, 4)
    for order in (a, b):
        store.record_results([result(order.id, n) for n in (1, 2, 3, 4)])
    at = [now() + timedelta(microseconds=i) for i in range(5)]  # each acknowledged at its own moment
    store.record_deliveries([
        Acknowledged(token_id="t1", order_id=a.id, after_n=0, last_n=2, at=at[0]),
        Acknowledged(token_id="t2", order_id=a.id, after_n=0, last_n=1, at=at[1]),
        Acknowledged(token_id="t1", order_id=b.id, after_n=0, last_n=3, at=at[2]),
        Acknowledged(token_id="t1", order_id=b.id, after_n=3, last_n=3, at=at[3]),  # nothing new: no stretch
    ])
    store.record_deliveries([Acknowledged(token_id="t1", order_id=a.id, after_n=0, last_n=1, at=at[4])])  # behind
    store.record_deliveries([])
    assert [store.get_delivery_cursor(t, o) for t, o in (("t1", a.id), ("t2", a.id), ("t1", b.id), ("t2", b.id))] == [
        2, 1, 3, 0]
    # What was acknowledged is what retention prunes: a 1–2 (twice), b 1–3; nothing else.
    while store.prune_result_bodies(now() + timedelta(seconds=1), now()).deliveries:
        pass
    kept = {(r.order_id, r.n): r.body_pruned_at is None for r in store.get_results(
        [job_key(o.id, n) for o in (a, b) for n in (1, 2, 3, 4)])}
    assert kept == {(a.id, 1): False, (a.id, 2): False, (a.id, 3): True, (a.id, 4): True,
                    (b.id, 1): False, (b.id, 2): False, (b.id, 3): False, (b.id, 4): True}


def test_webhooks_by_id_and_attempts_logged_at_once(store: Store) -> None:  # noqa: F811
    owner = new_user(store)
    hooks = [webhook(owner.id), webhook(owner.id)]
    for hook in hooks:
        store.create_webhook(hook)
    store.delete_webhook(owner.id, hooks[1].id, now())
    found = {h.id: h for h in store.get_webhooks([hooks[0].id, hooks[1].id, str(uuid.uuid4()), hooks[0].id])}
    assert found == {h.id: store.get_webhook(h.id) for h in hooks}, "deleted ones too"
    assert store.get_webhooks([]) == []

    order_id, t = str(uuid.uuid4()), now()
    store.add_webhook_deliveries([delivery(hooks[0], order_id, n, t - timedelta(seconds=1)) for n in (1, 2, 3, 4)])
    lease = t + timedelta(seconds=30)
    claimed = {d.n: d for d in store.claim_webhook_deliveries(now(), lease, 10)}
    retry = t + timedelta(seconds=1)
    stale = claimed[4].model_copy(update={"next_attempt_at": t})  # an attempt under a lease that is not this one
    store.finish_webhook_attempts([
        WebhookAttempt.of(claimed[1], t, 200, None, delivered=True, retry_at=None),
        WebhookAttempt.of(claimed[2], t, 500, "HTTP 500", delivered=False, retry_at=retry),
        WebhookAttempt.of(claimed[3], t, None, "connection refused", delivered=False, retry_at=None),
        WebhookAttempt.of(stale, t, 200, None, delivered=True, retry_at=None),
    ])
    store.finish_webhook_attempts([])
    got = {n: store.get_webhook_delivery(delivery_id(hooks[0].id, order_id, n)) for n in (1, 2, 3, 4)}
    assert {n: (d.state, d.attempts, d.last_status, d.next_attempt_at) for n, d in got.items() if d} == {
        1: (DeliveryState.delivered, 1, 200, None), 2: (DeliveryState.pending, 1, 500, retry),
        3: (DeliveryState.failed, 1, None, None), 4: (DeliveryState.pending, 0, None, lease)}
