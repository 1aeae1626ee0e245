from fastapi import APIRouter, status

from api.deps import (
    ClientAddress,
    CurrentUser,
    PasswordsDep,
    SessionToken,
    SettingsDep,
    StoreDep,
    ThrottleDep,
)
from api.services import accounts
from core.schemas import (
    CredentialsRequest,
    LoginRequest,
    MeOut,
    Registered,
    RegisterRequest,
    SessionOut,
    TotpConfirmRequest,
    TotpEnrolment,
)

router = APIRouter(tags=["accounts"])


@router.post("/auth/register", status_code=status.HTTP_201_CREATED)
def register(req: RegisterRequest, store: StoreDep, passwords: PasswordsDep) -> Registered:
    """Create an account; returns the TOTP secret and QR code to enrol an authenticator app."""
    return accounts.register(store, passwords, req)


@router.post("/auth/totp/setup")
def totp_setup(
    req: CredentialsRequest, store: StoreDep, passwords: PasswordsDep, throttle: ThrottleDep, client: ClientAddress
) -> TotpEnrolment:
    """Issue a new TOTP secret for an account whose enrolment is not confirmed yet."""
    return accounts.totp_setup(store, passwords, throttle, req, client)


@router.post("/auth/totp/confirm")
def totp_confirm(
    req: TotpConfirmRequest,
    store: StoreDep,
    settings: SettingsDep,
    passwords: PasswordsDep,
    throttle: ThrottleDep,
    client: ClientAddress,
) -> SessionOut:
    """Confirm TOTP enrolment with a current code; logs in."""
    return accounts.totp_confirm(store, settings, passwords, throttle, req, client)


@router.post("/auth/login")
def login(
    req: LoginRequest,
    store: StoreDep,
    settings: SettingsDep,
    passwords: PasswordsDep,
    throttle: ThrottleDep,
    client: ClientAddress,
) -> SessionOut:
    """Log in with password and current TOTP code; returns a short-lived session token."""
    return accounts.login(store, settings, passwords, throttle, req, client)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(token: SessionToken, user: CurrentUser, store: StoreDep, settings: SettingsDep) -> None:
    """End the current session."""
    accounts.logout(store, settings, token)


@router.get("/me")
def me(user: CurrentUser, store: StoreDep) -> MeOut:
    """The logged-in user and their coin balance."""
    return accounts.me(store, user)
