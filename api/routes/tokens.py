from fastapi import APIRouter, Depends, status

from api.deps import CurrentUser, StoreDep, no_store
from api.openapi import errors
from api.services import tokens
from core.schemas import TokenCreate, TokenCreated, TokenOut

router = APIRouter(prefix="/tokens", tags=["API tokens"])


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[Depends(no_store)],
             responses=errors(401, 404, 413, 422))
def create_token(req: TokenCreate, user: CurrentUser, store: StoreDep) -> TokenCreated:
    """Create an API token for the mining or result client; the secret is shown only now."""
    return tokens.create(store, user, req)


@router.get("", responses=errors(401))
def list_tokens(user: CurrentUser, store: StoreDep) -> list[TokenOut]:
    """Your API tokens, newest first (without secrets)."""
    return tokens.list_for(store, user)


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(401, 404))
def revoke_token(token_id: str, user: CurrentUser, store: StoreDep) -> None:
    """Revoke one of your API tokens."""
    tokens.revoke(store, user, token_id)
