"""The Prefect sync outbox on Cassandra: requests spread over a few partitions by order id."""

import zlib
from datetime import datetime

from core.storage.cassandra.schema import dt, us
from core.storage.cassandra.session import CassandraBase

SYNC_BUCKETS = 8


class CassandraOutbox(CassandraBase):
    @staticmethod
    def _sync_bucket(order_id: str) -> int:
        return zlib.crc32(order_id.encode()) % SYNC_BUCKETS

    def request_sync(self, order_id: str, at: datetime) -> None:
        bucket = self._sync_bucket(order_id)
        while True:
            applied, current = self._cas_retry("INSERT INTO sync_requests (bucket, order_id, requested_at) "
                                               "VALUES (?, ?, ?) IF NOT EXISTS", (bucket, order_id, us(at)))
            if applied:
                return
            applied, _ = self._cas_retry("UPDATE sync_requests SET requested_at = ? WHERE bucket = ? AND order_id = ? "
                                         "IF requested_at = ?", (us(at), bucket, order_id, current["requested_at"]))
            if applied:
                return

    def pending_syncs(self, limit: int, now: datetime) -> list[tuple[str, datetime]]:
        found = self._many("SELECT order_id, requested_at FROM sync_requests WHERE bucket = ?",
                           [(b,) for b in range(SYNC_BUCKETS)])
        due = sorted((r["requested_at"], r["order_id"]) for rows in found for r in rows
                     if r["requested_at"] <= us(now))
        return [(order_id, dt(at)) for at, order_id in due[:limit]]

    def finish_sync(self, order_id: str, requested_at: datetime, then: datetime | None = None) -> None:
        if then is None:
            self._cas_retry("DELETE FROM sync_requests WHERE bucket = ? AND order_id = ? IF requested_at <= ?",
                            (self._sync_bucket(order_id), order_id, us(requested_at)))
        else:
            self._cas_retry("UPDATE sync_requests SET requested_at = ? WHERE bucket = ? AND order_id = ? "
                            "IF requested_at <= ?", (us(then), self._sync_bucket(order_id), order_id, us(requested_at)))
