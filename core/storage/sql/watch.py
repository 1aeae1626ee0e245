"""What the watcher made of each result (observations) and how far it got per order, on SQL."""

from functools import cached_property
from typing import Any

from sqlalchemy import case, tuple_
from sqlmodel import col, select

from core.storage.records import Observation, WatchCursor
from core.storage.sql.engine import SqlBase, chunked, record
from core.storage.sql.tables import ObservationRow, WatchCursorRow


class SqlWatch(SqlBase):
    def get_watch_cursor(self, order_id: str) -> WatchCursor:
        with self._read() as s:
            row = s.get(WatchCursorRow, order_id)
            return record(WatchCursor, row) if row else WatchCursor(order_id=order_id)

    def get_watch_cursors(self, order_ids: list[str]) -> list[WatchCursor]:
        with self._read() as s:
            found = {r.order_id: record(WatchCursor, r) for ids in chunked(sorted(set(order_ids)))
                     for r in s.exec(select(WatchCursorRow).where(col(WatchCursorRow.order_id).in_(ids)))}
        return [found.get(i) or WatchCursor(order_id=i) for i in order_ids]

    def get_observations(self, keys: list[tuple[str, int]]) -> list[Observation]:
        with self._read() as s:
            return [record(Observation, r) for some in chunked(sorted(set(keys)))
                    for r in s.exec(select(ObservationRow).where(
                        tuple_(col(ObservationRow.order_id), col(ObservationRow.n)).in_(some)))]

    def record_observations(self, cursor: WatchCursor, observations: list[Observation]) -> None:
        self.record_observations_of([(cursor, observations)])

    def record_observations_of(self, batches: list[tuple[WatchCursor, list[Observation]]]) -> None:
        # In key order, so that two watchers writing overlapping batches on PostgreSQL take their locks alike.
        observations = [o.model_dump() for o in sorted((o for _, some in batches for o in some),
                                                       key=lambda o: (o.order_id, o.n))]
        # One row per order, the furthest cursor if an order comes twice (a cursor only moves forward).
        cursors: dict[str, WatchCursor] = {}
        for cursor, _ in batches:
            if cursor.order_id not in cursors or cursors[cursor.order_id].last_n < cursor.last_n:
                cursors[cursor.order_id] = cursor

        def run() -> None:
            with self._write() as s:
                if observations:
                    s.execute(self._add_observations_stmt, observations)
                if cursors:
                    s.execute(self._move_cursors_stmt, [cursors[i].model_dump() for i in sorted(cursors)])

        if batches:
            self._retrying(run)

    # Statements built once per store and run for many rows at once (executemany): a statement built per call,
    # with a VALUES row per observation, costs more to build and compile than to run.
    @cached_property
    def _add_observations_stmt(self) -> Any:
        return self._insert(ObservationRow).on_conflict_do_nothing(index_elements=["order_id", "n"])

    @cached_property
    def _move_cursors_stmt(self) -> Any:
        """Move an order's cursor forward, never back."""
        stmt = self._insert(WatchCursorRow)
        ahead = col(WatchCursorRow.last_n) < stmt.excluded.last_n
        return stmt.on_conflict_do_update(index_elements=["order_id"], set_={
            "last_n": case((ahead, stmt.excluded.last_n), else_=WatchCursorRow.last_n),
            "last_valid_n": case((ahead, stmt.excluded.last_valid_n), else_=WatchCursorRow.last_valid_n),
        })

    def list_observations(self, order_id: str, after_n: int = 0, limit: int = 100,
                          changes_only: bool = False) -> list[Observation]:
        with self._read() as s:
            stmt = select(ObservationRow).where(ObservationRow.order_id == order_id, col(ObservationRow.n) > after_n)
            if changes_only:
                stmt = stmt.where(col(ObservationRow.changed).is_(True))
            return [record(Observation, r) for r in s.exec(stmt.order_by(col(ObservationRow.n)).limit(limit))]
