"""The store's business rules, the same for every backend: pure functions, no I/O.

A backend decides how to make a step atomic (a transaction, or lightweight transactions and
a pending marker); these functions decide what the step does: which coins a settled
repetition moves, what a delivered result settles, which repetitions a claim takes and which
of them are refunded, what a cancel refunds. A coin movement is returned as a `Movement`,
whose fields are the arguments of the backend's transfer, in order.
"""

from datetime import datetime, timedelta
from typing import NamedTuple

from core import ledger, schedules
from core.errors import Conflict, InvalidInput
from core.schemas import OrderStatus, RepetitionState
from core.storage.records import Claim, Order, OrderEdit, Recorded, Repetition, Result, ResultOutcome, job_key

OPEN = (RepetitionState.queued, RepetitionState.leased)
"""States of a repetition that has not been settled yet: a result or a last failed attempt can still close it."""
CANCELLABLE = (OrderStatus.active, OrderStatus.paused)


class Movement(NamedTuple):
    """A transfer to make: the arguments of `transfer(key, from_account, to_account, amount, kind, reference)`."""

    key: str
    from_account: str
    to_account: str
    amount: int
    kind: str
    reference: str | None


# --- coins ------------------------------------------------------------------------------------


def hold(order: Order) -> Movement:
    """The escrow hold of a new order: its whole cost, from its owner."""
    return Movement(ledger.hold_key(order.id), ledger.user_account(order.owner_id), ledger.escrow_account(order.id),
                    order.cost, "hold", order.id)


def reward(order: Order, n: int, miner_id: str) -> Movement:
    """The miner's pay for repetition `n`, from the order's escrow."""
    key = job_key(order.id, n)
    return Movement(ledger.reward_key(key), ledger.escrow_account(order.id), ledger.user_account(miner_id),
                    order.price_per_run, "reward", key)


def refund(order: Order, n: int) -> Movement:
    """The customer's refund of repetition `n` (refunded or failed), from the order's escrow."""
    key = job_key(order.id, n)
    return Movement(ledger.refund_job_key(key), ledger.escrow_account(order.id), ledger.user_account(order.owner_id),
                    order.price_per_run, "refund", key)


def validation_fee(order: Order, n: int, miner_id: str) -> Movement:
    """The pay of a miner whose fetch of repetition `n` checked the delivered one: the price per run, from the
    platform (the mint), not from the order — the customer pays the same whether or not a result was checked."""
    key = job_key(order.id, n)
    return Movement(ledger.validation_key(key, miner_id), ledger.MINT, ledger.user_account(miner_id),
                    order.price_per_run, "validation", key)


def settlement(order: Order, n: int, state: RepetitionState, result: Result | None) -> list[Movement]:
    """The coin movements a closed repetition implies: the miner's pay when done, with a validation fee for every
    miner whose fetch checked the delivered page; the refund when refunded or failed (then nobody is paid).

    Nothing for a repetition still open (or done without a known result): nothing to move.
    """
    moves: list[Movement] = []
    if state is RepetitionState.done and result is not None:
        moves.append(reward(order, n, result.miner_id))
    elif state in (RepetitionState.refunded, RepetitionState.failed):
        moves.append(refund(order, n))
    if state is RepetitionState.done and result is not None:
        moves += [validation_fee(order, n, m) for m in dict.fromkeys(result.checked_by) if m != result.miner_id]
    return moves


def cancel_refund(order: Order) -> Movement | None:
    """What cancelling the order returns to its owner: the price of every repetition not claimed yet."""
    amount = (order.max_runs - order.runs_claimed) * order.price_per_run
    if amount <= 0:
        return None
    return Movement(ledger.cancel_refund_key(order.id), ledger.escrow_account(order.id),
                    ledger.user_account(order.owner_id), amount, "refund", order.id)


def completable(order: Order, escrow: int) -> bool:
    """Whether an active order may be completed: every repetition claimed and settled — delivered (the miner
    paid), failed or refunded — which is exactly when its escrow is empty. Never with coins in escrow."""
    return order.status is OrderStatus.active and order.runs_claimed >= order.max_runs and escrow == 0


def edit_key(order_id: str, key: str) -> str:
    """The ledger key of the coins one edit of an order moves (`key` names the edit: one request)."""
    return f"edit:{order_id}:{key}"


def plan_edit(order: Order, edit: OrderEdit, key: str, last_claimed_due: datetime | None,
              now: datetime) -> tuple[Order, Movement | None]:
    """The order as `edit` leaves it, and the coins that move: the price of the repetitions added, from its
    owner to its escrow, or of those taken away, back from the escrow.

    Claimed repetitions keep everything they were claimed with (URL, due time); the next unclaimed one
    is due at the first slot of the new schedule after the last claimed one's due time and not before
    `now` (a changed schedule, or repetitions added to an order that had claimed them all). Raises
    Conflict unless the order is active or paused, InvalidInput if max_runs would drop below what is claimed.
    """
    if order.status not in CANCELLABLE:
        raise Conflict(f"a {order.status.value} order cannot be changed")
    if edit.max_runs < max(order.runs_claimed, 1):
        raise InvalidInput(f"max_runs must be at least {max(order.runs_claimed, 1)}: "
                           f"{order.runs_claimed} repetition(s) are dispatched already")
    new = order.model_copy(update={**edit.model_dump(), "extraction": edit.extraction, "updated_at": now})
    schedule_changed = (new.schedule_kind, new.every_seconds, new.cron, new.timezone) != (
        order.schedule_kind, order.every_seconds, order.cron, order.timezone)
    if new.runs_claimed >= new.max_runs:
        new.next_due_at = None
    elif schedule_changed or order.next_due_at is None:
        after = max(now, last_claimed_due + timedelta(microseconds=1)) if last_claimed_due else now
        new.next_due_at = schedules.first_due_at_or_after(new, after)
    amount = (new.max_runs - order.max_runs) * order.price_per_run
    movement = None
    if amount > 0:
        movement = Movement(edit_key(order.id, key), ledger.user_account(order.owner_id),
                            ledger.escrow_account(order.id), amount, "hold", order.id)
    elif amount < 0:
        movement = Movement(edit_key(order.id, key), ledger.escrow_account(order.id),
                            ledger.user_account(order.owner_id), -amount, "refund", order.id)
    return new, movement


