"""Passwords (argon2id), TOTP codes, signed session tokens and API token secrets."""

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.errors import AuthenticationFailed, CrawlcoinError, InvalidInput, ServiceUnavailable
from core.settings import Settings

TOTP_ISSUER = "crawlcoin"
TOTP_PERIOD = 30
API_TOKEN_PREFIX = "cc"


class TotpSecrets:
    """TOTP secrets at rest: Fernet tokens (AES-128-CBC + HMAC-SHA256), so a copy of the store alone
    does not let anyone compute a user's codes.

    Keys: `CRAWLCOIN_TOTP_KEYS`, comma-separated Fernet keys (the first encrypts, every one decrypts, so
    keys can be rotated); if unset, one key derived from `CRAWLCOIN_SECRET_KEY` with HKDF-SHA256.
    A stored value without the prefix is a secret stored in clear by an older version and read as is.
    """

    PREFIX = "fernet:"

    def __init__(self, settings: Settings) -> None:
        keys = [k.strip() for k in (settings.totp_keys or "").split(",") if k.strip()]
        if not keys:
            derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"crawlcoin totp secrets")
            keys = [base64.urlsafe_b64encode(derived.derive(settings.secret_key.encode())).decode()]
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except ValueError:
            raise CrawlcoinError("invalid configuration: CRAWLCOIN_TOTP_KEYS must be Fernet keys (32 url-safe "
                                 "base64-encoded bytes each), separated by commas") from None

    def seal(self, secret: str) -> str:
        return self.PREFIX + self._fernet.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(self.PREFIX):
            return stored
        try:
            return self._fernet.decrypt(stored.removeprefix(self.PREFIX).encode()).decode()
        except InvalidToken:
            raise ServiceUnavailable("two-factor codes cannot be checked: the stored secret does not open with "
                                     "the configured keys (CRAWLCOIN_TOTP_KEYS / CRAWLCOIN_SECRET_KEY)") from None


class Passwords:
    """Credentials at rest: argon2id password hashes with the cost from settings, sealed TOTP secrets."""

    def __init__(self, settings: Settings) -> None:
        self.totp = TotpSecrets(settings)
        self._hasher = PasswordHasher(time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_kib)
        self._min_length = settings.password_min_length
        # Verifying against this when the user does not exist keeps the timing the same.
        self._dummy_hash = self._hasher.hash(secrets.token_hex(16))

    def check_rules(self, password: str, username: str) -> None:
        if len(password) < self._min_length:
            raise InvalidInput(f"password must be at least {self._min_length} characters long")
        if len(password) > 256:
            raise InvalidInput("password must be at most 256 characters long")
        if username.lower() in password.lower():
            raise InvalidInput("password must not contain the username")
        if len(set(password)) < 5:
            raise InvalidInput("password must use at least 5 different characters")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._dummy_hash, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False


# --- TOTP -----------------------------------------------------------------------------------


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)


def qr_png_data_uri(text: str) -> str:
    return segno.make(text, error="m").png_data_uri(scale=6, border=2)


def totp_step_of(secret: str, code: str, at: float | None = None) -> int | None:
    """The time step whose code equals `code`, allowing one step of clock drift; else None."""
    totp = pyotp.TOTP(secret)
    now = time.time() if at is None else at
    current = int(now // TOTP_PERIOD)
    for step in (current, current - 1, current + 1):
        if hmac.compare_digest(totp.at(step * TOTP_PERIOD), code):
            return step
    return None


# --- session tokens -------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionClaims:
    user_id: str
    session_id: str
    expires_at: datetime


def encode_session(settings: Settings, user_id: str, session_id: str, expires_at: datetime) -> str:
    payload = {"sub": user_id, "sid": session_id, "exp": int(expires_at.timestamp()), "typ": "session"}
    return jwt.encode(payload, settings.secret_key, algorithm="HS256")


def decode_session(settings: Settings, token: str) -> SessionClaims:
    try:
        payload = jwt.decode(token, settings.secret_key, algorithms=["HS256"], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise AuthenticationFailed("session expired; log in again") from None
    except jwt.InvalidTokenError:
        raise AuthenticationFailed("invalid session token") from None
    if payload.get("typ") != "session" or not isinstance(payload.get("sid"), str):
        raise AuthenticationFailed("invalid session token")
    return SessionClaims(payload["sub"], payload["sid"], datetime.fromtimestamp(payload["exp"], UTC))


# --- API tokens -----------------------------------------------------------------------------


def new_api_token() -> tuple[str, str, str]:
    """A fresh API token: (token id, full secret token shown once, hash to store)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{API_TOKEN_PREFIX}_{token_id}_{secret}", hash_token_secret(secret)


def hash_token_secret(secret: str) -> str:
    # API token secrets are 256 random bits: a fast hash is enough, no need for argon2.
    return hashlib.sha256(secret.encode()).hexdigest()


def split_api_token(token: str) -> tuple[str, str]:
    """(token id, secret) of a token string; raise AuthenticationFailed if it is malformed."""
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != API_TOKEN_PREFIX or len(parts[1]) != 16 or not parts[2]:
        raise AuthenticationFailed("malformed API token")
    return parts[1], parts[2]


def token_secret_matches(stored_hash: str, secret: str) -> bool:
    return hmac.compare_digest(stored_hash, hash_token_secret(secret))

