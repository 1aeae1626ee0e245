"""The coin ledger on SQL: one balance row per account, a transfer row and two entries per transfer."""

from datetime import timedelta
from functools import cached_property
from typing import Any

from sqlalchemy import bindparam, insert, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from core import ledger
from core.errors import IdempotencyConflict, InsufficientFunds, InvalidInput
from core.storage.records import Cursor, LedgerEntry, Transfer
from core.storage.rules import Movement
from core.storage.sql.engine import SqlBase, record, utcnow
from core.storage.sql.tables import AccountRow, LedgerEntryRow, TransferRow

_TRANSFERS = TransferRow.__table__  # type: ignore[attr-defined]
_ACCOUNTS = AccountRow.__table__  # type: ignore[attr-defined]
_ENTRIES = LedgerEntryRow.__table__  # type: ignore[attr-defined]
# `_post`'s statements, built once: building one (coercing its columns and operators) costs about three times
# what executing it does on SQLite, and a result is written with a dozen of them.
_KNOWN_TRANSFERS = (select(_TRANSFERS.c.key, _TRANSFERS.c.from_account, _TRANSFERS.c.to_account, _TRANSFERS.c.amount)
                    .where(_TRANSFERS.c.key.in_(bindparam("keys", expanding=True))))
_INSERT_TRANSFERS = insert(_TRANSFERS)
_BALANCES = (select(_ACCOUNTS.c.account, _ACCOUNTS.c.balance)
             .where(_ACCOUNTS.c.account.in_(bindparam("accounts", expanding=True))))
_INSERT_ENTRIES = insert(_ENTRIES)
_SET_BALANCES = update(_ACCOUNTS).where(_ACCOUNTS.c.account == bindparam("a")).values(balance=bindparam("b"))


