"""Exporting an order's results: JSON Lines, CSV and a ZIP of the pages, streamed, for a time range, the same
as the files the result client writes."""

import csv
import hashlib
import io
import json
import subprocess
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.settings import Settings
from core.storage import Result, open_store
from results.server.app import ResultServer
from results.watch.observer import observe_order
from tests.conftest import ThreadedServer
from tests.helpers import Account, ApiClient, interval_order
from tests.results.server.test_delivery import run_client
from tests.results.watch.test_observer import price_page

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """Export reads the store through its interface (covered on every backend); SQLite is enough here."""
    return f"sqlite:///{tmp_path / 'store.db'}"


def order_with_results(api: ApiClient, settings: Settings, account: Account) -> str:
    """8 results fetched a minute apart from T0; #4 failed; the price changes at #3 and #6."""
    order = api.post("/orders", json=interval_order(every=1, runs=8, extraction={"kind": "css", "selector": ".price"}),
                     headers=account.headers).json()
    store = open_store(settings.resolved_store_url)
    try:
        now = datetime.now(UTC)
        store.claim_repetitions(order["id"], "run", now + timedelta(days=1), now, 10**6)
        store.record_results([Result.with_body(
            b"" if n == 4 else price_page(n), 1 << 20, job_key=f"{order['id']}:{n}", order_id=order["id"], n=n,
            miner_id=account.id, fetched_at=T0 + timedelta(minutes=n), status=None if n == 4 else 200,
            error="timeout" if n == 4 else None, final_url="https://example.com/page",
            headers={} if n == 4 else {"content-type": "text/html"}, stored_at=now) for n in range(1, 9)])
        observe_order(store, order["id"])
    finally:
        store.close()
    return order["id"]


def test_jsonl_and_csv_hold_every_result_with_its_extracted_value(api: ApiClient, api_settings: Settings) -> None:
    alice = api.new_account(coins=10)
    order_id = order_with_results(api, api_settings, alice)
    r = api.get(f"/orders/{order_id}/export", headers=alice.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    assert r.headers["content-disposition"] == f'attachment; filename="{order_id}-results.jsonl"'
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert [(x["n"], x["extracted"], x["changed"]) for x in rows] == [
        (1, "10 coins", False), (2, "10 coins", False), (3, "12 coins", True), (4, None, None),
        (5, "12 coins", False), (6, "9 coins", True), (7, "9 coins", False), (8, "9 coins", False)]
    assert rows[3]["error"] == "timeout" and rows[0]["sha256"] == hashlib.sha256(price_page(1)).hexdigest()
    assert {x["validation"] for x in rows} == {"unchecked"}
    table = list(csv.DictReader(io.StringIO(api.get(f"/orders/{order_id}/export", params={"format": "csv"},
                                                    headers=alice.headers).text)))
    assert [row["n"] for row in table] == [str(x["n"]) for x in rows]
    assert table[2]["extracted"] == "12 coins" and json.loads(table[2]["headers"]) == {"content-type": "text/html"}
    assert table[2]["validation"] == "unchecked"
    window = {"since": (T0 + timedelta(minutes=3)).isoformat(), "until": (T0 + timedelta(minutes=6)).isoformat()}
    part = api.get(f"/orders/{order_id}/export", params=window, headers=alice.headers)
    assert [json.loads(line)["n"] for line in part.text.splitlines()] == [3, 4, 5]


def test_the_zip_holds_the_pages_the_result_client_writes(api: ApiClient, api_settings: Settings,
                                                          tmp_path: Path) -> None:
    alice = api.new_account(coins=10)
    order_id = order_with_results(api, api_settings, alice)
    r = api.get(f"/orders/{order_id}/export", params={"format": "zip"}, headers=alice.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    token = api.post("/tokens", json={"scopes": ["results"], "order_id": order_id}, headers=alice.headers).json()
    with ThreadedServer(ResultServer(api_settings).app) as server:
        done: subprocess.CompletedProcess[str] = run_client(server.url, token["token"], [order_id], tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    written = {p.name: p.read_bytes() for p in (tmp_path / "out" / order_id).iterdir()
               if not p.name.endswith(".meta.json")}
    assert {name: archive.read(name) for name in archive.namelist()} == written
    assert len([n for n in written if n.endswith(".html")]) == 7  # #4 failed: no page


def test_export_is_the_owners_and_says_what_is_wrong(api: ApiClient, api_settings: Settings) -> None:
    alice, bob = api.new_account(coins=10), api.new_account()
    order_id = order_with_results(api, api_settings, alice)
    r = api.get(f"/orders/{order_id}/export", headers=bob.headers)
    assert r.status_code == 404 and r.json()["detail"] == "order not found"
    r = api.get(f"/orders/{order_id}/export", params={"format": "xlsx"}, headers=alice.headers)
    assert r.status_code == 422 and "jsonl" in r.text
    r = api.get(f"/orders/{order_id}/export", params={"since": "2030-01-01T00:00:00"}, headers=alice.headers)
    assert r.status_code == 422 and "needs a timezone" in r.json()["detail"]