# --- results ----------------------------------------------------------------------------------


def settle(order: Order, result: Result) -> tuple[RepetitionState, list[Movement]]:
    """What a delivered result does to its open repetition: the state it closes it in, and the coins that move.

    A page marks it done and pays the miner, and every miner that checked it a validation fee; an error no
    miner can fix marks it refunded and returns the price to the customer.
    """
    state = RepetitionState.done if result.error is None else RepetitionState.refunded
    return state, settlement(order, result.n, state, result)


def prior_outcome(stored: bool, state: RepetitionState) -> ResultOutcome | None:
    """What a delivery does to a repetition that has a result (`stored`) or is closed; None if it can settle it."""
    if stored:
        return ResultOutcome.duplicate
    if state not in OPEN:
        return ResultOutcome.closed
    return None


def recorded(outcome: ResultOutcome, order: Order | None = None) -> Recorded:
    """The answer for one recorded result: a paid one earned the miner the order's price per run."""
    coins = order.price_per_run if outcome is ResultOutcome.paid and order is not None else 0
    return Recorded(outcome=outcome, coins=coins)


def settled(state: RepetitionState, order: Order) -> Recorded:
    """The answer for a result this call stored, settling its repetition in `state`."""
    return recorded(ResultOutcome.paid if state is RepetitionState.done else ResultOutcome.refunded, order)


# --- claims -----------------------------------------------------------------------------------


class ClaimPlan(NamedTuple):
    """The repetitions one claim takes: n = first_n … first_n + len(dues) - 1, the first `missed` refunded."""

    first_n: int
    dues: list[datetime]
    missed: int
    next_due_at: datetime | None
    """The order's next due time after the claim; None once every repetition is claimed."""

    @property
    def last_n(self) -> int:
        return self.first_n + len(self.dues) - 1


def plan_claim(order: Order, horizon: datetime, now: datetime, catchup_seconds: int) -> ClaimPlan:
    """Which of the active order's unclaimed repetitions are due before `horizon`.

    Those due more than `catchup_seconds` before `now` (the oldest ones) are missed: refunded,
    not queued. No repetitions at all once the order is not active or fully claimed.
    """
    dues: list[datetime] = []
    due = order.next_due_at
    while (order.status == OrderStatus.active and order.runs_claimed + len(dues) < order.max_runs
           and due is not None and due < horizon):
        dues.append(due)
        due = schedules.next_due(order, due)
    missed_before = now - timedelta(seconds=catchup_seconds)
    claimed = order.runs_claimed + len(dues)
    return ClaimPlan(first_n=order.runs_claimed + 1, dues=dues, missed=sum(d < missed_before for d in dues),
                     next_due_at=due if claimed < order.max_runs else None)


def due_times(order: Order, first_due: datetime, count: int) -> list[datetime]:
    """The due times of `count` consecutive repetitions, the first one due at `first_due`."""
    dues = []
    due = first_due
    for _ in range(count):
        dues.append(due)
        due = schedules.next_due(order, due)
    return dues


def claimed_repetitions(order: Order, plan: ClaimPlan, flow_run_id: str, created_at: datetime) -> list[Repetition]:
    """The repetition records of a claim, in due order: missed ones refunded, the others queued."""
    return [Repetition(key=job_key(order.id, n), order_id=order.id, n=n, due_at=due, flow_run_id=flow_run_id,
                       state=RepetitionState.refunded if i < plan.missed else RepetitionState.queued,
                       created_at=created_at)
            for i, (n, due) in enumerate(zip(range(plan.first_n, plan.last_n + 1), plan.dues, strict=True))]


def claim_of(order: Order, repetitions: list[Repetition], replay: bool = False) -> Claim:
    """A claim as dispatch sees it: the queued repetitions to enqueue and the refunded ones."""
    return Claim(order=order, replay=replay,
                 queued=[r for r in repetitions if r.state is RepetitionState.queued],
                 refunded=[r for r in repetitions if r.state is RepetitionState.refunded])


def can_unclaim(order: Order, queued_ns: list[int], ns: list[int]) -> bool:
    """Whether withdrawn repetitions `ns` can go back to the counter: the order is paused and they are
    exactly its newest claimed ones (k+1 … runs_claimed), all still queued. Otherwise they are refunded."""
    return order.status == OrderStatus.paused and sorted(queued_ns) == list(range(min(ns), order.runs_claimed + 1))
