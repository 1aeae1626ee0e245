"""The dashboard in a real browser: Debian's chromium driven by Playwright, `streamlit run` as a child
process (started with the same argv as in production), the real API behind it.

Screenshots of every page go to test-artifacts/dashboard/.
"""

import os
import shutil
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pyotp
import pytest

from core.settings import Settings
from core.storage import Store
from dashboard.launch import health_url, streamlit_argv
from dashboard.launch import url as dashboard_url
from tests.conftest import free_port
from tests.dashboard.conftest import deliver
from tests.helpers import PASSWORD, ApiClient, fresh_totp_step

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
WAIT_MS = 30_000
FIRST_PAGE_MS = 90_000  # a new server's first page: see warm_up

# A first page may take FIRST_PAGE_MS before a test's own steps. The machine-wide group: in three CI runs out of
# three, beside the chaos tests, a new Streamlit server's page stayed blank for 90 s (its HTML came, nothing
# rendered: test-artifacts/dashboard/first-page-timeout.png); alone, beside the tour and with both cores
# saturated it renders in 2-7 s. A later CI run saw the same in test_changes.py's browser test (a page with
# nothing in 30 s), the one browser test then outside this group. Until that is understood every real-browser
# test runs one after another with the chaos tests, as the tour does, not beside them.
pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("machine-wide-chaos")]


@pytest.fixture
def dashboard_server(api_url: str, tmp_path: Path, browser: object) -> Iterator[str]:
    """`streamlit run` as in production, answering its health check and past its first page (see warm_up)."""
    settings = Settings(api_url=api_url, host="127.0.0.1", dashboard_port=free_port())
    env = {**os.environ, "CRAWLCOIN_API_URL": api_url, "HOME": str(tmp_path)}
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(streamlit_argv(settings), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"the dashboard exited during start-up:\n{log.read_text(errors='replace')}")
            try:
                if httpx.get(health_url(settings), timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard did not answer within 60 s:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        warm_up(browser, dashboard_url(settings), log)
        yield dashboard_url(settings)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def warm_up(browser: object, url: str, log: Path) -> None:
    """Loads the sign-in page once before the test's first step, with more time than the test's own waits.

    A new Streamlit process runs the app cold on its first page (its imports, the page modules) and a new
    browser context fetches the front end uncached: 2-7 s here with the two cores saturated. A first page
    that does not come within FIRST_PAGE_MS fails with a screenshot and what the server logged (that is how
    the blank page of the module's comment was seen)."""
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    try:
        page.goto(url, timeout=FIRST_PAGE_MS)
        page.get_by_role("textbox", name="Username", exact=True).wait_for(timeout=FIRST_PAGE_MS)
    except Exception as e:  # Playwright's TimeoutError, or a page that never loaded
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "first-page-timeout.png"), full_page=True)
        pytest.fail(f"the dashboard's first page showed no sign-in form within {FIRST_PAGE_MS // 1000} s ({e}); "
                    f"screenshot in {ARTIFACTS}; the server's log:\n{log.read_text(errors='replace')}")
    finally:
        context.close()


def show_sign_in(page: Any) -> None:
    """Waits for the sign-in form of a page just opened, reloading it once (as a user would) if it does not come
    within WAIT_MS; says what the page showed each time it did not.

    A new browser context's page once showed no form within 30 s, right after the previous context's sign-in
    had been answered (beside the chaos tests: see the module's comment); what it showed is kept for next time."""
    form = page.get_by_role("textbox", name="Username", exact=True)
    for attempt in (1, 2):
        try:
            form.wait_for(timeout=WAIT_MS)
            return
        except Exception as e:  # Playwright's TimeoutError
            shown = page.locator("body").inner_text(timeout=5000)[:1000]
            note = f"no sign-in form after {WAIT_MS // 1000} s (attempt {attempt}); the page showed: {shown!r}"
            if attempt == 2:
                raise AssertionError(note) from e
            warnings.warn(note, stacklevel=2)
            page.reload()


