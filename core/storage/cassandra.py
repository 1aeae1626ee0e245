"""Cassandra backend: the Store protocol on cassandra-driver, for clusters of any size.

Every query names one partition; nothing uses ALLOW FILTERING or scans a table. Multi-step
operations never rely on multi-partition transactions; instead each one has a single
linearization point (a lightweight transaction, LWT, on one partition) and leaves enough
state behind that whoever finds it half done can finish it, idempotently.

Ledger. Each account is an append-only log `account_log (account, seq)`, newest first. To
apply a transfer's entry to an account, read the entries after the transfer's recorded
starting seq with LOCAL_SERIAL (which also completes any in-flight Paxos round, so a write
whose outcome was unknown — WriteTimeout with WriteType.CAS — is settled): if the transfer's
key is among them it was applied already; otherwise refuse if `balance_after + delta < 0`
(except for the mint) and append `seq + 1 … IF NOT EXISTS`, retrying on conflict. Paxos
serialises the appends of one account, so balances never go negative and each transfer
appears at most once per account. A transfer is a row `transfers (key) … state='pending'`
inserted IF NOT EXISTS (with a marker in the small `pending_ops` table), then the debit,
then the credit, then `state='applied' IF state='pending'`. The same key again finds the row:
same accounts and amount → the same transfer (completing it if pending), else
IdempotencyConflict. A source that cannot pay is refused before anything is applied: the row
is deleted and InsufficientFunds raised, leaving no trace. A process that dies between the two
halves leaves a pending row that the next caller with the key, `get_transfer`, or the
`recover_pending` sweep completes: a debit without its credit is never final.

Orders. The order row is written in phase `pending`, then its hold transfer `hold:{id}`, then
the row flips to `live`; a pending order is completed (or, if its owner cannot pay, removed
with its listing row) by whoever reads it. Claims are a compare-and-set of the order's
counters (runs_claimed, next due time, and the claiming flow run) followed by the job rows and
a `dispatch_claims` row; a claim whose job rows are missing is completed by the next claim of
the order or by a replay of the same flow run. Status changes are LWTs on the order row; a
result is stored and its job settled in one LWT on the job row, then paid; cancelling flips the
status, then refunds. Each multi-step operation leaves a `pending_ops` marker until it is done,
so `recover_pending` (run at start-up and by the reconcile flow) finds the ones a crash left.

Consistency: LOCAL_QUORUM for reads and writes and LOCAL_SERIAL for LWTs and serial reads,
so every decision is linearizable within the local datacenter and a read that follows a
write sees it (quorums overlap). See the README for running on a multi-node cluster.
"""

import json
import zlib
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from cassandra import WriteTimeout, WriteType
from cassandra.query import BatchStatement, BatchType

from core import ledger, schedules
from core.errors import Conflict, IdempotencyConflict, InsufficientFunds, NotFound
from core.schemas import OrderStatus, RepetitionState
from core.storage.base import (
    ApiToken,
    Claim,
    Cursor,
    LedgerEntry,
    LoginSession,
    Order,
    Repetition,
    Result,
    ResultOutcome,
    Transfer,
    User,
    job_key,
)
from core.storage.cassandra_ledger import STALE_PENDING_SECONDS, CasUnknown, CassandraLedger
from core.storage.cassandra_migrations import migrate
from core.storage.cassandra_schema import CassandraUrl, Statements, connect, dt, opt_dt, opt_us, us

JOB_BUCKET = 32
"""Jobs (repetitions with their results) of one order are stored 32 to a partition."""
SYNC_BUCKETS = 8
_OPEN = (RepetitionState.queued, RepetitionState.leased)
_MUTABLE = {"runs_claimed", "next_due_at", "status", "deployment_id", "updated_at"}
_JOB_COLS = "order_id, n, flow_run_id, due_at, state, attempts, created_at"


def _now() -> datetime:
    return datetime.now(UTC)


