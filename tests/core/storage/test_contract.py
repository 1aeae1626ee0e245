"""One contract suite for every store backend (parametrised by the `store_url` fixture)."""

import hashlib
import multiprocessing
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from core import ledger
from core.errors import Conflict, IdempotencyConflict, InsufficientFunds, InvalidInput
from core.schemas import OrderStatus, Validation
from core.storage import ApiToken, Order, Recorded, Result, ResultOutcome, Store, User, open_store


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def now() -> datetime:
    return datetime.now(UTC)


def new_user(store: Store, coins: int = 0) -> User:
    user = User(id=str(uuid.uuid4()), username=f"u{uuid.uuid4().hex[:12]}", password_hash="h", created_at=now())
    store.create_user(user)
    if coins:
        store.transfer(f"grant:{user.id}", ledger.MINT, ledger.user_account(user.id), coins, "grant")
    return user


def new_order(owner: User, runs: int = 5, price: int = 1, order_id: str | None = None,
              request_hash: str = "h") -> Order:
    t = now()
    return Order(id=order_id or str(uuid.uuid4()), owner_id=owner.id, url="https://example.com/", method="GET",
                 schedule_kind="interval", every_seconds=60, start_at=t, max_runs=runs, price_per_run=price,
                 request_hash=request_hash, created_at=t, updated_at=t)


# --- users, sessions, tokens ----------------------------------------------------------------


def test_usernames_are_unique(store: Store) -> None:
    user = new_user(store)
    clash = User(id=str(uuid.uuid4()), username=user.username, password_hash="h", created_at=now())
    with pytest.raises(Conflict, match="taken"):
        store.create_user(clash)
    assert store.get_user_by_username(user.username).id == user.id  # type: ignore[union-attr]
    assert store.get_user(clash.id) is None


def test_totp_secret_fixed_once_enabled(store: Store) -> None:
    user = new_user(store)
    assert store.set_totp_secret(user.id, "AAAA")
    store.enable_totp(user.id)
    assert not store.set_totp_secret(user.id, "BBBB")
    stored = store.get_user(user.id)
    assert stored is not None and stored.totp_secret == "AAAA" and stored.totp_enabled


def test_a_totp_step_is_accepted_once_even_concurrently(store: Store) -> None:
    user = new_user(store)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: store.use_totp_step(user.id, 1000), range(16)))
    assert results.count(True) == 1
    assert not store.use_totp_step(user.id, 999), "an older step must be refused too"
    assert store.use_totp_step(user.id, 1001)


def test_sessions_revoke(store: Store) -> None:
    from core.storage import LoginSession

    user = new_user(store)
    s = LoginSession(id=str(uuid.uuid4()), user_id=user.id, created_at=now(), expires_at=now() + timedelta(hours=1))
    store.create_session(s)
    assert store.get_session(s.id).revoked_at is None  # type: ignore[union-attr]
    store.revoke_session(s.id, now())
    assert store.get_session(s.id).revoked_at is not None  # type: ignore[union-attr]


def test_api_tokens_listed_per_owner_and_revoked_only_by_owner(store: Store) -> None:
    alice, bob = new_user(store), new_user(store)
    for i in range(3):
        store.create_api_token(ApiToken(id=f"{i:016x}{uuid.uuid4().hex[:4]}"[:16], owner_id=alice.id, name=f"t{i}",
                                        secret_hash="x", scopes=["mine"], created_at=now() + timedelta(seconds=i)))
    tokens = store.list_api_tokens(alice.id)
    assert [t.name for t in tokens] == ["t2", "t1", "t0"]
    assert store.list_api_tokens(bob.id) == []
    assert not store.revoke_api_token(bob.id, tokens[0].id, now())
    assert store.get_api_token(tokens[0].id).revoked_at is None  # type: ignore[union-attr]
    assert store.revoke_api_token(alice.id, tokens[0].id, now())
    assert store.get_api_token(tokens[0].id).revoked_at is not None  # type: ignore[union-attr]


# --- ledger ---------------------------------------------------------------------------------


def test_transfer_moves_coins_and_records_both_sides(store: Store) -> None:
    a, b = new_user(store, coins=10), new_user(store)
    store.transfer("t1", ledger.user_account(a.id), ledger.user_account(b.id), 4, "test")
    assert store.get_balance(ledger.user_account(a.id)) == 6
    assert store.get_balance(ledger.user_account(b.id)) == 4
    [entry] = store.list_entries(ledger.user_account(b.id), 10)
    assert (entry.txn_key, entry.delta, entry.balance_after) == ("t1", 4, 4)
    latest = store.list_entries(ledger.user_account(a.id), 10)[0]
    assert (latest.delta, latest.balance_after) == (-4, 6)


