"""Checking an API token presented to a mining or result server."""

from core.errors import AuthenticationFailed, PermissionDenied
from core.schemas import Scope
from core.security import split_api_token, token_secret_matches
from core.storage import ApiToken, Store


def authenticate_api_token(store: Store, raw: str | None, scope: Scope) -> ApiToken:
    """The stored token behind `raw` if it is valid, not revoked and carries `scope`."""
    if not raw:
        raise AuthenticationFailed("an API token is required")
    token_id, secret = split_api_token(raw)
    token = store.get_api_token(token_id)
    if token is None or not token_secret_matches(token.secret_hash, secret):
        raise AuthenticationFailed("unknown API token")
    if token.revoked_at is not None:
        raise AuthenticationFailed("this API token was revoked")
    if scope.value not in token.scopes:
        raise PermissionDenied(f"this API token lacks the {scope.value!r} scope")
    return token
