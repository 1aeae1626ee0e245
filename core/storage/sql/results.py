"""Delivered results, the pay they settle, result clients' delivery cursors and the retention of bodies, on SQL."""

from datetime import datetime
from functools import cached_property
from typing import Any

from sqlalchemy import bindparam, case, func, insert, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from core.errors import NotFound
from core.schemas import RepetitionState
from core.storage import rules
from core.storage.records import Acknowledged, Order, Pruned, Recorded, Repetition, Result, ResultOutcome
from core.storage.sql.engine import by_keys, record, records_by_keys
from core.storage.sql.ledger import SqlLedger
from core.storage.sql.orders import ORDERS_BY_ID
from core.storage.sql.tables import DeliveredRow, DeliveryCursorRow, OrderRow, RepetitionRow, ResultRow

_REPS = RepetitionRow.__table__  # type: ignore[attr-defined]
_RESULTS = ResultRow.__table__  # type: ignore[attr-defined]
# `record_results`' statements, built once (see `core.storage.sql.ledger`): the mining servers' hottest path.
_LOCK_REPS = (select(_REPS.c.key, _REPS.c.order_id, _REPS.c.n, _REPS.c.state)
              .where(_REPS.c.key.in_(bindparam("keys", expanding=True))).order_by(_REPS.c.key).with_for_update())
_STORED = select(_RESULTS.c.job_key).where(_RESULTS.c.job_key.in_(bindparam("keys", expanding=True)))
_RESULTS_BY_KEY = by_keys(_RESULTS, "job_key")
_INSERT_RESULTS = insert(_RESULTS)
_CURSORS = DeliveryCursorRow.__table__  # type: ignore[attr-defined]
_INSERT_DELIVERED = insert(DeliveredRow.__table__)  # type: ignore[attr-defined]
_SET_STATES = update(_REPS).where(_REPS.c.key == bindparam("k")).values(state=bindparam("s"))


