"""Webhooks over the API: created with a secret shown once, targets checked like orders', their delivery log read."""

from datetime import UTC, datetime
from pathlib import Path

from redis import Redis

from api.app import create_app
from core.settings import Settings
from core.storage import Result, open_store
from results.watch.observer import observe_order
from tests.conftest import ThreadedServer, make_settings
from tests.helpers import ApiClient, interval_order
from tests.results.watch.test_observer import price_page


def test_a_webhook_is_created_listed_and_deleted_by_its_owner_alone(api: ApiClient) -> None:
    alice, bob = api.new_account(coins=10), api.new_account()
    order = api.post("/orders", json=interval_order(runs=2), headers=alice.headers).json()
    r = api.post("/webhooks", json={"url": "https://hooks.example.com/crawlcoin", "order_id": order["id"],
                                    "event": "result"}, headers=alice.headers)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert r.headers["cache-control"] == "no-store"
    listed = api.get("/webhooks", headers=alice.headers).json()
    assert listed == [{k: v for k, v in created.items() if k != "secret"}], "the secret is shown once"
    assert api.get("/webhooks", headers=bob.headers).json() == []
    for path in (f"/webhooks/{created['id']}/deliveries",):
        assert api.get(path, headers=bob.headers).status_code == 404
    assert api.delete(f"/webhooks/{created['id']}", headers=bob.headers).status_code == 404
    theirs = api.post("/webhooks", json={"url": "https://hooks.example.com/", "order_id": order["id"]},
                      headers=bob.headers)
    assert theirs.status_code == 404 and theirs.json()["detail"] == "order not found"
    assert api.delete(f"/webhooks/{created['id']}", headers=alice.headers).status_code == 204
    assert api.get("/webhooks", headers=alice.headers).json() == []
    assert api.get(f"/webhooks/{created['id']}/deliveries", headers=alice.headers).status_code == 404


def test_bad_webhooks_are_refused_with_what_to_fix(api: ApiClient) -> None:
    alice = api.new_account()
    for body, problem in (({"url": "ftp://example.com/"}, "scheme 'ftp' is not allowed"),
                          ({"url": "http://10.0.0.1/hook"}, "10.0.0.1 is a private address"),
                          ({"url": "http://localhost:8000/"}, "loopback name"),
                          ({"url": "https://example.com/", "event": "sometimes"}, "event"),
                          ({"url": "https://example.com/", "secret": "mine"}, "secret")):
        r = api.post("/webhooks", json=body, headers=alice.headers)
        assert r.status_code == 422 and problem in r.text, (body, r.text)
    assert api.get("/webhooks", headers=alice.headers).json() == []


def test_production_mode_refuses_a_webhook_to_127_0_0_1(tmp_path: Path, store_url: str, valkey_url: str,
                                                        redis: Redis) -> None:
    settings = make_settings(tmp_path, store_url, valkey_url, mode="production")
    with ThreadedServer(create_app(settings)) as server, ApiClient(server.url) as api:
        alice = api.new_account()
        r = api.post("/webhooks", json={"url": "http://127.0.0.1:8080/hook"}, headers=alice.headers)
        assert r.status_code == 422
        assert r.json()["detail"] == "url host is not allowed: 127.0.0.1 is a loopback address"
        assert api.get("/webhooks", headers=alice.headers).json() == []


def test_the_delivery_log_shows_each_notification(api: ApiClient, api_settings: Settings) -> None:
    alice, bob = api.new_account(coins=10), api.new_account()
    hook = api.post("/webhooks", json={"url": "https://hooks.example.com/"}, headers=alice.headers).json()
    order = api.post("/orders", json=interval_order(every=1, runs=8, extraction={"kind": "css", "selector": ".price"}),
                     headers=alice.headers).json()
    store = open_store(api_settings.resolved_store_url)
    try:
        now = datetime.now(UTC)
        store.claim_repetitions(order["id"], "run", now.replace(year=now.year + 1), now, 10**6)
        store.record_results([Result.with_body(price_page(n), 1 << 20, job_key=f"{order['id']}:{n}",
                                               order_id=order["id"], n=n, miner_id=bob.id, fetched_at=now, status=200,
                                               final_url="https://example.com/page",
                                               headers={"content-type": "text/html"}, stored_at=now)
                              for n in range(1, 9)])
        observe_order(store, order["id"])  # what the result server's watcher does; no sender runs here
    finally:
        store.close()
    path = f"/webhooks/{hook['id']}/deliveries"
    page = api.get(path, headers=alice.headers).json()
    assert sorted((d["n"], d["event"], d["state"], d["attempts"]) for d in page["items"]) == [
        (3, "change", "pending", 0), (6, "change", "pending", 0)]
    assert page["next_cursor"] is None
    first = api.get(path, params={"limit": 1}, headers=alice.headers).json()
    rest = api.get(path, params={"limit": 1, "cursor": first["next_cursor"]}, headers=alice.headers).json()
    assert {first["items"][0]["n"], rest["items"][0]["n"]} == {3, 6}
    assert api.get(path, params={"cursor": "nonsense"}, headers=alice.headers).status_code == 422
