"""Editing a live order over the API: re-priced with the wallet, from the next undispatched repetition on."""

from datetime import UTC, datetime, timedelta

from core.settings import Settings
from core.storage import open_store
from tests.helpers import ApiClient, interval_order


def claim(api_settings: Settings, order_id: str, horizon: datetime) -> list[int]:
    """What a dispatch run does: claim the repetitions due before `horizon`."""
    store = open_store(api_settings.resolved_store_url)
    try:
        now = datetime.now(UTC)
        return [r.n for r in store.claim_repetitions(order_id, f"run-{horizon.isoformat()}", horizon, now,
                                                     10**6).queued]
    finally:
        store.close()


def test_fewer_runs_refund_the_difference_and_a_new_interval_applies_to_the_rest(
        api: ApiClient, api_settings: Settings) -> None:
    alice = api.new_account(coins=20)
    order = api.post("/orders", json=interval_order(every=60, runs=10), headers=alice.headers).json()
    start = datetime.fromisoformat(order["start_at"])
    assert api.balance(alice) == 10
    assert claim(api_settings, order["id"], start + timedelta(seconds=150)) == [1, 2, 3]
    r = api.patch(f"/orders/{order['id']}", json={"max_runs": 6}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert (r.json()["max_runs"], r.json()["cost"], r.json()["escrow_balance"]) == (6, 6, 6)
    assert api.balance(alice) == 14, "4 repetitions fewer at 1 coin: 4 back"
    r = api.patch(f"/orders/{order['id']}", json={"schedule": {"kind": "interval", "every_seconds": 10},
                                                  "url": "https://example.com/v2"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    edited = r.json()
    assert edited["url"] == "https://example.com/v2" and edited["schedule"] == {"kind": "interval",
                                                                                "every_seconds": 10}
    assert datetime.fromisoformat(edited["next_due_at"]) == start + timedelta(seconds=130)
    assert claim(api_settings, order["id"], start + timedelta(seconds=1000)) == [4, 5, 6], "each once, none again"
    assert api.balance(alice) == 14


def test_bad_edits_are_refused_with_what_to_fix(api: ApiClient, api_settings: Settings) -> None:
    alice, bob = api.new_account(coins=12), api.new_account()
    order = api.post("/orders", json=interval_order(every=60, runs=10), headers=alice.headers).json()
    start = datetime.fromisoformat(order["start_at"])
    claim(api_settings, order["id"], start + timedelta(seconds=90))
    path = f"/orders/{order['id']}"
    for body, status, problem in (({}, 422, "nothing to change"),
                                  ({"max_runs": 1}, 422, "max_runs must be at least 2"),
                                  ({"max_runs": 13}, 402, "insufficient coins"),
                                  ({"url": "http://127.0.0.1/"}, 422, "loopback"),
                                  ({"schedule": {"kind": "cron", "cron": "61 * * * *", "timezone": "UTC"}}, 422,
                                   "minute is 61"),
                                  ({"extraction": {"kind": "css", "selector": "h1[["}}, 422, "not valid"),
                                  ({"price_per_run": 0}, 422, "price_per_run")):
        r = api.patch(path, json=body, headers=alice.headers)
        assert (r.status_code, problem in r.text) == (status, True), (body, r.text)
    assert api.patch(path, json={"max_runs": 3}, headers=bob.headers).status_code == 404
    assert api.balance(alice) == 2 and api.get(path, headers=alice.headers).json()["max_runs"] == 10
    r = api.patch(path, json={"extraction": {"kind": "text"}}, headers=alice.headers)
    assert r.status_code == 200 and r.json()["extraction"] == {"kind": "text", "selector": None}
    assert api.patch(path, json={"extraction": None}, headers=alice.headers).json()["extraction"] is None
    api.post(f"{path}/cancel", headers=alice.headers)
    r = api.patch(path, json={"max_runs": 5}, headers=alice.headers)
    assert r.status_code == 409 and r.json()["detail"] == "a cancelled order cannot be changed"
