"""API tokens for the mining and result clients: created and shown once, stored hashed."""

from datetime import UTC, datetime

from core import security
from core.errors import NotFound
from core.schemas import TokenCreate, TokenCreated, TokenOut
from core.storage import ApiToken, Store, User


def token_out(token: ApiToken) -> TokenOut:
    return TokenOut.model_validate(token.model_dump())


def create(store: Store, user: User, req: TokenCreate) -> TokenCreated:
    if req.order_id is not None:
        order = store.get_order(req.order_id)
        if order is None or order.owner_id != user.id:
            raise NotFound("order not found")
    token_id, raw, secret_hash = security.new_api_token()
    token = ApiToken(
        id=token_id,
        owner_id=user.id,
        name=req.name,
        secret_hash=secret_hash,
        scopes=sorted({s.value for s in req.scopes}),
        order_id=req.order_id,
        created_at=datetime.now(UTC),
    )
    store.create_api_token(token)
    return TokenCreated(**token_out(token).model_dump(), token=raw)


def list_for(store: Store, user: User) -> list[TokenOut]:
    return [token_out(t) for t in store.list_api_tokens(user.id)]


def revoke(store: Store, user: User, token_id: str) -> None:
    if not token_id.isprintable() or not store.revoke_api_token(user.id, token_id, datetime.now(UTC)):
        raise NotFound("token not found")
