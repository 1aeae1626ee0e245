"""The store's observations and watch cursors, on every backend (parametrised by the `store_url` fixture)."""

import uuid
from concurrent.futures import ThreadPoolExecutor

from core.storage import Observation, Store, WatchCursor
from tests.core.storage.test_contract import new_order, new_user, now, store  # noqa: F401 - `store` is a fixture


def obs(order_id: str, n: int, changed: bool = False, diff: str | None = None) -> Observation:
    return Observation(order_id=order_id, n=n, fetched_at=now(), valid=True, value_sha256=f"sha-{n}", changed=changed,
                       previous_n=n - 1 if n > 1 else None, diff=diff, created_at=now())


def test_observations_are_listed_in_n_order_and_changes_alone_on_request(store: Store) -> None:  # noqa: F811
    order = new_order(new_user(store, coins=100), runs=80)
    store.create_order(order)
    assert store.get_watch_cursor(order.id) == WatchCursor(order_id=order.id)
    written = [obs(order.id, n, changed=n in (3, 40, 70), diff=f"-a\n+b{n}" if n in (3, 40, 70) else None)
               for n in range(1, 76)]
    store.record_observations(WatchCursor(order_id=order.id, last_n=75, last_valid_n=75), written)
    assert store.get_watch_cursor(order.id) == WatchCursor(order_id=order.id, last_n=75, last_valid_n=75)
    assert [o.n for o in store.list_observations(order.id, 0, 100)] == list(range(1, 76))
    assert store.list_observations(order.id, 10, 3) == written[10:13]
    changes = store.list_observations(order.id, 0, 100, changes_only=True)
    assert [(o.n, o.diff) for o in changes] == [(3, "-a\n+b3"), (40, "-a\n+b40"), (70, "-a\n+b70")]
    assert [o.n for o in store.list_observations(order.id, 3, 1, changes_only=True)] == [40]


def test_the_first_observation_stays_and_the_cursor_never_goes_back(store: Store) -> None:  # noqa: F811
    order = new_order(new_user(store, coins=100), runs=10)
    store.create_order(order)
    first = [obs(order.id, n) for n in (1, 2)]
    store.record_observations(WatchCursor(order_id=order.id, last_n=2, last_valid_n=2), first)
    store.record_observations(WatchCursor(order_id=order.id, last_n=1, last_valid_n=1),
                              [obs(order.id, 1, changed=True, diff="other")])
    assert store.list_observations(order.id) == first
    assert store.get_watch_cursor(order.id).last_n == 2


def test_watchers_writing_the_same_observations_at_once_store_them_once(store: Store) -> None:  # noqa: F811
    order = new_order(new_user(store, coins=100), runs=40)
    store.create_order(order)
    same = [obs(order.id, n) for n in range(1, 41)]

    def write(_: int) -> None:
        store.record_observations(WatchCursor(order_id=order.id, last_n=40, last_valid_n=40), same)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    assert store.list_observations(order.id) == same
    assert store.get_watch_cursor(order.id).last_n == 40
    assert store.list_observations(str(uuid.uuid4())) == []
