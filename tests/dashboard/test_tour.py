"""The README's "Two-minute tour", step by step, as a newcomer takes it: a real `crawlcoin up --demo` on a
private data directory and free ports, the dashboard in a real Chromium, and the commands the dashboard gives
run as real `crawlcoin mine` and `crawlcoin results` processes.

At each step the order card's numbers are compared with the files the result clients wrote. Screenshots go to
test-artifacts/tour/.
"""

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pyotp
import pytest

from tests.conftest import free_port
from tests.helpers import PASSWORD, fresh_totp_step, interrupt
from tests.test_cli_up import ConsoleLines, start_up, stop, wait_for_table

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ARTIFACTS = ROOT / "test-artifacts" / "tour"
BIN = Path(sys.executable).parent
WAIT_MS = 30_000
AFTER_DEMO = 60  # how long after the demo order ended the stack is checked to be still up

# Its browser waits are bounded in seconds (WAIT_MS): never beside the HA topology's containers (the dashboard's
# first page once took over 30 s there).
pytestmark = [pytest.mark.timeout(600), pytest.mark.xdist_group("machine-wide-chaos")]


def tour_text() -> str:
    """The tour's words, each run of white space as one space."""
    text = README.read_text()
    return " ".join(text[text.index("## Two-minute tour"):text.index("`bench/e2e.py` runs")].split())


def table_url(table: str, service: str) -> str:
    match = re.search(rf"│ {re.escape(service)}\s+│ (\S+)", table)
    assert match, f"no {service!r} row in:\n{table}"
    return match.group(1)


def on_disk(folder: Path) -> tuple[int, int, int]:
    """(pages, .meta.json files, highest repetition number) the result client has written into `folder`."""
    pages = [p for p in folder.glob("*") if p.is_file() and not p.name.endswith(".meta.json")
             and not p.name.startswith(".")]
    metas = list(folder.glob("*.meta.json"))
    return len(pages), len(metas), max((int(p.name.split("-")[0]) for p in pages), default=0)


CARD_JS = """card => {
    const seen = {captions: "", text: card.innerText};
    for (const metric of card.querySelectorAll('[data-testid="stMetric"]')) {
        const label = metric.querySelector('[data-testid="stMetricLabel"]');
        const value = metric.querySelector('[data-testid="stMetricValue"]');
        if (label && value) seen[label.innerText.trim()] = value.innerText.trim();
    }
    for (const caption of card.querySelectorAll('[data-testid="stCaptionContainer"]'))
        seen.captions += caption.innerText.trim() + "\\n";
    return seen;
}"""


