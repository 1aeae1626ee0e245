"""The coin ledger on Cassandra: per-account logs appended by Paxos, transfers in two halves.

See the docstring of the `core.storage.cassandra` package for the scheme and why it keeps every
invariant of the SQL ledger. `CassandraLedgerMethods` is the Store's face of it.
"""

import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cassandra import WriteTimeout, WriteType
from cassandra.cluster import EXEC_PROFILE_DEFAULT, ResponseFuture, Session
from cassandra.query import BatchStatement

from core import ledger
from core.errors import IdempotencyConflict, InsufficientFunds, InvalidInput
from core.storage.cassandra.schema import SERIAL, Statements, dt, us
from core.storage.records import Cursor, LedgerEntry, Transfer

PENDING_BUCKETS = 16
BATCH_ENTRIES = 40
"""Entries one conditional batch appends to one account's log (well under Cassandra's batch size limits)."""
STALE_PENDING_SECONDS = 60
"""A pending-operation marker without its record is dropped only after this long (its writer may be mid-way)."""


class CasUnknown(Exception):
    """A Paxos round timed out: it may or may not have been applied."""


def pending_bucket(key: str) -> int:
    return zlib.crc32(key.encode()) % PENDING_BUCKETS


class Crash(Exception):
    """Raised at a named point by the crash hook of a store under test (see `CassandraLedger.crash_at`)."""


