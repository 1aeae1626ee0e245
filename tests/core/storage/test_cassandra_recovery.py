"""Cassandra only: operations stopped between their steps, as if their process died, are finished by others.

A SQL backend does each of these in one transaction, so it has no such in-between state; the
backend-neutral version (a process killed with SIGKILL mid-transfer) is in test_contract.py.
"""

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from core import ledger
from core.errors import InsufficientFunds
from core.storage import open_store
from core.storage.cassandra import CassandraStore
from core.storage.cassandra.ledger import Crash
from tests.core.storage.test_contract import claimable, claimed, new_order, new_user, now, result_for


@pytest.fixture
def store(cassandra_url: str, empty_cassandra: Callable[[], None]) -> Iterator[CassandraStore]:
    empty_cassandra()
    s = open_store(cassandra_url)
    assert isinstance(s, CassandraStore)
    yield s
    s.close()


@pytest.fixture
def other(cassandra_url: str, store: CassandraStore) -> Iterator[CassandraStore]:
    """A second process's store, which finds what the first one left."""
    s = open_store(cassandra_url)
    assert isinstance(s, CassandraStore)
    yield s
    s.close()


def crash(store: CassandraStore, point: str, fn: Callable[[], object]) -> None:
    store.ledger.crash_at = {point}
    with pytest.raises(Crash):
        fn()
    store.ledger.crash_at = set()


def test_a_transfer_stopped_between_its_halves_is_completed_by_the_sweep(store: CassandraStore,
                                                                         other: CassandraStore) -> None:
    a, b = new_user(store, coins=10), new_user(store)
    src, dst = ledger.user_account(a.id), ledger.user_account(b.id)
    crash(store, "transfer:first-half", lambda: store.transfer("half", src, dst, 4, "t"))
    assert (other.get_balance(src), other.get_balance(dst)) == (6, 0), "the debit is in, the credit is not"
    assert other.recover_pending() == 1
    assert (other.get_balance(src), other.get_balance(dst)) == (6, 4)
    assert other.recover_pending() == 0
    store.transfer("half", src, dst, 4, "t")
    assert (other.get_balance(src), other.get_balance(dst)) == (6, 4), "a retry moves nothing more"


def test_a_transfer_stopped_between_its_halves_is_completed_by_a_retry(store: CassandraStore,
                                                                       other: CassandraStore) -> None:
    a, b = new_user(store, coins=10), new_user(store)
    src, dst = ledger.user_account(a.id), ledger.user_account(b.id)
    crash(store, "transfer:first-half", lambda: store.transfer("half", src, dst, 4, "t"))
    other.transfer("half", src, dst, 4, "t")
    other.transfer("half", src, dst, 4, "t")
    assert (other.get_balance(src), other.get_balance(dst)) == (6, 4)
    assert [e.delta for e in other.list_entries(src, 10)] == [-4, 10]
    assert other.recover_pending() == 0


def test_an_order_stopped_before_its_hold_is_completed_or_removed(store: CassandraStore,
                                                                  other: CassandraStore) -> None:
    rich, poor = new_user(store, coins=10), new_user(store, coins=2)
    paid, unpaid = new_order(rich, runs=4), new_order(poor, runs=4)
    crash(store, "order:pending", lambda: store.create_order(paid))
    crash(store, "order:pending", lambda: store.create_order(unpaid))
    ok = other.get_order(paid.id)
    assert ok is not None and other.get_balance(ledger.escrow_account(paid.id)) == 4
    assert other.recover_pending() == 1, "the unpaid order is removed"
    assert other.get_order(unpaid.id) is None and other.list_orders(poor.id, 10) == []
    assert other.get_balance(ledger.user_account(poor.id)) == 2
    with pytest.raises(InsufficientFunds):
        other.create_order(unpaid)


def test_an_order_stopped_after_its_hold_becomes_live_once(store: CassandraStore, other: CassandraStore) -> None:
    user = new_user(store, coins=10)
    order = new_order(user, runs=3)
    crash(store, "order:held", lambda: store.create_order(order))
    assert other.recover_pending() == 1
    assert [o.id for o in other.list_orders(user.id, 10)] == [order.id]
    again, created = store.create_order(order)
    assert not created and again.id == order.id
    assert other.get_balance(ledger.user_account(user.id)) == 7
    assert [o for o, _ in other.pending_syncs(10, now())] == [order.id]