def test_same_idempotency_key_twice_moves_coins_once(store: Store) -> None:
    a, b = new_user(store, coins=10), new_user(store)
    first = store.transfer("once", ledger.user_account(a.id), ledger.user_account(b.id), 3, "test")
    again = store.transfer("once", ledger.user_account(a.id), ledger.user_account(b.id), 3, "test")
    assert again.created_at == first.created_at
    assert store.get_balance(ledger.user_account(a.id)) == 7
    assert store.get_balance(ledger.user_account(b.id)) == 3
    with pytest.raises(IdempotencyConflict):
        store.transfer("once", ledger.user_account(a.id), ledger.user_account(b.id), 5, "test")
    assert store.get_balance(ledger.user_account(b.id)) == 3


def test_same_key_concurrently_moves_coins_once(store: Store) -> None:
    a, b = new_user(store, coins=100), new_user(store)
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda _: store.transfer("race", ledger.user_account(a.id), ledger.user_account(b.id), 7, "t"),
                      range(20)))
    assert store.get_balance(ledger.user_account(b.id)) == 7
    assert store.get_balance(ledger.user_account(a.id)) == 93


def test_no_balance_goes_negative(store: Store) -> None:
    a, b = new_user(store, coins=5), new_user(store)
    with pytest.raises(InsufficientFunds, match="balance 5, needed 6"):
        store.transfer("too-much", ledger.user_account(a.id), ledger.user_account(b.id), 6, "test")
    assert store.get_balance(ledger.user_account(a.id)) == 5
    assert store.get_transfer("too-much") is None, "a refused transfer leaves no trace"
    with pytest.raises(InvalidInput):
        store.transfer("zero", ledger.user_account(a.id), ledger.user_account(b.id), 0, "test")
    with pytest.raises(InsufficientFunds):
        store.transfer("nobody", ledger.user_account("nobody"), ledger.user_account(b.id), 1, "test")


def test_only_the_mint_goes_negative_and_coins_are_conserved(store: Store) -> None:
    users = [new_user(store, coins=10) for _ in range(3)]
    accounts = [ledger.MINT] + [ledger.user_account(u.id) for u in users]
    assert store.get_balance(ledger.MINT) == -30
    store.transfer("x", accounts[1], accounts[2], 10, "t")
    assert sum(store.get_balance(a) for a in accounts) == 0


def test_50_concurrent_holds_against_a_balance_that_covers_10(store: Store) -> None:
    user = new_user(store, coins=10)

    def hold(i: int) -> bool:
        try:
            store.transfer(f"hold-{i}", ledger.user_account(user.id), ledger.escrow_account(f"o{i}"), 1, "hold")
            return True
        except InsufficientFunds:
            return False

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(hold, range(50)))
    assert results.count(True) == 10
    assert store.get_balance(ledger.user_account(user.id)) == 0
    assert sum(store.get_balance(ledger.escrow_account(f"o{i}")) for i in range(50)) == 10


def _hold_in_process(store_url: str, user_id: str, worker: int, results: "multiprocessing.Queue[int]") -> None:
    store = open_store(store_url)
    won = 0
    for i in range(10):
        try:
            store.transfer(f"p{worker}-{i}", ledger.user_account(user_id), ledger.escrow_account(f"p{worker}"), 1,
                           "hold")
            won += 1
        except InsufficientFunds:
            pass
    store.close()
    results.put(won)


