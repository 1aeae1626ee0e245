"""Webhooks and the outbox of their deliveries, on Cassandra.

A delivery is a row by id whose state changes are lightweight transactions conditional on its
state and `next_attempt_at`. The due ones are found through `webhook_due`, spread over a few
partitions by id and clustered by due time. Every change writes the new due row first, then the
delivery, then deletes the old due row, so a crash leaves a due row too many, never one too few:
a due row that no longer matches its delivery is dropped when a sender comes across it.
"""

import zlib
from datetime import datetime, timedelta
from typing import Any

from core.storage.cassandra.schema import dt, opt_dt, opt_us, us
from core.storage.cassandra.session import CassandraBase
from core.storage.records import Cursor, DeliveryState, Webhook, WebhookAttempt, WebhookDelivery

DUE_BUCKETS = 16
ORPHAN_DUE_SECONDS = 60
"""A due row whose delivery is still missing after this long belongs to an insert that died half-way."""
_COLS = ("id, webhook_id, order_id, n, event, payload, created_at, state, attempts, next_attempt_at, "
         "last_attempt_at, last_status, last_error, delivered_at")


def _due_bucket(delivery_id: str) -> int:
    return zlib.crc32(delivery_id.encode()) % DUE_BUCKETS


def _delivery(row: dict[str, Any]) -> WebhookDelivery:
    return WebhookDelivery.model_validate({
        **row, "created_at": dt(row["created_at"]), "next_attempt_at": opt_dt(row["next_attempt_at"]),
        "last_attempt_at": opt_dt(row["last_attempt_at"]), "delivered_at": opt_dt(row["delivered_at"])})