class SqlResults(SqlLedger):
    # --- results -----------------------------------------------------------------------

    def record_results(self, results: list[Result]) -> list[Recorded]:
        """One transaction and a fixed number of statements per batch, whatever its size: the
        repetitions are locked and read at once, then the results, the pay (or refunds) with their
        ledger entries, and the repetitions' new states are written in bulk."""
        if not results:
            return []
        keys = sorted({r.job_key for r in results})

        def run() -> list[Recorded]:
            with self._write() as s:
                reps = {key: (order_id, n, RepetitionState(state))
                        for key, order_id, n, state in s.execute(_LOCK_REPS, {"keys": keys})}
                stored = set(s.execute(_STORED, {"keys": keys}).scalars())
                order_ids = sorted({order_id for order_id, _, _ in reps.values()})
                orders = {o["id"]: Order.model_validate(o)
                          for o in s.execute(ORDERS_BY_ID, {"keys": order_ids}).mappings()}
                out: list[Recorded] = []
                new_results: list[dict] = []
                new_states: list[dict] = []
                movements: list[rules.Movement] = []
                for result in results:
                    rep = reps.get(result.job_key)
                    if rep is None or rep[0] not in orders or rep[:2] != (result.order_id, result.n):
                        out.append(rules.recorded(ResultOutcome.unknown))
                    elif (prior := rules.prior_outcome(result.job_key in stored, rep[2])) is not None:
                        out.append(rules.recorded(prior))
                    else:
                        order = orders[rep[0]]
                        state, moves = rules.settle(order, result)
                        new_results.append(result.model_dump())
                        new_states.append({"k": result.job_key, "s": state.value})
                        movements += moves
                        stored.add(result.job_key)
                        out.append(rules.settled(state, order))
                if new_results:
                    s.execute(_INSERT_RESULTS, new_results)
                    s.execute(_SET_STATES, new_states)
                    self._post(s, movements)
                return out

        try:
            return self._retrying(run)
        except IntegrityError:  # the same result was stored concurrently: now it is a duplicate
            return self._retrying(run)

    def record_result(self, result: Result) -> Recorded:
        return self.record_results([result])[0]

    def fail_attempt(self, job_key: str, max_attempts: int, last: Result | None = None) -> Repetition | None:
        def run() -> Repetition | None:
            with self._write() as s:
                rep = s.exec(select(RepetitionRow).where(RepetitionRow.key == job_key).with_for_update()).first()
                if rep is None:
                    return None
                if rep.state in rules.OPEN:
                    rep.attempts += 1
                    if rep.attempts >= max_attempts:
                        row = s.get(OrderRow, rep.order_id)
                        if row is None:
                            raise NotFound("order not found")
                        if last is not None and s.get(ResultRow, job_key) is None:
                            s.add(ResultRow.model_validate(last.model_dump()))
                        rep.state = RepetitionState.failed
                        self._make(s, rules.refund(record(Order, row), rep.n))
                    s.flush()
                return record(Repetition, rep)

        return self._retrying(run)

    def get_result(self, job_key: str) -> Result | None:
        with self._read() as s:
            row = s.get(ResultRow, job_key)
            return record(Result, row) if row else None

    def get_results(self, job_keys: list[str]) -> list[Result]:
        with self._read() as s:
            return records_by_keys(s, _RESULTS_BY_KEY, job_keys, Result)

    def list_results(self, order_id: str, after_n: int = 0, limit: int = 100) -> list[Result]:
        with self._read() as s:
            stmt = (select(ResultRow).where(ResultRow.order_id == order_id, col(ResultRow.n) > after_n)
                    .order_by(col(ResultRow.n)).limit(limit))
            return [record(Result, r) for r in s.exec(stmt)]

    # --- delivery cursors --------------------------------------------------------------

    def get_delivery_cursor(self, token_id: str, order_id: str) -> int:
        with self._read() as s:
            row = s.get(DeliveryCursorRow, (token_id, order_id))
            return row.last_n if row else 0

    def advance_delivery_cursor(self, token_id: str, order_id: str, n: int) -> None:
        with self._write() as s:
            self._advance(s, {(token_id, order_id): n})

    @cached_property
    def _advance_stmt(self) -> Any:
        """Move a (token, order) cursor forward, never back (the dialect's upsert), built once per store."""
        stmt = self._insert(_CURSORS)
        return stmt.on_conflict_do_update(index_elements=["token_id", "order_id"], set_={
            "last_n": case((_CURSORS.c.last_n < stmt.excluded.last_n, stmt.excluded.last_n),
                           else_=_CURSORS.c.last_n)})

    def _advance(self, s: Session, cursors: dict[tuple[str, str], int]) -> None:
        """Move each (token, order) cursor forward to its n, in key order (concurrent writers on PostgreSQL
        lock them alike)."""
        s.execute(self._advance_stmt,
                  [{"token_id": t, "order_id": o, "last_n": cursors[t, o]} for t, o in sorted(cursors)])

    def record_delivery(self, token_id: str, order_id: str, after_n: int, last_n: int, at: datetime) -> None:
        self.record_deliveries([Acknowledged(token_id=token_id, order_id=order_id, after_n=after_n, last_n=last_n,
                                             at=at)])

    def record_deliveries(self, acknowledged: list[Acknowledged]) -> None:
        """One statement for the stretches delivered and one for the cursors (per chunk), whatever the batch."""
        stretches = [{"order_id": a.order_id, "first_n": a.after_n + 1, "last_n": a.last_n, "delivered_at": a.at}
                     for a in acknowledged if a.last_n > a.after_n]
        cursors: dict[tuple[str, str], int] = {}
        for a in acknowledged:  # the furthest, if one comes twice
            cursors[a.token_id, a.order_id] = max(a.last_n, cursors.get((a.token_id, a.order_id), a.last_n))

        def run() -> None:
            with self._write() as s:
                if stretches:
                    s.execute(_INSERT_DELIVERED, stretches)
                self._advance(s, cursors)

        if acknowledged:
            self._retrying(run)

    # --- retention of delivered bodies ---------------------------------------------------------

    def prune_result_bodies(self, delivered_before: datetime, now: datetime, limit: int = 100) -> Pruned:
        def run() -> Pruned:
            with self._write() as s:
                stmt = (select(DeliveredRow).where(col(DeliveredRow.delivered_at) < delivered_before)
                        .order_by(col(DeliveredRow.delivered_at)).limit(limit)
                        .with_for_update(skip_locked=True))  # another pruner takes the others
                deliveries = list(s.exec(stmt))
                bodies = 0
                for d in deliveries:
                    deleted = s.execute(
                        update(ResultRow)
                        .where(col(ResultRow.order_id) == d.order_id, col(ResultRow.n).between(d.first_n, d.last_n),
                               col(ResultRow.body_pruned_at).is_(None), func.length(col(ResultRow.body_zlib)) > 0)
                        .values(body_zlib=b"", body_pruned_at=now))
                    bodies += deleted.rowcount  # type: ignore[attr-defined]
                    s.delete(d)
                return Pruned(deliveries=len(deliveries), bodies=bodies)

        return self._retrying(run)
