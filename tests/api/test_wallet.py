"""Wallet, ledger history and the faucet's dev-only existence."""

from pathlib import Path

from redis import Redis

from api.app import create_app
from tests.conftest import ThreadedServer, make_settings
from tests.helpers import ApiClient, interval_order


def test_ledger_history_pages(api: ApiClient) -> None:
    alice = api.new_account(coins=30)
    for _ in range(4):
        assert api.post("/orders", json=interval_order(runs=2), headers=alice.headers).status_code == 201
    first = api.get("/wallet/ledger", params={"limit": 3}, headers=alice.headers).json()
    second = api.get("/wallet/ledger", params={"limit": 3, "cursor": first["next_cursor"]},
                     headers=alice.headers).json()
    entries = first["items"] + second["items"]
    assert [e["balance_after"] for e in entries] == [22, 24, 26, 28, 30]
    assert second["next_cursor"] is None
    meta = api.get("/meta").json()
    assert meta["faucet_enabled"] is True and meta["price_per_run"] == 1


def test_production_has_no_faucet(tmp_path: Path, store_url: str, valkey_url: str, redis: Redis) -> None:
    settings = make_settings(tmp_path, store_url, valkey_url, mode="production")
    with ThreadedServer(create_app(settings)) as server, ApiClient(server.url) as api:
        alice = api.new_account()
        r = api.post("/wallet/faucet", json={"amount": 10}, headers=alice.headers)
        assert r.status_code == 404 and "only in dev and test mode" in r.json()["detail"]
        assert api.balance(alice) == 0
        assert api.get("/meta").json()["faucet_enabled"] is False