def test_concurrent_holds_from_several_processes_never_overdraw(store: Store, store_url: str) -> None:
    user = new_user(store, coins=15)
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=_hold_in_process, args=(store_url, user.id, w, results)) for w in range(4)]
    for p in procs:
        p.start()
    won = sum(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert won == 15
    assert store.get_balance(ledger.user_account(user.id)) == 0
    assert sum(store.get_balance(ledger.escrow_account(f"p{w}")) for w in range(4)) == 15


def test_ledger_history_pages_newest_first(store: Store) -> None:
    a, b = new_user(store, coins=100), new_user(store)
    for i in range(7):
        store.transfer(f"page-{i}", ledger.user_account(a.id), ledger.user_account(b.id), 1, "t")
    account = ledger.user_account(b.id)
    first = store.list_entries(account, 4)
    rest = store.list_entries(account, 4, (first[-1].created_at, first[-1].txn_key))
    keys = [e.txn_key for e in first + rest]
    assert len(keys) == 7 and len(set(keys)) == 7
    assert [e.balance_after for e in first + rest] == [7, 6, 5, 4, 3, 2, 1]


# --- orders ---------------------------------------------------------------------------------


def test_create_order_holds_its_cost_in_escrow(store: Store) -> None:
    user = new_user(store, coins=10)
    order, created = store.create_order(new_order(user, runs=4, price=2))
    assert created
    assert store.get_balance(ledger.user_account(user.id)) == 2
    assert store.get_balance(ledger.escrow_account(order.id)) == 8
    assert store.get_order(order.id) == order


def test_unaffordable_order_stores_nothing(store: Store) -> None:
    user = new_user(store, coins=3)
    order = new_order(user, runs=4)
    with pytest.raises(InsufficientFunds):
        store.create_order(order)
    assert store.get_order(order.id) is None
    assert store.list_orders(user.id, 10) == []
    assert store.get_balance(ledger.user_account(user.id)) == 3


def test_create_order_is_idempotent_by_id(store: Store) -> None:
    user = new_user(store, coins=10)
    order = new_order(user, runs=3)
    store.create_order(order)
    again, created = store.create_order(order)
    assert not created and again.id == order.id
    assert store.get_balance(ledger.user_account(user.id)) == 7
    with pytest.raises(IdempotencyConflict):
        store.create_order(new_order(user, runs=3, order_id=order.id, request_hash="other"))


def test_orders_list_per_owner_newest_first_with_cursor(store: Store) -> None:
    alice, bob = new_user(store, coins=100), new_user(store, coins=100)
    made = [store.create_order(new_order(alice, runs=1))[0] for _ in range(5)]
    store.create_order(new_order(bob, runs=1))
    page = store.list_orders(alice.id, 3)
    page2 = store.list_orders(alice.id, 3, (page[-1].created_at, page[-1].id))
    assert [o.id for o in page + page2] == [o.id for o in reversed(made)]


def test_pause_resume_and_cancel_refunds_unclaimed(store: Store) -> None:
    user = new_user(store, coins=10)
    order, _ = store.create_order(new_order(user, runs=6))
    paused = store.set_order_status(order.id, {OrderStatus.active}, OrderStatus.paused)
    assert paused is not None and paused.status is OrderStatus.paused
    assert store.set_order_status(order.id, {OrderStatus.active}, OrderStatus.paused) is None
    result = store.cancel_order(order.id)
    assert result is not None
    cancelled, refunded = result
    assert cancelled.status is OrderStatus.cancelled and refunded == 6
    assert store.get_balance(ledger.user_account(user.id)) == 10
    assert store.get_balance(ledger.escrow_account(order.id)) == 0
    assert store.cancel_order(order.id) is None, "cancelling twice refunds once"
    assert store.get_balance(ledger.user_account(user.id)) == 10


# --- repetitions and the Prefect sync queue -------------------------------------------------


def claimable(store: Store, user: User, runs: int = 5, every: int = 10, start: datetime | None = None,
              price: int = 1) -> Order:
    from core import schedules

    order = new_order(user, runs=runs, price=price)
    order.every_seconds = every
    order.start_at = start or now()
    order.next_due_at = schedules.first_due(order)
    store.create_order(order)
    return order


def test_claim_takes_repetitions_due_before_the_horizon_once_per_flow_run(store: Store) -> None:
    user = new_user(store, coins=10)
    t0 = now()
    order = claimable(store, user, runs=5, every=10, start=t0)
    claim = store.claim_repetitions(order.id, "run-1", t0 + timedelta(seconds=25), t0, catchup_seconds=60)
    assert [r.n for r in claim.queued] == [1, 2, 3] and not claim.replay
    assert [r.due_at for r in claim.queued] == [t0, t0 + timedelta(seconds=10), t0 + timedelta(seconds=20)]
    again = store.claim_repetitions(order.id, "run-1", t0 + timedelta(seconds=99), t0, catchup_seconds=60)
    assert again.replay and [r.n for r in again.queued] == [1, 2, 3], "a flow run run twice claims nothing new"
    rest = store.claim_repetitions(order.id, "run-2", t0 + timedelta(seconds=99), t0, catchup_seconds=60)
    assert [r.n for r in rest.queued] == [4, 5]
    assert rest.order.status is OrderStatus.active and rest.order.next_due_at is None
    assert store.claim_repetitions(order.id, "run-3", t0 + timedelta(days=9), t0, 60).queued == []
    assert [o for o, _ in store.pending_syncs(10, now())] == [order.id]


def test_concurrent_claims_never_claim_a_repetition_twice(store: Store) -> None:
    user = new_user(store, coins=50)
    t0 = now()
    order = claimable(store, user, runs=40, every=1, start=t0)
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda i: store.claim_repetitions(order.id, f"run-{i}", t0 + timedelta(seconds=i * 5),
                                                                   t0, 600), range(10)))
    ns = [r.n for c in claims for r in c.queued]
    assert sorted(ns) == list(range(1, 41))


