"""Orders, their escrow, and the repetitions dispatch runs claim of them, on SQL."""

from datetime import datetime

from sqlalchemy import bindparam, delete, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from core.errors import IdempotencyConflict, NotFound
from core.schemas import OrderStatus, RepetitionState
from core.storage import rules
from core.storage.records import Claim, Cursor, OpenClaim, Order, OrderEdit, Repetition, job_key
from core.storage.sql.engine import by_keys, chunked, record, records_by_keys, utcnow
from core.storage.sql.ledger import SqlLedger
from core.storage.sql.outbox import SqlOutbox
from core.storage.sql.tables import DispatchClaimRow, OpenClaimRow, OrderRow, RepetitionRow

ORDERS_BY_ID = by_keys(OrderRow.__table__, "id")  # type: ignore[attr-defined]  # orders by id (results.py too)
_REPETITIONS_BY_KEY = by_keys(RepetitionRow.__table__, "key")  # type: ignore[attr-defined]
_OPEN_REPETITIONS = _REPETITIONS_BY_KEY.where(
    RepetitionRow.__table__.c.state.in_([s.value for s in rules.OPEN]))  # type: ignore[attr-defined]
_SETTLED_REPETITIONS = _REPETITIONS_BY_KEY.where(
    RepetitionRow.__table__.c.state.not_in([s.value for s in rules.OPEN]))  # type: ignore[attr-defined]
_OPEN_DUE_REPETITIONS = _OPEN_REPETITIONS.where(
    RepetitionRow.__table__.c.due_at < bindparam("due_before"))  # type: ignore[attr-defined]
_CLAIMS = OpenClaimRow.__table__  # type: ignore[attr-defined]
_OPEN_CLAIMS = (select(_CLAIMS).where(_CLAIMS.c.created_at < bindparam("before"))
                .order_by(_CLAIMS.c.created_at, _CLAIMS.c.flow_run_id).limit(bindparam("limit")))


