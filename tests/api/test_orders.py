"""Orders through the HTTP API: escrow, idempotency, steering, concurrency."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx

from tests.helpers import ApiClient, interval_order


def escrow(api: ApiClient, headers: dict[str, str], order_id: str) -> int:
    return api.get(f"/orders/{order_id}", headers=headers).json()["escrow_balance"]


def test_order_holds_its_cost_in_escrow(api: ApiClient) -> None:
    alice = api.new_account(coins=20)
    start = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    r = api.post("/orders", json=interval_order(runs=7, start_at=start), headers=alice.headers)
    assert r.status_code == 201, r.text
    order = r.json()
    assert order["cost"] == 7 and order["escrow_balance"] == 7 and order["status"] == "active"
    assert order["runs_left"] == 7 and order["url"] == "https://example.com/page"
    assert api.balance(alice) == 13
    ledger = api.get("/wallet/ledger", headers=alice.headers).json()["items"]
    assert [(e["kind"], e["delta"], e["balance_after"]) for e in ledger] == [("hold", -7, 13), ("faucet", 20, 20)]


def test_same_idempotency_key_creates_one_order(api: ApiClient) -> None:
    alice = api.new_account(coins=10)
    headers = {**alice.headers, "Idempotency-Key": "order-1"}
    first = api.post("/orders", json=interval_order(runs=4), headers=headers)
    again = api.post("/orders", json=interval_order(runs=4), headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert api.balance(alice) == 6
    other = api.post("/orders", json=interval_order(runs=2), headers=headers)
    assert other.status_code == 409 and "idempotency key" in other.json()["detail"]
    assert len(api.get("/orders", headers=alice.headers).json()["items"]) == 1


def test_faucet_with_the_same_idempotency_key_grants_once(api: ApiClient) -> None:
    alice = api.new_account()
    for _ in range(3):
        r = api.post("/wallet/faucet", json={"amount": 25}, headers={**alice.headers, "Idempotency-Key": "f1"})
        assert r.status_code == 200
    assert api.balance(alice) == 25


def test_unaffordable_order_is_refused_and_moves_nothing(api: ApiClient) -> None:
    alice = api.new_account(coins=3)
    r = api.post("/orders", json=interval_order(runs=4), headers=alice.headers)
    assert r.status_code == 402 and r.json()["detail"] == "insufficient coins: balance 3, needed 4"
    assert api.balance(alice) == 3
    assert api.get("/orders", headers=alice.headers).json()["items"] == []


def test_50_concurrent_orders_costing_5x_the_balance(api: ApiClient, api_url: str) -> None:
    alice = api.new_account(coins=100)

    def place(_: int) -> int:
        with httpx.Client(base_url=api_url, timeout=120) as client:
            return client.post("/orders", json=interval_order(runs=10), headers=alice.headers).status_code

    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(place, range(50)))
    assert codes.count(201) == 10 and codes.count(402) == 40, codes
    assert api.balance(alice) == 0
    orders, cursor = [], None
    while True:
        page = api.get("/orders", params={"limit": 7, **({"cursor": cursor} if cursor else {})},
                       headers=alice.headers).json()
        orders += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(orders) == 10 and len({o["id"] for o in orders}) == 10
    assert sum(o["escrow_balance"] for o in orders) == 100, "balance + escrows still equal the 100 granted"


def test_pause_resume_cancel_refunds_unclaimed(api: ApiClient) -> None:
    alice = api.new_account(coins=10)
    order = api.post("/orders", json=interval_order(runs=6), headers=alice.headers).json()
    oid = order["id"]
    assert api.post(f"/orders/{oid}/pause", headers=alice.headers).json()["status"] == "paused"
    assert api.post(f"/orders/{oid}/resume", headers=alice.headers).json()["status"] == "active"
    r = api.post(f"/orders/{oid}/cancel", headers=alice.headers)
    assert r.status_code == 200 and r.json()["refunded"] == 6 and r.json()["order"]["status"] == "cancelled"
    assert api.balance(alice) == 10 and escrow(api, alice.headers, oid) == 0
    again = api.post(f"/orders/{oid}/cancel", headers=alice.headers)
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert api.post(f"/orders/{oid}/resume", headers=alice.headers).status_code == 409
    assert api.balance(alice) == 10


def test_cron_order_with_timezone(api: ApiClient) -> None:
    alice = api.new_account(coins=5)
    body = {"url": "https://example.com/", "schedule": {"kind": "cron", "cron": "30 9 * * 1-5",
                                                         "timezone": "Europe/Berlin"}, "max_runs": 5}
    r = api.post("/orders", json=body, headers=alice.headers)
    assert r.status_code == 201, r.text
    assert r.json()["schedule"] == {"kind": "cron", "cron": "30 9 * * 1-5", "timezone": "Europe/Berlin"}


def test_post_order_with_headers_and_body(api: ApiClient) -> None:
    alice = api.new_account(coins=5)
    body = interval_order(method="POST", headers={"Content-Type": "application/json", "X-Api": "1"},
                          body='{"q": 1}', runs=1)
    r = api.post("/orders", json=body, headers=alice.headers)
    assert r.status_code == 201, r.text
    assert r.json()["method"] == "POST" and r.json()["body"] == '{"q": 1}'


def test_the_repetition_counts_say_where_each_repetition_is(api: ApiClient, api_settings) -> None:
    """A 30 × 5 s order whose repetitions are all claimed ahead, 3 results in: not "30 done, next run —"."""
    from core.storage import Result, open_store

    alice = api.new_account(coins=40)
    order = api.post("/orders", json=interval_order(every=5, runs=30), headers=alice.headers).json()
    assert order["repetitions"] == {"scheduled": 30, "waiting": 0, "queued": 0, "fetching": 0, "delivered": 0,
                                    "refunded": 0, "failed": 0}
    store = open_store(api_settings.resolved_store_url)
    try:
        now = datetime.now(UTC)
        store.claim_repetitions(order["id"], "run-1", now + timedelta(seconds=600), now, 600)  # all 30, ahead
        store.record_results([Result.with_body(b"ok", 1024, job_key=f"{order['id']}:{n}", order_id=order["id"], n=n,
                                               miner_id="m", fetched_at=now, status=200, final_url=order["url"],
                                               headers={}, elapsed_ms=5, stored_at=now) for n in (1, 2, 3)])
    finally:
        store.close()
    got = api.get(f"/orders/{order['id']}", headers=alice.headers).json()
    assert got["runs_claimed"] == 30 and got["runs_left"] == 0  # unchanged meaning: handed to the queue
    counts = got["repetitions"]
    assert counts["delivered"] == 3 and counts["scheduled"] == 0
    assert counts["waiting"] + counts["queued"] == 27 and counts["waiting"] >= 20
    assert sum(counts.values()) == 30
    next_run = datetime.fromisoformat(got["next_run_at"])
    assert datetime.now(UTC) < next_run <= datetime.now(UTC) + timedelta(seconds=16), "#4 is still to come"
