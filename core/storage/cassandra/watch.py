"""What the watcher made of each result (observations) and how far it got per order, on Cassandra.

Observations sit 32 to a partition, like the jobs they describe. They are written with IF NOT
EXISTS in one batch per partition (one Paxos round), so the first watcher's version stays; the
cursor then moves forward by LWT.
"""

from typing import Any

from cassandra import WriteTimeout, WriteType
from cassandra.query import BatchStatement, BatchType

from core.storage.cassandra.session import CassandraBase, bucket_of, order_from
from core.storage.records import Observation, WatchCursor


class CassandraWatch(CassandraBase):
    def get_watch_cursor(self, order_id: str) -> WatchCursor:
        row = self._one("SELECT last_n, last_valid_n FROM watch_cursors WHERE order_id = ?", (order_id,))
        return WatchCursor(order_id=order_id, **row) if row else WatchCursor(order_id=order_id)

    def get_watch_cursors(self, order_ids: list[str]) -> list[WatchCursor]:
        return [self.get_watch_cursor(i) for i in order_ids]

    def get_observations(self, keys: list[tuple[str, int]]) -> list[Observation]:
        found = self._many("SELECT observation FROM observations WHERE order_id = ? AND bucket = ? AND n = ?",
                           [(order_id, bucket_of(n), n) for order_id, n in dict.fromkeys(keys)])
        return [Observation.model_validate_json(rows[0]["observation"]) for rows in found if rows]

    def record_observations_of(self, batches: list[tuple[WatchCursor, list[Observation]]]) -> None:
        for cursor, observations in batches:
            self.record_observations(cursor, observations)

    def record_observations(self, cursor: WatchCursor, observations: list[Observation]) -> None:
        insert = self._q("INSERT INTO observations (order_id, bucket, n, changed, observation) VALUES (?, ?, ?, ?, ?) "
                         "IF NOT EXISTS")

        def values(o: Observation) -> tuple[Any, ...]:
            return (o.order_id, bucket_of(o.n), o.n, o.changed, o.model_dump_json())

        by_bucket: dict[int, list[Observation]] = {}
        for o in observations:
            by_bucket.setdefault(bucket_of(o.n), []).append(o)
        for group in by_bucket.values():
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)  # one partition: one Paxos round
            for o in group:
                batch.add(insert, values(o))
            try:
                if self._session.execute(batch).one()["[applied]"]:
                    continue
            except WriteTimeout as e:
                if e.write_type != WriteType.CAS:
                    raise
            for o in group:  # some were written before (another watcher, or an earlier try): keep those
                self._cas_retry(insert.query_string, values(o))
        while True:
            applied, current = self._cas_retry(
                "UPDATE watch_cursors SET last_n = ?, last_valid_n = ? WHERE order_id = ? IF last_n < ?",
                (cursor.last_n, cursor.last_valid_n, cursor.order_id, cursor.last_n))
            if applied or current.get("last_n") is not None:
                return
            applied, _ = self._cas_retry("INSERT INTO watch_cursors (order_id, last_n, last_valid_n) VALUES (?, ?, ?) "
                                         "IF NOT EXISTS", (cursor.order_id, cursor.last_n, cursor.last_valid_n))
            if applied:
                return

    def list_observations(self, order_id: str, after_n: int = 0, limit: int = 100,
                          changes_only: bool = False) -> list[Observation]:
        row = self._order_row(order_id)
        if row is None or limit <= 0:
            return []
        out: list[Observation] = []
        for bucket in range(bucket_of(after_n + 1), bucket_of(order_from(row).max_runs) + 1):
            for obs in self._rows("SELECT changed, observation FROM observations WHERE order_id = ? AND bucket = ? "
                                  "AND n > ?", (order_id, bucket, after_n)):
                if obs["changed"] or not changes_only:
                    out.append(Observation.model_validate_json(obs["observation"]))
            if len(out) >= limit:
                break
        return sorted(out, key=lambda o: o.n)[:limit]
