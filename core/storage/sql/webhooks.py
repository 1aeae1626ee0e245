"""Webhooks and the outbox of their deliveries, on SQL."""

from datetime import datetime

from sqlalchemy import and_, or_, update
from sqlmodel import col, select

from core.storage.records import Cursor, DeliveryState, Webhook, WebhookAttempt, WebhookDelivery
from core.storage.sql.engine import SqlBase, chunked, record
from core.storage.sql.tables import WebhookDeliveryRow, WebhookRow


class SqlWebhooks(SqlBase):
    def create_webhook(self, webhook: Webhook) -> None:
        with self._write() as s:
            s.add(WebhookRow.model_validate(webhook.model_dump()))

    def get_webhook(self, webhook_id: str) -> Webhook | None:
        with self._read() as s:
            row = s.get(WebhookRow, webhook_id)
            return record(Webhook, row) if row else None

    def get_webhooks(self, webhook_ids: list[str]) -> list[Webhook]:
        with self._read() as s:
            return [record(Webhook, r) for ids in chunked(sorted(set(webhook_ids)))
                    for r in s.exec(select(WebhookRow).where(col(WebhookRow.id).in_(ids)))]

    def list_webhooks(self, owner_id: str) -> list[Webhook]:
        with self._read() as s:
            stmt = (select(WebhookRow).where(WebhookRow.owner_id == owner_id, col(WebhookRow.deleted_at).is_(None))
                    .order_by(col(WebhookRow.created_at), col(WebhookRow.id)))
            return [record(Webhook, r) for r in s.exec(stmt)]

    def list_webhooks_of(self, owner_ids: list[str]) -> list[Webhook]:
        with self._read() as s:
            found = [record(Webhook, r) for ids in chunked(sorted(set(owner_ids)))
                     for r in s.exec(select(WebhookRow).where(col(WebhookRow.owner_id).in_(ids),
                                                              col(WebhookRow.deleted_at).is_(None)))]
        return sorted(found, key=lambda w: (w.created_at, w.id))

    def delete_webhook(self, owner_id: str, webhook_id: str, at: datetime) -> bool:
        with self._write() as s:
            row = s.get(WebhookRow, webhook_id)
            if row is None or row.owner_id != owner_id or row.deleted_at is not None:
                return False
            row.deleted_at = at
            s.add(row)
            return True

    def add_webhook_deliveries(self, deliveries: list[WebhookDelivery]) -> None:
        if not deliveries:
            return

        def run() -> None:
            with self._write() as s:
                s.execute(self._insert(WebhookDeliveryRow).values([d.model_dump() for d in deliveries])
                          .on_conflict_do_nothing(index_elements=["id"]))

        self._retrying(run)

    def claim_webhook_deliveries(self, now: datetime, until: datetime, limit: int) -> list[WebhookDelivery]:
        def run() -> list[WebhookDelivery]:
            with self._write() as s:
                due = (select(WebhookDeliveryRow.id).where(col(WebhookDeliveryRow.next_attempt_at) <= now)
                       .order_by(col(WebhookDeliveryRow.next_attempt_at)).limit(limit))
                if self.dialect == "postgresql":  # concurrent senders take different rows instead of waiting
                    due = due.with_for_update(skip_locked=True)
                ids = list(s.exec(due))
                if not ids:
                    return []
                s.execute(update(WebhookDeliveryRow).where(col(WebhookDeliveryRow.id).in_(ids))
                          .values(next_attempt_at=until))
                rows = s.exec(select(WebhookDeliveryRow).where(col(WebhookDeliveryRow.id).in_(ids))).all()
                return sorted((record(WebhookDelivery, r) for r in rows), key=lambda d: (d.created_at, d.id))

        return self._retrying(run)

    def finish_webhook_attempt(self, delivery: WebhookDelivery, at: datetime, status: int | None, error: str | None,
                               delivered: bool, retry_at: datetime | None) -> None:
        self.finish_webhook_attempts([WebhookAttempt.of(delivery, at, status, error, delivered, retry_at)])

    def finish_webhook_attempts(self, attempts: list[WebhookAttempt]) -> None:
        def run() -> None:
            with self._write() as s:  # in id order: concurrent senders on PostgreSQL lock rows alike
                for a in sorted(attempts, key=lambda a: a.delivery_id):
                    s.execute(update(WebhookDeliveryRow)
                              .where(col(WebhookDeliveryRow.id) == a.delivery_id,
                                     col(WebhookDeliveryRow.state) == DeliveryState.pending,
                                     col(WebhookDeliveryRow.next_attempt_at) == a.leased_until)  # still our lease
                              .values(state=a.state, attempts=WebhookDeliveryRow.attempts + 1, last_attempt_at=a.at,
                                      last_status=a.status, last_error=a.error,
                                      delivered_at=a.at if a.delivered else None,
                                      next_attempt_at=a.retry_at if a.state is DeliveryState.pending else None))

        if attempts:
            self._retrying(run)

    def get_webhook_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        with self._read() as s:
            row = s.get(WebhookDeliveryRow, delivery_id)
            return record(WebhookDelivery, row) if row else None

    def list_webhook_deliveries(self, webhook_id: str, limit: int = 50,
                                before: Cursor | None = None) -> list[WebhookDelivery]:
        with self._read() as s:
            stmt = select(WebhookDeliveryRow).where(WebhookDeliveryRow.webhook_id == webhook_id)
            if before is not None:
                at, last_id = before
                stmt = stmt.where(or_(col(WebhookDeliveryRow.created_at) < at,
                                      and_(col(WebhookDeliveryRow.created_at) == at,
                                           col(WebhookDeliveryRow.id) < last_id)))
            stmt = stmt.order_by(col(WebhookDeliveryRow.created_at).desc(), col(WebhookDeliveryRow.id).desc())
            return [record(WebhookDelivery, r) for r in s.exec(stmt.limit(limit))]
