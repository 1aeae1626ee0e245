"""Claims of an order's repetitions (its jobs) on Cassandra: a compare-and-set of the order's counters, then the rows.

Which repetitions a claim takes, and which of them are refunded, is `core.storage.rules`; this
module makes it stick without a multi-partition transaction: the order row records the claim
(claim_run, claim_first, claim_due, claim_missed) in one LWT, and `_finish_claim` writes the
job rows, the refunds and the `dispatch_claims` row from it, idempotently. An edit of the order
finishes such a claim first, and a claim waits for an edit's coins to move (`edit_pending`).
"""

import json
import zlib
from collections import defaultdict
from datetime import datetime
from typing import Any

from cassandra import WriteTimeout, WriteType
from cassandra.query import BatchStatement, BatchType

from core.errors import NotFound
from core.schemas import RepetitionState
from core.storage import rules
from core.storage.cassandra.ledger import CasUnknown
from core.storage.cassandra.orders import CassandraOrders
from core.storage.cassandra.schema import dt, opt_us, us
from core.storage.cassandra.session import JOB_COLS, bucket_of, order_from, repetition_from, utcnow
from core.storage.records import Claim, OpenClaim, Order, OrderEdit, Repetition, job_key

CLAIM_BUCKETS = 8


class CassandraClaims(CassandraOrders):
    def get_repetitions(self, order_id: str, ns: list[int]) -> list[Repetition]:
        return [repetition_from(r) for r in self._jobs(order_id, ns)] if ns else []

    def get_repetitions_of(self, wanted: dict[str, list[int]], settled_only: bool = False) -> list[Repetition]:
        return [r for order_id, ns in wanted.items() for r in self.get_repetitions(order_id, ns)
                if not (settled_only and r.state in rules.OPEN)]

    def claim_repetitions(
        self, order_id: str, flow_run_id: str, horizon: datetime, now: datetime, catchup_seconds: int
    ) -> Claim:
        serial = False
        while True:
            row = self._live_row(order_id, serial=serial)
            serial = True
            if row is None:
                raise NotFound("order not found")
            prior = self._one("SELECT * FROM dispatch_claims WHERE flow_run_id = ?", (flow_run_id,))
            if prior is not None:
                return self._replay(row, prior)
            last_run = row["claim_run"]
            if last_run is not None and (last_run == flow_run_id or self._one(
                    "SELECT flow_run_id FROM dispatch_claims WHERE flow_run_id = ?", (last_run,)) is None):
                claim = self._finish_claim(row)  # the claim before this one stopped half-way
                if last_run == flow_run_id:
                    return claim.model_copy(update={"replay": True})
            order = order_from(row)
            plan = rules.plan_claim(order, horizon, now, catchup_seconds)
            if not plan.dues:
                applied, _ = self._cas_retry(
                    "INSERT INTO dispatch_claims (flow_run_id, order_id, first_n, last_n, created_at) "
                    "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
                    (flow_run_id, order_id, plan.first_n, plan.last_n, us(now)))
                if applied:
                    return Claim(order=order)
                continue
            changes = {"runs_claimed": plan.last_n, "next_due_at": opt_us(plan.next_due_at),
                       "updated_at": us(now), "claim_run": flow_run_id, "claim_first": plan.first_n,
                       "claim_due": us(plan.dues[0]), "claim_missed": plan.missed}
            self.ledger.mark_pending(f"claim:{order_id}")
            try:
                applied, _ = self._cas(
                    f"UPDATE orders SET {', '.join(f'{c} = ?' for c in changes)} WHERE id = ? "
                    "IF runs_claimed = ? AND status = 'active' AND claim_run = ? AND edit_pending = null",
                    (*changes.values(), order_id, order.runs_claimed, last_run))
            except CasUnknown:
                continue  # the serial read of the next round shows whether it was applied
            if applied:
                self._checkpoint("claim:counted")
                return self._finish_claim({**row, **changes})

    def edit_order(self, order_id: str, edit: OrderEdit, key: str, now: datetime) -> Order | None:
        while True:
            row = self._live_row(order_id, serial=True)
            if row is None:
                return None
            last_run = row["claim_run"]
            if last_run is not None and self._one("SELECT flow_run_id FROM dispatch_claims WHERE flow_run_id = ?",
                                                  (last_run,)) is None:
                self._finish_claim(row)  # a claim that stopped half-way gets its jobs under the spec it was made with
            order = order_from(row)
            last = self._jobs(order_id, [order.runs_claimed], "n, due_at") if order.runs_claimed else []
            new, movement = rules.plan_edit(order, edit, key, dt(last[0]["due_at"]) if last else None, now)
            pending = json.dumps({"movement": list(movement) if movement else None,
                                  "spec": row["spec"], "next_due_at": row["next_due_at"]})
            self.ledger.mark_pending(f"edit:{order_id}")
            self.request_sync(order_id, now)
            try:
                applied, _ = self._cas(
                    "UPDATE orders SET spec = ?, next_due_at = ?, updated_at = ?, edit_pending = ? WHERE id = ? "
                    "IF spec = ? AND runs_claimed = ? AND status = ? AND claim_run = ? AND edit_pending = null",
                    (self._spec(new), opt_us(new.next_due_at), us(now), pending, order_id,
                     row["spec"], row["runs_claimed"], row["status"], last_run))
            except CasUnknown:
                continue  # the serial read of the next round finishes it if it was applied
            if not applied:
                continue
            self._checkpoint("edit:flipped")
            self._finish_edit({**row, "edit_pending": pending})
            return order_from(self._order_row(order_id) or row)

    def _finish_claim(self, row: dict[str, Any]) -> Claim:
        """Write the job rows, refunds and the dispatch_claims row of the order's latest claim (idempotent)."""
        order = order_from(row)
        run, first, last, created = row["claim_run"], row["claim_first"], row["runs_claimed"], row["updated_at"]
        plan = rules.ClaimPlan(first_n=first, dues=rules.due_times(order, dt(row["claim_due"]), last - first + 1),
                               missed=row["claim_missed"], next_due_at=order.next_due_at)
        reps = rules.claimed_repetitions(order, plan, run, dt(created))
        self._insert_jobs(reps)
        claim = rules.claim_of(order, reps)
        for rep in claim.refunded:
            self.ledger.transfer(*rules.refund(order, rep.n))
        if last >= order.max_runs:
            self.request_sync(order.id, dt(created))  # nothing left to claim: drop the deployment
        if claim.queued:  # before the dispatch_claims row, which says the claim is finished
            self._exec("INSERT INTO open_claims (bucket, flow_run_id, order_id, first_n, last_n, created_at, queued) "
                       "VALUES (?, ?, ?, ?, ?, ?, false)",
                       (self._claim_bucket(run), run, order.id, first, last, created))
        self._cas_retry("INSERT INTO dispatch_claims (flow_run_id, order_id, first_n, last_n, created_at) "
                        "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS", (run, order.id, first, last, created))
        self.ledger.clear_pending(f"claim:{order.id}")
        return claim

    def _insert_jobs(self, reps: list[Repetition]) -> None:
        insert = self._q(f"INSERT INTO jobs (bucket, {JOB_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")

        def values(r: Repetition) -> tuple[Any, ...]:
            return (bucket_of(r.n), r.order_id, r.n, r.flow_run_id, us(r.due_at), r.state.value, 0, us(r.created_at))

        by_bucket: dict[int, list[Repetition]] = defaultdict(list)
        for r in reps:
            by_bucket[bucket_of(r.n)].append(r)
        for group in by_bucket.values():
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)  # one partition: one Paxos round
            for r in group:
                batch.add(insert, values(r))
            try:
                if self._session.execute(batch).one()["[applied]"]:
                    continue
            except WriteTimeout as e:
                if e.write_type != WriteType.CAS:
                    raise
            for r in group:  # some rows exist: an earlier try of this claim, or rows an unclaim left
                applied, current = self._cas_retry(insert.query_string, values(r))
                if not applied and current["flow_run_id"] != r.flow_run_id and current["state"] == "queued":
                    self._cas_retry(
                        "UPDATE jobs SET flow_run_id = ?, due_at = ?, state = ?, attempts = 0, created_at = ? "
                        "WHERE order_id = ? AND bucket = ? AND n = ? IF flow_run_id = ? AND state = 'queued'",
                        (r.flow_run_id, us(r.due_at), r.state.value, us(r.created_at), r.order_id, bucket_of(r.n), r.n,
                         current["flow_run_id"]))

    def _replay(self, row: dict[str, Any], prior: dict[str, Any]) -> Claim:
        order = order_from(row)
        reps = self.get_repetitions(order.id, list(range(prior["first_n"], prior["last_n"] + 1)))
        return rules.claim_of(order, reps, replay=True)

    def unclaim(self, order_id: str, ns: list[int]) -> int:
        if not ns:
            return 0
        while True:
            row = self._live_row(order_id, serial=True)
            if row is None:
                raise NotFound("order not found")
            order = order_from(row)
            jobs = [r for r in self._jobs(order_id, ns) if r["state"] == RepetitionState.queued]
            if not rules.can_unclaim(order, [r["n"] for r in jobs], ns):
                self._refund_jobs(order, jobs)
                return 0
            try:
                applied, _ = self._cas("UPDATE orders SET runs_claimed = ?, next_due_at = null, updated_at = ? "
                                       "WHERE id = ? IF runs_claimed = ? AND status = 'paused'",
                                       (min(ns) - 1, us(utcnow()), order_id, order.runs_claimed))
            except CasUnknown:
                continue
            if applied:
                # Rows past the counter are dead; a later claim overwrites any a crash leaves here.
                for r in jobs:
                    self._cas_retry("DELETE FROM jobs WHERE order_id = ? AND bucket = ? AND n = ? IF state = 'queued'",
                                    (order_id, bucket_of(r["n"]), r["n"]))
                return len(jobs)

    def _refund_jobs(self, order: Order, jobs: list[dict[str, Any]]) -> int:
        refunded = 0
        for r in jobs:
            if r["state"] != RepetitionState.queued:
                continue
            marker = f"settle:{job_key(order.id, r['n'])}"
            self.ledger.mark_pending(marker)
            applied, _ = self._cas_retry("UPDATE jobs SET state = 'refunded' WHERE order_id = ? AND bucket = ? "
                                         "AND n = ? IF state = 'queued'", (order.id, bucket_of(r["n"]), r["n"]))
            if applied:
                self._settle_transfer(order, r["n"], RepetitionState.refunded, None)
                refunded += order.price_per_run
            self.ledger.clear_pending(marker)
        return refunded

    def refund_repetitions(self, order_id: str, ns: list[int]) -> int:
        if not ns:
            return 0
        row = self._live_row(order_id)
        if row is None:
            raise NotFound("order not found")
        order = order_from(row)
        jobs = self._jobs(order_id, ns, JOB_COLS + ", result")
        for r in jobs:
            if r["state"] not in rules.OPEN:
                self._settle_transfer(order, r["n"], RepetitionState(r["state"]), r["result"])
        return self._refund_jobs(order, jobs)

    # --- open claims ---------------------------------------------------------------------

    @staticmethod
    def _claim_bucket(flow_run_id: str) -> int:
        return zlib.crc32(flow_run_id.encode()) % CLAIM_BUCKETS

    def open_claims(self, claimed_before: datetime, limit: int) -> list[OpenClaim]:
        found = self._many("SELECT flow_run_id, order_id, first_n, last_n, created_at, queued FROM open_claims "
                           "WHERE bucket = ?", [(b,) for b in range(CLAIM_BUCKETS)])
        rows = sorted((r for rs in found for r in rs if r["created_at"] < us(claimed_before)),
                      key=lambda r: (r["created_at"], r["flow_run_id"]))
        return [OpenClaim(flow_run_id=r["flow_run_id"], order_id=r["order_id"], first_n=r["first_n"],
                          last_n=r["last_n"], created_at=dt(r["created_at"]), queued=bool(r["queued"]))
                for r in rows[:limit]]

    def open_repetitions(self, claims: list[OpenClaim],
                         due_before: datetime | None = None) -> dict[str, list[Repetition]]:
        held: dict[str, list[Repetition]] = {c.flow_run_id: [] for c in claims}
        wanted: defaultdict[tuple[str, int], set[int]] = defaultdict(set)  # per partition, once for all claims
        for c in claims:
            for n in range(c.first_n, c.last_n + 1):
                wanted[(c.order_id, bucket_of(n))].add(n)
        found = self._many(f"SELECT {JOB_COLS} FROM jobs WHERE order_id = ? AND bucket = ? AND n IN ?",
                           [(order_id, bucket, sorted(ns)) for (order_id, bucket), ns in wanted.items()])
        for rows in found:
            for row in rows:
                rep = repetition_from(row)
                if rep.flow_run_id in held and rep.state in rules.OPEN and (due_before is None
                                                                            or rep.due_at < due_before):
                    held[rep.flow_run_id].append(rep)
        for reps in held.values():
            reps.sort(key=lambda r: r.n)
        return held

    def confirm_queued(self, flow_run_id: str) -> None:
        self._cas_retry("UPDATE open_claims SET queued = true WHERE bucket = ? AND flow_run_id = ? IF EXISTS",
                        (self._claim_bucket(flow_run_id), flow_run_id))

    def close_claim(self, flow_run_id: str) -> None:
        self._cas_retry("DELETE FROM open_claims WHERE bucket = ? AND flow_run_id = ? IF EXISTS",
                        (self._claim_bucket(flow_run_id), flow_run_id))
