"""API tokens: shown once, stored hashed, listed, revoked; checked as the servers will check them."""

import pytest

from core.errors import AuthenticationFailed, PermissionDenied
from core.schemas import Scope
from core.settings import Settings
from core.storage import open_store
from core.tokens import authenticate_api_token
from tests.helpers import ApiClient, interval_order


def test_token_lifecycle(api: ApiClient, api_settings: Settings) -> None:
    alice = api.new_account(coins=5)
    order = api.post("/orders", json=interval_order(runs=1), headers=alice.headers).json()
    r = api.post("/tokens", json={"name": "laptop", "scopes": ["mine"]}, headers=alice.headers)
    assert r.status_code == 201
    mine = r.json()
    assert mine["token"].startswith("cc_") and mine["scopes"] == ["mine"]
    limited = api.post("/tokens", json={"scopes": ["results"], "order_id": order["id"]}, headers=alice.headers).json()

    listed = api.get("/tokens", headers=alice.headers).json()
    assert {t["id"] for t in listed} == {mine["id"], limited["id"]}
    assert all("token" not in t for t in listed), "the secret is shown only once"

    store = open_store(api_settings.resolved_store_url)
    try:
        assert authenticate_api_token(store, mine["token"], Scope.mine).owner_id == alice.id
        assert authenticate_api_token(store, limited["token"], Scope.results).order_id == order["id"]
        with pytest.raises(PermissionDenied, match="lacks the 'results' scope"):
            authenticate_api_token(store, mine["token"], Scope.results)
        tampered = mine["token"][:-2] + ("AA" if not mine["token"].endswith("AA") else "BB")
        with pytest.raises(AuthenticationFailed, match="unknown API token"):
            authenticate_api_token(store, tampered, Scope.mine)
        with pytest.raises(AuthenticationFailed, match="malformed"):
            authenticate_api_token(store, "not-a-token", Scope.mine)

        assert api.delete(f"/tokens/{mine['id']}", headers=alice.headers).status_code == 204
        with pytest.raises(AuthenticationFailed, match="revoked"):
            authenticate_api_token(store, mine["token"], Scope.mine)
    finally:
        store.close()
    revoked = [t for t in api.get("/tokens", headers=alice.headers).json() if t["id"] == mine["id"]]
    assert revoked[0]["revoked_at"] is not None


def test_token_for_an_unknown_order_is_refused(api: ApiClient) -> None:
    alice = api.new_account()
    r = api.post("/tokens", json={"scopes": ["results"], "order_id": "nope"}, headers=alice.headers)
    assert r.status_code == 404
    r = api.post("/tokens", json={"scopes": ["admin"]}, headers=alice.headers)
    assert r.status_code == 422
    r = api.post("/tokens", json={"scopes": []}, headers=alice.headers)
    assert r.status_code == 422
