"""Delivered results, the pay they settle, and result clients' delivery cursors, on Cassandra.

A result is stored and its job settled in one LWT on the job row (jobs hold their result),
then the miner is paid or the customer refunded; a `settle:` pending marker covers the gap.
"""

from datetime import datetime
from typing import Any

from cassandra import WriteTimeout, WriteType
from cassandra.query import BatchStatement

from core.errors import NotFound
from core.schemas import RepetitionState
from core.storage import rules
from core.storage.cassandra.ledger import CasUnknown
from core.storage.cassandra.retention import minute_of
from core.storage.cassandra.schema import us
from core.storage.cassandra.session import (
    JOB_COLS,
    CassandraBase,
    bucket_of,
    order_from,
    parse_job_key,
    repetition_from,
    result_from,
    stored_result,
)
from core.storage.records import Acknowledged, Order, Recorded, Repetition, Result, ResultOutcome


class CassandraResults(CassandraBase):
    def record_results(self, results: list[Result]) -> list[Recorded]:
        """A batch in a constant number of round trips rather than about fifteen per result: `settle:` markers
        for every result at once, the jobs read together, each partition of jobs (32 to one) settled in one
        conditional batch, then every pay and refund with `transfer_many`, then the markers cleared.

        Each result keeps the scheme of one: it is stored and its job closed in an LWT before coins move,
        and its marker stays until they have, so a crash anywhere is finished by `recover_pending`.
        """
        out: list[Recorded | None] = [None] * len(results)
        first: dict[str, int] = {}
        repeats: list[int] = []  # a job delivered twice in one batch: judged once the first is recorded
        for i, result in enumerate(results):
            if parse_job_key(result.job_key) != (result.order_id, result.n):
                out[i] = rules.recorded(ResultOutcome.unknown)
            elif result.job_key in first:
                repeats.append(i)
            else:
                first[result.job_key] = i
        order_ids = sorted({results[i].order_id for i in first.values()})
        order_rows = self.ledger._all("SELECT * FROM orders WHERE id = ?", [(o,) for o in order_ids])
        orders = {o: order_from(rows[0]) for o, rows in zip(order_ids, order_rows, strict=True) if rows}
        todo = []
        for i in first.values():
            if results[i].order_id in orders:
                todo.append(i)
            else:
                out[i] = rules.recorded(ResultOutcome.unknown)
        markers = [f"settle:{results[i].job_key}" for i in todo]
        self.ledger.mark_pending_many(markers)
        movements: list[rules.Movement] = []
        while todo:
            jobs: dict[tuple[str, int], dict[str, Any]] = {}
            by_order: dict[str, list[int]] = {}
            for i in todo:
                by_order.setdefault(results[i].order_id, []).append(results[i].n)
            for order_id, ns in by_order.items():
                for job in self._jobs(order_id, ns, "order_id, n, state, result"):
                    jobs[(order_id, job["n"])] = job
            partitions: dict[tuple[str, int], list[tuple[int, RepetitionState, RepetitionState]]] = {}
            for i in todo:
                result = results[i]
                order = orders[result.order_id]
                row = jobs.get((result.order_id, result.n))
                if row is None:
                    out[i] = rules.recorded(ResultOutcome.unknown)
                    continue
                state = RepetitionState(row["state"])
                prior = rules.prior_outcome(row["result"] is not None, state)
                if prior is not None:  # finish what a crash may have cut
                    movements += rules.settlement(order, result.n, state, stored_result(row["result"]))
                    out[i] = rules.recorded(prior)
                    continue
                to, _ = rules.settle(order, result)
                partitions.setdefault((result.order_id, bucket_of(result.n)), []).append((i, state, to))
            update = self._q("UPDATE jobs SET state = ?, result = ?, body = ? "
                             "WHERE order_id = ? AND bucket = ? AND n = ? IF state = ?")
            futures = []
            for (order_id, bucket), group in partitions.items():
                batch = BatchStatement()
                for i, state, to in group:
                    r = results[i]
                    batch.add(update, (to.value, r.model_dump_json(exclude={"body_zlib"}), r.body_zlib,
                                       order_id, bucket, r.n, state.value))
                futures.append((self._session.execute_async(batch), group))
            todo = []
            for future, group in futures:
                try:
                    applied = bool(future.result().one()["[applied]"])
                except WriteTimeout as e:
                    if e.write_type != WriteType.CAS:
                        raise
                    applied = False  # the next read shows whether it was stored (and by whom)
                if not applied:  # a job of the partition changed meanwhile: read them again
                    todo += [i for i, _, _ in group]
                    continue
                for i, _, to in group:
                    order = orders[results[i].order_id]
                    movements += rules.settle(order, results[i])[1]
                    out[i] = rules.settled(to, order)
        if markers:
            self._checkpoint("result:stored")
        self.ledger.transfer_many(movements)
        self.ledger.clear_pending_many(markers)
        if repeats:
            for i, recorded in zip(repeats, self.record_results([results[i] for i in repeats]), strict=True):
                out[i] = recorded
        return [r if r is not None else rules.recorded(ResultOutcome.unknown) for r in out]

    def _record(self, result: Result, orders: dict[str, Order | None]) -> Recorded:
        """One result on its own (the scheme `record_results` follows for a batch)."""
        if parse_job_key(result.job_key) != (result.order_id, result.n):
            return rules.recorded(ResultOutcome.unknown)
        if result.order_id not in orders:
            row = self._order_row(result.order_id)
            orders[result.order_id] = order_from(row) if row else None
        order = orders[result.order_id]
        if order is None:
            return rules.recorded(ResultOutcome.unknown)
        where = (result.order_id, bucket_of(result.n), result.n)
        marker = f"settle:{result.job_key}"
        while True:
            job = self._one("SELECT state, result FROM jobs WHERE order_id = ? AND bucket = ? AND n = ?", where)
            if job is None:
                return rules.recorded(ResultOutcome.unknown)
            state = RepetitionState(job["state"])
            prior = rules.prior_outcome(job["result"] is not None, state)
            if prior is not None:
                self._settle_transfer(order, result.n, state, job["result"])  # finish what a crash may have cut
                return rules.recorded(prior)
            to, moves = rules.settle(order, result)
            self.ledger.mark_pending(marker)
            try:
                applied, _ = self._cas("UPDATE jobs SET state = ?, result = ?, body = ? "
                                       "WHERE order_id = ? AND bucket = ? AND n = ? IF state = ?",
                                       (to.value, result.model_dump_json(exclude={"body_zlib"}), result.body_zlib,
                                        *where, state.value))
            except CasUnknown:
                continue  # the next read shows whether it was stored (and by whom)
            if applied:
                self._checkpoint("result:stored")
                self.ledger.transfer_many(moves)
                self.ledger.clear_pending(marker)
                return rules.settled(to, order)

    def record_result(self, result: Result) -> Recorded:
        return self.record_results([result])[0]

    def fail_attempt(self, job_key: str, max_attempts: int, last: Result | None = None) -> Repetition | None:
        parsed = parse_job_key(job_key)
        if parsed is None:
            return None
        order_id, n = parsed
        where = (order_id, bucket_of(n), n)
        while True:
            job = self._one(f"SELECT {JOB_COLS}, result FROM jobs WHERE order_id = ? AND bucket = ? AND n = ?",
                            where)
            if job is None:
                return None
            state = RepetitionState(job["state"])
            if state not in rules.OPEN:
                row = self._order_row(order_id)
                if row is not None:
                    self._settle_transfer(order_from(row), n, state, job["result"])
                return repetition_from(job)
            attempts = job["attempts"] + 1
            if attempts < max_attempts:
                applied, _ = self._cas_retry("UPDATE jobs SET attempts = ? WHERE order_id = ? AND bucket = ? AND n = ? "
                                             "IF state = ? AND attempts = ?", (attempts, *where, state.value,
                                                                               job["attempts"]))
                if applied:
                    return repetition_from({**job, "attempts": attempts})
                continue
            row = self._order_row(order_id)
            if row is None:
                raise NotFound("order not found")
            keep = last is not None and job["result"] is None
            self.ledger.mark_pending(f"settle:{job_key}")
            applied, _ = self._cas_retry(
                "UPDATE jobs SET attempts = ?, state = 'failed', result = ?, body = ? "
                "WHERE order_id = ? AND bucket = ? AND n = ? IF state = ? AND attempts = ?",
                (attempts, last.model_dump_json(exclude={"body_zlib"}) if keep and last else job["result"],
                 last.body_zlib if keep and last else None, *where, state.value, job["attempts"]))
            if applied:
                self._settle_transfer(order_from(row), n, RepetitionState.failed, None)
                self.ledger.clear_pending(f"settle:{job_key}")
                return repetition_from({**job, "attempts": attempts, "state": RepetitionState.failed.value})

    def get_result(self, job_key: str) -> Result | None:
        parsed = parse_job_key(job_key)
        if parsed is None:
            return None
        row = self._one("SELECT result, body, body_pruned_at FROM jobs WHERE order_id = ? AND bucket = ? AND n = ?",
                        (parsed[0], bucket_of(parsed[1]), parsed[1]))
        return result_from(row) if row and row["result"] is not None else None

    def get_results(self, job_keys: list[str]) -> list[Result]:
        return [r for r in map(self.get_result, dict.fromkeys(job_keys)) if r is not None]

    def list_results(self, order_id: str, after_n: int = 0, limit: int = 100) -> list[Result]:
        row = self._order_row(order_id)
        if row is None or limit <= 0:
            return []
        out: list[Result] = []
        for bucket in range(bucket_of(after_n + 1), bucket_of(order_from(row).max_runs) + 1):
            for job in self._rows("SELECT result, body, body_pruned_at FROM jobs "
                                  "WHERE order_id = ? AND bucket = ? AND n > ?", (order_id, bucket, after_n)):
                if job["result"] is not None:
                    out.append(result_from(job))
            if len(out) >= limit:
                break
        return sorted(out, key=lambda r: r.n)[:limit]

    def get_delivery_cursor(self, token_id: str, order_id: str) -> int:
        row = self._one("SELECT last_n FROM delivery_cursors WHERE token_id = ? AND order_id = ?", (token_id, order_id))
        return row["last_n"] if row else 0

    def advance_delivery_cursor(self, token_id: str, order_id: str, n: int) -> None:
        while True:
            applied, current = self._cas_retry("UPDATE delivery_cursors SET last_n = ? WHERE token_id = ? "
                                               "AND order_id = ? IF last_n < ?", (n, token_id, order_id, n))
            if applied or current.get("last_n") is not None:
                return
            applied, _ = self._cas_retry("INSERT INTO delivery_cursors (token_id, order_id, last_n) VALUES (?, ?, ?) "
                                         "IF NOT EXISTS", (token_id, order_id, n))
            if applied:
                return

    def record_delivery(self, token_id: str, order_id: str, after_n: int, last_n: int, at: datetime) -> None:
        if last_n > after_n:  # listed under its minute first, so a pruner that sees the row sees the minute too
            self._exec("INSERT INTO delivery_minutes (shard, minute) VALUES (0, ?)", (minute_of(at),))
            self._exec("INSERT INTO deliveries (minute, delivered_at, order_id, first_n, last_n) "
                       "VALUES (?, ?, ?, ?, ?)", (minute_of(at), us(at), order_id, after_n + 1, last_n))
        self.advance_delivery_cursor(token_id, order_id, last_n)

    def record_deliveries(self, acknowledged: list[Acknowledged]) -> None:
        for a in acknowledged:
            self.record_delivery(a.token_id, a.order_id, a.after_n, a.last_n, a.at)