def test_missed_repetitions_beyond_catchup_are_refunded(store: Store) -> None:
    user = new_user(store, coins=10)
    t0 = now()
    order = claimable(store, user, runs=4, every=60, start=t0 - timedelta(minutes=3))
    claim = store.claim_repetitions(order.id, "late-run", t0 + timedelta(seconds=30), t0, catchup_seconds=90)
    assert [r.n for r in claim.refunded] == [1, 2] and [r.n for r in claim.queued] == [3, 4]
    assert store.get_balance(ledger.user_account(user.id)) == 6 + 2
    assert store.get_balance(ledger.escrow_account(order.id)) == 2


def test_unclaim_returns_withdrawn_suffix_of_a_paused_order(store: Store) -> None:
    user = new_user(store, coins=10)
    t0 = now()
    order = claimable(store, user, runs=6, every=10, start=t0)
    store.claim_repetitions(order.id, "r1", t0 + timedelta(seconds=45), t0, 60)  # claims 1..5
    assert store.set_order_status(order.id, {OrderStatus.active}, OrderStatus.paused) is not None
    assert store.unclaim(order.id, [4, 5]) == 2
    reloaded = store.get_order(order.id)
    assert reloaded is not None and reloaded.runs_claimed == 3 and reloaded.next_due_at is None
    assert store.get_balance(ledger.escrow_account(order.id)) == 6, "unclaimed repetitions stay paid for"
    assert store.unclaim(order.id, [2]) == 0, "not the newest claims: refunded instead"
    assert {r.n: r.state.value for r in store.get_repetitions(order.id, [1, 2, 3, 4, 5])} == {
        1: "queued", 2: "refunded", 3: "queued"}
    assert store.get_balance(ledger.escrow_account(order.id)) == 5


def test_refund_repetitions_is_idempotent(store: Store) -> None:
    user = new_user(store, coins=10)
    t0 = now()
    order = claimable(store, user, runs=3, every=10, start=t0)
    store.claim_repetitions(order.id, "r1", t0 + timedelta(seconds=35), t0, 60)
    store.cancel_order(order.id)
    assert store.refund_repetitions(order.id, [2, 3]) == 2
    assert store.refund_repetitions(order.id, [2, 3]) == 0
    assert store.get_balance(ledger.user_account(user.id)) == 9
    assert store.get_balance(ledger.escrow_account(order.id)) == 1


def test_a_claim_with_queued_repetitions_stays_open_until_closed(store: Store) -> None:
    user = new_user(store, coins=10)
    t0 = now()
    order = claimable(store, user, runs=4, every=60, start=t0 - timedelta(minutes=3))
    store.claim_repetitions(order.id, "late-run", t0 + timedelta(seconds=30), t0, catchup_seconds=90)  # 1-2 refunded
    idle = claimable(store, user, runs=1, every=60, start=t0 + timedelta(days=1))
    store.claim_repetitions(idle.id, "idle-run", t0 + timedelta(seconds=30), t0, 60)  # nothing due: nothing to hold
    later = t0 + timedelta(seconds=5)
    [claim] = store.open_claims(later, 100)
    assert (claim.flow_run_id, claim.order_id, claim.first_n, claim.last_n, claim.queued) == (
        "late-run", order.id, 1, 4, False)
    assert claim.created_at == t0
    assert store.open_claims(t0, 100) == [], "only claims made before the given time"
    store.claim_repetitions(order.id, "late-run", t0 + timedelta(seconds=30), t0, catchup_seconds=90)
    assert len(store.open_claims(later, 100)) == 1, "a replayed claim is still one claim"
    store.confirm_queued("late-run")
    store.confirm_queued("late-run")
    assert [c.queued for c in store.open_claims(later, 100)] == [True]
    store.close_claim("late-run")
    store.close_claim("late-run")
    store.confirm_queued("late-run")
    assert store.open_claims(later, 100) == [], "closed for good: confirming again does not reopen it"


