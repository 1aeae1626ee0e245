"""Request dependencies, as Annotated aliases for the routes."""

from typing import Annotated

from fastapi import Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis

from api.login_throttle import LoginThrottle, RegistrationThrottle
from api.services import accounts
from core.client_address import real_client
from core.errors import AuthenticationFailed, InvalidInput
from core.security import Passwords
from core.settings import Settings
from core.storage import Store, User

_bearer = HTTPBearer(auto_error=False, description="The access_token from POST /auth/login.")


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> Store:
    return request.app.state.store


def _redis(request: Request) -> Redis:
    return request.app.state.redis


def _passwords(request: Request) -> Passwords:
    return request.app.state.passwords


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[Store, Depends(_store)]
RedisDep = Annotated[Redis, Depends(_redis)]
PasswordsDep = Annotated[Passwords, Depends(_passwords)]


def _throttle(redis: RedisDep, settings: SettingsDep) -> LoginThrottle:
    return LoginThrottle(redis, settings)


def _registration_throttle(redis: RedisDep, settings: SettingsDep) -> RegistrationThrottle:
    return RegistrationThrottle(redis, settings)


def no_store(response: Response) -> None:
    """For answers that carry a secret (session, TOTP secret, API token): no cache may keep a copy."""
    response.headers["Cache-Control"] = "no-store"


def _client_address(request: Request, settings: SettingsDep) -> str:
    peer = request.client.host if request.client else None
    return real_client(peer, request.headers.getlist("x-forwarded-for"), settings.trusted_proxy_networks)


def _current_user(
    store: StoreDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None:
        raise AuthenticationFailed("not logged in: send the header 'Authorization: Bearer <access_token>'")
    return accounts.authenticate(store, settings, credentials.credentials)


def _session_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    if credentials is None:
        raise AuthenticationFailed("not logged in")
    return credentials.credentials


def _idempotency_key(
    idempotency_key: Annotated[
        str | None, Header(description="Send the same key again to retry without doing the work twice.")
    ] = None,
) -> str | None:
    if idempotency_key is not None and not (1 <= len(idempotency_key) <= 128 and idempotency_key.isprintable()):
        raise InvalidInput("Idempotency-Key must be 1 to 128 printable characters")
    return idempotency_key


ThrottleDep = Annotated[LoginThrottle, Depends(_throttle)]
RegistrationThrottleDep = Annotated[RegistrationThrottle, Depends(_registration_throttle)]
ClientAddress = Annotated[str, Depends(_client_address)]
CurrentUser = Annotated[User, Depends(_current_user)]
SessionToken = Annotated[str, Depends(_session_token)]
IdempotencyKey = Annotated[str | None, Depends(_idempotency_key)]
