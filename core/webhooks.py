"""Signing webhook deliveries, and checking a signature the way a receiver should.

Every request carries `Crawlcoin-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`, the HMAC keyed
with the webhook's secret over `<t>.<body>`. A receiver recomputes it over the raw body and
refuses a timestamp older than a few minutes, so a captured request cannot be replayed later;
`Crawlcoin-Delivery` is the delivery's idempotency id, the same on every attempt.
"""

import hashlib
import hmac
import secrets

SIGNATURE_HEADER = "Crawlcoin-Signature"
DELIVERY_HEADER = "Crawlcoin-Delivery"
EVENT_HEADER = "Crawlcoin-Event"
TOLERANCE_SECONDS = 300


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The value of the signature header for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance: int = TOLERANCE_SECONDS) -> bool:
    """True if `header` signs `body` with `secret` and its timestamp is within `tolerance` seconds of `now`."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))