class CassandraWebhooks(CassandraBase):
    def create_webhook(self, webhook: Webhook) -> None:
        self._exec("INSERT INTO webhooks (id, owner_id, webhook) VALUES (?, ?, ?)",
                   (webhook.id, webhook.owner_id, webhook.model_dump_json()))
        self._exec("INSERT INTO webhooks_by_owner (owner_id, id) VALUES (?, ?)", (webhook.owner_id, webhook.id))

    def get_webhook(self, webhook_id: str) -> Webhook | None:
        row = self._one("SELECT webhook FROM webhooks WHERE id = ?", (webhook_id,))
        return Webhook.model_validate_json(row["webhook"]) if row else None

    def get_webhooks(self, webhook_ids: list[str]) -> list[Webhook]:
        found = self._many("SELECT webhook FROM webhooks WHERE id = ?", [(i,) for i in dict.fromkeys(webhook_ids)])
        return [Webhook.model_validate_json(rows[0]["webhook"]) for rows in found if rows]

    def list_webhooks(self, owner_id: str) -> list[Webhook]:
        ids = [r["id"] for r in self._rows("SELECT id FROM webhooks_by_owner WHERE owner_id = ?", (owner_id,))]
        found = [Webhook.model_validate_json(r[0]["webhook"])
                 for r in self._many("SELECT webhook FROM webhooks WHERE id = ?", [(i,) for i in ids]) if r]
        return sorted((w for w in found if w.deleted_at is None), key=lambda w: (w.created_at, w.id))

    def list_webhooks_of(self, owner_ids: list[str]) -> list[Webhook]:
        found = [w for owner_id in dict.fromkeys(owner_ids) for w in self.list_webhooks(owner_id)]
        return sorted(found, key=lambda w: (w.created_at, w.id))

    def delete_webhook(self, owner_id: str, webhook_id: str, at: datetime) -> bool:
        webhook = self.get_webhook(webhook_id)
        if webhook is None or webhook.owner_id != owner_id or webhook.deleted_at is not None:
            return False
        webhook.deleted_at = at
        self._exec("INSERT INTO webhooks (id, owner_id, webhook) VALUES (?, ?, ?)",
                   (webhook.id, webhook.owner_id, webhook.model_dump_json()))
        return True

    def _set_due(self, delivery_id: str, at: datetime) -> None:
        self._exec("INSERT INTO webhook_due (bucket, due_at, id) VALUES (?, ?, ?)", (_due_bucket(delivery_id), us(at),
                                                                                     delivery_id))

    def _drop_due(self, delivery_id: str, at_us: int) -> None:
        self._exec("DELETE FROM webhook_due WHERE bucket = ? AND due_at = ? AND id = ?",
                   (_due_bucket(delivery_id), at_us, delivery_id))

    def add_webhook_deliveries(self, deliveries: list[WebhookDelivery]) -> None:
        futures = []
        for d in deliveries:
            assert d.next_attempt_at is not None, "a new delivery is due at some time"
            futures.append(self._session.execute_async(
                self._q("INSERT INTO webhook_due (bucket, due_at, id) VALUES (?, ?, ?)"),
                (_due_bucket(d.id), us(d.next_attempt_at), d.id)))
            futures.append(self._session.execute_async(
                self._q("INSERT INTO webhook_deliveries_by_webhook (webhook_id, created_at, id) VALUES (?, ?, ?)"),
                (d.webhook_id, us(d.created_at), d.id)))
        for f in futures:
            f.result()
        for d in deliveries:
            assert d.next_attempt_at is not None
            applied, current = self._cas_retry(
                f"INSERT INTO webhook_deliveries ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "IF NOT EXISTS",
                (d.id, d.webhook_id, d.order_id, d.n, d.event.value, d.payload, us(d.created_at), d.state.value,
                 d.attempts, us(d.next_attempt_at), opt_us(d.last_attempt_at), d.last_status, d.last_error,
                 opt_us(d.delivered_at)))
            if applied:
                continue
            # stored before (another watcher, or an earlier try): keep that one, and only its index and due rows
            if current.get("created_at") != us(d.created_at):
                self._exec("DELETE FROM webhook_deliveries_by_webhook WHERE webhook_id = ? AND created_at = ? "
                           "AND id = ?", (d.webhook_id, us(d.created_at), d.id))
            if current.get("next_attempt_at") != us(d.next_attempt_at):
                self._drop_due(d.id, us(d.next_attempt_at))

    def claim_webhook_deliveries(self, now: datetime, until: datetime, limit: int) -> list[WebhookDelivery]:
        found = self._many("SELECT due_at, id FROM webhook_due WHERE bucket = ? AND due_at <= ? LIMIT ?",
                           [(b, us(now), limit) for b in range(DUE_BUCKETS)])
        due = sorted((r["due_at"], r["id"]) for rows in found for r in rows)
        claimed: list[WebhookDelivery] = []
        for due_at, delivery_id in due:
            if len(claimed) >= limit:
                break
            self._set_due(delivery_id, until)
            applied, current = self._cas_retry(
                "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ? IF state = ? AND next_attempt_at = ?",
                (us(until), delivery_id, DeliveryState.pending.value, due_at))
            if applied:
                self._drop_due(delivery_id, due_at)
                row = self._one(f"SELECT {_COLS} FROM webhook_deliveries WHERE id = ?", (delivery_id,))
                if row is not None:
                    claimed.append(_delivery(row))
                continue
            if current.get("next_attempt_at") != us(until):  # (a sender that claimed it just now needs that row)
                self._drop_due(delivery_id, us(until))
            if current.get("state") is None and dt(due_at) > now - timedelta(seconds=ORPHAN_DUE_SECONDS):
                continue  # its delivery is being inserted right now
            if current.get("next_attempt_at") != due_at or current.get("state") != DeliveryState.pending.value:
                self._drop_due(delivery_id, due_at)  # a leftover of a change that moved on
        return claimed

    def finish_webhook_attempt(self, delivery: WebhookDelivery, at: datetime, status: int | None, error: str | None,
                               delivered: bool, retry_at: datetime | None) -> None:
        self.finish_webhook_attempts([WebhookAttempt.of(delivery, at, status, error, delivered, retry_at)])

    def finish_webhook_attempts(self, attempts: list[WebhookAttempt]) -> None:
        for a in attempts:
            leased = us(a.leased_until)
            next_at = a.retry_at if a.state is DeliveryState.pending else None
            if next_at is not None:
                self._set_due(a.delivery_id, next_at)
            applied, current = self._cas_retry(
                "UPDATE webhook_deliveries SET state = ?, attempts = ?, next_attempt_at = ?, last_attempt_at = ?, "
                "last_status = ?, last_error = ?, delivered_at = ? WHERE id = ? IF state = ? AND next_attempt_at = ?",
                (a.state.value, a.attempts_before + 1, opt_us(next_at), us(a.at), a.status, a.error,
                 us(a.at) if a.delivered else None, a.delivery_id, DeliveryState.pending.value, leased))
            if applied:
                self._drop_due(a.delivery_id, leased)
            elif next_at is not None and current.get("next_attempt_at") != us(next_at):
                self._drop_due(a.delivery_id, us(next_at))

    def get_webhook_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        row = self._one(f"SELECT {_COLS} FROM webhook_deliveries WHERE id = ?", (delivery_id,))
        return _delivery(row) if row else None

    def list_webhook_deliveries(self, webhook_id: str, limit: int = 50,
                                before: Cursor | None = None) -> list[WebhookDelivery]:
        if before is None:
            ids = self._rows("SELECT id FROM webhook_deliveries_by_webhook WHERE webhook_id = ? LIMIT ?",
                             (webhook_id, limit))
        else:
            ids = self._rows("SELECT id FROM webhook_deliveries_by_webhook WHERE webhook_id = ? "
                             "AND (created_at, id) < (?, ?) LIMIT ?", (webhook_id, us(before[0]), before[1], limit))
        rows = self._many(f"SELECT {_COLS} FROM webhook_deliveries WHERE id = ?", [(r["id"],) for r in ids])
        return [_delivery(r[0]) for r in rows if r]
