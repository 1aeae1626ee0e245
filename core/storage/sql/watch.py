"""What the watcher made of each result (observations) and how far it got per order, on SQL."""

from sqlalchemy import case
from sqlmodel import col, select

from core.storage.records import Observation, WatchCursor
from core.storage.sql.engine import SqlBase, record
from core.storage.sql.tables import ObservationRow, WatchCursorRow


class SqlWatch(SqlBase):
    def get_watch_cursor(self, order_id: str) -> WatchCursor:
        with self._read() as s:
            row = s.get(WatchCursorRow, order_id)
            return record(WatchCursor, row) if row else WatchCursor(order_id=order_id)

    def record_observations(self, cursor: WatchCursor, observations: list[Observation]) -> None:
        def run() -> None:
            with self._write() as s:
                if observations:
                    s.execute(self._insert(ObservationRow).values([o.model_dump() for o in observations])
                              .on_conflict_do_nothing(index_elements=["order_id", "n"]))
                ahead = col(WatchCursorRow.last_n) < cursor.last_n
                s.execute(
                    self._insert(WatchCursorRow).values(**cursor.model_dump())
                    .on_conflict_do_update(index_elements=["order_id"], set_={
                        "last_n": case((ahead, cursor.last_n), else_=WatchCursorRow.last_n),
                        "last_valid_n": case((ahead, cursor.last_valid_n), else_=WatchCursorRow.last_valid_n),
                    })
                )

        self._retrying(run)

    def list_observations(self, order_id: str, after_n: int = 0, limit: int = 100,
                          changes_only: bool = False) -> list[Observation]:
        with self._read() as s:
            stmt = select(ObservationRow).where(ObservationRow.order_id == order_id, col(ObservationRow.n) > after_n)
            if changes_only:
                stmt = stmt.where(col(ObservationRow.changed).is_(True))
            return [record(Observation, r) for r in s.exec(stmt.order_by(col(ObservationRow.n)).limit(limit))]
