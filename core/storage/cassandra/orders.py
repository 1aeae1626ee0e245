"""Orders and their escrow on Cassandra: created pending, held, then live; status changes by LWT."""

import json
from datetime import datetime
from typing import Any

from core.errors import IdempotencyConflict, InsufficientFunds
from core.schemas import OrderStatus
from core.storage import rules
from core.storage.cassandra.ledger import CasUnknown
from core.storage.cassandra.outbox import CassandraOutbox
from core.storage.cassandra.schema import opt_us, us
from core.storage.cassandra.session import order_from, utcnow
from core.storage.records import Cursor, Order

_MUTABLE = {"runs_claimed", "next_due_at", "status", "deployment_id", "updated_at"}
"""Order fields kept in their own columns (they change); the others are the JSON `spec`, written once."""


class CassandraOrders(CassandraOutbox):
    @staticmethod
    def _spec(order: Order) -> str:
        """The order's `spec` column: every field but the ones with columns of their own."""
        return order.model_dump_json(exclude=_MUTABLE)

    def _live_row(self, order_id: str, serial: bool = False) -> dict[str, Any] | None:
        """The order's row once its escrow is held; a pending order is completed (or removed) first, and an
        edit that stopped half-way is finished (or undone)."""
        row = self._order_row(order_id, serial)
        if row is not None and row["phase"] != "live":
            try:
                row = self._finish_order(row)
            except InsufficientFunds:
                return None
        if row is not None and row.get("edit_pending"):
            try:
                self._finish_edit(row)
            except InsufficientFunds:
                pass
            row = self._order_row(order_id, serial=True)
        return row

    def create_order(self, order: Order) -> tuple[Order, bool]:
        while True:
            row = self._order_row(order.id)
            if row is not None:
                existing = order_from(row)
                if existing.owner_id != order.owner_id or existing.request_hash != order.request_hash:
                    raise IdempotencyConflict("this idempotency key was already used for a different order")
                if row["phase"] != "live":
                    row = self._finish_order(row)
                return order_from(row), False
            self.ledger.mark_pending(f"order:{order.id}")
            spec = order.model_dump_json(exclude=_MUTABLE)
            applied, _ = self._cas_retry(
                "INSERT INTO orders (id, owner_id, spec, phase, status, runs_claimed, next_due_at, deployment_id, "
                "updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?) IF NOT EXISTS",
                (order.id, order.owner_id, spec, order.status.value, order.runs_claimed, opt_us(order.next_due_at),
                 order.deployment_id, us(order.updated_at)))
            if not applied:
                continue
            self._exec("INSERT INTO orders_by_owner (owner_id, created_at, id) VALUES (?, ?, ?)",
                       (order.owner_id, us(order.created_at), order.id))
            self._checkpoint("order:pending")
            return order_from(self._finish_order(self._order_row(order.id) or {})), True

    def _finish_order(self, row: dict[str, Any]) -> dict[str, Any]:
        """Hold a pending order's cost and make it live; remove it (and raise) if its owner cannot pay."""
        order = order_from(row)
        try:
            self.ledger.transfer(*rules.hold(order))
        except InsufficientFunds:
            self._exec("DELETE FROM orders_by_owner WHERE owner_id = ? AND created_at = ? AND id = ?",
                       (order.owner_id, us(order.created_at), order.id))
            self._cas_retry("DELETE FROM orders WHERE id = ? IF phase = 'pending'", (order.id,))
            self.ledger.clear_pending(f"order:{order.id}")
            raise
        self._checkpoint("order:held")
        self.request_sync(order.id, order.created_at)
        applied, current = self._cas_retry("UPDATE orders SET phase = 'live' WHERE id = ? IF phase = 'pending'",
                                           (order.id,))
        if not applied and current.get("phase") is None:
            # A concurrent reader found the owner short and removed the order just before this
            # hold went through: coins are held, so the order exists after all.
            self._cas_retry(
                "INSERT INTO orders (id, owner_id, spec, phase, status, runs_claimed, next_due_at, deployment_id, "
                "updated_at) VALUES (?, ?, ?, 'live', ?, ?, ?, ?, ?) IF NOT EXISTS",
                (order.id, order.owner_id, row["spec"], row["status"], row["runs_claimed"], row["next_due_at"],
                 row["deployment_id"], row["updated_at"]))
            self._exec("INSERT INTO orders_by_owner (owner_id, created_at, id) VALUES (?, ?, ?)",
                       (order.owner_id, us(order.created_at), order.id))
        self.ledger.clear_pending(f"order:{order.id}")
        return {**row, "phase": "live"}

    def get_order(self, order_id: str) -> Order | None:
        row = self._live_row(order_id)
        return order_from(row) if row else None

    def get_orders(self, order_ids: list[str]) -> list[Order]:
        return [o for o in map(self.get_order, dict.fromkeys(order_ids)) if o is not None]

    def list_orders(self, owner_id: str, limit: int, before: Cursor | None = None) -> list[Order]:
        out: list[Order] = []
        cursor = (us(before[0]), before[1]) if before else None
        while len(out) < limit:
            if cursor is None:
                index = self._rows("SELECT created_at, id FROM orders_by_owner WHERE owner_id = ? LIMIT ?",
                                   (owner_id, limit - len(out)))
            else:
                index = self._rows("SELECT created_at, id FROM orders_by_owner WHERE owner_id = ? "
                                   "AND (created_at, id) < (?, ?) LIMIT ?", (owner_id, *cursor, limit - len(out)))
            if not index:
                break
            rows = self._many("SELECT * FROM orders WHERE id = ?", [(r["id"],) for r in index])
            for found in rows:
                row = found[0] if found else None
                if row is not None and row["phase"] != "live":
                    row = self._live_row(row["id"])
                if row is not None:
                    out.append(order_from(row))
            cursor = (index[-1]["created_at"], index[-1]["id"])
        return out

    def set_order_status(
        self, order_id: str, allowed_from: set[OrderStatus], to: OrderStatus, next_due_at: datetime | None = None
    ) -> Order | None:
        while True:
            row = self._live_row(order_id)
            if row is None or OrderStatus(row["status"]) not in allowed_from:
                return None
            now = utcnow()
            self.request_sync(order_id, now)  # a sync that finds nothing to change is harmless
            cql = "UPDATE orders SET status = ?, updated_at = ?"
            params: tuple[Any, ...] = (to.value, us(now))
            if next_due_at is not None:
                cql, params = cql + ", next_due_at = ?", (*params, us(next_due_at))
            try:
                applied, _ = self._cas(cql + " WHERE id = ? IF status = ?", (*params, order_id, row["status"]))
            except CasUnknown:
                current = self._order_row(order_id, serial=True)
                applied = current is not None and current["updated_at"] == us(now)
            if applied:
                return order_from(self._order_row(order_id) or row)

    def cancel_order(self, order_id: str) -> tuple[Order, int] | None:
        while True:
            row = self._live_row(order_id)
            if row is None:
                return None
            if row["status"] == OrderStatus.cancelled:
                self._refund_cancelled(order_from(row))  # finish a cancel that stopped half-way; refunds once
                return None
            if row["status"] not in rules.CANCELLABLE:
                return None
            now = utcnow()
            self.ledger.mark_pending(f"cancel:{order_id}")
            self.request_sync(order_id, now)
            try:
                applied, _ = self._cas("UPDATE orders SET status = 'cancelled', updated_at = ? WHERE id = ? "
                                       "IF status = ? AND runs_claimed = ?",
                                       (us(now), order_id, row["status"], row["runs_claimed"]))
            except CasUnknown:
                current = self._order_row(order_id, serial=True)
                applied = current is not None and current["updated_at"] == us(now)
            if not applied:
                continue
            self._checkpoint("cancel:flipped")
            order = order_from(self._order_row(order_id) or row)
            return order, self._refund_cancelled(order)

    def _refund_cancelled(self, order: Order) -> int:
        refund = rules.cancel_refund(order)
        if refund is not None:
            self.ledger.transfer(*refund)
        self.ledger.clear_pending(f"cancel:{order.id}")
        return refund.amount if refund else 0

    # --- edits: the new spec and the coins it moves, noted in the row (`edit_pending`) until moved ----------

    def _finish_edit(self, row: dict[str, Any]) -> None:
        """Move the coins of the order's pending edit; undo the edit (and raise) if its owner cannot pay."""
        pending = json.loads(row["edit_pending"])
        try:
            if pending["movement"] is not None:
                self.ledger.transfer(*rules.Movement(*pending["movement"]))
        except InsufficientFunds:
            self._cas_retry("UPDATE orders SET spec = ?, next_due_at = ?, edit_pending = null WHERE id = ? "
                            "IF edit_pending = ?", (pending["spec"], pending["next_due_at"], row["id"],
                                                    row["edit_pending"]))
            self.ledger.clear_pending(f"edit:{row['id']}")
            raise
        self._cas_retry("UPDATE orders SET edit_pending = null WHERE id = ? IF edit_pending = ?",
                        (row["id"], row["edit_pending"]))
        self.ledger.clear_pending(f"edit:{row['id']}")

    def set_deployment_id(self, order_id: str, deployment_id: str | None) -> None:
        self._cas_retry("UPDATE orders SET deployment_id = ? WHERE id = ? IF EXISTS", (deployment_id, order_id))
