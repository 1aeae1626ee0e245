"""Editing a live order in the store, on every backend: re-priced with its escrow, applied from the next unclaimed
repetition (parametrised by the `store_url` fixture)."""

import uuid
from datetime import timedelta

import pytest

from core import ledger
from core.errors import Conflict, InsufficientFunds, InvalidInput
from core.schemas import Extraction
from core.storage import Order, OrderEdit, Store, rules
from tests.core.storage.test_contract import new_order, new_user, now, store  # noqa: F401 - `store` is a fixture


def edit_of(order: Order, **changes: object) -> OrderEdit:
    return OrderEdit.model_validate({**order.model_dump(include=set(OrderEdit.model_fields)), **changes})


def placed(store: Store, coins: int, runs: int, price: int = 2, claim: int = 0) -> tuple[Order, str]:  # noqa: F811
    user = new_user(store, coins=coins)
    order = new_order(user, runs=runs, price=price)
    order.next_due_at = order.start_at
    store.create_order(order)
    if claim:  # every 60 s: the first `claim` repetitions are due before this horizon
        t = now()
        store.claim_repetitions(order.id, f"run-{uuid.uuid4()}", order.start_at + timedelta(seconds=60 * claim - 30),
                                t, 10**6)
    return order, user.id


def coins(store: Store, order: Order, owner: str) -> tuple[int, int]:  # noqa: F811
    return store.get_balance(ledger.user_account(owner)), store.get_balance(ledger.escrow_account(order.id))


def test_fewer_runs_refund_exactly_the_difference_and_more_runs_take_it(store: Store) -> None:  # noqa: F811
    order, owner = placed(store, coins=100, runs=10, claim=3)
    assert coins(store, order, owner) == (80, 20)
    edited = store.edit_order(order.id, edit_of(order, max_runs=5), "k1", now())
    assert edited is not None and edited.max_runs == 5 and edited.runs_claimed == 3
    assert coins(store, order, owner) == (90, 10), "5 repetitions fewer at 2 coins: 10 back"
    again = store.edit_order(order.id, edit_of(order, max_runs=5), "k1", now())
    assert again is not None and coins(store, order, owner) == (90, 10), "a retried edit moves nothing twice"
    assert store.get_transfer(rules.edit_key(order.id, "k1")) is not None
    store.edit_order(order.id, edit_of(order, max_runs=8), "k2", now())
    assert coins(store, order, owner) == (84, 16)
    got = store.get_order(order.id)
    assert got is not None and got.max_runs == 8 and got.cost == 16


def test_an_edit_the_owner_cannot_pay_or_below_the_claimed_changes_nothing(store: Store) -> None:  # noqa: F811
    order, owner = placed(store, coins=30, runs=10, claim=3)
    with pytest.raises(InsufficientFunds):
        store.edit_order(order.id, edit_of(order, max_runs=16, url="https://example.com/other"), "k", now())
    with pytest.raises(InvalidInput, match="at least 3"):
        store.edit_order(order.id, edit_of(order, max_runs=2), "k2", now())
    got = store.get_order(order.id)
    assert got is not None and (got.max_runs, got.url) == (10, "https://example.com/")
    assert coins(store, order, owner) == (10, 20)
    store.cancel_order(order.id)
    with pytest.raises(Conflict, match="cancelled order cannot be changed"):
        store.edit_order(order.id, edit_of(order, max_runs=5), "k3", now())
    assert store.edit_order(str(uuid.uuid4()), edit_of(order), "k4", now()) is None


def test_a_new_interval_applies_from_the_next_unclaimed_repetition(store: Store) -> None:  # noqa: F811
    order, _ = placed(store, coins=100, runs=10, claim=3)
    start = order.start_at
    claimed = store.get_repetitions(order.id, [1, 2, 3])
    assert [r.due_at - start for r in claimed] == [timedelta(seconds=s) for s in (0, 60, 120)]
    edited = store.edit_order(order.id, edit_of(order, every_seconds=10, url="https://example.com/new",
                                                extraction=Extraction(kind="css", selector=".price")), "k", now())
    assert edited is not None and edited.next_due_at == start + timedelta(seconds=130)
    assert edited.url == "https://example.com/new" and edited.extraction == Extraction(kind="css", selector=".price")
    assert store.get_repetitions(order.id, [1, 2, 3]) == claimed, "claimed repetitions keep their due times"
    claim = store.claim_repetitions(order.id, "after-edit", start + timedelta(seconds=165), now(), 10**6)
    assert [(r.n, r.due_at - start) for r in claim.queued] == [(n, timedelta(seconds=s)) for n, s in
                                                               ((4, 130), (5, 140), (6, 150), (7, 160))]
    assert claim.order.runs_claimed == 7


def test_cutting_max_runs_to_the_claimed_ends_the_claims_and_adding_runs_resumes_them(
        store: Store) -> None:  # noqa: F811
    order, owner = placed(store, coins=100, runs=10, claim=3)
    cut = store.edit_order(order.id, edit_of(order, max_runs=3), "k", now())
    assert cut is not None and cut.next_due_at is None
    assert store.claim_repetitions(order.id, "none-left", now() + timedelta(days=1), now(), 10**6).queued == []
    assert coins(store, order, owner) == (94, 6)
    more = store.edit_order(order.id, edit_of(order, max_runs=4), "k2", now())
    assert more is not None and more.next_due_at is not None and more.next_due_at > now() - timedelta(seconds=1)
    claim = store.claim_repetitions(order.id, "one-more", now() + timedelta(days=1), now(), 10**6)
    assert [r.n for r in claim.queued] == [4]
