"""Watching part of a page from the dashboard: the order form's extraction, the timeline of changes and
each change side by side (in-process with AppTest, and in a real browser)."""

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.storage import Store
from dashboard.changes import side_by_side
from dashboard.client import Api, new_http
from results.watch.observer import observe_order
from tests.dashboard.conftest import button, deliver, texts, widget
from tests.dashboard.test_browser import ARTIFACTS, WAIT_MS, dashboard_server, show_sign_in  # noqa: F401 - a fixture
from tests.helpers import Account, ApiClient, interval_order
from tests.results.watch.test_observer import price_page

RESULTS = "views/results.py"


def watched_order(api: ApiClient, store: Store, account: Account) -> dict:
    """A page whose price changes at repetitions 3 and 6, watched through `.price`, observed as the watcher does."""
    order = api.post("/orders", json=interval_order(every=1, runs=8, extraction={"kind": "css", "selector": ".price"}),
                     headers=account.headers).json()
    deliver(store, order["id"], account.id, {n: {"body": price_page(n), "status": 200,
                                                 "headers": {"content-type": "text/html"}} for n in range(1, 9)})
    observe_order(store, order["id"])
    return order


def side_by_side_shown(at: AppTest) -> tuple[str, ...]:
    """The side-by-side table's headings and changed cells, as the HTML the page holds."""
    [table] = [h.proto.body for h in at.get("html")]
    cells = re.findall(r"<t[hd] style='[^']*'>([^<]*)</t[hd]>", table)
    return (cells[1], cells[3], *(c for c in cells[4:] if c.startswith(("−", "+"))))


def test_a_unified_diff_side_by_side() -> None:
    frame = side_by_side("--- repetition 2\n+++ repetition 3\n@@ -1,3 +1,3 @@\n Widget\n-10 coins\n+12 coins\n"
                         " in stock\n@@ -9 +9,2 @@\n-old\n+new\n+added")
    assert frame.values.tolist() == [["1", "  Widget", "1", "  Widget"], ["2", "− 10 coins", "2", "+ 12 coins"],
                                     ["3", "  in stock", "3", "  in stock"], ["…", "", "…", ""],
                                     ["9", "− old", "9", "+ new"], ["", "", "10", "+ added"]]


def test_the_results_page_shows_the_two_changes_side_by_side(dashboard: Callable[..., AppTest], api: ApiClient,
                                                              store: Store) -> None:
    account = api.new_account(coins=10)
    watched_order(api, store, account)
    at = dashboard(account, RESULTS)
    assert "2 change(s) of the CSS `.price`" in texts(at)
    timeline = next(d.value for d in at.dataframe if "Compared with" in d.value.columns)
    assert timeline.values.tolist()[0][:2] == ["#6", "#5"] and timeline.values.tolist()[1][:2] == ["#3", "#2"]
    assert list(timeline["Now"]) == ["9 coins", "12 coins"]
    assert side_by_side_shown(at) == ("#5 (before)", "#6 (after)", "− 12 coins", "+ 9 coins")
    widget(at.selectbox, "Change").set_value(3).run()
    assert side_by_side_shown(at) == ("#2 (before)", "#3 (after)", "− 10 coins", "+ 12 coins")
    assert any(c.value.endswith("-10 coins\n+12 coins") for c in at.code)


def test_an_order_placed_with_a_selector_watches_it(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    account = api.new_account(coins=10)
    at = dashboard(account, "views/orders.py")
    widget(at.text_input, "Page URL").input("https://example.com/prices")
    widget(at.radio, "Compare and keep").set_value("A CSS selector").run()
    widget(at.text_input, "Selector").input("h1[[")
    button(at, "Place order").click().run()
    assert any("CSS selector is not valid" in e.value for e in at.error), texts(at)
    widget(at.text_input, "Selector").input("#price::text")
    button(at, "Place order").click().run()
    [order] = api.get("/orders", headers=account.headers).json()["items"]
    assert order["extraction"] == {"kind": "css", "selector": "#price::text"}
    assert "watching CSS `#price::text`" in texts(at)


@pytest.mark.xdist_group("machine-wide-chaos")  # as test_browser.py's tests, for the same reason (see there)
def test_the_changes_in_a_real_browser(browser: object, dashboard_server: str, api: ApiClient,  # noqa: F811
                                       store: Store) -> None:
    from playwright.sync_api import Page, expect

    account = api.new_account(coins=10)
    watched_order(api, store, account)
    context = browser.new_context(viewport={"width": 1360, "height": 1400},  # type: ignore[attr-defined]
                                  timezone_id="UTC", accept_downloads=True)
    page: Page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    page.goto(dashboard_server)
    show_sign_in(page)
    main = page.get_by_test_id("stMain")
    expect(main.get_by_text("Recurring web scraping", exact=False).first).to_be_visible()
    time.sleep(30.5 - time.time() % 30)  # the account's login used this step's code: a code is accepted once
    for name, value in (("Username", account.username), ("Password", account.password),
                        ("Two-factor code", account.totp())):
        page.get_by_role("textbox", name=name, exact=True).fill(value)
    page.get_by_role("button", name="Sign in").click()
    expect(main.get_by_text(f"Welcome back, {account.username}!", exact=False)).to_be_visible()
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Results").click()
    expect(main.get_by_text("2 change(s) of the CSS", exact=False)).to_be_visible()
    side = page.locator(".st-key-change_side_by_side")
    expect(side.get_by_text("#5 (before)")).to_be_visible()
    expect(side.get_by_role("cell", name="− 12 coins")).to_be_visible()
    expect(side.get_by_role("cell", name="+ 9 coins")).to_be_visible()
    Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)
    side.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(Path(ARTIFACTS) / "changes.png"), full_page=True)
    with page.expect_download() as download:  # the export, fetched from the API when the button is clicked
        page.get_by_role("button", name="Download the export").click()
    rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert [r["n"] for r in rows] == list(range(1, 9)) and [r["changed"] for r in rows].count(True) == 2
    assert download.value.suggested_filename.endswith("-results.jsonl")
    context.close()


def test_the_results_page_offers_the_export(dashboard: Callable[..., AppTest], api: ApiClient, api_url: str,
                                           store: Store) -> None:
    account = api.new_account(coins=10)
    order = watched_order(api, store, account)
    at = dashboard(account, RESULTS)
    assert [b.label for b in at.get("download_button") if "export" in b.proto.label] == ["Download the export"]
    assert widget(at.selectbox, "Format").options == ["JSON Lines (metadata and extracted values)",
                                                     "CSV (metadata and extracted values)", "ZIP of the pages"]
    client = Api(new_http(api_url), account.headers["Authorization"].removeprefix("Bearer "))
    rows = client.export(order["id"], "jsonl").decode().splitlines()
    assert [json.loads(r)["extracted"] for r in rows] == ["10 coins"] * 2 + ["12 coins"] * 3 + ["9 coins"] * 3
