from fastapi import APIRouter, Depends, status

from api.deps import CurrentUser, StoreDep, no_store
from api.services import tokens
from core.schemas import TokenCreate, TokenCreated, TokenOut

router = APIRouter(prefix="/tokens", tags=["API tokens"])


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[Depends(no_store)])
def create_token(req: TokenCreate, user: CurrentUser, store: StoreDep) -> TokenCreated:
    """Create an API token for the mining or result client; the secret is shown only now."""
    return tokens.create(store, user, req)


@router.get("")
def list_tokens(user: CurrentUser, store: StoreDep) -> list[TokenOut]:
    """Your API tokens, newest first (without secrets)."""
    return tokens.list_for(store, user)


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: str, user: CurrentUser, store: StoreDep) -> None:
    """Revoke one of your API tokens."""
    tokens.revoke(store, user, token_id)