def test_a_claim_stopped_after_its_counter_is_completed_by_the_next_claim(store: CassandraStore,
                                                                         other: CassandraStore) -> None:
    user = new_user(store, coins=10)
    t0 = now()
    order = claimable(store, user, runs=6, every=10, start=t0 - timedelta(seconds=40))
    crash(store, "claim:counted",
          lambda: store.claim_repetitions(order.id, "dead-run", t0 + timedelta(seconds=1), t0, catchup_seconds=25))
    assert other.get_repetitions(order.id, [1, 2, 3, 4, 5]) == [], "the job rows were never written"
    later = other.claim_repetitions(order.id, "next-run", t0 + timedelta(seconds=99), t0, catchup_seconds=25)
    assert [r.n for r in later.queued] == [6]
    assert {r.n: r.state.value for r in other.get_repetitions(order.id, [1, 2, 3, 4, 5])} == {
        1: "refunded", 2: "refunded", 3: "queued", 4: "queued", 5: "queued"}
    replay = other.claim_repetitions(order.id, "dead-run", t0 + timedelta(seconds=99), t0, catchup_seconds=25)
    assert replay.replay and [r.n for r in replay.queued] == [3, 4, 5] and [r.n for r in replay.refunded] == [1, 2]
    assert other.get_balance(ledger.user_account(user.id)) == 4 + 2
    assert other.get_balance(ledger.escrow_account(order.id)) == 4


def test_a_result_stored_but_not_paid_is_paid_once(store: CassandraStore, other: CassandraStore) -> None:
    _, order = claimed(store, runs=2, price=3)
    miner = new_user(store)
    crash(store, "result:stored", lambda: store.record_result(result_for(order, 1, miner)))
    assert other.get_balance(ledger.user_account(miner.id)) == 0
    assert other.recover_pending() == 1
    assert other.record_result(result_for(order, 1, miner)).outcome.value == "duplicate"
    assert other.get_balance(ledger.user_account(miner.id)) == 3
    assert other.get_balance(ledger.escrow_account(order.id)) == 3


def test_a_cancel_stopped_before_its_refund_refunds_once(store: CassandraStore, other: CassandraStore) -> None:
    user = new_user(store, coins=10)
    order, _ = store.create_order(new_order(user, runs=5))
    crash(store, "cancel:flipped", lambda: store.cancel_order(order.id))
    assert other.get_order(order.id).status.value == "cancelled"  # type: ignore[union-attr]
    assert other.get_balance(ledger.user_account(user.id)) == 5
    assert other.recover_pending() == 1
    assert other.cancel_order(order.id) is None
    assert other.get_balance(ledger.user_account(user.id)) == 10
    assert other.get_balance(ledger.escrow_account(order.id)) == 0


def test_an_edit_stopped_before_its_coins_moved_is_finished_by_the_sweep_or_undone(store: CassandraStore,
                                                                                   other: CassandraStore) -> None:
    from core.storage import OrderEdit

    user = new_user(store, coins=30)
    order = new_order(user, runs=10, price=2)
    order.next_due_at = order.start_at
    store.create_order(order)
    edit = OrderEdit.model_validate({**order.model_dump(include=set(OrderEdit.model_fields)), "max_runs": 4})
    crash(store, "edit:flipped", lambda: store.edit_order(order.id, edit, "k", now()))
    balances = (ledger.user_account(user.id), ledger.escrow_account(order.id))
    assert tuple(other.get_balance(a) for a in balances) == (10, 20), "the spec changed, the coins did not move yet"
    assert other.recover_pending() == 1
    assert tuple(other.get_balance(a) for a in balances) == (22, 8)
    assert other.get_order(order.id).max_runs == 4  # type: ignore[union-attr]
    assert other.recover_pending() == 0

    more = edit.model_copy(update={"max_runs": 20})  # 32 coins more: the owner has 22
    crash(store, "edit:flipped", lambda: store.edit_order(order.id, more, "k2", now()))
    claim = other.claim_repetitions(order.id, "run", now() + timedelta(seconds=1), now(), 600)
    assert claim.order.max_runs == 4, "the next claim found the edit, could not pay for it and undid it"
    assert [r.n for r in claim.queued] == [1]
    assert tuple(other.get_balance(a) for a in balances) == (22, 8)