class Dashboard:
    """One browser session of the dashboard (one person)."""

    def __init__(self, browser: object, url: str, name: str) -> None:
        from playwright.sync_api import expect

        self.context = browser.new_context(  # type: ignore[attr-defined]
            viewport={"width": 1360, "height": 1000}, timezone_id="UTC")
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)
        self.name = name
        self.page.goto(url)
        self.see("Recurring web scraping")

    def field(self, name: str):  # noqa: ANN201 - a Playwright locator
        return self.page.get_by_role("textbox", name=name, exact=True)

    def see(self, text: str) -> None:
        from playwright.sync_api import expect

        expect(self.page.get_by_test_id("stMain").get_by_text(text, exact=False).first).to_be_visible()

    def go(self, page_name: str) -> None:
        from playwright.sync_api import expect

        self.page.get_by_test_id("stSidebarNav").get_by_role("link", name=page_name).click()
        # Going to the page already shown reruns it: until the run ends, Streamlit shows the stale
        # heading next to the new one.
        expect(self.page.get_by_role("heading", name=page_name, exact=True).first).to_be_visible()
        self.settle()
        expect(self.page.get_by_role("heading", name=page_name, exact=True)).to_have_count(1)

    def settle(self) -> None:
        """Wait until the script run has finished (Streamlit shows its status widget while running)."""
        self.page.wait_for_timeout(300)
        self.page.get_by_test_id("stStatusWidget").wait_for(state="hidden")

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.wait_for_timeout(500)
        self.page.screenshot(path=str(ARTIFACTS / f"{self.name}-{name}.png"), full_page=True)

    def code(self, starting: str) -> str:
        """A command shown on the page, as the copy button would copy it."""
        blocks = [b.inner_text().strip() for b in self.page.get_by_test_id("stCode").all()]
        commands = [b for b in blocks if b.startswith(starting)]
        assert commands, f"no command starting with {starting!r} among {blocks}"
        return " ".join(commands[0].split())

    def card(self, order_id: str) -> dict[str, str]:
        """What the order's card says, read at one instant: each metric's value, the captions, the status badge."""
        seen = self.page.locator(f".st-key-order_{order_id}").evaluate(CARD_JS)
        status = [line for line in seen.pop("text").splitlines()
                  if line.strip() in ("Active", "Paused", "Completed", "Cancelled")]
        return {**seen, "status": status[0].strip() if status else "?"}

    def card_matches_disk(self, order_id: str, folder: Path, runs: int, at_least: int = 0, status: str | None = None,
                          timeout: float = 60) -> dict[str, str]:
        """Reload the Orders page until its card and the files on disk agree, with `at_least` results in (and the
        order in `status`: an order is completed a moment after its last repetition is settled)."""
        deadline = time.monotonic() + timeout
        while True:
            self.go("Orders")
            card = self.card(order_id)
            pages, metas, newest = on_disk(folder)
            done = int(card["Repetitions done"].split(" of ")[0])
            expected_last = f"#{newest:,} · fetched" if newest else "No results yet"
            if (done >= at_least and card["status"] == (status or card["status"])
                    and card["Repetitions done"] == f"{pages:,} of {runs:,}" and metas == pages
                    and card["Repetitions left"] == f"{runs - pages:,}" and expected_last in card["captions"]
                    and (not pages or (card["Failed"] == f"0 of {pages:,}" and card["Last result"] == "200 OK"))
                    and (f"{pages:,} delivered" in card["captions"] or not pages)):
                return card
            if time.monotonic() > deadline:
                raise AssertionError(f"the card of order {order_id} says {card}, the disk has {pages} pages and "
                                     f"{metas} .meta.json files (newest #{newest}) in {folder}")
            time.sleep(1)

    def close(self) -> None:
        assert self.page.get_by_test_id("stException").count() == 0, "a traceback on a page"
        self.context.close()


