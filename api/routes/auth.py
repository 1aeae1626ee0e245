from fastapi import APIRouter, Depends, status

from api.deps import (
    ClientAddress,
    CurrentUser,
    PasswordsDep,
    RedisDep,
    RegistrationThrottleDep,
    SessionToken,
    SettingsDep,
    StoreDep,
    ThrottleDep,
    no_store,
)
from api.openapi import errors
from api.services import accounts, reputation
from core.schemas import (
    CredentialsRequest,
    LoginRequest,
    MeOut,
    Registered,
    RegisterRequest,
    ReputationOut,
    SessionOut,
    TotpConfirmRequest,
    TotpEnrolment,
)

router = APIRouter(tags=["accounts"])


@router.post("/auth/register", status_code=status.HTTP_201_CREATED, dependencies=[Depends(no_store)],
             responses=errors(409, 413, 422, 429, 503))
def register(
    req: RegisterRequest,
    store: StoreDep,
    settings: SettingsDep,
    passwords: PasswordsDep,
    throttle: RegistrationThrottleDep,
    client: ClientAddress,
) -> Registered:
    """Create an account; returns the TOTP secret and QR code to enrol an authenticator app."""
    return accounts.register(store, settings, passwords, throttle, req, client)


@router.post("/auth/totp/setup", dependencies=[Depends(no_store)], responses=errors(401, 413, 422, 429, 503))
def totp_setup(
    req: CredentialsRequest, store: StoreDep, passwords: PasswordsDep, throttle: ThrottleDep, client: ClientAddress
) -> TotpEnrolment:
    """Issue a new TOTP secret for an account whose enrolment is not confirmed yet."""
    return accounts.totp_setup(store, passwords, throttle, req, client)


@router.post("/auth/totp/confirm", dependencies=[Depends(no_store)],
             responses=errors(401, 409, 413, 422, 429, 503))
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


@router.post("/auth/login", dependencies=[Depends(no_store)], responses=errors(401, 403, 413, 422, 429, 503))
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


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT, responses=errors(401))
def logout(token: SessionToken, user: CurrentUser, store: StoreDep, settings: SettingsDep) -> None:
    """End the current session."""
    accounts.logout(store, settings, token)


@router.get("/me", responses=errors(401))
def me(user: CurrentUser, store: StoreDep) -> MeOut:
    """The logged-in user and their coin balance."""
    return accounts.me(store, user)


@router.get("/me/reputation", responses=errors(401))
def my_reputation(user: CurrentUser, redis: RedisDep, settings: SettingsDep) -> ReputationOut:
    """Your reputation as a miner: how often your results are checked, and whether you may mine."""
    return reputation.reputation(redis, settings, user)
