from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentUser, IdempotencyKey, SettingsDep, StoreDep
from api.openapi import errors
from api.services import wallet
from core.schemas import FaucetRequest, LedgerPage, WalletOut

router = APIRouter(prefix="/wallet", tags=["coins"])


@router.get("", responses=errors(401))
def get_wallet(user: CurrentUser, store: StoreDep) -> WalletOut:
    """Your coin balance."""
    return wallet.wallet(store, user)


@router.get("/ledger", responses=errors(401, 422))
def get_ledger(
    user: CurrentUser,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> LedgerPage:
    """Your ledger entries, newest first."""
    return wallet.history(store, user, limit, cursor)


@router.post("/faucet", responses=errors(401, 404, 409, 413, 422))
def faucet(
    req: FaucetRequest, user: CurrentUser, store: StoreDep, settings: SettingsDep, idempotency_key: IdempotencyKey
) -> WalletOut:
    """Grant yourself test coins (dev and test mode only)."""
    return wallet.faucet(store, settings, user, req, idempotency_key)
