"""The backend-neutral store rules, without a store (the contract suite checks them on every backend)."""

from datetime import UTC, datetime, timedelta

from core import ledger
from core.schemas import OrderStatus, RepetitionState
from core.storage import Order, Result, ResultOutcome, rules

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def order(runs: int = 5, claimed: int = 0, price: int = 3, status: OrderStatus = OrderStatus.active) -> Order:
    return Order(id="o", owner_id="c", url="https://example.com/", method="GET", schedule_kind="interval",
                 every_seconds=60, start_at=T0, max_runs=runs, runs_claimed=claimed,
                 next_due_at=T0 + timedelta(minutes=claimed) if claimed < runs else None, status=status,
                 price_per_run=price, request_hash="h", created_at=T0, updated_at=T0)


def result(n: int, error: str | None = None) -> Result:
    return Result.with_body(b"page", 100, job_key=f"o:{n}", order_id="o", n=n, miner_id="m", fetched_at=T0,
                            final_url="https://example.com/", error=error, stored_at=T0)


def test_a_claim_takes_what_is_due_before_the_horizon_and_refunds_what_is_too_late() -> None:
    plan = rules.plan_claim(order(), horizon=T0 + timedelta(minutes=3, seconds=1), now=T0 + timedelta(minutes=2),
                            catchup_seconds=61)
    assert (plan.first_n, plan.last_n, plan.missed) == (1, 4, 1)
    assert plan.next_due_at == T0 + timedelta(minutes=4)
    reps = rules.claimed_repetitions(order(), plan, "run", T0)
    assert [(r.key, r.state) for r in reps] == [("o:1", RepetitionState.refunded), ("o:2", RepetitionState.queued),
                                                ("o:3", RepetitionState.queued), ("o:4", RepetitionState.queued)]
    claim = rules.claim_of(order(), reps)
    assert [r.n for r in claim.queued] == [2, 3, 4] and [r.n for r in claim.refunded] == [1]


def test_a_claim_stops_at_max_runs_and_takes_nothing_from_a_paused_order() -> None:
    plan = rules.plan_claim(order(runs=5, claimed=3), horizon=T0 + timedelta(days=1), now=T0, catchup_seconds=60)
    assert (plan.first_n, plan.last_n, plan.next_due_at) == (4, 5, None)
    paused = rules.plan_claim(order(status=OrderStatus.paused), horizon=T0 + timedelta(days=1), now=T0,
                              catchup_seconds=60)
    assert paused.dues == [] and paused.last_n == 0


def test_a_result_pays_the_miner_or_refunds_the_customer() -> None:
    state, movements = rules.settle(order(), result(2))
    assert state is RepetitionState.done
    assert movements == [(ledger.reward_key("o:2"), ledger.escrow_account("o"), ledger.user_account("m"), 3, "reward",
                          "o:2")]
    state, movements = rules.settle(order(), result(2, error="robots_disallowed"))
    assert state is RepetitionState.refunded
    assert movements == [(ledger.refund_job_key("o:2"), ledger.escrow_account("o"), ledger.user_account("c"), 3,
                          "refund", "o:2")]
    assert rules.settled(RepetitionState.done, order()).coins == 3
    assert rules.settled(RepetitionState.refunded, order()).coins == 0
    assert rules.prior_outcome(True, RepetitionState.done) is ResultOutcome.duplicate
    assert rules.prior_outcome(False, RepetitionState.failed) is ResultOutcome.closed
    assert rules.prior_outcome(False, RepetitionState.leased) is None


def test_every_miner_that_checked_a_result_is_paid_a_fee_by_the_platform() -> None:
    checked = result(2).model_copy(update={"checked_by": ["v1", "v2", "v1", "m"]})
    state, movements = rules.settle(order(), checked)
    assert state is RepetitionState.done
    assert [(m.from_account, m.to_account, m.amount, m.kind) for m in movements] == [
        (ledger.escrow_account("o"), ledger.user_account("m"), 3, "reward"),
        (ledger.MINT, ledger.user_account("v1"), 3, "validation"),
        (ledger.MINT, ledger.user_account("v2"), 3, "validation"),
    ], "the customer pays the price once; each other checking miner gets one fee, the delivering miner none"
    assert rules.settlement(order(), 2, RepetitionState.failed, checked) == [rules.refund(order(), 2)]


def test_cancelling_refunds_the_unclaimed_repetitions() -> None:
    refund = rules.cancel_refund(order(runs=5, claimed=2, price=3))
    assert refund is not None and refund.amount == 9 and refund.to_account == ledger.user_account("c")
    assert rules.cancel_refund(order(runs=5, claimed=5)) is None


def test_only_the_newest_claimed_repetitions_of_a_paused_order_go_back() -> None:
    paused = order(runs=5, claimed=4, status=OrderStatus.paused)
    assert rules.can_unclaim(paused, [4, 3], [3, 4])
    assert not rules.can_unclaim(paused, [3], [3, 4]), "n=4 is no longer queued"
    assert not rules.can_unclaim(paused, [2, 3], [2, 3]), "n=4 was claimed after them"
    assert not rules.can_unclaim(order(runs=5, claimed=4), [3, 4], [3, 4]), "the order is active"
