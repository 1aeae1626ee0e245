"""Results page: how far an order got, its results with status and timings, a page's body to read and
download, and the result client command with a fresh results token."""

import json
from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from core.storage import Store
from tests.dashboard.conftest import alerts, button, deliver, metric, texts, widget
from tests.helpers import ApiClient, interval_order

RESULTS = "views/results.py"


def test_without_orders(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    at = dashboard(api.new_account(), RESULTS)
    assert any("You have no orders yet" in i for i in alerts(at, "info"))


def test_the_files_described_are_the_ones_the_client_writes(dashboard: Callable[..., AppTest],
                                                            api: ApiClient) -> None:
    """`crawlcoin results` writes `<n>-<time>.html` and `<n>-<time>.meta.json` (tests/results/server)."""
    account = api.new_account(coins=10)
    api.post("/orders", json=interval_order(runs=2), headers=account.headers)
    at = dashboard(account, RESULTS)
    text = texts(at)
    assert "`<n>-<time>.html`" in text and "`<n>-<time>.meta.json`" in text
    assert ".body" not in text and "`<n>-<time>.json` with status" not in text


def test_progress_command_and_results_token(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    account = api.new_account(coins=10)
    order = api.post("/orders", json=interval_order(url="https://example.com/feed", runs=4),
                     headers=account.headers).json()
    at = dashboard(account, RESULTS)
    assert metric(at, "Status") == "Active"
    assert metric(at, "Repetitions done") == "0 of 4"
    assert metric(at, "Repetitions left") == "4"
    reps = at.dataframe[0].value
    assert list(reps["State"]) == ["Scheduled"]  # the API's word (was "Next"/"Waiting" by number)
    assert list(reps["Repetitions"]) == ["4"]
    assert any("No repetition has run yet, so there are no results" in i for i in alerts(at, "info"))
    assert not at.download_button
    placeholder = at.code[0].value
    assert placeholder == (f"crawlcoin results --server http://127.0.0.1:8603 --token '<TOKEN>' "
                           f"--order {order['id']} --out crawlcoin-results")

    widget(at.text_input, "Folder on your computer").input("/home/me/feed results")
    button(at, "Create a results token for this order").click()
    at.run()
    assert any("the token is shown only this once" in s for s in alerts(at, "success"))
    command = at.code[0].value
    [token] = [t for t in api.get("/tokens", headers=account.headers).json() if t["order_id"] == order["id"]]
    assert token["scopes"] == ["results"] and token["revoked_at"] is None
    secret = command.split(" --token ")[1].split(" ")[0]
    assert command == (f"crawlcoin results --server http://127.0.0.1:8603 --token {secret} "
                       f"--order {order['id']} --out '/home/me/feed results'")
    assert secret != "'<TOKEN>'"
    assert "Create a results token for this order" not in [b.label for b in at.button]

    button(at, "Revoke").click()
    at.run()
    assert any("revoked" in s for s in alerts(at, "success"))
    [token] = [t for t in api.get("/tokens", headers=account.headers).json() if t["order_id"] == order["id"]]
    assert token["revoked_at"] is not None
    assert "--token '<TOKEN>'" in at.code[0].value


def test_cancelled_order_shows_refunded_repetitions(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    account = api.new_account(coins=10)
    order = api.post("/orders", json=interval_order(runs=6), headers=account.headers).json()
    assert api.post(f"/orders/{order['id']}/cancel", headers=account.headers).status_code == 200
    at = dashboard(account, RESULTS)
    assert metric(at, "Status") == "Cancelled"
    assert list(at.dataframe[0].value["State"]) == ["Refunded"]
    assert list(at.dataframe[0].value["When"]) == ["order cancelled"]


def test_results_with_status_latency_body_and_download(
    dashboard: Callable[..., AppTest], api: ApiClient, store: Store, downloads: dict[str, tuple[bytes, str]]
) -> None:
    account, miner = api.new_account(coins=10), api.new_account()
    order = api.post("/orders", json=interval_order(url="https://example.com/prices", runs=5),
                     headers=account.headers).json()
    html = "<html><body><h1>Prices</h1><p>Kaffee 3,20 €</p></body></html>".encode()
    deliver(store, order["id"], miner.id, {
        1: {"status": 200, "body": html, "headers": {"content-type": "text/html; charset=utf-8"}, "latency": 2,
            "elapsed_ms": 120},
        2: {"status": 404, "body": b"not here", "headers": {"content-type": "text/plain"}, "latency": 4},
        3: {"error": "timeout", "error_text": "no answer within 30 s", "latency": 30, "elapsed_ms": 30000},
        4: {"status": 200, "body": json.dumps({"price": 3.2}).encode(), "headers": {"content-type": "application/json"},
            "latency": 1, "elapsed_ms": 340, "final_url": "https://example.com/prices?page=1"},
    })  # repetition 5 has started, its result has not arrived
    at = dashboard(account, RESULTS)
    # Repetition 5 is queued, its result not in: it is not done (this said "5 of 5" before).
    assert metric(at, "Repetitions done") == "4 of 5"
    states = dict(zip(at.dataframe[0].value["State"], at.dataframe[0].value["Repetitions"], strict=True))
    assert sum(int(states.get(s, "0")) for s in ("Delivered", "Refunded", "Failed")) == 4
    assert any(s.startswith("Queued") for s in states), states
    assert metric(at, "Last result") == "200 OK"
    assert metric(at, "Delivery latency p50") == "2.0 s"  # of 1, 2, 4 and 30 s
    assert metric(at, "Delivery latency p95") == "30 s"
    assert metric(at, "Failed") == "2 of 4"
    assert "median, over the newest 4 results" in texts(at)

    table = at.dataframe[1].value
    assert list(table["#"]) == [4, 3, 2, 1], "newest first"
    assert list(table["Status"]) == ["200 OK", "Timed out: no answer within 30 s", "404 Not Found", "200 OK"]
    assert list(table["Delivery latency"]) == ["1.0 s", "30 s", "4.0 s", "2.0 s"]
    assert list(table["Fetch time"]) == ["340 ms", "30 s", "0 ms", "120 ms"]
    assert list(table["Size"]) == ["14 B", "0 B", "8 B", f"{len(html)} B"]
    assert list(table["Truncated"]) == [False] * 4
    assert list(table["Checked"]) == ["unchecked"] * 4
    assert table["Final URL"][0] == "https://example.com/prices?page=1"
    assert "Repetitions #4 to #1, newest first (5 started so far)." in texts(at)
    assert button(at, "Newer").disabled and button(at, "Older").disabled

    # The newest page is shown, and offered for download.
    [download, export] = at.download_button
    assert download.label == "Download page #4 (14 B)" and export.label == "Download the export"
    short = order["id"].split("-")[0]
    assert downloads[f"{short}-4.json"] == (b'{"price": 3.2}', "application/json")
    assert at.code[0].value == '{"price": 3.2}' and at.code[0].language == "json"

    widget(at.selectbox, "Repetition").select(1)
    at.run()
    assert at.code[0].value == html.decode() and at.code[0].language == "html"
    assert at.download_button[0].label == f"Download page #1 ({len(html)} B)"
    assert downloads[f"{short}-1.html"] == (html, "text/html")

    widget(at.selectbox, "Repetition").select(3)
    at.run()
    assert "Repetition #3 has no page: timed out (no answer within 30 s)." in alerts(at, "warning")
    assert [b.label for b in at.download_button] == ["Download the export"]

    widget(at.selectbox, "Repetition").select(2)
    at.run()
    assert at.code[0].value == "not here" and at.download_button[0].label == "Download page #2 (8 B)"
    assert not at.exception


def test_paging_long_truncated_and_binary_pages(
    dashboard: Callable[..., AppTest], api: ApiClient, store: Store, downloads: dict[str, tuple[bytes, str]]
) -> None:
    account, miner = api.new_account(coins=30), api.new_account()
    order = api.post("/orders", json=interval_order(runs=25), headers=account.headers).json()
    long_page = ("".join(f"line {i}: {'x' * 60}\n" for i in range(2000))).encode()  # about 140 KB
    binary = bytes(range(256)) * 8
    results: dict[int, dict] = {n: {"status": 200, "body": f"page {n}".encode(),
                                    "headers": {"content-type": "text/plain"}} for n in range(1, 24)}
    results[24] = {"status": 200, "body": binary, "headers": {"content-type": "application/octet-stream"}}
    results[25] = {"status": 200, "body": long_page, "cap": 100 * 1024, "headers": {"content-type": "text/plain"}}
    deliver(store, order["id"], miner.id, results)

    at = dashboard(account, RESULTS)
    table = at.dataframe[1].value
    assert list(table["#"]) == list(range(25, 5, -1))
    assert list(table["Truncated"][:2]) == [True, False]
    assert list(table["Size"][:2]) == ["100.0 KB", "2.0 KB"]
    assert "The page was longer than the body limit; the first 100.0 KB were kept." in texts(at)
    assert "Showing the first 64.0 KB of 100.0 KB (text/plain); download the page for all of it." in texts(at)
    shown = at.code[0].value
    assert shown.startswith("line 0: xxx") and len(shown.encode()) == 64 * 1024
    assert at.download_button[0].label == "Download page #25 (100.0 KB)"
    short = order["id"].split("-")[0]
    assert downloads[f"{short}-25.txt"] == (long_page[:100 * 1024], "text/plain")

    widget(at.selectbox, "Repetition").select(24)
    at.run()
    assert "This page is not text (application/octet-stream, 2.0 KB). Download it to open it." in alerts(at, "info")
    assert downloads[f"{short}-24.bin"] == (binary, "application/octet-stream")

    assert button(at, "Newer").disabled
    button(at, "Older").click()
    at.run()
    assert list(at.dataframe[1].value["#"]) == [5, 4, 3, 2, 1]
    assert "Repetitions #5 to #1, newest first (25 started so far)." in texts(at)
    assert button(at, "Older").disabled
    assert at.code[0].value == "page 5", "the newest repetition of the page is shown"
    button(at, "Newer").click()
    at.run()
    assert list(at.dataframe[1].value["#"])[0] == 25
    assert not at.exception


def test_a_deleted_page_is_explained_and_the_retention_shown(dashboard: Callable[..., AppTest], api: ApiClient,
                                                             store: Store) -> None:
    from datetime import UTC, datetime, timedelta

    account, miner = api.new_account(coins=10), api.new_account()
    order = api.post("/orders", json=interval_order(runs=2), headers=account.headers).json()
    page = {"status": 200, "body": b"<p>page</p>", "headers": {"content-type": "text/html"}}
    deliver(store, order["id"], miner.id, {1: page, 2: page})
    now = datetime.now(UTC)
    store.record_delivery("tok", order["id"], 0, 1, now - timedelta(days=30))  # 1 received a month ago
    assert store.prune_result_bodies(now - timedelta(days=7), now).bodies == 1
    at = dashboard(account, RESULTS)
    assert list(at.dataframe[1].value["Size"]) == ["11 B", "11 B (page deleted)"]
    assert "Pages are kept here for 7 days after the result client receives them" in texts(at)
    widget(at.selectbox, "Repetition").select(1)
    at.run()
    assert any(i.startswith("The page of repetition #1 was deleted on ") for i in alerts(at, "info"))
    assert [b.label for b in at.download_button] == ["Download the export"] and not at.exception, "no page to download"