def test_sign_up_sign_in_order_and_every_page(browser: object, dashboard_server: str, store: Store,
                                              api: ApiClient) -> None:
    from playwright.sync_api import Page, expect

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    context = browser.new_context(  # type: ignore[attr-defined]
        viewport={"width": 1360, "height": 1000}, timezone_id="UTC", accept_downloads=True)
    page: Page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)

    def shot(name: str) -> None:
        page.wait_for_timeout(1000)  # let charts and tables finish drawing
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def field(name: str):  # noqa: ANN202 - a Playwright locator
        return page.get_by_role("textbox", name=name, exact=True)

    def main_text(text: str):  # noqa: ANN202 - a Playwright locator
        return page.get_by_test_id("stMain").get_by_text(text, exact=False).first

    page.goto(dashboard_server)
    expect(main_text("Recurring web scraping")).to_be_visible()
    shot("1-sign-in")

    # Sign up and enrol the authenticator with the secret shown as text.
    username = f"eve-{uuid.uuid4().hex[:6]}"
    page.get_by_role("tab", name="Create account").click()
    field("Choose a username").fill(username)
    field("Choose a password").fill(PASSWORD)
    field("Repeat the password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(main_text("Set up two-factor sign-in")).to_be_visible()
    expect(page.get_by_test_id("stImage").locator("img")).to_be_visible()
    secret = page.get_by_test_id("stCode").first.inner_text().strip()
    totp = pyotp.TOTP(secret)
    shot("2-enrolment")
    fresh_totp_step(15)
    field("Two-factor code").fill(totp.at(time.time() - 30))
    page.get_by_role("button", name="Confirm and sign in").click()
    expect(main_text(f"Welcome, {username}!")).to_be_visible()

    # Sign out, then sign in with password and the current code.
    page.get_by_role("button", name="Sign out").click()
    expect(main_text("You are signed out.")).to_be_visible()
    field("Username").fill(username)
    field("Password").fill(PASSWORD)
    field("Two-factor code").fill(totp.now())
    page.get_by_role("button", name="Sign in").click()
    expect(main_text(f"Welcome back, {username}!")).to_be_visible()

    # Wallet: take test coins.
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Wallet").click()
    expect(page.get_by_role("heading", name="Wallet", exact=True)).to_be_visible()
    page.get_by_role("button", name="Get test coins").click()
    expect(main_text("100 coins added. Your balance is now 100 coins.")).to_be_visible()
    shot("3-wallet")

    # Orders: place one and see it listed with its cost.
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Orders").click()
    expect(page.get_by_role("heading", name="Orders", exact=True)).to_be_visible()
    field("Page URL").fill("https://example.com/prices")
    field("Page URL").press("Enter")
    repetitions = page.get_by_role("spinbutton", name="Repetitions", exact=True)
    repetitions.fill("15")
    repetitions.press("Enter")
    preview = page.locator(".st-key-cost_preview")
    expect(preview.get_by_text("15 coins", exact=True)).to_be_visible()
    expect(preview.get_by_text("85 coins", exact=True)).to_be_visible()
    shot("4-new-order")
    page.get_by_role("button", name="Place order").click()
    expect(main_text("Order placed: 15 repetitions of https://example.com/prices.")).to_be_visible()
    card = page.locator("[class*='st-key-order_']").first
    expect(card.get_by_text("https://example.com/prices")).to_be_visible()
    expect(card.get_by_text("15 coins", exact=True)).to_be_visible()
    expect(card.get_by_text("0 of 15")).to_be_visible()
    expect(card.get_by_text("Active")).to_be_visible()
    shot("5-orders")

    # Results: the result client command with a fresh results token.
    card.get_by_role("button", name="Results").click()
    expect(page.get_by_role("heading", name="Results", exact=True)).to_be_visible()
    page.get_by_role("button", name="Create a results token for this order").click()
    expect(main_text("the token is shown only this once")).to_be_visible()
    command = page.get_by_test_id("stCode").first.inner_text()
    assert command.startswith("crawlcoin results --server ") and "--order " in command
    assert "<TOKEN>" not in command
    shot("6-results")

    # Mining: a mining token and the command to run.
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Mining").click()
    expect(page.get_by_role("heading", name="Mining", exact=True)).to_be_visible()
    page.get_by_role("button", name="Create mining token").click()
    expect(main_text("Copy the command now")).to_be_visible()
    assert page.get_by_test_id("stCode").first.inner_text().startswith("crawlcoin mine --server ")
    shot("7-mining")

    # The wallet now shows the order's escrow hold in its history.
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Wallet").click()
    expect(page.get_by_test_id("stMetric").filter(has_text="Held for your orders")).to_contain_text("15 coins")
    shot("8-wallet-history")

    # Results arrive (recorded in the store as the result path does): the order's card shows the last status and
    # the delivery latency, the results page lists them, shows a page and downloads it.
    order_id = command.split("--order ")[1].split()[0]
    page_html = b"<!doctype html><html><body><h1>Prices</h1><p>Coffee 3.20</p></body></html>"
    deliver(store, order_id, api.new_account().id, {
        n: {"status": 200, "body": page_html, "headers": {"content-type": "text/html; charset=utf-8"},
            "latency": latency, "elapsed_ms": 180 + 20 * n} for n, latency in ((1, 1.2), (2, 0.8), (3, 2.4))})
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Orders").click()
    card = page.locator("[class*='st-key-order_']").first
    expect(card.get_by_test_id("stMetric").filter(has_text="Last result")).to_contain_text("200 OK")
    expect(card.get_by_test_id("stMetric").filter(has_text="Delivery latency p50")).to_contain_text("1.2 s")
    shot("9-orders-with-results")
    card.get_by_role("button", name="Results").click()
    expect(main_text("Repetitions #3 to #1, newest first")).to_be_visible()
    expect(page.locator(".st-key-result_body")).to_contain_text("Coffee 3.20")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download page #3").click()
    saved = Path(download.value.path())
    assert saved.read_bytes() == page_html and download.value.suggested_filename.endswith("-3.html")
    page.set_viewport_size({"width": 1360, "height": 2000})  # the whole page in one picture
    shot("10-results-with-pages")
    page.set_viewport_size({"width": 1360, "height": 1000})

    # Nothing on any page was a traceback.
    assert page.get_by_test_id("stException").count() == 0
    context.close()



def test_the_dashboard_refuses_to_be_framed(browser: object, dashboard_server: str) -> None:
    """Clickjacking: no other site may show the sign-in page in a frame and overlay it."""
    for path in ("/", "/sign-in", "/_stcore/health"):
        r = httpx.get(dashboard_server + path, timeout=10)
        assert r.status_code == 200, path
        assert r.headers.get("x-frame-options") == "DENY", path
        assert r.headers.get("content-security-policy") == "frame-ancestors 'none'", path
    page = browser.new_page()  # type: ignore[attr-defined]
    page.set_content(f'<iframe id="victim" src="{dashboard_server}" width="800" height="600"></iframe>')
    page.wait_for_timeout(3000)
    [frame] = [f for f in page.frames if f != page.main_frame]
    assert "Recurring web scraping" not in frame.content() and "stApp" not in frame.content()
    page.close()


class TestSignInLocksArePerBrowser:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"login_max_failures_per_client": 3, "login_max_failures_per_account": 50}

    def test_failed_sign_ins_in_one_browser_do_not_lock_out_another(
        self, browser: object, dashboard_server: str, api: ApiClient
    ) -> None:
        """The dashboard passes each browser's address on to the API (here: as a proxy in front of it would)."""
        from playwright.sync_api import expect

        expect.set_options(timeout=WAIT_MS)
        account = api.new_account()

        def sign_in(forwarded_for: str, username: str, code: str) -> object:
            context = browser.new_context(extra_http_headers={"X-Forwarded-For": forwarded_for})  # type: ignore
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(dashboard_server)
            show_sign_in(page)
            page.get_by_role("textbox", name="Username", exact=True).fill(username)
            page.get_by_role("textbox", name="Password", exact=True).fill(PASSWORD)
            page.get_by_role("textbox", name="Two-factor code", exact=True).fill(code)
            page.get_by_role("button", name="Sign in").click()
            return page

        for i in range(3):
            page = sign_in("203.0.113.7", f"ghost{i}", "000000")
            expect(page.get_by_text("Wrong username, password or two-factor code").first).to_be_visible()
            page.context.close()  # type: ignore[attr-defined]
        page = sign_in("203.0.113.7", "ghost-new", "000000")
        expect(page.get_by_text("Too many failed attempts").first).to_be_visible()
        page.context.close()  # type: ignore[attr-defined]

        page = sign_in("198.51.100.9", account.username, account.totp(1))
        expect(page.get_by_text(f"Welcome back, {account.username}!").first).to_be_visible()
        page.context.close()  # type: ignore[attr-defined]


def test_the_api_docs_render_without_internet(browser: object, api_url: str) -> None:
    """Swagger UI comes from the installed package: /docs works on a machine with no network."""
    page = browser.new_page()  # type: ignore[attr-defined]
    outside: list[str] = []

    def local_only(route: Any) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    page.goto(api_url + "/docs")
    page.wait_for_selector(".opblock-summary", timeout=WAIT_MS)
    assert page.locator(".opblock").count() >= 20
    assert "Log in with password and current TOTP code" in page.content()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"), full_page=True)
    assert outside == [], "nothing loaded from outside this machine"
    page.close()
