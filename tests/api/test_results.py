"""An order's results over the API: listed newest first, bodies downloaded, owners only."""

from datetime import UTC, datetime, timedelta

from core.settings import Settings
from core.storage import Result, open_store
from tests.helpers import ApiClient, interval_order


def test_list_and_download_results(api: ApiClient, api_settings: Settings) -> None:
    alice, bob = api.new_account(coins=10), api.new_account()
    order = api.post("/orders", json=interval_order(every=1, runs=5), headers=alice.headers).json()
    store = open_store(api_settings.resolved_store_url)
    try:
        now = datetime.now(UTC)
        store.claim_repetitions(order["id"], "run", now.replace(year=now.year + 1), now, 10**6)
        pages = {n: f"<p>page {n}</p>".encode() for n in (1, 2, 4, 5)}
        store.record_results([Result.with_body(body, 1 << 20, job_key=f"{order['id']}:{n}", order_id=order["id"],
                                               n=n, miner_id=bob.id, fetched_at=now, status=200,
                                               final_url="https://example.com/page",
                                               headers={"content-type": "text/html"}, stored_at=now)
                              for n, body in pages.items()])
    finally:
        store.close()
    first = api.get(f"/orders/{order['id']}/results", params={"limit": 3}, headers=alice.headers).json()
    assert [r["n"] for r in first["items"]] == [5, 4, 2]
    assert all(r["due_at"] is not None for r in first["items"]), "each result says when it was due"
    rest = api.get(f"/orders/{order['id']}/results", params={"limit": 3, "before": first["next_cursor"]},
                   headers=alice.headers).json()
    assert [r["n"] for r in rest["items"]] == [1] and rest["next_cursor"] is None
    r = api.get(f"/orders/{order['id']}/results/4/body", headers=alice.headers)
    assert r.status_code == 200 and r.content == b"<p>page 4</p>" and r.headers["content-type"].startswith("text/html")
    missing = api.get(f"/orders/{order['id']}/results/3/body", headers=alice.headers)
    assert missing.status_code == 404 and "no result yet" in missing.json()["detail"]
    for path in (f"/orders/{order['id']}/results", f"/orders/{order['id']}/results/4/body"):
        r = api.get(path, headers=bob.headers)
        assert r.status_code == 404 and r.json()["detail"] == "order not found"
    assert api.get(f"/orders/{order['id']}/results/0/body", headers=alice.headers).status_code == 422
    assert api.balance(bob) == 4, "the miner was paid once per result"


def test_a_result_says_whether_another_miner_checked_it(api: ApiClient, api_settings: Settings) -> None:
    alice, bob, carol = api.new_account(coins=10), api.new_account(), api.new_account()
    order = api.post("/orders", json=interval_order(every=1, runs=2), headers=alice.headers).json()
    store = open_store(api_settings.resolved_store_url)
    try:
        now = datetime.now(UTC)
        store.claim_repetitions(order["id"], "run", now.replace(year=now.year + 1), now, 10**6)
        store.record_results([Result.with_body(b"<p>page</p>", 1 << 20, job_key=f"{order['id']}:{n}",
                                               order_id=order["id"], n=n, miner_id=bob.id, fetched_at=now, status=200,
                                               final_url="https://example.com/page", stored_at=now,
                                               validation=validation, checked_by=checked_by)
                              for n, validation, checked_by in ((1, "validated", [carol.id]), (2, "unchecked", []))])
    finally:
        store.close()
    listed = {r["n"]: r for r in api.get(f"/orders/{order['id']}/results", headers=alice.headers).json()["items"]}
    assert (listed[1]["validation"], listed[2]["validation"]) == ("validated", "unchecked")
    assert api.balance(carol) == 1, "the checking miner's fee"


def test_a_deleted_body_is_gone_with_a_clear_message_and_its_result_still_listed(api: ApiClient,
                                                                              api_settings: Settings) -> None:
    alice, bob = api.new_account(coins=10), api.new_account()
    order = api.post("/orders", json=interval_order(every=1, runs=2), headers=alice.headers).json()
    store = open_store(api_settings.resolved_store_url)
    try:
        now = datetime.now(UTC)
        store.claim_repetitions(order["id"], "run", now.replace(year=now.year + 1), now, 10**6)
        store.record_results([Result.with_body(b"<p>page</p>", 1 << 20, job_key=f"{order['id']}:{n}",
                                               order_id=order["id"], n=n, miner_id=bob.id, fetched_at=now, status=200,
                                               final_url="https://example.com/page",
                                               headers={"content-type": "text/html"}, stored_at=now)
                              for n in (1, 2)])
        store.record_delivery("tok", order["id"], 0, 1, now - timedelta(days=30))  # 1 received long ago
        store.prune_result_bodies(now - timedelta(seconds=api_settings.result_body_retention_seconds), now)
    finally:
        store.close()
    gone = api.get(f"/orders/{order['id']}/results/1/body", headers=alice.headers)
    assert gone.status_code == 410
    assert gone.json()["detail"].startswith("the page of repetition 1 was deleted on ")
    assert "retention after delivery to your result client over" in gone.json()["detail"]
    kept = api.get(f"/orders/{order['id']}/results/2/body", headers=alice.headers)
    assert kept.status_code == 200 and kept.content == b"<p>page</p>", "not received yet: kept"
    listed = {r["n"]: r for r in api.get(f"/orders/{order['id']}/results", headers=alice.headers).json()["items"]}
    assert listed[1]["body_pruned_at"] is not None and listed[2]["body_pruned_at"] is None
    assert listed[1]["body_size"] == 11 and listed[1]["sha256"] == listed[2]["sha256"] and listed[1]["status"] == 200
    meta = api.get("/meta").json()
    assert meta["result_body_retention_seconds"] == api_settings.result_body_retention_seconds == 7 * 24 * 3600
