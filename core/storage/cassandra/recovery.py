"""Finishing what a crashed process left half done: the `recover_pending` sweep over pending markers."""

from core.errors import InsufficientFunds
from core.schemas import OrderStatus, RepetitionState
from core.storage.cassandra.claims import CassandraClaims
from core.storage.cassandra.ledger import STALE_PENDING_SECONDS
from core.storage.cassandra.session import JOB_COLS, order_from, parse_job_key, utcnow


class CassandraRecovery(CassandraClaims):
    def recover_pending(self) -> int:
        """Finish every multi-step operation a crashed process left half done; returns how many it found."""
        found = 0
        stale = utcnow().timestamp() - STALE_PENDING_SECONDS
        for marker, created in self.ledger.pending():
            kind, _, key = marker.partition(":")
            finish = {"transfer": self.ledger.recover_transfer, "order": self._recover_order,
                      "cancel": self._recover_cancel, "settle": self._recover_settle,
                      "claim": self._recover_claim, "edit": self._recover_edit}.get(kind)
            if finish is not None and finish(key):
                found += 1
            elif created.timestamp() < stale:  # its operation never got going
                self.ledger.clear_pending(marker)
        return found

    def _recover_order(self, order_id: str) -> bool:
        row = self._order_row(order_id)
        if row is None:
            return False
        if row["phase"] != "live":
            try:
                self._finish_order(row)
            except InsufficientFunds:
                pass
        self.ledger.clear_pending(f"order:{order_id}")
        return True

    def _recover_cancel(self, order_id: str) -> bool:
        row = self._order_row(order_id)
        if row is None or row["status"] != OrderStatus.cancelled:
            return False
        self._refund_cancelled(order_from(row))
        return True

    def _recover_edit(self, order_id: str) -> bool:
        row = self._order_row(order_id, serial=True)
        if row is None or not row.get("edit_pending"):
            return False
        try:
            self._finish_edit(row)
        except InsufficientFunds:
            pass  # undone
        return True

    def _recover_claim(self, order_id: str) -> bool:
        row = self._order_row(order_id)
        if row is None or row["claim_run"] is None:
            return False
        if self._one("SELECT flow_run_id FROM dispatch_claims WHERE flow_run_id = ?", (row["claim_run"],)) is None:
            self._finish_claim(row)
        self.ledger.clear_pending(f"claim:{order_id}")
        return True

    def _recover_settle(self, key: str) -> bool:
        parsed = parse_job_key(key)
        row = self._order_row(parsed[0]) if parsed else None
        if parsed is None or row is None:
            return False
        for job in self._jobs(parsed[0], [parsed[1]], JOB_COLS + ", result"):
            self._settle_transfer(order_from(row), job["n"], RepetitionState(job["state"]), job["result"])
        self.ledger.clear_pending(f"settle:{key}")
        return True