def test_open_repetitions_reads_what_each_open_claim_holds_at_once(store: Store) -> None:
    user = new_user(store, coins=20)
    t0 = now()
    first = claimable(store, user, runs=3, every=60, start=t0)
    store.claim_repetitions(first.id, "a-1", t0 + timedelta(seconds=150), t0, 60)  # 1-3
    second = claimable(store, user, runs=4, every=60, start=t0)
    store.claim_repetitions(second.id, "b-1", t0 + timedelta(seconds=30), t0, 60)  # 1
    store.claim_repetitions(second.id, "b-2", t0 + timedelta(seconds=90), t0, 60)  # 2
    assert store.record_result(result_for(first, 2, new_user(store))).outcome.value == "paid"
    claims = store.open_claims(t0 + timedelta(seconds=1), 100)
    held = store.open_repetitions(claims)
    assert {k: [r.n for r in v] for k, v in held.items()} == {"a-1": [1, 3], "b-1": [1], "b-2": [2]}, \
        "a settled repetition is left out"
    for claim in claims:
        alone = [r for r in store.get_repetitions(claim.order_id, list(range(claim.first_n, claim.last_n + 1)))
                 if r.flow_run_id == claim.flow_run_id and r.state.value in ("queued", "leased")]
        assert held[claim.flow_run_id] == alone, "the same as reading each claim on its own"
    assert store.open_repetitions([]) == {}
    due = store.open_repetitions(claims, due_before=t0 + timedelta(seconds=30))
    assert {k: [r.n for r in v] for k, v in due.items()} == {"a-1": [1], "b-1": [1], "b-2": []}, \
        "only the open ones due before it (#2 of b is due at +60 s, #3 of a at +120 s)"


def test_open_claims_are_listed_oldest_first_across_orders_up_to_the_limit(store: Store) -> None:
    user = new_user(store, coins=20)
    t0 = now()
    for i in range(3):
        order = claimable(store, user, runs=2, every=60, start=t0)
        store.claim_repetitions(order.id, f"run-{i}", t0 + timedelta(seconds=90), t0 + timedelta(seconds=i), 600)
    later = t0 + timedelta(seconds=10)
    assert [c.flow_run_id for c in store.open_claims(later, 100)] == ["run-0", "run-1", "run-2"]
    assert [c.flow_run_id for c in store.open_claims(later, 2)] == ["run-0", "run-1"]
    assert [c.flow_run_id for c in store.open_claims(t0 + timedelta(seconds=1.5), 100)] == ["run-0", "run-1"]


def test_sync_requests_survive_until_finished_and_newer_requests_win(store: Store) -> None:
    user = new_user(store, coins=10)
    order = claimable(store, user)
    [(oid, first)] = store.pending_syncs(10, now())
    assert oid == order.id
    store.request_sync(order.id, first + timedelta(seconds=5))
    store.finish_sync(order.id, first)
    assert store.pending_syncs(10, first + timedelta(seconds=4)) == [], "a request for later is a timer"
    assert [o for o, _ in store.pending_syncs(10, first + timedelta(seconds=5))] == [order.id], "newer is kept"
    store.finish_sync(order.id, first + timedelta(seconds=5))
    assert store.pending_syncs(10, first + timedelta(days=1)) == []


# --- results --------------------------------------------------------------------------------


def claimed(store: Store, runs: int = 3, price: int = 1) -> tuple[User, Order]:
    customer = new_user(store, coins=runs * price)
    t0 = now()
    order = claimable(store, customer, runs=runs, every=1, start=t0, price=price)
    store.claim_repetitions(order.id, f"run-{order.id}", t0 + timedelta(seconds=runs + 1), t0, 60)
    return customer, order


def result_for(order: Order, n: int, miner: User, body: bytes = b"<html>page</html>", cap: int = 1 << 20,
               error: str | None = None) -> Result:
    return Result.with_body(
        body, cap, job_key=f"{order.id}:{n}", order_id=order.id, n=n, miner_id=miner.id, fetched_at=now(),
        status=None if error else 200, final_url=order.url, headers={"content-type": "text/html"},
        elapsed_ms=12, error=error, error_text="refused by policy" if error else None, stored_at=now(),
    )