class CassandraLedger:
    def __init__(self, session: Session, q: Statements) -> None:
        self.session = session
        self.q = q
        self.crash_at: set[str] = set()
        """Test hook: named points (`transfer:first-half`, …) at which an operation stops as if its process died."""

    # --- plumbing -------------------------------------------------------------------------

    def checkpoint(self, name: str) -> None:
        if name in self.crash_at:
            raise Crash(name)

    def cas(self, cql: str, params: tuple[Any, ...]) -> tuple[bool, dict[str, Any]]:
        """Run a lightweight transaction: (applied, current row as Cassandra returned it)."""
        try:
            row = self.session.execute(self.q(cql), params).one()
        except WriteTimeout as e:
            if e.write_type == WriteType.CAS:
                raise CasUnknown(str(e)) from e
            raise
        return bool(row["[applied]"]), row

    def one(self, cql: str, params: tuple[Any, ...], serial: bool = False) -> dict[str, Any] | None:
        return self.session.execute(self.q(cql), params,
                                    execution_profile=SERIAL if serial else EXEC_PROFILE_DEFAULT).one()

    def rows(self, cql: str, params: tuple[Any, ...], serial: bool = False) -> list[dict[str, Any]]:
        return list(self.session.execute(self.q(cql), params,
                                         execution_profile=SERIAL if serial else EXEC_PROFILE_DEFAULT))

    # --- account logs ---------------------------------------------------------------------

    def latest_seq(self, account: str) -> int:
        row = self.one("SELECT seq FROM account_log WHERE account = ? LIMIT 1", (account,))
        return row["seq"] if row else 0

    def get_balance(self, account: str) -> int:
        row = self.one("SELECT balance_after FROM account_log WHERE account = ? LIMIT 1", (account,))
        return row["balance_after"] if row else 0

    def _find(self, account: str, key: str, seq0: int, serial: bool) -> dict[str, Any] | None:
        """The account's entry of transfer `key`, searched after `seq0`; None if it was not applied."""
        rows = self.rows("SELECT seq, txn_key, balance_after FROM account_log WHERE account = ? AND seq > ?",
                         (account, seq0), serial=serial)
        return next((r for r in rows if r["txn_key"] == key), None)

    def _apply(self, t: dict[str, Any], account: str, delta: int, seq0: int) -> tuple[int, int] | None:
        """Append the transfer's entry to one account, once: (seq, balance_after), or None if it cannot pay."""
        while True:
            # One serial read of the entries from seq0 on: it also completes any accepted Paxos
            # round of the partition, so an earlier append of ours whose outcome was unknown is
            # now either visible here or lost for good. The seq0 entry itself predates the
            # transfer, so it only gives the balance.
            rows = self.rows("SELECT seq, txn_key, balance_after FROM account_log WHERE account = ? AND seq >= ?",
                             (account, seq0), serial=True)
            found = next((r for r in rows if r["txn_key"] == t["key"] and r["seq"] > seq0), None)
            if found is not None:
                return found["seq"], found["balance_after"]
            seq, balance = (rows[0]["seq"], rows[0]["balance_after"]) if rows else (0, 0)
            if balance + delta < 0 and account != ledger.MINT:
                return None
            try:
                applied, _ = self.cas(
                    "INSERT INTO account_log (account, seq, txn_key, delta, balance_after, kind, reference, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
                    (account, seq + 1, t["key"], delta, balance + delta, t["kind"], t["reference"], t["created_at"]))
            except CasUnknown:
                continue
            if applied:
                return seq + 1, balance + delta

    def _all(self, cql: str, params: list[tuple[Any, ...]], serial: bool = False) -> list[list[dict[str, Any]]]:
        """Run one statement for many parameter tuples at once; their rows, in order."""
        profile = SERIAL if serial else EXEC_PROFILE_DEFAULT
        futures = [self.session.execute_async(self.q(cql), p, execution_profile=profile) for p in params]
        return [list(f.result()) for f in futures]

    def append_many(self, items: list[tuple[dict[str, Any], str, int, int]]) -> list[bool]:
        """Append many transfers' entries, `(transfer, account, delta, seq0)` each, once each: one conditional
        batch per account and round (accounts in parallel), so N entries to one account cost about one Paxos
        round per BATCH_ENTRIES, not N. Entries of one account go in list order. Returns, per item, whether it
        is applied (False: its account could not pay it, and nothing after it on that account was appended)."""
        done = [False] * len(items)
        by_account: dict[str, list[int]] = {}
        for i, (_, account, _, _) in enumerate(items):
            by_account.setdefault(account, []).append(i)
        insert = self.q("INSERT INTO account_log (account, seq, txn_key, delta, balance_after, kind, reference, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
        while by_account:
            reads = {account: self.session.execute_async(
                self.q("SELECT seq, txn_key, balance_after FROM account_log WHERE account = ? AND seq >= ?"),
                (account, min(items[i][3] for i in todo)), execution_profile=SERIAL)
                for account, todo in by_account.items()}
            writes: dict[str, ResponseFuture] = {}
            for account, todo in list(by_account.items()):
                rows = list(reads[account].result())  # newest first
                seq, balance = (rows[0]["seq"], rows[0]["balance_after"]) if rows else (0, 0)
                appended = {r["txn_key"]: r["seq"] for r in rows}
                batch, batched, blocked = BatchStatement(), list[int](), False
                for i in todo:
                    t, _, delta, seq0 = items[i]
                    if appended.get(t["key"], -1) > seq0:
                        done[i] = True  # appended before (by us in an earlier round, or by anyone)
                        continue
                    if blocked or len(batched) >= BATCH_ENTRIES:
                        continue
                    if balance + delta < 0 and account != ledger.MINT:
                        blocked = True  # it cannot pay: the caller refuses this transfer; no later entry jumps it
                        continue
                    seq, balance = seq + 1, balance + delta
                    batch.add(insert, (account, seq, t["key"], delta, balance, t["kind"], t["reference"],
                                       t["created_at"]))
                    batched.append(i)
                todo[:] = [i for i in todo if not done[i]]
                if batched:
                    writes[account] = self.session.execute_async(batch)
                else:  # all appended, or only entries its balance cannot pay are left
                    del by_account[account]
            for future in writes.values():
                try:
                    future.result()  # applied or not, the next round's serial read tells
                except WriteTimeout as e:
                    if e.write_type != WriteType.CAS:
                        raise
        return done

    # --- transfers ------------------------------------------------------------------------

    def transfer_many(self, movements: Sequence[tuple[str, str, str, int, str, str | None]]) -> None:
        """`transfer` for many movements (key, from, to, amount, kind, reference), with a constant number of
        round trips rather than a dozen per transfer: the transfer rows are read and inserted in parallel, every
        debit is appended (one conditional batch per account), then every credit, then the rows are marked
        applied. Each transfer keeps the scheme of `transfer` (pending row, debit before credit, a
        `transfer:` marker until applied), so a crash anywhere is finished by the same recovery. Raises like
        `transfer` for the first movement that fails (the others are made)."""
        for _, src, dst, amount, _, _ in movements:
            if amount <= 0:
                raise InvalidInput("a transfer moves a positive number of coins")
            if src == dst:
                raise InvalidInput("a transfer needs two different accounts")
        unique = list({m[0]: m for m in reversed(movements)}.values())[::-1]  # the first of a key the list repeats
        existing = self._all("SELECT * FROM transfers WHERE key = ?", [(m[0],) for m in unique])
        rows: list[dict[str, Any]] = []
        fresh = []
        for m, found in zip(unique, existing, strict=True):
            if found:
                rows.append(found[0])
            else:
                fresh.append(m)
        if fresh:
            accounts = sorted({a for m in fresh for a in (m[1], m[2])})
            seqs = dict(zip(accounts, (r[0]["seq"] if r else 0 for r in self._all(
                "SELECT seq FROM account_log WHERE account = ? LIMIT 1", [(a,) for a in accounts])), strict=True))
            now = us(datetime.now(UTC))
            ts = [{"key": key, "from_account": src, "to_account": dst, "amount": amount, "kind": kind,
                   "reference": reference, "created_at": now, "state": "pending", "src_seq0": seqs[src],
                   "dst_seq0": seqs[dst]} for key, src, dst, amount, kind, reference in fresh]
            self.mark_pending_many([f"transfer:{t['key']}" for t in ts])
            cols = ("key", "from_account", "to_account", "amount", "kind", "reference", "created_at", "state",
                    "src_seq0", "dst_seq0")
            cql = f"INSERT INTO transfers ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) IF NOT EXISTS"
            futures = [self.session.execute_async(self.q(cql), tuple(t[c] for c in cols)) for t in ts]
            for t, future in zip(ts, futures, strict=True):
                try:
                    row = future.result().one()
                    rows.append(t if row["[applied]"] else {c: row[c] for c in cols})
                except WriteTimeout as e:
                    if e.write_type != WriteType.CAS:
                        raise
                    rows.append(self._insert_transfer(t))
        wanted = {m[0]: m for m in unique}
        for row in rows:
            m = wanted[row["key"]]
            if (row["from_account"], row["to_account"], row["amount"]) != (m[1], m[2], m[3]):
                raise IdempotencyConflict(f"idempotency key {row['key']!r} was already used for a different transfer")
        pending = [r for r in rows if r["state"] != "applied"]
        if not pending:
            return
        paid = self.append_many([(t, t["from_account"], -t["amount"], t["src_seq0"]) for t in pending])
        self.checkpoint("transfer:first-half")
        debited = [t for t, ok in zip(pending, paid, strict=True) if ok]
        self.append_many([(t, t["to_account"], t["amount"], t["dst_seq0"]) for t in debited])
        self.checkpoint("transfer:second-half")
        marks = self._all("UPDATE transfers SET state = 'applied' WHERE key = ? IF state = 'pending'",
                          [(t["key"],) for t in debited])
        for t, mark in zip(debited, marks, strict=True):
            if not mark[0]["[applied]"] and mark[0].get("state") != "applied":
                self._insert_transfer({**t, "state": "applied"})  # a concurrent caller refused it: see complete()
            t["state"] = "applied"
        self.clear_pending_many([f"transfer:{t['key']}" for t in debited])
        for t in pending:
            if t["state"] != "applied":
                self.complete(t)  # its source cannot pay: refused (InsufficientFunds) as `transfer` would


    def transfer(self, key: str, src: str, dst: str, amount: int, kind: str, reference: str | None) -> Transfer:
        if amount <= 0:
            raise InvalidInput("a transfer moves a positive number of coins")
        if src == dst:
            raise InvalidInput("a transfer needs two different accounts")
        row = self.one("SELECT * FROM transfers WHERE key = ?", (key,))
        if row is None:
            fresh = {"key": key, "from_account": src, "to_account": dst, "amount": amount, "kind": kind,
                     "reference": reference, "created_at": us(datetime.now(UTC)), "state": "pending",
                     "src_seq0": self.latest_seq(src), "dst_seq0": self.latest_seq(dst)}
            self.mark_pending(f"transfer:{key}")
            row = self._insert_transfer(fresh)
        if (row["from_account"], row["to_account"], row["amount"]) != (src, dst, amount):
            raise IdempotencyConflict(f"idempotency key {key!r} was already used for a different transfer")
        if row["state"] != "applied":
            self.complete(row)
        return _transfer(row)

    def _insert_transfer(self, t: dict[str, Any]) -> dict[str, Any]:
        """Insert the transfer if its key is new; the stored transfer either way."""
        cols = ("key", "from_account", "to_account", "amount", "kind", "reference", "created_at", "state",
                "src_seq0", "dst_seq0")
        current: dict[str, Any] | None
        while True:
            try:
                applied, current = self.cas(
                    f"INSERT INTO transfers ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) IF NOT EXISTS",
                    tuple(t[c] for c in cols))
            except CasUnknown:
                current = self.one("SELECT * FROM transfers WHERE key = ?", (t["key"],), serial=True)
                if current is None:
                    continue
                applied = False
            return t if applied else {c: current[c] for c in cols}

    def complete(self, t: dict[str, Any]) -> None:
        """Apply both halves of a pending transfer (idempotent); InsufficientFunds if its source cannot pay."""
        key, amount = t["key"], t["amount"]
        if self._apply(t, t["from_account"], -amount, t["src_seq0"]) is None:
            self._refuse(t)  # raises, or finds the transfer completed by a concurrent caller
            return
        self.checkpoint("transfer:first-half")
        self._apply(t, t["to_account"], amount, t["dst_seq0"])
        self.checkpoint("transfer:second-half")
        while True:
            try:
                applied, current = self.cas("UPDATE transfers SET state = 'applied' WHERE key = ? IF state = 'pending'",
                                            (key,))
            except CasUnknown:
                continue
            if applied or current.get("state") == "applied":
                break
            # A concurrent caller refused the transfer (its balance read came before our first
            # half) and deleted the record: put it back, applied, since both halves are in.
            self._insert_transfer({**t, "state": "applied"})
            break
        t["state"] = "applied"
        self.clear_pending(f"transfer:{key}")

    def _refuse(self, t: dict[str, Any]) -> None:
        """Drop a transfer whose source cannot pay and nothing of which was applied; raise InsufficientFunds."""
        key, src = t["key"], t["from_account"]
        try:
            self.cas("DELETE FROM transfers WHERE key = ? IF state = 'pending'", (key,))
        except CasUnknown:
            pass
        found = self._find(src, key, t["src_seq0"], serial=True)
        if found is not None:  # a concurrent caller applied the first half after all: finish instead
            self._insert_transfer(t)
            self.complete(t)
            return
        self.clear_pending(f"transfer:{key}")
        raise InsufficientFunds(f"insufficient coins: balance {self.get_balance(src)}, needed {t['amount']}")

    def get_transfer(self, key: str) -> Transfer | None:
        row = self.one("SELECT * FROM transfers WHERE key = ?", (key,))
        if row is None:
            return None
        if row["state"] != "applied":  # whoever finds a half-done transfer completes it
            try:
                self.complete(row)
            except InsufficientFunds:
                return None
        return _transfer(row)

    def list_entries(self, account: str, limit: int, before: Cursor | None) -> list[LedgerEntry]:
        cql = "SELECT * FROM account_log WHERE account = ?"
        params: tuple[Any, ...] = (account,)
        if before is not None:
            seq = self._entry_seq(account, before[1])
            if seq is None:
                return []
            cql, params = cql + " AND seq < ?", (account, seq)
        rows = self.rows(cql + " LIMIT ?", (*params, limit))
        return [LedgerEntry(account=r["account"], txn_key=r["txn_key"], delta=r["delta"],
                            balance_after=r["balance_after"], kind=r["kind"], reference=r["reference"],
                            created_at=dt(r["created_at"])) for r in rows]

    def _entry_seq(self, account: str, key: str) -> int | None:
        t = self.one("SELECT from_account, to_account, src_seq0, dst_seq0 FROM transfers WHERE key = ?", (key,))
        if t is None or account not in (t["from_account"], t["to_account"]):
            return None
        found = self._find(account, key, t["src_seq0"] if account == t["from_account"] else t["dst_seq0"],
                              serial=False)
        return found["seq"] if found else None

    # --- pending operations ---------------------------------------------------------------

    def mark_pending(self, key: str) -> None:
        self.session.execute(self.q("INSERT INTO pending_ops (bucket, key, created_at) VALUES (?, ?, ?)"),
                             (pending_bucket(key), key, us(datetime.now(UTC))))

    def mark_pending_many(self, keys: list[str]) -> None:
        at = us(datetime.now(UTC))
        self._all("INSERT INTO pending_ops (bucket, key, created_at) VALUES (?, ?, ?)",
                  [(pending_bucket(k), k, at) for k in keys])

    def clear_pending_many(self, keys: list[str]) -> None:
        self._all("DELETE FROM pending_ops WHERE bucket = ? AND key = ?", [(pending_bucket(k), k) for k in keys])

    def clear_pending(self, key: str) -> None:
        self.session.execute(self.q("DELETE FROM pending_ops WHERE bucket = ? AND key = ?"),
                             (pending_bucket(key), key))

    def pending(self) -> list[tuple[str, datetime]]:
        out = []
        for bucket in range(PENDING_BUCKETS):
            out += [(r["key"], dt(r["created_at"]))
                    for r in self.rows("SELECT key, created_at FROM pending_ops WHERE bucket = ?", (bucket,))]
        return out

    def recover_transfer(self, key: str) -> bool:
        """Complete a pending transfer found by the sweep; False if there is none under `key`."""
        row = self.one("SELECT * FROM transfers WHERE key = ?", (key,))
        if row is None:
            return False
        if row["state"] != "applied":
            try:
                self.complete(row)
            except InsufficientFunds:
                pass
        self.clear_pending(f"transfer:{key}")
        return True


def _transfer(row: dict[str, Any]) -> Transfer:
    return Transfer(key=row["key"], from_account=row["from_account"], to_account=row["to_account"],
                    amount=row["amount"], kind=row["kind"], reference=row["reference"],
                    created_at=dt(row["created_at"]))


class CassandraLedgerMethods:
    """The ledger methods of the Store protocol, answered by the store's `CassandraLedger`."""

    ledger: CassandraLedger

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