class SqlLedger(SqlBase):
    @cached_property
    def _lock_accounts_stmt(self) -> Any:
        """Create-or-touch account rows (the dialect's upsert), built once per store."""
        return self._insert(_ACCOUNTS).on_conflict_do_update(index_elements=["account"],
                                                             set_={"balance": _ACCOUNTS.c.balance})

    def _move(self, s: Session, account: str, delta: int) -> int | None:
        """Apply `delta` to one balance; None if that would take a non-mint account below 0."""
        if delta > 0 or account == ledger.MINT:
            stmt = (
                self._insert(AccountRow)
                .values(account=account, balance=delta)
                .on_conflict_do_update(index_elements=["account"], set_={"balance": AccountRow.balance + delta})
                .returning(col(AccountRow.balance))
            )
        else:
            stmt = (
                update(AccountRow)
                .where(col(AccountRow.account) == account, col(AccountRow.balance) >= -delta)
                .values(balance=AccountRow.balance + delta)
                .returning(col(AccountRow.balance))
            )
        return s.execute(stmt).scalar_one_or_none()

    def _transfer(
        self, s: Session, key: str, src: str, dst: str, amount: int, kind: str, reference: str | None
    ) -> Transfer:
        if amount <= 0:
            raise InvalidInput("a transfer moves a positive number of coins")
        if src == dst:
            raise InvalidInput("a transfer needs two different accounts")
        at = utcnow()
        claimed = s.execute(
            self._insert(TransferRow)
            .values(key=key, from_account=src, to_account=dst, amount=amount, kind=kind, reference=reference,
                    created_at=at)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(col(TransferRow.key))
        ).first()
        if claimed is None:
            existing = s.exec(select(TransferRow).where(TransferRow.key == key)).one()
            if (existing.from_account, existing.to_account, existing.amount) != (src, dst, amount):
                raise IdempotencyConflict(f"idempotency key {key!r} was already used for a different transfer")
            return record(Transfer, existing)
        balances: dict[str, int] = {}
        for account in sorted((src, dst)):  # one lock order for every transfer: no deadlocks
            delta = -amount if account == src else amount
            after = self._move(s, account, delta)
            if after is None:
                have = self._balance(s, src)
                raise InsufficientFunds(f"insufficient coins: balance {have}, needed {amount}")
            balances[account] = after
        for account, delta in ((src, -amount), (dst, amount)):
            s.add(LedgerEntryRow(account=account, txn_key=key, delta=delta, balance_after=balances[account],
                                 kind=kind, reference=reference, created_at=at))
        return Transfer(key=key, from_account=src, to_account=dst, amount=amount, kind=kind, reference=reference,
                        created_at=at)

    def _make(self, s: Session, movement: Movement) -> Transfer:
        """Make a transfer a rule of `core.storage.rules` asks for, in the transaction of `s`."""
        return self._transfer(s, *movement)

    def _post(self, s: Session, movements: list[Movement]) -> None:
        """Make many transfers in the transaction of `s` with a handful of statements, whatever their number.

        The same as `_make` for each movement in turn: a key used before moves nothing again
        (IdempotencyConflict if it was used for a different transfer), no account but the mint
        goes below zero (InsufficientFunds, and the caller's transaction is rolled back), and
        every transfer posts its two ledger entries with the balance after it, in list order.
        The touched accounts are locked up front in one sorted order, then read, updated in
        memory and written back once each.
        """
        if not movements:
            return
        for m in movements:
            if m.amount <= 0:
                raise InvalidInput("a transfer moves a positive number of coins")
            if m.from_account == m.to_account:
                raise InvalidInput("a transfer needs two different accounts")
        start = utcnow()
        rows = [{"key": m.key, "from_account": m.from_account, "to_account": m.to_account, "amount": m.amount,
                 "kind": m.kind, "reference": m.reference, "created_at": start + timedelta(microseconds=i)}
                for i, m in enumerate(movements)]
        old = {key: (src, dst, amount) for key, src, dst, amount
               in s.execute(_KNOWN_TRANSFERS, {"keys": [m.key for m in movements]})}
        for m in movements:
            if m.key in old and old[m.key] != (m.from_account, m.to_account, m.amount):
                raise IdempotencyConflict(f"idempotency key {m.key!r} was already used for a different transfer")
        seen = set(old)
        fresh: list[tuple[Movement, dict]] = []  # new keys only, the first of a key the batch holds twice
        for m, r in zip(movements, rows, strict=True):
            if m.key not in seen:
                seen.add(m.key)
                fresh.append((m, r))
        if not fresh:
            return
        s.execute(_INSERT_TRANSFERS, [r for _, r in fresh])
        accounts = {m.from_account for m, _ in fresh} | {m.to_account for m, _ in fresh}
        self._lock_accounts(s, accounts)
        balances: dict[str, int] = dict(s.execute(_BALANCES, {"accounts": sorted(accounts)}).all())
        entries = []
        for m, r in fresh:
            for account, delta in ((m.from_account, -m.amount), (m.to_account, m.amount)):
                balances[account] += delta
                if balances[account] < 0 and account != ledger.MINT:
                    raise InsufficientFunds(f"insufficient coins: balance {balances[account] - delta}, "
                                            f"needed {m.amount}")
                entries.append({"account": account, "txn_key": m.key, "delta": delta,
                                "balance_after": balances[account], "kind": m.kind, "reference": m.reference,
                                "created_at": r["created_at"]})
        s.execute(_INSERT_ENTRIES, entries)
        s.execute(_SET_BALANCES, [{"a": a, "b": b} for a, b in sorted(balances.items())])

    def _balance(self, s: Session, account: str) -> int:
        row = s.get(AccountRow, account)
        return row.balance if row else 0

    def _lock_accounts(self, s: Session, accounts: set[str]) -> None:
        """Row-lock every account a batch will touch, in one sorted order (creating missing ones).

        A batch moves coins between many accounts; taking all their locks up front, sorted,
        keeps two concurrent batches from locking the same pair in opposite orders.
        """
        if not accounts:
            return
        s.execute(self._lock_accounts_stmt, [{"account": a, "balance": 0} for a in sorted(accounts)])

    def transfer(
        self, key: str, from_account: str, to_account: str, amount: int, kind: str, reference: str | None = None
    ) -> Transfer:
        def run() -> Transfer:
            with self._write() as s:
                return self._transfer(s, key, from_account, to_account, amount, kind, reference)

        try:
            return self._retrying(run)
        except IntegrityError:  # a concurrent first use of the same key won the race
            return self._retrying(run)

    def get_transfer(self, key: str) -> Transfer | None:
        with self._read() as s:
            row = s.get(TransferRow, key)
            return record(Transfer, row) if row else None

    def get_balance(self, account: str) -> int:
        with self._read() as s:
            return self._balance(s, account)

    def recover_pending(self) -> int:
        return 0  # every operation is one transaction: a crash leaves nothing half done

    def list_entries(self, account: str, limit: int, before: Cursor | None = None) -> list[LedgerEntry]:
        with self._read() as s:
            stmt = select(LedgerEntryRow).where(LedgerEntryRow.account == account)
            if before is not None:
                stmt = stmt.where(tuple_(LedgerEntryRow.created_at, LedgerEntryRow.txn_key) < tuple_(*before))
            stmt = stmt.order_by(col(LedgerEntryRow.created_at).desc(), col(LedgerEntryRow.txn_key).desc())
            return [record(LedgerEntry, r) for r in s.exec(stmt.limit(limit))]