def test_a_delivered_result_is_stored_once_and_paid_once(store: Store) -> None:
    customer, order = claimed(store, runs=3, price=2)
    miner, other = new_user(store), new_user(store)
    assert store.record_result(result_for(order, 1, miner)) == Recorded(outcome=ResultOutcome.paid, coins=2)
    assert store.record_result(result_for(order, 1, other, body=b"different")) == Recorded(
        outcome=ResultOutcome.duplicate, coins=0)
    stored = store.get_result(f"{order.id}:1")
    assert stored is not None and stored.body == b"<html>page</html>" and stored.miner_id == miner.id
    assert stored.sha256 == hashlib.sha256(b"<html>page</html>").hexdigest() and not stored.truncated
    assert stored.headers == {"content-type": "text/html"}
    assert store.get_balance(ledger.user_account(miner.id)) == 2
    assert store.get_balance(ledger.user_account(other.id)) == 0
    assert store.get_balance(ledger.escrow_account(order.id)) == 4
    assert store.get_transfer(ledger.reward_key(f"{order.id}:1")) is not None
    assert [r.state.value for r in store.get_repetitions(order.id, [1, 2])] == ["done", "queued"]


def test_a_checked_result_keeps_its_validation_and_pays_each_checking_miner_once(store: Store) -> None:
    customer, order = claimed(store, runs=2, price=2)
    miner, checker, tie_breaker = new_user(store), new_user(store), new_user(store)
    checked = result_for(order, 1, miner).model_copy(
        update={"validation": Validation.validated, "checked_by": [checker.id, tie_breaker.id]})
    assert store.record_results([checked, checked]) == [Recorded(outcome=ResultOutcome.paid, coins=2),
                                                         Recorded(outcome=ResultOutcome.duplicate, coins=0)]
    assert store.record_result(checked).outcome is ResultOutcome.duplicate
    stored = store.get_result(f"{order.id}:1")
    assert stored is not None and stored.validation is Validation.validated
    assert stored.checked_by == [checker.id, tie_breaker.id]
    assert [r.validation for r in store.list_results(order.id)] == [Validation.validated]
    balances = [store.get_balance(ledger.user_account(u.id)) for u in (miner, checker, tie_breaker)]
    assert balances == [2, 2, 2], "the customer's price to the miner, a fee from the platform to each checker"
    assert store.get_balance(ledger.escrow_account(order.id)) == 2, "the customer paid once for repetition 1"
    assert store.get_balance(ledger.MINT) == -(2 * 2 + 2 * 2), "the fees came from the mint: coins conserved"
    fee = store.get_transfer(ledger.validation_key(f"{order.id}:1", checker.id))
    assert fee is not None and fee.kind == "validation" and fee.from_account == ledger.MINT
    assert store.record_result(result_for(order, 2, miner)) == Recorded(outcome=ResultOutcome.paid, coins=2)
    unchecked = store.get_result(f"{order.id}:2")
    assert unchecked is not None and unchecked.validation is Validation.unchecked and unchecked.checked_by == []


def test_a_batch_of_results_is_recorded_in_one_step(store: Store) -> None:
    customer, order = claimed(store, runs=4)
    _, second = claimed(store, runs=2)
    miner = new_user(store)
    batch = [result_for(order, 1, miner), result_for(second, 2, miner), result_for(order, 2, miner),
             result_for(order, 1, miner), result_for(order, 9, miner)]
    recorded = store.record_results(batch)
    assert [r.outcome for r in recorded] == [ResultOutcome.paid, ResultOutcome.paid, ResultOutcome.paid,
                                             ResultOutcome.duplicate, ResultOutcome.unknown]
    assert [r.coins for r in recorded] == [1, 1, 1, 0, 0], "each result says what it paid the miner"
    assert store.get_balance(ledger.user_account(miner.id)) == 3
    assert store.get_result(f"{order.id}:9") is None
    assert store.record_results([]) == []


