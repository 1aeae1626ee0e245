"""`crawlcoin up --demo`: the whole path in a minute, for a newcomer.

After the stack is up it serves a small local page, registers a demo customer (enrolling TOTP
with a code computed here), grants test coins, orders the page every 5 s × 12, starts the
local miner and a result client writing into `<data dir>/demo-results`, and prints where to
look. Only the public interfaces are used: the HTTP API and the two CLIs.
"""

import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyotp

from core.errors import CrawlcoinError
from core.settings import Mode, Settings

PAGE = """<!doctype html><html><head><title>crawlcoin demo page</title></head>
<body><h1>Hello from the crawlcoin demo page</h1>
<p>Every repetition of the demo order fetches this page; the result client writes each copy to disk.</p>
</body></html>
"""


def prepare_site(data_dir: Path) -> Path:
    site = data_dir / "demo-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "index.html").write_text(PAGE)
    (site / "robots.txt").write_text("User-agent: *\nAllow: /\n")
    return site


def refuse_in_production(settings: Settings) -> None:
    if settings.mode is Mode.production:
        raise CrawlcoinError("the demo orders a page on this machine and runs only in dev or test mode")


def place_demo_order(api_url: str, page_url: str) -> dict[str, str]:
    """Register a demo customer, fund it, order the page; returns what the demo shows the user."""
    username = f"demo-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    with httpx.Client(base_url=api_url, timeout=30) as api:
        r = api.post("/auth/register", json={"username": username, "password": password})
        r.raise_for_status()
        totp = pyotp.TOTP(r.json()["totp"]["secret"])
        # Enrol with the code of the previous 30-s step (still accepted): a code works only once, and the
        # current one is the code the user types to sign in right after the start. Near a step boundary the
        # previous code may have just expired: then the next try takes the new previous one.
        for _ in range(2):
            r = api.post("/auth/totp/confirm", json={"username": username, "password": password,
                                                     "code": totp.at(time.time() - totp.interval)})
            if r.status_code != 401:
                break
        r.raise_for_status()
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        api.post("/wallet/faucet", json={"amount": 50}, headers=auth).raise_for_status()
        start = (datetime.now(UTC) + timedelta(seconds=10)).isoformat()
        r = api.post("/orders", headers=auth, json={
            "url": page_url, "max_runs": 12, "start_at": start,
            "schedule": {"kind": "interval", "every_seconds": 5}})
        if r.status_code != 201:
            raise CrawlcoinError(f"the demo order was refused: {r.json().get('detail')}")
        order_id = r.json()["id"]
        r = api.post("/tokens", headers=auth, json={"name": "demo", "scopes": ["results"], "order_id": order_id})
        r.raise_for_status()
        return {"username": username, "password": password, "secret": totp.secret, "order_id": order_id,
                "results_token": r.json()["token"]}
