"""`crawlcoin up --miner`: the local volunteer account and its `mine` token, through the HTTP API.

The account is made as any volunteer makes one (register, enrol TOTP, log in); its password
and TOTP secret are kept in `<data dir>/local-miner.json` (readable by its owner only) so the
same account, and its earnings, are used on every start. Each start replaces the token of the
previous one.
"""

import json
import os
import secrets
import time
from pathlib import Path

import httpx
import pyotp

from core.errors import CrawlcoinError

USERNAME = "local-miner"
TOKEN_NAME = "crawlcoin up --miner"


def _fail(what: str, r: httpx.Response) -> CrawlcoinError:
    try:
        detail = r.json().get("detail", r.text)
    except ValueError:
        detail = r.text
    return CrawlcoinError(f"{what} for the local miner failed ({r.status_code}): {detail}")


def _register(api: httpx.Client, credentials: Path) -> tuple[dict[str, str], str]:
    """A new volunteer account, its credentials saved; returns them and a session token."""
    password = secrets.token_urlsafe(24)
    for username in (USERNAME, f"{USERNAME}-{secrets.token_hex(3)}"):  # the name may be taken by an older data dir
        r = api.post("/auth/register", json={"username": username, "password": password})
        if r.status_code != 409:
            break
    if r.status_code != 201:
        raise _fail("registering", r)
    account = {"username": username, "password": password, "totp_secret": r.json()["totp"]["secret"]}
    r = api.post("/auth/totp/confirm", json={"username": username, "password": password,
                                             "code": pyotp.TOTP(account["totp_secret"]).now()})
    if r.status_code != 200:
        raise _fail("enrolling TOTP", r)
    credentials.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(account, f)
    return account, r.json()["access_token"]


def _login(api: httpx.Client, account: dict[str, str]) -> str:
    totp = pyotp.TOTP(account["totp_secret"])
    # A start within the same 30 s as the previous one finds the current code used: take the next one.
    for at in (time.time(), time.time() + totp.interval):
        r = api.post("/auth/login", json={"username": account["username"], "password": account["password"],
                                          "code": totp.at(at)})
        if r.status_code == 200:
            return r.json()["access_token"]
    raise _fail("logging in", r)


def local_miner_token(api_url: str, data_dir: Path) -> tuple[str, str]:
    """The local volunteer's username and a fresh `mine` token (the account is created on first use)."""
    credentials = data_dir / "local-miner.json"
    with httpx.Client(base_url=api_url, timeout=30) as api:
        if credentials.exists():
            account = json.loads(credentials.read_text())
            session = _login(api, account)
        else:
            account, session = _register(api, credentials)
        auth = {"Authorization": f"Bearer {session}"}
        r = api.get("/tokens", headers=auth)
        if r.status_code != 200:
            raise _fail("listing tokens", r)
        for old in r.json():
            if old["name"] == TOKEN_NAME and old["revoked_at"] is None:
                r = api.delete(f"/tokens/{old['id']}", headers=auth)
                if r.status_code != 204:
                    raise _fail("revoking the previous token", r)
        r = api.post("/tokens", headers=auth, json={"name": TOKEN_NAME, "scopes": ["mine"]})
        if r.status_code != 201:
            raise _fail("creating a mine token", r)
        api.post("/auth/logout", headers=auth)
        return account["username"], r.json()["token"]