def test_a_batch_posts_every_payment_and_refund_in_the_ledger_in_order(store: Store) -> None:
    customer, order = claimed(store, runs=5, price=2)
    miner = new_user(store)
    batch = [result_for(order, n, miner, error="robots_disallowed" if n == 3 else None) for n in range(1, 6)]
    assert [r.outcome for r in store.record_results(batch)] == [ResultOutcome.paid] * 2 + [
        ResultOutcome.refunded] + [ResultOutcome.paid] * 2
    escrow = store.list_entries(ledger.escrow_account(order.id), 10)  # newest first
    assert [(e.txn_key, e.delta, e.balance_after) for e in escrow[:5]] == [
        (ledger.reward_key(f"{order.id}:5"), -2, 0), (ledger.reward_key(f"{order.id}:4"), -2, 2),
        (ledger.refund_job_key(f"{order.id}:3"), -2, 4), (ledger.reward_key(f"{order.id}:2"), -2, 6),
        (ledger.reward_key(f"{order.id}:1"), -2, 8)]
    assert [(e.delta, e.balance_after) for e in store.list_entries(ledger.user_account(miner.id), 10)] == [
        (2, 8), (2, 6), (2, 4), (2, 2)]
    assert store.get_balance(ledger.user_account(customer.id)) == 2
    again = store.record_results(batch)  # a whole batch delivered twice moves nothing
    assert {r.outcome for r in again} == {ResultOutcome.duplicate}
    assert store.get_balance(ledger.user_account(miner.id)) == 8 and store.get_balance(
        ledger.escrow_account(order.id)) == 0


def test_concurrent_deliveries_of_the_same_job_pay_once(store: Store) -> None:
    _, order = claimed(store, runs=2)
    miners = [new_user(store) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda m: store.record_result(result_for(order, 1, m)).outcome, miners))
    assert outcomes.count(ResultOutcome.paid) == 1 and outcomes.count(ResultOutcome.duplicate) == 7
    assert sum(store.get_balance(ledger.user_account(m.id)) for m in miners) == 1
    assert store.get_balance(ledger.escrow_account(order.id)) == 1


def test_concurrent_batches_across_orders_neither_deadlock_nor_double_pay(store: Store) -> None:
    orders = [claimed(store, runs=6)[1] for _ in range(4)]
    miners = [new_user(store) for _ in range(4)]

    def deliver(i: int) -> list[ResultOutcome]:  # every batch touches every order, in a different order
        rotated = orders[i:] + orders[:i]
        return [r.outcome for r in store.record_results([result_for(o, n, miners[i]) for n in range(1, 7)
                                                         for o in rotated])]

    with ThreadPoolExecutor(4) as pool:
        outcomes = [o for batch in pool.map(deliver, range(4)) for o in batch]
    assert outcomes.count(ResultOutcome.paid) == 24
    assert sum(store.get_balance(ledger.user_account(m.id)) for m in miners) == 24
    assert all(store.get_balance(ledger.escrow_account(o.id)) == 0 for o in orders)


def test_an_error_result_refunds_the_customer_instead_of_paying(store: Store) -> None:
    customer, order = claimed(store, runs=2)
    miner = new_user(store)
    assert store.record_result(result_for(order, 1, miner, error="robots_disallowed")) == Recorded(
        outcome=ResultOutcome.refunded, coins=0)
    assert store.get_balance(ledger.user_account(miner.id)) == 0
    assert store.get_balance(ledger.user_account(customer.id)) == 1
    stored = store.get_result(f"{order.id}:1")
    assert stored is not None and stored.error == "robots_disallowed" and stored.status is None
    assert store.get_repetitions(order.id, [1])[0].state.value == "refunded"
    assert store.record_result(result_for(order, 1, miner)).outcome is ResultOutcome.duplicate
    assert store.get_balance(ledger.user_account(miner.id)) == 0


def test_attempts_up_to_the_limit_fail_and_refund_the_repetition(store: Store) -> None:
    customer, order = claimed(store, runs=2)
    miner = new_user(store)
    key = f"{order.id}:1"
    assert store.fail_attempt(key, max_attempts=3).attempts == 1  # type: ignore[union-attr]
    assert store.fail_attempt(key, max_attempts=3).state.value == "queued"  # type: ignore[union-attr]
    last = result_for(order, 1, miner, error="timeout")
    failed = store.fail_attempt(key, max_attempts=3, last=last)
    assert failed is not None and failed.state.value == "failed" and failed.attempts == 3
    assert store.get_balance(ledger.user_account(customer.id)) == 1
    assert store.get_balance(ledger.escrow_account(order.id)) == 1
    assert store.get_result(key).error == "timeout"  # type: ignore[union-attr]
    again = store.fail_attempt(key, max_attempts=3)
    assert again is not None and again.attempts == 3, "a closed repetition is left alone"
    assert store.record_result(result_for(order, 1, miner)).outcome is ResultOutcome.duplicate
    assert store.record_result(result_for(order, 2, miner)).outcome is ResultOutcome.paid
    assert store.fail_attempt(f"{order.id}:2", 3).state.value == "done"  # type: ignore[union-attr]
    assert store.fail_attempt("nope:1", 3) is None
    assert store.get_balance(ledger.user_account(customer.id)) + store.get_balance(
        ledger.user_account(miner.id)) + store.get_balance(ledger.escrow_account(order.id)) == 2