def test_the_two_minute_tour(browser: object, tmp_path: Path) -> None:
    tour = tour_text()
    data = tmp_path / "data"
    api_port = free_port()
    up = start_up(data, api_port, free_port(), "--demo")
    miner = client = None
    try:
        # 1. `crawlcoin up --demo`: the stack, a demo page, a demo customer with an order (every 5 s × 12), a
        # local miner and a result client; the demo account's password and TOTP secret; where files arrive.
        assert "`crawlcoin up --demo`" in tour and "(every 5 s × 12)" in tour
        table = wait_for_table(up)
        console = ConsoleLines(up)
        urls = {s: table_url(table, s) for s in ("api", "mining server", "result server", "dashboard", "demo page",
                                                 "prefect server")}
        assert "earning for 'local-miner'" in table and f"writing into {data / 'demo-results'}" in table
        demo = console.wait_for(r"^Demo: order (\S+) fetches the demo page every 5 s, 12 times, .* Watch the files "
                                r"arrive in (\S+)\.$", 10)
        demo_order, demo_out = demo.group(1), Path(demo.group(2))
        assert demo_out == data / "demo-results" and "where the files arrive" in tour
        account = console.wait_for(r"^Sign in to the dashboard as (\S+) with password (\S+) and TOTP secret "
                                   r"([A-Z2-7]+) ", 10)
        demo_user, demo_password, demo_secret = account.groups()
        demo_folder = demo_out / demo_order
        assert "The result client ends when the demo order is done; the rest of the stack keeps running" in \
            tour

        # The demo customer signs in and watches the demo order: its card agrees with the files on disk.
        assert "Dashboard** `http://127.0.0.1:8602`" in tour
        demo_view = Dashboard(browser, urls["dashboard"], "demo")
        demo_view.field("Username").fill(demo_user)
        demo_view.field("Password").fill(demo_password)
        demo_view.field("Two-factor code").fill(pyotp.TOTP(demo_secret).now())
        demo_view.page.get_by_role("button", name="Sign in").click()
        demo_view.see(f"Welcome back, {demo_user}!")
        demo_view.go("Orders")
        demo_view.see(urls["demo page"])
        card = demo_view.card_matches_disk(demo_order, demo_folder, 12, at_least=1)
        assert card["Cost"] == "12 coins" and card["status"] in ("Active", "Completed"), card
        demo_view.shot("1-demo-order")

        # 2. A newcomer signs up (the secret of the QR code, shown as text too, goes into an authenticator) …
        assert "sign up (scan the QR code into any authenticator app)" in tour
        me = Dashboard(browser, urls["dashboard"], "newcomer")
        username = f"newcomer-{uuid.uuid4().hex[:6]}"
        me.page.get_by_role("tab", name="Create account").click()
        me.field("Choose a username").fill(username)
        me.field("Choose a password").fill(PASSWORD)
        me.field("Repeat the password").fill(PASSWORD)
        me.page.get_by_role("button", name="Create account").click()
        me.see("Set up two-factor sign-in")
        me.page.get_by_test_id("stImage").locator("img").wait_for()
        totp = pyotp.TOTP(me.page.get_by_test_id("stCode").first.inner_text().strip())
        fresh_totp_step(15)
        me.field("Two-factor code").fill(totp.at(time.time() - 30))
        me.page.get_by_role("button", name="Confirm and sign in").click()
        me.see(f"Welcome, {username}!")

        # … takes test coins in Wallet …
        assert "take test coins in *Wallet*" in tour
        me.go("Wallet")
        me.page.get_by_role("button", name="Get test coins").click()
        me.see("100 coins added. Your balance is now 100 coins.")

        # … places an order in Orders (the demo page, every 3 s × 12) …
        assert "place an order in *Orders*" in tour
        me.go("Orders")
        me.field("Page URL").fill(urls["demo page"])
        me.field("Page URL").press("Enter")
        every = me.page.get_by_role("spinbutton", name="Every", exact=True)
        every.fill("3")
        every.press("Enter")
        me.page.get_by_test_id("stSelectbox").filter(has_text="Unit").click()
        me.page.get_by_role("option", name="seconds", exact=True).click()
        runs = me.page.get_by_role("spinbutton", name="Repetitions", exact=True)
        runs.fill("12")
        runs.press("Enter")
        me.settle()
        me.see("Runs every 3 seconds from now")
        me.page.get_by_role("button", name="Place order").click()
        me.see(f"Order placed: 12 repetitions of {urls['demo page']}.")
        order_id = me.page.locator("[class*='st-key-order_']").first.get_attribute("class") or ""
        order_id = re.search(r"st-key-order_([0-9a-f-]{36})", order_id).group(1)  # type: ignore[union-attr]
        me.shot("2-order-placed")

        # … and Mining gives the exact `crawlcoin mine …` command with a token: run as it is copied.
        assert "*Mining* gives you the exact `crawlcoin mine …` command with a token" in tour
        me.go("Mining")
        me.page.get_by_role("button", name="Create mining token").click()
        me.see("Copy the command now")
        mine_command = me.code("crawlcoin mine ")
        assert f"--server {urls['mining server']} --token cc_" in mine_command, mine_command
        assert "--allow-private-targets" in mine_command, "the demo page is on this machine"
        me.shot("3-mining-command")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CRAWLCOIN_", "PREFECT_"))}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `crawlcoin` as installed by the README
        workdir = tmp_path / "newcomer"
        workdir.mkdir()
        miner_log, client_log = tmp_path / "mine.log", tmp_path / "results.log"
        with open(miner_log, "w") as log:
            miner = subprocess.Popen(shlex.split(mine_command), cwd=workdir, env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while f"mining as {username}" not in miner_log.read_text():
            assert miner.poll() is None and time.monotonic() < deadline, miner_log.read_text()
            time.sleep(0.5)

        # 5. The result client, its command from the order's Results page, writes the newcomer's files.
        me.go("Orders")
        me.page.locator(f".st-key-order_{order_id}").get_by_role("button", name="Results").click()
        me.page.get_by_role("button", name="Create a results token for this order").click()
        me.see("the token is shown only this once")
        results_command = me.code("crawlcoin results ")
        assert re.fullmatch(rf"crawlcoin results --server {re.escape(urls['result server'])} --token cc_\S+ "
                            rf"--order {order_id} --out \S+", results_command), results_command
        assert "`crawlcoin results --server http://127.0.0.1:8603 --token cc_… --order ID --out results/`" in tour
        with open(client_log, "w") as log:
            client = subprocess.Popen(shlex.split(results_command), cwd=workdir, env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
        folder = workdir / results_command.split("--out ")[1] / order_id

        # Watch its repetitions, results and delivery latency: the card agrees with the files at each step.
        me.card_matches_disk(order_id, folder, 12, at_least=1)
        me.shot("4-order-running")
        card = me.card_matches_disk(order_id, folder, 12, at_least=12, status="Completed")
        assert card["Delivery latency p50"].endswith(("ms", "s")), card
        me.shot("5-order-done")

        # 4. The mining client earned coins on the demo page — and, next to the demo's own miner (another
        # account), fees for checking its pages. Stopped, it says what it was paid; the dashboard agrees, counting
        # also what it held for a check when it stopped, once decided.
        interrupt([miner])
        out = miner_log.read_text()
        summary = re.search(r"stopped: paid (\d+), (?:held (\d+) [^,]*, )?", out)
        assert miner.returncode == 0 and summary, out
        paid, held = int(summary.group(1)), int(summary.group(2) or 0)
        assert paid >= 1, f"the miner the newcomer started earned nothing: {out}"
        deadline = time.monotonic() + 60
        while True:
            me.go("Mining")
            earned = me.page.get_by_test_id("stMetric").filter(has_text="Earned in total")
            earned.get_by_test_id("stMetricValue").wait_for()
            coins = int(earned.get_by_test_id("stMetricValue").inner_text().split()[0])
            if paid <= coins <= paid + held or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert paid <= coins <= paid + held, (coins, out)
        me.shot("6-earnings")
        assert "earns one coin per delivered page" in tour
        interrupt([client])
        assert client.returncode == 0 and "Traceback" not in client_log.read_text()
        me.close()

        # The demo order is done: 12 files, its card says so, and the result client ended on its own.
        demo_view.card_matches_disk(demo_order, demo_folder, 12, at_least=12, status="Completed")
        demo_view.shot("7-demo-done")
        console.wait_for(r"^result client finished its work \(exit code 0\); the rest keeps running$", 30)
        demo_done = time.monotonic()

        # 3. Prefect: each order's dispatch run says what it queued.
        assert "each run says what it queued (`queued #1–#10`)" in tour
        secret = json.loads((data / "secrets.json").read_text())["prefect_auth_string"]
        auth = {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}
        runs_seen = httpx.post(f"{urls['prefect server']}/api/flow_runs/filter", headers=auth, timeout=30,
                               json={"sort": "EXPECTED_START_TIME_ASC"}).json()
        messages = {o: [r["state"]["message"] or "" for r in runs_seen if r["parameters"].get("order_id") == o]
                    for o in (demo_order, order_id)}
        # A short order is claimed whole when it is activated: its deployment's first run records that.
        assert any(m.startswith("queued #1–#12; order active") for m in messages[demo_order]), messages
        assert any(m.startswith("queued #1–#12; order active") for m in messages[order_id]), messages

        # The rest of the stack keeps running, well after the demo order ended.
        while time.monotonic() < demo_done + AFTER_DEMO:
            assert up.poll() is None, "crawlcoin up stopped:\n" + "\n".join(console.lines)
            time.sleep(2)
        with httpx.Client(timeout=10) as http:
            assert http.get(f"http://127.0.0.1:{api_port}/health").json() == {"status": "ok", "store": "ok",
                                                                             "valkey": "ok"}
            for service in ("mining server", "result server"):
                assert http.get(f"{urls[service]}/health").status_code == 200, service
            assert http.get(f"{urls['prefect server']}/api/health", headers=auth).status_code == 200
        demo_view.go("Wallet")
        demo_view.go("Orders")
        demo_view.see(urls["demo page"])
        demo_view.close()
        assert up.poll() is None
        said = "\n".join(console.lines)
        assert not re.search(r"died|unexpectedly|error|Traceback", said), said
    finally:
        interrupt([miner, client])  # already stopped unless a step failed
        code = stop(up)
    assert code == 0
    time.sleep(0.5)  # the last lines
    said = "\n".join(console.lines)
    assert said.splitlines()[-1] == "stopping…" and "Traceback" not in said and "Failed" not in said, said
