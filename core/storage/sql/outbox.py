"""The Prefect sync outbox on SQL: orders whose deployment must be brought in line with them."""

from datetime import datetime

from sqlmodel import Session, col, select

from core.storage.sql.engine import SqlBase
from core.storage.sql.tables import SyncRequestRow


class SqlOutbox(SqlBase):
    def _request_sync(self, s: Session, order_id: str, at: datetime) -> None:
        s.execute(
            self._insert(SyncRequestRow)
            .values(order_id=order_id, requested_at=at)
            .on_conflict_do_update(index_elements=["order_id"], set_={"requested_at": at})
        )

    def request_sync(self, order_id: str, at: datetime) -> None:
        with self._write() as s:
            self._request_sync(s, order_id, at)

    def pending_syncs(self, limit: int, now: datetime) -> list[tuple[str, datetime]]:
        with self._read() as s:
            stmt = (select(SyncRequestRow.order_id, SyncRequestRow.requested_at)  # columns: no ORM objects to build
                    .where(col(SyncRequestRow.requested_at) <= now)
                    .order_by(col(SyncRequestRow.requested_at)).limit(limit))
            return [(order_id, at) for order_id, at in s.exec(stmt)]

    def finish_sync(self, order_id: str, requested_at: datetime, then: datetime | None = None) -> None:
        with self._write() as s:
            row = s.get(SyncRequestRow, order_id)
            if row is not None and row.requested_at <= requested_at:
                if then is None:
                    s.delete(row)
                else:
                    row.requested_at = then
                    s.add(row)