def _bucket(n: int) -> int:
    return (n - 1) // JOB_BUCKET


def _parse_job_key(key: str) -> tuple[str, int] | None:
    order_id, _, n = key.rpartition(":")
    return (order_id, int(n)) if order_id and n.isdigit() else None


def _order(row: dict[str, Any]) -> Order:
    return Order.model_validate({
        **json.loads(row["spec"]), "runs_claimed": row["runs_claimed"], "next_due_at": opt_dt(row["next_due_at"]),
        "status": row["status"], "deployment_id": row["deployment_id"], "updated_at": dt(row["updated_at"]),
    })


def _repetition(row: dict[str, Any]) -> Repetition:
    return Repetition(key=job_key(row["order_id"], row["n"]), order_id=row["order_id"], n=row["n"],
                      due_at=dt(row["due_at"]), flow_run_id=row["flow_run_id"], state=row["state"],
                      attempts=row["attempts"], created_at=dt(row["created_at"]))


def _result(row: dict[str, Any]) -> Result:
    return Result.model_validate({**json.loads(row["result"]), "body_zlib": row["body"] or b""})


class CassandraStore:
    """The Store protocol on an Apache Cassandra (4.1+/5.x) cluster."""

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

    # --- users -------------------------------------------------------------------------

    def create_user(self, user: User) -> None:
        self._cas_retry("INSERT INTO users (id, username, password_hash, totp_secret, totp_enabled, totp_last_step, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
                        (user.id, user.username, user.password_hash, user.totp_secret, user.totp_enabled,
                         user.totp_last_step, us(user.created_at)))
        applied, current = self._cas_retry("INSERT INTO usernames (username, user_id) VALUES (?, ?) IF NOT EXISTS",
                                           (user.username, user.id))
        if not applied and current["user_id"] != user.id:
            self._cas_retry("DELETE FROM users WHERE id = ? IF EXISTS", (user.id,))
            raise Conflict(f"username {user.username!r} is taken")

    def get_user(self, user_id: str) -> User | None:
        row = self._one("SELECT * FROM users WHERE id = ?", (user_id,))
        return User.model_validate({**row, "created_at": dt(row["created_at"])}) if row else None

    def get_user_by_username(self, username: str) -> User | None:
        row = self._one("SELECT user_id FROM usernames WHERE username = ?", (username,))
        return self.get_user(row["user_id"]) if row else None

    def set_totp_secret(self, user_id: str, secret: str) -> bool:
        return self._cas_retry("UPDATE users SET totp_secret = ? WHERE id = ? IF totp_enabled = false",
                               (secret, user_id))[0]

    def enable_totp(self, user_id: str) -> None:
        self._cas_retry("UPDATE users SET totp_enabled = true WHERE id = ? IF EXISTS", (user_id,))

    def use_totp_step(self, user_id: str, step: int) -> bool:
        try:
            return self._cas("UPDATE users SET totp_last_step = ? WHERE id = ? IF totp_last_step < ?",
                             (step, user_id, step))[0]
        except CasUnknown:
            return False  # refusing a code that may have been accepted is the safe answer

    # --- sessions ----------------------------------------------------------------------

    def create_session(self, session: LoginSession) -> None:
        self._exec("INSERT INTO login_sessions (id, user_id, created_at, expires_at, revoked_at) VALUES (?, ?, ?, ?, ?)",
                   (session.id, session.user_id, us(session.created_at), us(session.expires_at),
                    opt_us(session.revoked_at)))

    def get_session(self, session_id: str) -> LoginSession | None:
        row = self._one("SELECT * FROM login_sessions WHERE id = ?", (session_id,))
        if row is None:
            return None
        return LoginSession(id=row["id"], user_id=row["user_id"], created_at=dt(row["created_at"]),
                            expires_at=dt(row["expires_at"]), revoked_at=opt_dt(row["revoked_at"]))

    def revoke_session(self, session_id: str, at: datetime) -> None:
        current = self.get_session(session_id)
        if current is not None and current.revoked_at is None:
            self._exec("UPDATE login_sessions SET revoked_at = ? WHERE id = ?", (us(at), session_id))

    # --- API tokens --------------------------------------------------------------------

    def create_api_token(self, token: ApiToken) -> None:
        self._exec("INSERT INTO api_tokens (id, owner_id, name, secret_hash, scopes, order_id, created_at, revoked_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (token.id, token.owner_id, token.name, token.secret_hash, token.scopes, token.order_id,
                    us(token.created_at), opt_us(token.revoked_at)))
        self._exec("INSERT INTO api_tokens_by_owner (owner_id, created_at, id) VALUES (?, ?, ?)",
                   (token.owner_id, us(token.created_at), token.id))

    @staticmethod
    def _token(row: dict[str, Any]) -> ApiToken:
        return ApiToken.model_validate({**row, "scopes": list(row["scopes"] or []), "created_at": dt(row["created_at"]),
                                        "revoked_at": opt_dt(row["revoked_at"])})

    def get_api_token(self, token_id: str) -> ApiToken | None:
        row = self._one("SELECT * FROM api_tokens WHERE id = ?", (token_id,))
        return self._token(row) if row else None

    def list_api_tokens(self, owner_id: str) -> list[ApiToken]:
        ids = [r["id"] for r in self._rows("SELECT id FROM api_tokens_by_owner WHERE owner_id = ?", (owner_id,))]
        rows = self._many("SELECT * FROM api_tokens WHERE id = ?", [(i,) for i in ids])
        return [self._token(r[0]) for r in rows if r]

    def revoke_api_token(self, owner_id: str, token_id: str, at: datetime) -> bool:
        token = self.get_api_token(token_id)
        if token is None or token.owner_id != owner_id:
            return False
        if token.revoked_at is None:
            self._exec("UPDATE api_tokens SET revoked_at = ? WHERE id = ?", (us(at), token_id))
        return True

    # --- ledger ------------------------------------------------------------------------

    def transfer(
        self, key: str, from_account: str, to_account: str, amount: int, kind: str, reference: str | None = None
    ) -> Transfer:
        return self.ledger.transfer(key, from_account, to_account, amount, kind, reference)

    def get_transfer(self, key: str) -> Transfer | None:
        return self.ledger.get_transfer(key)

    def get_balance(self, account: str) -> int:
        return self.ledger.get_balance(account)

    def list_entries(self, account: str, limit: int, before: Cursor | None = None) -> list[LedgerEntry]:
        return self.ledger.list_entries(account, limit, before)

    def recover_pending(self) -> int:
        """Finish every multi-step operation a crashed process left half done; returns how many it found."""
        found = 0
        stale = _now().timestamp() - STALE_PENDING_SECONDS
        for marker, created in self.ledger.pending():
            kind, _, key = marker.partition(":")
            finish = {"transfer": self.ledger.recover_transfer, "order": self._recover_order,
                      "cancel": self._recover_cancel, "settle": self._recover_settle,
                      "claim": self._recover_claim}.get(kind)
            if finish is not None and finish(key):
                found += 1
            elif created.timestamp() < stale:  # its operation never got going
                self.ledger.clear_pending(marker)
        return found

    # --- orders ------------------------------------------------------------------------

    def _order_row(self, order_id: str, serial: bool = False) -> dict[str, Any] | None:
        return self._one("SELECT * FROM orders WHERE id = ?", (order_id,), serial=serial)

    def _live_row(self, order_id: str, serial: bool = False) -> dict[str, Any] | None:
        """The order's row once its escrow is held; a pending order is completed (or removed) first."""
        row = self._order_row(order_id, serial)
        if row is not None and row["phase"] != "live":
            try:
                row = self._finish_order(row)
            except InsufficientFunds:
                return None
        return row

    def create_order(self, order: Order) -> tuple[Order, bool]:
        while True:
            row = self._order_row(order.id)
            if row is not None:
                existing = _order(row)
                if existing.owner_id != order.owner_id or existing.request_hash != order.request_hash:
                    raise IdempotencyConflict("this idempotency key was already used for a different order")
                if row["phase"] != "live":
                    row = self._finish_order(row)
                return _order(row), False
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
            return _order(self._finish_order(self._order_row(order.id) or {})), True

    def _finish_order(self, row: dict[str, Any]) -> dict[str, Any]:
        """Hold a pending order's cost and make it live; remove it (and raise) if its owner cannot pay."""
        order = _order(row)
        try:
            self.ledger.transfer(ledger.hold_key(order.id), ledger.user_account(order.owner_id),
                                 ledger.escrow_account(order.id), order.cost, "hold", order.id)
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

    def get_order(self, order_id: str) -> Order | None:
        row = self._live_row(order_id)
        return _order(row) if row else None

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
                    out.append(_order(row))
            cursor = (index[-1]["created_at"], index[-1]["id"])
        return out

    def set_order_status(
        self, order_id: str, allowed_from: set[OrderStatus], to: OrderStatus, next_due_at: datetime | None = None
    ) -> Order | None:
        while True:
            row = self._live_row(order_id)
            if row is None or OrderStatus(row["status"]) not in allowed_from:
                return None
            now = _now()
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
                return _order(self._order_row(order_id) or row)

    def cancel_order(self, order_id: str) -> tuple[Order, int] | None:
        while True:
            row = self._live_row(order_id)
            if row is None:
                return None
            if row["status"] == OrderStatus.cancelled:
                self._refund_cancelled(_order(row))  # finish a cancel that stopped half-way; refunds once
                return None
            if row["status"] not in (OrderStatus.active, OrderStatus.paused):
                return None
            now = _now()
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
            order = _order(self._order_row(order_id) or row)
            return order, self._refund_cancelled(order)

    def _refund_cancelled(self, order: Order) -> int:
        refund = (order.max_runs - order.runs_claimed) * order.price_per_run
        if refund > 0:
            self.ledger.transfer(ledger.cancel_refund_key(order.id), ledger.escrow_account(order.id),
                                 ledger.user_account(order.owner_id), refund, "refund", order.id)
        self.ledger.clear_pending(f"cancel:{order.id}")
        return refund

    def _recover_cancel(self, order_id: str) -> bool:
        row = self._order_row(order_id)
        if row is None or row["status"] != OrderStatus.cancelled:
            return False
        self._refund_cancelled(_order(row))
        return True

    def set_deployment_id(self, order_id: str, deployment_id: str | None) -> None:
        self._cas_retry("UPDATE orders SET deployment_id = ? WHERE id = ? IF EXISTS", (deployment_id, order_id))

    # --- repetitions -------------------------------------------------------------------

    def _jobs(self, order_id: str, ns: list[int], cols: str = _JOB_COLS) -> list[dict[str, Any]]:
        by_bucket: dict[int, list[int]] = defaultdict(list)
        for n in ns:
            by_bucket[_bucket(n)].append(n)
        found = self._many(f"SELECT {cols} FROM jobs WHERE order_id = ? AND bucket = ? AND n IN ?",
                           [(order_id, b, sorted(set(group))) for b, group in by_bucket.items()])
        return sorted((r for rows in found for r in rows), key=lambda r: r["n"])

    def get_repetitions(self, order_id: str, ns: list[int]) -> list[Repetition]:
        return [_repetition(r) for r in self._jobs(order_id, ns)] if ns else []

    def claim_repetitions(
        self, order_id: str, flow_run_id: str, horizon: datetime, now: datetime, catchup_seconds: int
    ) -> Claim:
        serial = False
        while True:
            row = self._live_row(order_id, serial=serial)
            serial = True
            if row is None:
                raise NotFound("order not found")
            prior = self._one("SELECT * FROM dispatch_claims WHERE flow_run_id = ?", (flow_run_id,))
            if prior is not None:
                return self._replay(row, prior)
            last_run = row["claim_run"]
            if last_run is not None and (last_run == flow_run_id or self._one(
                    "SELECT flow_run_id FROM dispatch_claims WHERE flow_run_id = ?", (last_run,)) is None):
                claim = self._finish_claim(row)  # the claim before this one stopped half-way
                if last_run == flow_run_id:
                    return claim.model_copy(update={"replay": True})
            order = _order(row)
            missed_before = now.timestamp() - catchup_seconds
            dues: list[datetime] = []
            due = order.next_due_at
            while (order.status == OrderStatus.active and order.runs_claimed + len(dues) < order.max_runs
                   and due is not None and due < horizon):
                dues.append(due)
                due = schedules.next_due(order, due)
            if not dues:
                applied, _ = self._cas_retry(
                    "INSERT INTO dispatch_claims (flow_run_id, order_id, first_n, last_n, created_at) "
                    "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
                    (flow_run_id, order_id, order.runs_claimed + 1, order.runs_claimed, us(now)))
                if applied:
                    return Claim(order=order)
                continue
            runs = order.runs_claimed + len(dues)
            changes = {"runs_claimed": runs, "next_due_at": us(due) if runs < order.max_runs else None,
                       "updated_at": us(now), "claim_run": flow_run_id, "claim_first": order.runs_claimed + 1,
                       "claim_due": us(dues[0]), "claim_missed": sum(d.timestamp() < missed_before for d in dues)}
            self.ledger.mark_pending(f"claim:{order_id}")
            try:
                applied, _ = self._cas(
                    f"UPDATE orders SET {', '.join(f'{c} = ?' for c in changes)} WHERE id = ? "
                    "IF runs_claimed = ? AND status = 'active' AND claim_run = ?",
                    (*changes.values(), order_id, order.runs_claimed, last_run))
            except CasUnknown:
                continue  # the serial read of the next round shows whether it was applied
            if applied:
                self._checkpoint("claim:counted")
                return self._finish_claim({**row, **changes})

    def _finish_claim(self, row: dict[str, Any]) -> Claim:
        """Write the job rows, refunds and the dispatch_claims row of the order's latest claim (idempotent)."""
        order = _order(row)
        run, first, last, created = row["claim_run"], row["claim_first"], row["runs_claimed"], row["updated_at"]
        reps, due = [], dt(row["claim_due"])
        for i, n in enumerate(range(first, last + 1)):
            state = RepetitionState.refunded if i < row["claim_missed"] else RepetitionState.queued
            reps.append(Repetition(key=job_key(order.id, n), order_id=order.id, n=n, due_at=due, flow_run_id=run,
                                   state=state, created_at=dt(created)))
            due = schedules.next_due(order, due)
        self._insert_jobs(reps)
        claim = Claim(order=order, queued=[r for r in reps if r.state is RepetitionState.queued],
                      refunded=[r for r in reps if r.state is RepetitionState.refunded])
        for rep in claim.refunded:
            self._settle_transfer(order, rep.n, RepetitionState.refunded, None)
        if last >= order.max_runs:
            self.request_sync(order.id, dt(created))  # nothing left to claim: drop the deployment
        self._cas_retry("INSERT INTO dispatch_claims (flow_run_id, order_id, first_n, last_n, created_at) "
                        "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS", (run, order.id, first, last, created))
        self.ledger.clear_pending(f"claim:{order.id}")
        return claim

    def _insert_jobs(self, reps: list[Repetition]) -> None:
        insert = self._q(f"INSERT INTO jobs (bucket, {_JOB_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")

        def values(r: Repetition) -> tuple[Any, ...]:
            return (_bucket(r.n), r.order_id, r.n, r.flow_run_id, us(r.due_at), r.state.value, 0, us(r.created_at))

        by_bucket: dict[int, list[Repetition]] = defaultdict(list)
        for r in reps:
            by_bucket[_bucket(r.n)].append(r)
        for group in by_bucket.values():
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)  # one partition: one Paxos round
            for r in group:
                batch.add(insert, values(r))
            try:
                if self._session.execute(batch).one()["[applied]"]:
                    continue
            except WriteTimeout as e:
                if e.write_type != WriteType.CAS:
                    raise
            for r in group:  # some rows exist: an earlier try of this claim, or rows an unclaim left
                applied, current = self._cas_retry(insert.query_string, values(r))
                if not applied and current["flow_run_id"] != r.flow_run_id and current["state"] == "queued":
                    self._cas_retry(
                        "UPDATE jobs SET flow_run_id = ?, due_at = ?, state = ?, attempts = 0, created_at = ? "
                        "WHERE order_id = ? AND bucket = ? AND n = ? IF flow_run_id = ? AND state = 'queued'",
                        (r.flow_run_id, us(r.due_at), r.state.value, us(r.created_at), r.order_id, _bucket(r.n), r.n,
                         current["flow_run_id"]))

    def _recover_claim(self, order_id: str) -> bool:
        row = self._order_row(order_id)
        if row is None or row["claim_run"] is None:
            return False
        if self._one("SELECT flow_run_id FROM dispatch_claims WHERE flow_run_id = ?", (row["claim_run"],)) is None:
            self._finish_claim(row)
        self.ledger.clear_pending(f"claim:{order_id}")
        return True

    def _replay(self, row: dict[str, Any], prior: dict[str, Any]) -> Claim:
        order = _order(row)
        reps = self.get_repetitions(order.id, list(range(prior["first_n"], prior["last_n"] + 1)))
        return Claim(order=order, replay=True, queued=[r for r in reps if r.state is RepetitionState.queued],
                     refunded=[r for r in reps if r.state is RepetitionState.refunded])

    def unclaim(self, order_id: str, ns: list[int]) -> int:
        if not ns:
            return 0
        while True:
            row = self._live_row(order_id, serial=True)
            if row is None:
                raise NotFound("order not found")
            order = _order(row)
            jobs = [r for r in self._jobs(order_id, ns) if r["state"] == RepetitionState.queued]
            suffix = list(range(min(ns), order.runs_claimed + 1))
            if order.status != OrderStatus.paused or [r["n"] for r in jobs] != suffix:
                self._refund_jobs(order, jobs)
                return 0
            try:
                applied, _ = self._cas("UPDATE orders SET runs_claimed = ?, next_due_at = null, updated_at = ? "
                                       "WHERE id = ? IF runs_claimed = ? AND status = 'paused'",
                                       (min(ns) - 1, us(_now()), order_id, order.runs_claimed))
            except CasUnknown:
                continue
            if applied:
                # Rows past the counter are dead; a later claim overwrites any a crash leaves here.
                for r in jobs:
                    self._cas_retry("DELETE FROM jobs WHERE order_id = ? AND bucket = ? AND n = ? IF state = 'queued'",
                                    (order_id, _bucket(r["n"]), r["n"]))
                return len(jobs)

    def _refund_jobs(self, order: Order, jobs: list[dict[str, Any]]) -> int:
        refunded = 0
        for r in jobs:
            if r["state"] != RepetitionState.queued:
                continue
            marker = f"settle:{job_key(order.id, r['n'])}"
            self.ledger.mark_pending(marker)
            applied, _ = self._cas_retry("UPDATE jobs SET state = 'refunded' WHERE order_id = ? AND bucket = ? "
                                         "AND n = ? IF state = 'queued'", (order.id, _bucket(r["n"]), r["n"]))
            if applied:
                self._settle_transfer(order, r["n"], RepetitionState.refunded, None)
                refunded += order.price_per_run
            self.ledger.clear_pending(marker)
        return refunded

    def refund_repetitions(self, order_id: str, ns: list[int]) -> int:
        if not ns:
            return 0
        row = self._live_row(order_id)
        if row is None:
            raise NotFound("order not found")
        order = _order(row)
        jobs = self._jobs(order_id, ns, _JOB_COLS + ", result")
        for r in jobs:
            if r["state"] not in _OPEN:
                self._settle_transfer(order, r["n"], RepetitionState(r["state"]), r["result"])
        return self._refund_jobs(order, jobs)

    # --- results -----------------------------------------------------------------------

    def _settle_transfer(self, order: Order, n: int, state: RepetitionState, result: str | None) -> None:
        """The coin movement a closed job implies (idempotent): the miner's reward or the customer's refund."""
        key, escrow = job_key(order.id, n), ledger.escrow_account(order.id)
        if state is RepetitionState.done and result is not None:
            miner = json.loads(result)["miner_id"]
            self.ledger.transfer(ledger.reward_key(key), escrow, ledger.user_account(miner), order.price_per_run,
                                 "reward", key)
        elif state in (RepetitionState.refunded, RepetitionState.failed):
            self.ledger.transfer(ledger.refund_job_key(key), escrow, ledger.user_account(order.owner_id),
                                 order.price_per_run, "refund", key)

    def _recover_settle(self, key: str) -> bool:
        parsed = _parse_job_key(key)
        row = self._order_row(parsed[0]) if parsed else None
        if parsed is None or row is None:
            return False
        for job in self._jobs(parsed[0], [parsed[1]], _JOB_COLS + ", result"):
            self._settle_transfer(_order(row), job["n"], RepetitionState(job["state"]), job["result"])
        self.ledger.clear_pending(f"settle:{key}")
        return True

    def record_results(self, results: list[Result]) -> list[ResultOutcome]:
        orders: dict[str, Order | None] = {}
        return [self._record(result, orders) for result in results]

    def _record(self, result: Result, orders: dict[str, Order | None]) -> ResultOutcome:
        if _parse_job_key(result.job_key) != (result.order_id, result.n):
            return ResultOutcome.unknown
        if result.order_id not in orders:
            row = self._order_row(result.order_id)
            orders[result.order_id] = _order(row) if row else None
        order = orders[result.order_id]
        if order is None:
            return ResultOutcome.unknown
        where = (result.order_id, _bucket(result.n), result.n)
        marker = f"settle:{result.job_key}"
        while True:
            job = self._one("SELECT state, result FROM jobs WHERE order_id = ? AND bucket = ? AND n = ?", where)
            if job is None:
                return ResultOutcome.unknown
            state = RepetitionState(job["state"])
            if job["result"] is not None or state not in _OPEN:
                self._settle_transfer(order, result.n, state, job["result"])  # finish what a crash may have cut
                return ResultOutcome.duplicate if job["result"] is not None else ResultOutcome.closed
            to = RepetitionState.done if result.error is None else RepetitionState.refunded
            self.ledger.mark_pending(marker)
            try:
                applied, _ = self._cas("UPDATE jobs SET state = ?, result = ?, body = ? "
                                       "WHERE order_id = ? AND bucket = ? AND n = ? IF state = ?",
                                       (to.value, result.model_dump_json(exclude={"body_zlib"}), result.body_zlib,
                                        *where, state.value))
            except CasUnknown:
                continue  # the next read shows whether it was stored (and by whom)
            if applied:
                self._checkpoint("result:stored")
                self._settle_transfer(order, result.n, to, result.model_dump_json(include={"miner_id"}))
                self.ledger.clear_pending(marker)
                return ResultOutcome.paid if to is RepetitionState.done else ResultOutcome.refunded

    def record_result(self, result: Result) -> ResultOutcome:
        return self.record_results([result])[0]

    def fail_attempt(self, job_key: str, max_attempts: int, last: Result | None = None) -> Repetition | None:
        parsed = _parse_job_key(job_key)
        if parsed is None:
            return None
        order_id, n = parsed
        where = (order_id, _bucket(n), n)
        while True:
            job = self._one(f"SELECT {_JOB_COLS}, result FROM jobs WHERE order_id = ? AND bucket = ? AND n = ?",
                            where)
            if job is None:
                return None
            state = RepetitionState(job["state"])
            if state not in _OPEN:
                row = self._order_row(order_id)
                if row is not None:
                    self._settle_transfer(_order(row), n, state, job["result"])
                return _repetition(job)
            attempts = job["attempts"] + 1
            if attempts < max_attempts:
                applied, _ = self._cas_retry("UPDATE jobs SET attempts = ? WHERE order_id = ? AND bucket = ? AND n = ? "
                                             "IF state = ? AND attempts = ?", (attempts, *where, state.value,
                                                                               job["attempts"]))
                if applied:
                    return _repetition({**job, "attempts": attempts})
                continue
            row = self._order_row(order_id)
            if row is None:
                raise NotFound("order not found")
            keep = last is not None and job["result"] is None
            self.ledger.mark_pending(f"settle:{job_key}")
            applied, _ = self._cas_retry(
                "UPDATE jobs SET attempts = ?, state = 'failed', result = ?, body = ? "
                "WHERE order_id = ? AND bucket = ? AND n = ? IF state = ? AND attempts = ?",
                (attempts, last.model_dump_json(exclude={"body_zlib"}) if keep and last else job["result"],
                 last.body_zlib if keep and last else None, *where, state.value, job["attempts"]))
            if applied:
                self._settle_transfer(_order(row), n, RepetitionState.failed, None)
                self.ledger.clear_pending(f"settle:{job_key}")
                return _repetition({**job, "attempts": attempts, "state": RepetitionState.failed.value})

    def get_result(self, job_key: str) -> Result | None:
        parsed = _parse_job_key(job_key)
        if parsed is None:
            return None
        row = self._one("SELECT result, body FROM jobs WHERE order_id = ? AND bucket = ? AND n = ?",
                        (parsed[0], _bucket(parsed[1]), parsed[1]))
        return _result(row) if row and row["result"] is not None else None

    def list_results(self, order_id: str, after_n: int = 0, limit: int = 100) -> list[Result]:
        row = self._order_row(order_id)
        if row is None or limit <= 0:
            return []
        out: list[Result] = []
        for bucket in range(_bucket(after_n + 1), _bucket(_order(row).max_runs) + 1):
            for job in self._rows("SELECT result, body FROM jobs WHERE order_id = ? AND bucket = ? AND n > ?",
                                  (order_id, bucket, after_n)):
                if job["result"] is not None:
                    out.append(_result(job))
            if len(out) >= limit:
                break
        return sorted(out, key=lambda r: r.n)[:limit]

    # --- delivery cursors --------------------------------------------------------------

    def get_delivery_cursor(self, token_id: str, order_id: str) -> int:
        row = self._one("SELECT last_n FROM delivery_cursors WHERE token_id = ? AND order_id = ?", (token_id, order_id))
        return row["last_n"] if row else 0

    def advance_delivery_cursor(self, token_id: str, order_id: str, n: int) -> None:
        while True:
            applied, current = self._cas_retry("UPDATE delivery_cursors SET last_n = ? WHERE token_id = ? "
                                               "AND order_id = ? IF last_n < ?", (n, token_id, order_id, n))
            if applied or current.get("last_n") is not None:
                return
            applied, _ = self._cas_retry("INSERT INTO delivery_cursors (token_id, order_id, last_n) VALUES (?, ?, ?) "
                                         "IF NOT EXISTS", (token_id, order_id, n))
            if applied:
                return

    # --- Prefect sync queue ------------------------------------------------------------

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

    def finish_sync(self, order_id: str, requested_at: datetime) -> None:
        self._cas_retry("DELETE FROM sync_requests WHERE bucket = ? AND order_id = ? IF requested_at <= ?",
                        (self._sync_bucket(order_id), order_id, us(requested_at)))

