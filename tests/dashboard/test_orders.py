"""Orders page: the create form with its cost preview and the API's refusals; the list and its actions."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from streamlit.testing.v1 import AppTest

from core.storage import Store
from tests.dashboard.conftest import alerts, button, deliver, metric, texts, widget
from tests.helpers import ApiClient, interval_order


def fill(at: AppTest, url: str, runs: int) -> None:
    widget(at.text_input, "Page URL").input(url)
    widget(at.number_input, "Repetitions").set_value(runs)
    at.run()


def test_place_an_interval_order_with_cost_preview(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    account = api.new_account(coins=100)
    at = dashboard(account)
    assert any("No orders yet" in i for i in alerts(at, "info"))
    fill(at, "https://example.com/prices", 12)
    widget(at.number_input, "Every").set_value(5)
    widget(at.selectbox, "Unit").select("minutes")
    at.run()
    assert metric(at, "Cost") == "12 coins"
    assert metric(at, "Balance after") == "88 coins"
    assert "Runs every 5 minutes from now until about" in texts(at)

    button(at, "Place order").click()
    at.run()
    [done] = alerts(at, "success")
    assert done.startswith("Order placed: 12 repetitions of https://example.com/prices. 12 coins are held in escrow")
    assert "**https://example.com/prices**" in texts(at)
    assert metric(at, "Repetitions done") == "0 of 12"
    assert metric(at, "Repetitions left") == "12"
    assert [m.value for m in at.metric if m.label == "Cost"][-1] == "12 coins"
    assert "12 coins still in escrow" in texts(at)
    assert metric(at, "Balance") == "88 coins"
    assert widget(at.text_input, "Page URL").value == "", "the form starts afresh"

    [order] = api.get("/orders", headers=account.headers).json()["items"]
    assert order["schedule"] == {"kind": "interval", "every_seconds": 300}
    assert order["cost"] == 12 and order["method"] == "GET"


def test_post_with_headers_body_cron_and_start_time(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    account = api.new_account(coins=50)
    at = dashboard(account)
    fill(at, "https://example.com/api/search", 3)
    widget(at.radio, "Method").set_value("POST")
    at.run()
    widget(at.text_area, "Headers").input("Content-Type: application/json\nX-Client: dashboard")
    widget(at.text_area, "Body").input('{"q": "coins"}')
    widget(at.radio, "Repeat").set_value("On a cron schedule")
    at.run()
    widget(at.text_input, "Cron expression").input("30 9 * * 1-5")
    [cron_tz] = [s for s in at.selectbox if s.key == "new_cron_tz"]
    cron_tz.select("Europe/Berlin")
    widget(at.radio, "First run").set_value("At a date and time")
    at.run()
    start = (datetime.now(ZoneInfo("Europe/Berlin")) + timedelta(days=2)).replace(
        hour=8, minute=0, second=0, microsecond=0)
    widget(at.get("date_time_input") or at.datetime_input, "Date and time").set_value(start.replace(tzinfo=None))
    [start_tz] = [s for s in at.selectbox if s.key == "new_start_tz"]
    start_tz.select("Europe/Berlin")
    at.run()
    assert metric(at, "Cost") == "3 coins"
    button(at, "Place order").click()
    at.run()
    assert any(s.startswith("Order placed: 3 repetitions") for s in alerts(at, "success")), alerts(at, "error")

    [order] = api.get("/orders", headers=account.headers).json()["items"]
    assert order["method"] == "POST" and order["body"] == '{"q": "coins"}'
    assert order["headers"] == {"Content-Type": "application/json", "X-Client": "dashboard"}
    assert order["schedule"] == {"kind": "cron", "cron": "30 9 * * 1-5", "timezone": "Europe/Berlin"}
    assert datetime.fromisoformat(order["start_at"]) == start.astimezone(UTC)
    assert "cron `30 9 * * 1-5` (Europe/Berlin)" in texts(at)


@pytest.mark.parametrize(("url", "cron", "message"), [
    ("ftp://example.com/file", None, "URL scheme 'ftp' is not allowed; use http or https."),
    ("http://10.1.2.3/admin", None, "private"),
    ("https://example.com/", "61 * * * *", "ron field minute is 61: it must be between 0 and 59"),
])
def test_the_apis_refusals_are_shown_readably(
    dashboard: Callable[..., AppTest], api: ApiClient, url: str, cron: str | None, message: str
) -> None:
    account = api.new_account(coins=20)
    at = dashboard(account)
    fill(at, url, 2)
    if cron:
        widget(at.radio, "Repeat").set_value("On a cron schedule")
        at.run()
        widget(at.text_input, "Cron expression").input(cron)
        at.run()
    button(at, "Place order").click()
    at.run()
    [error] = alerts(at, "error")
    assert error.startswith("The order was not placed:") and message in error
    assert "Traceback" not in error and "{" not in error
    assert api.balance(account) == 20


def test_the_cron_form_previews_the_next_runs_or_names_the_wrong_field(
    dashboard: Callable[..., AppTest], api: ApiClient
) -> None:
    account = api.new_account(coins=20)
    at = dashboard(account)
    fill(at, "https://example.com/", 2)
    widget(at.radio, "Repeat").set_value("On a cron schedule")
    at.run()
    widget(at.text_input, "Cron expression").input("30 9 * * 1-5")
    at.run()
    [preview] = [c.value for c in at.caption if c.value.startswith("Next runs: ")]
    assert preview.count(",") == 4, preview
    assert not alerts(at, "warning")
    widget(at.text_input, "Cron expression").input("61 * * * *")
    at.run()
    assert alerts(at, "warning") == ["This cron expression will be refused: cron field minute is 61: it must be "
                                     "between 0 and 59"]
    assert not [c for c in at.caption if c.value.startswith("Next runs: ")]


def test_not_enough_coins_blocks_the_order(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    account = api.new_account(coins=5)
    at = dashboard(account)
    fill(at, "https://example.com/", 10)
    assert any("This order costs 10 coins but your balance is 5 coins." in w for w in alerts(at, "warning"))
    assert metric(at, "Balance after") == "not enough coins"
    assert button(at, "Place order").disabled


def test_bad_header_line_is_explained(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    account = api.new_account(coins=5)
    at = dashboard(account)
    fill(at, "https://example.com/", 1)
    widget(at.text_area, "Headers").input("Accept: text/html\nno colon here")
    button(at, "Place order").click()
    at.run()
    assert "Header line 2 needs the form `Name: value`." in alerts(at, "error")


def test_pause_resume_cancel_with_refund_and_prefect_link(
    dashboard: Callable[..., AppTest], api: ApiClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRAWLCOIN_PREFECT_UI_URL", "http://prefect.example:4200/")
    account = api.new_account(coins=30)
    r = api.post("/orders", json=interval_order(url="https://example.com/watch", runs=7), headers=account.headers)
    order_id = r.json()["id"]
    at = dashboard(account)
    assert "Scheduling is being set up…" in texts(at)
    store.set_deployment_id(order_id, "6b1f3c4e-0000-4000-8000-000000000001")
    at.run()
    [link] = at.get("link_button")
    assert link.proto.url == ("http://prefect.example:4200/deployments/deployment/"
                              "6b1f3c4e-0000-4000-8000-000000000001")

    button(at, "Pause").click()
    at.run()
    assert "Paused https://example.com/watch. No new repetitions start until you resume it." in alerts(at, "success")
    assert at.get("badge") or "Paused" in texts(at)
    assert metric(at, "Next run") == "—"
    assert api.get(f"/orders/{order_id}", headers=account.headers).json()["status"] == "paused"

    button(at, "Resume").click()
    at.run()
    assert any(s.startswith("Resumed https://example.com/watch. Next run") for s in alerts(at, "success"))

    button(at, "Cancel").click()
    at.run()
    assert any("Its 7 scheduled repetitions (not yet queued) are refunded (about 7 coins)" in w
               for w in alerts(at, "warning"))
    button(at, "Keep the order").click()
    at.run()
    assert api.get(f"/orders/{order_id}", headers=account.headers).json()["status"] == "active"

    button(at, "Cancel").click()
    at.run()
    button(at, "Yes, cancel and refund").click()
    at.run()
    assert "Cancelled https://example.com/watch. 7 coins refunded to your wallet." in alerts(at, "success")
    assert metric(at, "Balance") == "30 coins"
    assert "Pause" not in [b.label for b in at.button] and "Cancel" not in [b.label for b in at.button]


def test_results_button_opens_the_orders_results(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    account = api.new_account(coins=10)
    api.post("/orders", json=interval_order(url="https://example.com/one", runs=2), headers=account.headers)
    second = api.post("/orders", json=interval_order(url="https://example.com/two", runs=3),
                      headers=account.headers).json()
    at = dashboard(account)
    results = [b for b in at.button if b.label == "Results"]
    results[-1].click()  # the oldest order is listed last
    at.run()
    assert at.title[0].value == "Results"
    assert at.selectbox[0].value != second["id"]
    assert metric(at, "Repetitions left") == "2"


def test_cards_show_last_result_and_delivery_latency(
    dashboard: Callable[..., AppTest], api: ApiClient, store: Store
) -> None:
    account, miner = api.new_account(coins=30), api.new_account()
    busy = api.post("/orders", json=interval_order(url="https://example.com/busy", runs=12),
                    headers=account.headers).json()
    latencies = [0.4, 0.8, 1.5, 2.5, 3.0, 3.5, 4.0, 6.0, 9.0, 45.0]  # p50 3.0 s, p95 45 s (nearest rank)
    results = {n: {"status": 200, "body": b"ok", "latency": latency} for n, latency in enumerate(latencies, start=1)}
    results[11] = {"status": 503, "body": b"busy", "latency": 0.25}
    deliver(store, busy["id"], miner.id, results)
    api.post("/orders", json=interval_order(url="https://example.com/quiet", runs=3), headers=account.headers)

    at = dashboard(account)
    # Newest order first: the quiet one has no results yet.
    assert [m.value for m in at.metric if m.label == "Last result"] == ["—", "503 Service Unavailable"]
    assert [m.value for m in at.metric if m.label == "Delivery latency p50"] == ["—", "3.0 s"]
    assert [m.value for m in at.metric if m.label == "Delivery latency p95"] == ["—", "45 s"]
    assert [m.value for m in at.metric if m.label == "Failed"] == ["—", "1 of 11"]
    assert "No results yet" in texts(at)
    assert "median, over the newest 11 results" in texts(at)
    assert any(c.value.startswith("#11 · fetched ") for c in at.caption)
    assert not at.exception


def test_a_card_with_failed_results_names_the_cause(
    dashboard: Callable[..., AppTest], api: ApiClient, store: Store
) -> None:
    account, miner = api.new_account(coins=30), api.new_account()
    order = api.post("/orders", json=interval_order(url="https://example.com/local", runs=13),
                     headers=account.headers).json()
    results: dict[int, dict] = {n: {"status": None, "error": "refused_target", "error_text":
                                    "url host is not allowed: 127.0.0.1 is a loopback address"} for n in range(1, 11)}
    results.update({n: {"status": 200, "body": b"ok"} for n in (11, 12, 13)})
    deliver(store, order["id"], miner.id, results)
    at = dashboard(account)
    assert metric(at, "Failed") == "10 of 13"
    assert "10 × Target refused by policy (url host is not allowed: 127.0.0.1 is a loopback address)" in \
        [c.value for c in at.caption], [c.value for c in at.caption]


def test_a_late_order_says_so_on_its_card_and_in_the_api_until_it_is_on_time(
    dashboard: Callable[..., AppTest], api: ApiClient, store: Store
) -> None:
    account = api.new_account(coins=10)
    start = datetime.now(UTC) - timedelta(seconds=200)  # within the API's start_at grace
    order = api.post("/orders", json=interval_order(url="https://example.com/late", every=1, runs=10,
                                                    start_at=start.isoformat()), headers=account.headers).json()
    assert order["late"] is None
    now = datetime.now(UTC)
    store.claim_repetitions(order["id"], "run-late", now, now, 10**9)  # handed out, no miner takes them

    late = api.get(f"/orders/{order['id']}", headers=account.headers).json()["late"]
    assert late["overdue"] == 10 and late["late_after_seconds"] == 60
    assert abs(datetime.fromisoformat(late["oldest_due_at"]) - start) < timedelta(seconds=1)
    at = dashboard(account)
    [warning] = [w for w in alerts(at, "warning") if "late" in w]
    assert warning.startswith("Running late: 10 repetitions are not delivered 1 min after their due time (the "
                              "oldest has waited 3 min 2") and "operator is alerted" in warning, warning

    store.refund_repetitions(order["id"], list(range(1, 11)))  # settled (as a miner's error would): on time
    assert api.get(f"/orders/{order['id']}", headers=account.headers).json()["late"] is None
    at = dashboard(account)
    assert not [w for w in alerts(at, "warning") if "late" in w]
    assert not at.exception
