"""A small HTTP client for tests: the API as a user drives it, nothing in-process."""

import http.server
import json
import os
import pty
import re
import select
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

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

    def earned_by_kind(self, account: Account) -> dict[str, int]:
        """The coins the account's ledger entries moved, by kind (`reward`, `validation`, …)."""
        totals: dict[str, int] = {}
        cursor = None
        while True:
            r = self.get("/wallet/ledger", headers=account.headers,
                         params={"limit": 200, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, r.text
            for entry in r.json()["items"]:
                totals[entry["kind"]] = totals.get(entry["kind"], 0) + entry["delta"]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                return totals


def interval_order(url: str = "https://example.com/page", every: int = 60, runs: int = 5, **extra: object) -> dict:
    return {"url": url, "schedule": {"kind": "interval", "every_seconds": every}, "max_runs": runs, **extra}


def place_page_orders(api: "ApiClient", customer: Any, page_port: int, count: int, runs: int, every: int,
                      start: datetime, spacing: float = 1.0) -> dict[str, datetime]:
    """`count` interval orders of the local page server's /page/o<i>, the i-th starting i × `spacing` s after
    `start`: their ids (in order) → start times."""
    starts: dict[str, datetime] = {}
    for i in range(count):
        start_at = start + timedelta(seconds=i * spacing)
        r = api.post("/orders", headers=customer.headers, json={
            "url": f"http://127.0.0.1:{page_port}/page/o{i}", "max_runs": runs,
            "schedule": {"kind": "interval", "every_seconds": every}, "start_at": start_at.isoformat()})
        assert r.status_code == 201, r.text
        starts[r.json()["id"]] = start_at
    return starts


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


class Terminal:
    """A command on a pseudo-terminal, as a user sees it: Rich draws its live display, Ctrl-C is a SIGINT."""

    def __init__(self, argv: list[str], env: dict[str, str], columns: int = 120) -> None:
        self._master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                     env=env | {"COLUMNS": str(columns), "TERM": "xterm"}, start_new_session=True)
        os.close(slave)
        self.output = ""

    def read(self, timeout: float = 0.1) -> str:
        while select.select([self._master], [], [], timeout)[0]:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # the other side is closed
                break
            if not data:
                break
            self.output += data.decode(errors="replace")
            timeout = 0.05
        return self.output

    def wait_for(self, text: str, timeout: float) -> None:
        """Wait until `text` is on the screen (colours taken out, runs of spaces counted as one)."""
        deadline = time.monotonic() + timeout
        while text not in self.screen():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{text!r} not shown within {timeout:.0f} s:\n{self.read()}")

    def ctrl_c(self, timeout: float = 60) -> int:
        """Send SIGINT as Ctrl-C does (to the foreground process group) and wait for the exit code."""
        os.killpg(self.proc.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read()
        self.read()
        return self.proc.wait(timeout=1)

    def __enter__(self) -> "Terminal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self._master)

    def screen(self) -> str:
        self.read()
        return " ".join(" ".join(self.lines()).split())

    def lines(self) -> list[str]:
        """The text lines of the output, with the terminal control sequences taken out."""
        plain = re.sub(r"\x1b\[[0-9;]*m", "", self.output)  # colours
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", plain)  # cursor moves, line erases
        return [x.rstrip() for x in plain.replace("\r", "\n").split("\n") if x.strip()]


class Receiver(http.server.ThreadingHTTPServer):
    """An operator's alert endpoint on 127.0.0.1 (apprise's json:// posts to it): remembers every JSON body it
    accepted, and answers `status` (set it to 500 to play a channel that is down; those bodies are not kept)."""

    def __init__(self) -> None:
        self.notices: list[dict[str, Any]] = []
        self.refused = 0
        self.status = 200
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.status == 200:
                    receiver.notices.append({"path": self.path, **json.loads(body)})
                else:
                    receiver.refused += 1
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def titles(self) -> list[str]:
        return [n["title"] for n in self.notices]