def test_a_late_result_for_a_failed_repetition_is_not_stored(store: Store) -> None:
    _, order = claimed(store, runs=1)
    miner = new_user(store)
    store.fail_attempt(f"{order.id}:1", max_attempts=1)
    assert store.record_result(result_for(order, 1, miner)).outcome is ResultOutcome.closed
    assert store.get_result(f"{order.id}:1") is None
    assert store.get_balance(ledger.user_account(miner.id)) == 0


def test_bodies_are_capped_compressed_and_listed_by_n(store: Store) -> None:
    _, order = claimed(store, runs=5)
    miner = new_user(store)
    big = b"x" * 100_000
    store.record_results([result_for(order, n, miner, body=big, cap=50_000) for n in (4, 1, 3, 5, 2)])
    first = store.get_result(f"{order.id}:1")
    assert first is not None and first.truncated and first.body == big[:50_000] and first.body_size == 50_000
    assert len(first.body_zlib) < 1_000, "bodies are stored compressed"
    assert [r.n for r in store.list_results(order.id)] == [1, 2, 3, 4, 5]
    assert [r.n for r in store.list_results(order.id, after_n=2, limit=2)] == [3, 4]
    assert store.list_results(order.id, after_n=5) == []


def test_delivery_cursors_only_move_forward(store: Store) -> None:
    assert store.get_delivery_cursor("tok", "order") == 0
    store.advance_delivery_cursor("tok", "order", 5)
    store.advance_delivery_cursor("tok", "order", 3)
    assert store.get_delivery_cursor("tok", "order") == 5
    assert store.get_delivery_cursor("other-token", "order") == 0
    store.advance_delivery_cursor("tok", "order", 6)
    assert store.get_delivery_cursor("tok", "order") == 6


def _transfer_until_killed(store_url: str, src: str, dst: str, started: "multiprocessing.Queue[int]") -> None:
    store = open_store(store_url)
    for i in range(100_000):
        store.transfer(f"killed-{i}", src, dst, 1, "t")
        if i == 0:  # the first one done (statements prepared): the kill lands mid-stream
            started.put(0)


def test_a_process_killed_mid_transfer_leaves_the_ledger_whole(store: Store, store_url: str) -> None:
    import random
    import time

    a, b = new_user(store, coins=100_000), new_user(store)
    src, dst = ledger.user_account(a.id), ledger.user_account(b.id)
    ctx = multiprocessing.get_context("spawn")
    started: multiprocessing.Queue[int] = ctx.Queue()
    proc = ctx.Process(target=_transfer_until_killed, args=(store_url, src, dst, started))
    proc.start()
    started.get(timeout=120)
    time.sleep(random.uniform(0.3, 0.6))
    proc.kill()  # SIGKILL: no cleanup, possibly between the two halves of a transfer
    proc.join(timeout=30)
    store.recover_pending()
    done = 0
    while store.get_transfer(f"killed-{done}") is not None:
        done += 1
    assert done > 0
    assert store.get_balance(dst) == done, "every recorded transfer moved its coin, and only those"
    assert store.get_balance(src) == 100_000 - done
    assert len(store.list_entries(dst, 100_000)) == done
    store.transfer(f"killed-{done}", src, dst, 1, "t")
    store.transfer(f"killed-{done}", src, dst, 1, "t")
    assert store.get_balance(dst) == done + 1 and store.get_balance(src) + store.get_balance(dst) == 100_000


def test_a_finished_sync_can_leave_a_timer_which_a_newer_request_overrides(store: Store) -> None:
    user = new_user(store, coins=10)
    order = claimable(store, user)
    [(_, first)] = store.pending_syncs(10, now())
    store.finish_sync(order.id, first, then=first + timedelta(seconds=60))
    assert store.pending_syncs(10, first + timedelta(seconds=59)) == [], "the timer waits"
    assert store.pending_syncs(10, first + timedelta(seconds=60)) == [(order.id, first + timedelta(seconds=60))]
    # A change requested while a pass works on the timer wins: the pass must not push it into the future.
    store.request_sync(order.id, first + timedelta(seconds=61))
    store.finish_sync(order.id, first + timedelta(seconds=60), then=first + timedelta(seconds=600))
    assert store.pending_syncs(10, first + timedelta(seconds=61)) == [(order.id, first + timedelta(seconds=61))]