class SqlOrders(SqlLedger, SqlOutbox):
    # --- orders ------------------------------------------------------------------------

    def create_order(self, order: Order) -> tuple[Order, bool]:
        def run() -> tuple[Order, bool]:
            with self._write() as s:
                existing = s.get(OrderRow, order.id)
                if existing is not None:
                    if existing.owner_id != order.owner_id or existing.request_hash != order.request_hash:
                        raise IdempotencyConflict("this idempotency key was already used for a different order")
                    return record(Order, existing), False
                s.add(OrderRow.model_validate(order.model_dump()))
                s.flush()
                self._make(s, rules.hold(order))
                self._request_sync(s, order.id, order.created_at)
                return order, True

        try:
            return self._retrying(run)
        except IntegrityError:  # the same order id was created concurrently: now it exists
            return self._retrying(run)

    def get_order(self, order_id: str) -> Order | None:
        with self._read() as s:
            row = s.get(OrderRow, order_id)
            return record(Order, row) if row else None

    def get_orders(self, order_ids: list[str]) -> list[Order]:
        with self._read() as s:
            return records_by_keys(s, ORDERS_BY_ID, sorted(set(order_ids)), Order)

    def list_orders(self, owner_id: str, limit: int, before: Cursor | None = None) -> list[Order]:
        with self._read() as s:
            stmt = select(OrderRow).where(OrderRow.owner_id == owner_id)
            if before is not None:
                stmt = stmt.where(tuple_(OrderRow.created_at, OrderRow.id) < tuple_(*before))
            stmt = stmt.order_by(col(OrderRow.created_at).desc(), col(OrderRow.id).desc())
            return [record(Order, r) for r in s.exec(stmt.limit(limit))]

    def _locked_order(self, s: Session, order_id: str) -> OrderRow | None:
        return s.exec(select(OrderRow).where(OrderRow.id == order_id).with_for_update()).first()

    def set_order_status(
        self, order_id: str, allowed_from: set[OrderStatus], to: OrderStatus, next_due_at: datetime | None = None
    ) -> Order | None:
        def run() -> Order | None:
            with self._write() as s:
                row = self._locked_order(s, order_id)
                if row is None or row.status not in allowed_from:
                    return None
                row.status, row.updated_at = to, utcnow()
                if next_due_at is not None:
                    row.next_due_at = next_due_at
                self._request_sync(s, order_id, row.updated_at)
                s.flush()
                return record(Order, row)

        return self._retrying(run)

    def cancel_order(self, order_id: str) -> tuple[Order, int] | None:
        def run() -> tuple[Order, int] | None:
            with self._write() as s:
                row = self._locked_order(s, order_id)
                if row is None or row.status not in rules.CANCELLABLE:
                    return None
                refund = rules.cancel_refund(record(Order, row))
                row.status, row.updated_at = OrderStatus.cancelled, utcnow()
                self._request_sync(s, order_id, row.updated_at)
                s.flush()
                if refund is not None:
                    self._make(s, refund)
                return record(Order, row), refund.amount if refund else 0

        return self._retrying(run)

    def edit_order(self, order_id: str, edit: OrderEdit, key: str, now: datetime) -> Order | None:
        def run() -> Order | None:
            with self._write() as s:
                row = self._locked_order(s, order_id)
                if row is None:
                    return None
                last = s.get(RepetitionRow, job_key(order_id, row.runs_claimed)) if row.runs_claimed else None
                new, movement = rules.plan_edit(record(Order, row), edit, key, last.due_at if last else None, now)
                for name in (*OrderEdit.model_fields, "next_due_at", "updated_at"):
                    setattr(row, name, getattr(new, name))
                row.extraction = new.extraction.model_dump() if new.extraction else None
                self._request_sync(s, order_id, now)
                s.flush()
                if movement is not None:
                    self._make(s, movement)
                return record(Order, row)

        return self._retrying(run)

    def set_deployment_id(self, order_id: str, deployment_id: str | None) -> None:
        with self._write() as s:
            s.exec(update(OrderRow).where(col(OrderRow.id) == order_id).values(deployment_id=deployment_id))

    # --- repetitions -------------------------------------------------------------------

    def _repetitions(self, s: Session, order_id: str, ns: list[int]) -> list[RepetitionRow]:
        keys = [job_key(order_id, n) for n in ns]
        stmt = select(RepetitionRow).where(col(RepetitionRow.key).in_(keys)).order_by(col(RepetitionRow.n))
        return list(s.exec(stmt))

    def claim_repetitions(
        self, order_id: str, flow_run_id: str, horizon: datetime, now: datetime, catchup_seconds: int
    ) -> Claim:
        def run() -> Claim:
            with self._write() as s:
                row = self._locked_order(s, order_id)
                if row is None:
                    raise NotFound("order not found")
                order = record(Order, row)
                prior = s.get(DispatchClaimRow, flow_run_id)
                if prior is not None:
                    reps = [record(Repetition, r) for r in
                            self._repetitions(s, order_id, list(range(prior.first_n, prior.last_n + 1)))]
                    return rules.claim_of(order, reps, replay=True)
                plan = rules.plan_claim(order, horizon, now, catchup_seconds)
                reps = rules.claimed_repetitions(order, plan, flow_run_id, now)
                for rep in reps:
                    if rep.state is RepetitionState.refunded:
                        self._make(s, rules.refund(order, rep.n))
                    s.add(RepetitionRow.model_validate(rep.model_dump()))
                if reps:
                    row.runs_claimed, row.next_due_at, row.updated_at = plan.last_n, plan.next_due_at, now
                    if row.runs_claimed >= row.max_runs:
                        self._request_sync(s, order_id, now)  # nothing left to claim: drop the deployment
                s.add(DispatchClaimRow(flow_run_id=flow_run_id, order_id=order_id, first_n=plan.first_n,
                                       last_n=row.runs_claimed, created_at=now))
                claim = rules.claim_of(record(Order, row), reps)
                if claim.queued:
                    s.add(OpenClaimRow(flow_run_id=flow_run_id, order_id=order_id, first_n=plan.first_n,
                                       last_n=plan.last_n, created_at=now))
                s.flush()
                return claim

        try:
            return self._retrying(run)
        except IntegrityError:  # the same flow run claimed concurrently: replay its claim
            return self._retrying(run)

    def get_repetitions(self, order_id: str, ns: list[int]) -> list[Repetition]:
        with self._read() as s:
            return [record(Repetition, r) for r in self._repetitions(s, order_id, ns)]

    def get_repetitions_of(self, wanted: dict[str, list[int]], settled_only: bool = False) -> list[Repetition]:
        keys = [job_key(order_id, n) for order_id, ns in wanted.items() for n in ns]
        with self._read() as s:
            return records_by_keys(s, _SETTLED_REPETITIONS if settled_only else _REPETITIONS_BY_KEY, keys, Repetition)

    def unclaim(self, order_id: str, ns: list[int]) -> int:
        if not ns:
            return 0
        with self._write() as s:
            row = self._locked_order(s, order_id)
            if row is None:
                raise NotFound("order not found")
            reps = [r for r in self._repetitions(s, order_id, ns) if r.state == RepetitionState.queued]
            if not rules.can_unclaim(record(Order, row), [r.n for r in reps], ns):
                self._refund_rows(s, row, reps)
                return 0
            for r in reps:
                s.delete(r)
            row.runs_claimed = min(ns) - 1
            row.next_due_at = None
            row.updated_at = utcnow()
            return len(reps)

    def _refund_rows(self, s: Session, order: OrderRow, reps: list[RepetitionRow]) -> int:
        refunded, owner = 0, record(Order, order)
        for r in reps:
            if r.state != RepetitionState.queued:
                continue
            r.state = RepetitionState.refunded
            movement = rules.refund(owner, r.n)
            self._make(s, movement)
            refunded += movement.amount
        return refunded

    def refund_repetitions(self, order_id: str, ns: list[int]) -> int:
        if not ns:
            return 0
        with self._write() as s:
            row = self._locked_order(s, order_id)
            if row is None:
                raise NotFound("order not found")
            return self._refund_rows(s, row, self._repetitions(s, order_id, ns))

    # --- open claims -------------------------------------------------------------------

    def open_claims(self, claimed_before: datetime, limit: int) -> list[OpenClaim]:
        with self._read() as s:
            return [OpenClaim.model_validate(m) for m in s.execute(_OPEN_CLAIMS, {
                "before": claimed_before, "limit": limit}).mappings()]

    def open_repetitions(self, claims: list[OpenClaim],
                         due_before: datetime | None = None) -> dict[str, list[Repetition]]:
        held: dict[str, list[Repetition]] = {c.flow_run_id: [] for c in claims}
        keys = [job_key(c.order_id, n) for c in claims for n in range(c.first_n, c.last_n + 1)]
        stmt, due = (_OPEN_REPETITIONS, {}) if due_before is None else (_OPEN_DUE_REPETITIONS,
                                                                        {"due_before": due_before})
        with self._read() as s:  # plain rows, not ORM objects: the passes read thousands
            for some in chunked(keys):
                for row in s.execute(stmt, {"keys": some, **due}).mappings():
                    if row["flow_run_id"] in held:
                        held[row["flow_run_id"]].append(Repetition.model_validate(row))
        for reps in held.values():
            reps.sort(key=lambda r: r.n)
        return held

    def confirm_queued(self, flow_run_id: str) -> None:
        with self._write() as s:
            s.exec(update(OpenClaimRow).where(col(OpenClaimRow.flow_run_id) == flow_run_id).values(queued=True))

    def close_claim(self, flow_run_id: str) -> None:
        with self._write() as s:
            s.exec(delete(OpenClaimRow).where(col(OpenClaimRow.flow_run_id) == flow_run_id))
