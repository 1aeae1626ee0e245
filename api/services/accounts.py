"""Registration, TOTP enrolment, login and sessions."""

import uuid
from datetime import UTC, datetime, timedelta

from api.login_throttle import LoginThrottle, RegistrationThrottle
from api.password_rules import check_guessable
from core import ledger, security
from core.errors import AuthenticationFailed, Conflict, PermissionDenied
from core.schemas import (
    CredentialsRequest,
    LoginRequest,
    MeOut,
    Registered,
    RegisterRequest,
    SessionOut,
    TotpConfirmRequest,
    TotpEnrolment,
    UserOut,
)
from core.security import Passwords
from core.settings import Settings
from core.storage import LoginSession, Store, User


def user_out(user: User) -> UserOut:
    return UserOut(id=user.id, username=user.username, totp_enabled=user.totp_enabled, created_at=user.created_at)


def me(store: Store, user: User) -> MeOut:
    balance = store.get_balance(ledger.user_account(user.id))
    return MeOut(**user_out(user).model_dump(), balance=balance)


def _enrolment(secret: str, username: str) -> TotpEnrolment:
    uri = security.totp_uri(secret, username)
    return TotpEnrolment(secret=secret, otpauth_uri=uri, qr_png=security.qr_png_data_uri(uri))


def register(store: Store, settings: Settings, passwords: Passwords, throttle: RegistrationThrottle,
             req: RegisterRequest, client: str) -> Registered:
    throttle.attempt(client)
    username = req.username.lower()
    passwords.check_rules(req.password, username)
    check_guessable(req.password, username, settings.password_min_strength)
    secret = security.new_totp_secret()
    user = User(
        id=str(uuid.uuid4()),
        username=username,
        password_hash=passwords.hash(req.password),
        totp_secret=passwords.totp.seal(secret),
        created_at=datetime.now(UTC),
    )
    store.create_user(user)
    return Registered(user=user_out(user), totp=_enrolment(secret, username))


# One answer for every failed sign-in, whichever part was wrong: a different answer for the right password
# with a wrong, replayed or missing code would let anyone test passwords without the second factor.
LOGIN_FAILED = "wrong username, password or two-factor code (a code works only once)"
SETUP_FAILED = "wrong username or password, or two-factor sign-in is already set up for this account"


def _check_password(store: Store, passwords: Passwords, throttle: LoginThrottle, req: CredentialsRequest,
                    client: str, failure: str) -> User:
    throttle.check(req.username, client)
    user = store.get_user_by_username(req.username.lower())
    if not passwords.verify(user.password_hash if user else None, req.password) or user is None:
        throttle.record_failure(req.username, client)
        raise AuthenticationFailed(failure)
    return user


def _check_code(store: Store, passwords: Passwords, throttle: LoginThrottle, user: User, code: str,
                client: str) -> None:
    step = security.totp_step_of(passwords.totp.open(user.totp_secret), code) if user.totp_secret else None
    if step is None or not store.use_totp_step(user.id, step):
        throttle.record_failure(user.username, client)
        raise AuthenticationFailed(LOGIN_FAILED)


def _new_session(store: Store, settings: Settings, user: User) -> SessionOut:
    now = datetime.now(UTC)
    session = LoginSession(
        id=str(uuid.uuid4()),
        user_id=user.id,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.session_ttl_seconds),
    )
    store.create_session(session)
    token = security.encode_session(settings, user.id, session.id, session.expires_at)
    return SessionOut(access_token=token, expires_at=session.expires_at)


def totp_setup(
    store: Store, passwords: Passwords, throttle: LoginThrottle, req: CredentialsRequest, client: str
) -> TotpEnrolment:
    user = _check_password(store, passwords, throttle, req, client, SETUP_FAILED)
    secret = security.new_totp_secret()
    if user.totp_enabled or not store.set_totp_secret(user.id, passwords.totp.seal(secret)):
        # The password alone must not tell an enrolled account apart: answer as for a wrong one.
        throttle.record_failure(user.username, client)
        raise AuthenticationFailed(SETUP_FAILED)
    return _enrolment(secret, user.username)


def totp_confirm(
    store: Store,
    settings: Settings,
    passwords: Passwords,
    throttle: LoginThrottle,
    req: TotpConfirmRequest,
    client: str,
) -> SessionOut:
    user = _check_password(store, passwords, throttle, req, client, LOGIN_FAILED)
    _check_code(store, passwords, throttle, user, req.code, client)
    if user.totp_enabled:  # only now: with the right password and code, nothing is given away
        raise Conflict("two-factor authentication is already enabled; log in instead")
    store.enable_totp(user.id)
    throttle.reset_account(user.username)
    return _new_session(store, settings, user)


def login(
    store: Store, settings: Settings, passwords: Passwords, throttle: LoginThrottle, req: LoginRequest, client: str
) -> SessionOut:
    user = _check_password(store, passwords, throttle, req, client, LOGIN_FAILED)
    if not user.totp_enabled:  # the password is this account's only factor until a code is confirmed
        raise PermissionDenied("two-factor enrolment is not finished: confirm a code at POST /auth/totp/confirm")
    _check_code(store, passwords, throttle, user, req.code, client)
    throttle.reset_account(user.username)
    return _new_session(store, settings, user)


def authenticate(store: Store, settings: Settings, token: str) -> User:
    claims = security.decode_session(settings, token)
    session = store.get_session(claims.session_id)
    if session is None or session.user_id != claims.user_id or session.revoked_at is not None:
        raise AuthenticationFailed("this session has ended; log in again")
    user = store.get_user(session.user_id)
    if user is None:
        raise AuthenticationFailed("this session has ended; log in again")
    return user


def logout(store: Store, settings: Settings, token: str) -> None:
    claims = security.decode_session(settings, token)
    store.revoke_session(claims.session_id, datetime.now(UTC))
