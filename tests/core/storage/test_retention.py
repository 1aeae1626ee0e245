"""Bodies of delivered results are deleted once their retention is over; the rest of each result stays.

Runs on every backend (the `store_url` fixture). "Delivered" is what `record_delivery` notes: a result
client acknowledged the stretch, its files are on disk.
"""

from datetime import timedelta

from core.storage import Store
from tests.core.storage.test_contract import claimed, new_user, now, result_for, store  # noqa: F401 (fixture)


def test_a_delivered_body_goes_after_its_retention_and_its_metadata_stays(store: Store) -> None:  # noqa: F811
    _, order = claimed(store, runs=4)
    miner = new_user(store)
    store.record_results([result_for(order, 1, miner, body=b"<html>page 1</html>"),
                          result_for(order, 2, miner, body=b"", error="robots_disallowed"),
                          result_for(order, 3, miner, body=b"<html>page 3</html>"),
                          result_for(order, 4, miner, body=b"<html>page 4</html>")])
    keys = {n: f"{order.id}:{n}" for n in (1, 2, 3, 4)}
    stored = {n: store.get_result(key) for n, key in keys.items()}
    store.record_delivery("tok", order.id, 0, 2, now() - timedelta(hours=2))  # the result client has 1 and 2
    assert store.get_delivery_cursor("tok", order.id) == 2

    # Delivered two hours ago: a retention of three hours keeps the body.
    assert store.prune_result_bodies(now() - timedelta(hours=3), now()).bodies == 0
    assert store.get_result(keys[1]).body == b"<html>page 1</html>"  # type: ignore[union-attr]

    pruned_at = now()
    assert store.prune_result_bodies(now() - timedelta(hours=1), pruned_at).bodies == 1
    first = store.get_result(keys[1])
    assert first is not None and first.body == b"" and first.body_pruned_at == pruned_at
    metadata = {"body_zlib", "body_pruned_at"}
    assert first.model_dump(exclude=metadata) == stored[1].model_dump(exclude=metadata)  # type: ignore[union-attr]
    assert first.sha256 == stored[1].sha256 and first.body_size == 19 and first.status == 200  # type: ignore[union-attr]
    assert store.list_results(order.id, 0, 1)[0].body_pruned_at == pruned_at
    assert store.get_result(keys[2]) == stored[2], "a result without a body is left as it was"

    # Never delivered: kept whatever the cutoff, also after the stretch delivered was handled.
    assert store.prune_result_bodies(now() + timedelta(days=3650), now()).bodies == 0
    for n in (3, 4):
        assert store.get_result(keys[n]) == stored[n]


def test_each_delivered_stretch_is_handled_once_up_to_the_limit(store: Store) -> None:  # noqa: F811
    _, order = claimed(store, runs=3)
    miner = new_user(store)
    store.record_results([result_for(order, n, miner, body=b"page %d" % n) for n in (1, 2, 3)])
    long_ago = now() - timedelta(days=30)
    store.record_delivery("tok", order.id, 0, 1, long_ago)
    store.record_delivery("tok", order.id, 1, 3, long_ago + timedelta(seconds=1))
    store.record_delivery("tok", order.id, 0, 1, long_ago + timedelta(seconds=2))  # again: the cursor stays at 3
    assert store.get_delivery_cursor("tok", order.id) == 3
    passes = [store.prune_result_bodies(now(), now(), limit=2) for _ in range(3)]
    assert [p.deliveries for p in passes] == [2, 1, 0]
    assert sum(p.bodies for p in passes) == 3
    assert all(store.get_result(f"{order.id}:{n}").body_pruned_at is not None for n in (1, 2, 3))  # type: ignore[union-attr]
