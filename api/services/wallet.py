"""Balances, ledger history and the dev faucet."""

import uuid

from api.pagination import decode_cursor, encode_cursor
from core import ledger
from core.errors import FeatureDisabled, InvalidInput
from core.schemas import FaucetRequest, LedgerEntryOut, LedgerPage, WalletOut
from core.settings import Settings
from core.storage import Store, User


def wallet(store: Store, user: User) -> WalletOut:
    account = ledger.user_account(user.id)
    return WalletOut(account=account, balance=store.get_balance(account))


def history(store: Store, user: User, limit: int, cursor: str | None) -> LedgerPage:
    entries = store.list_entries(ledger.user_account(user.id), limit, decode_cursor(cursor))
    items = [LedgerEntryOut.model_validate(e.model_dump()) for e in entries]
    next_cursor = encode_cursor(entries[-1].created_at, entries[-1].txn_key) if len(entries) == limit else None
    return LedgerPage(items=items, next_cursor=next_cursor)


def faucet(store: Store, settings: Settings, user: User, req: FaucetRequest, idempotency_key: str | None) -> WalletOut:
    if not settings.faucet_enabled:
        raise FeatureDisabled("the faucet exists only in dev and test mode")
    if req.amount > settings.faucet_max_amount:
        raise InvalidInput(f"amount must be at most {settings.faucet_max_amount}")
    key = ledger.faucet_key(user.id, idempotency_key or str(uuid.uuid4()))
    store.transfer(key, ledger.MINT, ledger.user_account(user.id), req.amount, "faucet")
    return wallet(store, user)
