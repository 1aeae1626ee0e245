"""Cassandra plumbing shared by every part of the store: the session, LWT helpers, row decoding.

`CassandraBase` connects (and migrates the schema, see `migrations`), holds the ledger (whose
Paxos helpers every part uses) and the reads by key that several domains share.
"""

import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from core.schemas import RepetitionState
from core.storage import rules
from core.storage.cassandra.ledger import CassandraLedger, CasUnknown
from core.storage.cassandra.migrations import migrate
from core.storage.cassandra.schema import CassandraUrl, Statements, connect, dt, opt_dt
from core.storage.records import Order, Repetition, Result, job_key

JOB_BUCKET = 32
"""Jobs (repetitions with their results) of one order are stored 32 to a partition."""
JOB_COLS = "order_id, n, flow_run_id, due_at, state, attempts, created_at"


def utcnow() -> datetime:
    return datetime.now(UTC)


def bucket_of(n: int) -> int:
    return (n - 1) // JOB_BUCKET


def parse_job_key(key: str) -> tuple[str, int] | None:
    order_id, _, n = key.rpartition(":")
    return (order_id, int(n)) if order_id and n.isdigit() else None


def order_from(row: dict[str, Any]) -> Order:
    return Order.model_validate({
        **json.loads(row["spec"]), "runs_claimed": row["runs_claimed"], "next_due_at": opt_dt(row["next_due_at"]),
        "status": row["status"], "deployment_id": row["deployment_id"], "updated_at": dt(row["updated_at"]),
    })


def repetition_from(row: dict[str, Any]) -> Repetition:
    return Repetition(key=job_key(row["order_id"], row["n"]), order_id=row["order_id"], n=row["n"],
                      due_at=dt(row["due_at"]), flow_run_id=row["flow_run_id"], state=row["state"],
                      attempts=row["attempts"], created_at=dt(row["created_at"]))


def stored_result(result: str | None) -> Result | None:
    """A job row's `result` without its body (enough to know who is paid for it), or None."""
    return Result.model_validate_json(result) if result is not None else None


def result_from(row: dict[str, Any]) -> Result:
    """A result from its job row's `result`, `body` and `body_pruned_at`."""
    return Result.model_validate({**json.loads(row["result"]), "body_zlib": row["body"] or b"",
                                  "body_pruned_at": opt_dt(row["body_pruned_at"])})


class CassandraBase:
    _one: Callable[..., dict[str, Any] | None]
    _rows: Callable[..., list[dict[str, Any]]]
    _cas: Callable[[str, tuple[Any, ...]], tuple[bool, dict[str, Any]]]
    _checkpoint: Callable[[str], None]

    def __init__(self, url: str) -> None:
        self.url = CassandraUrl.parse(url)
        self._cluster, self._session = connect(self.url)
        try:
            migrate(self._session, self.url)
        except Exception:
            self._cluster.shutdown()
            raise
        self._q = Statements(self._session, self.url.keyspace)
        self.ledger = CassandraLedger(self._session, self._q)
        self._one, self._rows, self._cas = self.ledger.one, self.ledger.rows, self.ledger.cas
        self._checkpoint = self.ledger.checkpoint

    def close(self) -> None:
        self._cluster.shutdown()

    def ping(self) -> None:
        self._session.execute(self._q("SELECT release_version FROM system.local"))

    def _exec(self, cql: str, params: tuple[Any, ...]) -> None:
        self._session.execute(self._q(cql), params)

    def _cas_retry(self, cql: str, params: tuple[Any, ...]) -> tuple[bool, dict[str, Any]]:
        """An LWT whose effect is the same when run twice: an unknown outcome is simply run again."""
        while True:
            try:
                return self._cas(cql, params)
            except CasUnknown:
                continue

    def _many(self, cql: str, params: list[tuple[Any, ...]]) -> list[list[dict[str, Any]]]:
        futures = [self._session.execute_async(self._q(cql), p) for p in params]
        return [list(f.result()) for f in futures]

    def _order_row(self, order_id: str, serial: bool = False) -> dict[str, Any] | None:
        return self._one("SELECT * FROM orders WHERE id = ?", (order_id,), serial=serial)

    def _jobs(self, order_id: str, ns: list[int], cols: str = JOB_COLS) -> list[dict[str, Any]]:
        by_bucket: dict[int, list[int]] = defaultdict(list)
        for n in ns:
            by_bucket[bucket_of(n)].append(n)
        found = self._many(f"SELECT {cols} FROM jobs WHERE order_id = ? AND bucket = ? AND n IN ?",
                           [(order_id, b, sorted(set(group))) for b, group in by_bucket.items()])
        return sorted((r for rows in found for r in rows), key=lambda r: r["n"])

    def _settle_transfer(self, order: Order, n: int, state: RepetitionState, result: str | None) -> None:
        """The coin movements a closed job implies (idempotent): the miner's reward or the customer's refund, and the
        fees of the miners that checked its result."""
        for movement in rules.settlement(order, n, state, stored_result(result)):
            self.ledger.transfer(*movement)
