"""A small HTTP client for tests: the API as a user drives it, nothing in-process."""

import signal
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
import pyotp

PASSWORD = "correct horse battery staple"


def fresh_totp_step(margin: float = 3.0) -> None:
    """Wait, if needed, until `margin` seconds remain in the current 30-s TOTP step.

    A code of the previous step is accepted only during the current one; a request that crosses
    a step boundary between computing such a code and the server checking it would fail.
    """
    into = time.time() % 30
    if into > 30 - margin:
        time.sleep(30 - into + 0.1)


@dataclass
class Account:
    id: str
    username: str
    password: str
    secret: str
    headers: dict[str, str]

    def totp(self, offset_steps: int = 0) -> str:
        return pyotp.TOTP(self.secret).at(time.time() + 30 * offset_steps)


class ApiClient(httpx.Client):
    def __init__(self, base_url: str) -> None:
        super().__init__(base_url=base_url, timeout=30)

    def register(self, username: str | None = None, password: str = PASSWORD) -> tuple[httpx.Response, str]:
        username = username or f"user-{uuid.uuid4().hex[:10]}"
        return self.post("/auth/register", json={"username": username, "password": password}), username

    def new_account(self, coins: int = 0) -> Account:
        """Register, confirm TOTP (code of the previous step) and log in (code of the current step)."""
        r, username = self.register()
        assert r.status_code == 201, r.text
        body = r.json()
        secret = body["totp"]["secret"]
        totp = pyotp.TOTP(secret)
        fresh_totp_step()
        confirm = self.post("/auth/totp/confirm",
                            json={"username": username, "password": PASSWORD, "code": totp.at(time.time() - 30)})
        assert confirm.status_code == 200, confirm.text
        login = self.post("/auth/login", json={"username": username, "password": PASSWORD, "code": totp.now()})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        account = Account(body["user"]["id"], username, PASSWORD, secret, headers)
        if coins:
            r = self.post("/wallet/faucet", json={"amount": coins}, headers=headers)
            assert r.status_code == 200, r.text
        return account

    def balance(self, account: Account) -> int:
        r = self.get("/wallet", headers=account.headers)
        assert r.status_code == 200, r.text
        return r.json()["balance"]


def interval_order(url: str = "https://example.com/page", every: int = 60, runs: int = 5, **extra: object) -> dict:
    return {"url": url, "schedule": {"kind": "interval", "every_seconds": every}, "max_runs": runs, **extra}


def interrupt(processes: Iterable[subprocess.Popen[bytes] | None], timeout: float = 30) -> None:
    """Stop client processes as a user would (Ctrl-C), killing any that does not stop in time."""
    for p in processes:
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
