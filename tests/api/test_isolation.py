"""Nobody reads or changes another user's orders, tokens or coins."""

from tests.helpers import ApiClient, interval_order


def test_user_b_cannot_see_or_touch_user_a(api: ApiClient) -> None:
    alice, bob = api.new_account(coins=10), api.new_account(coins=10)
    order = api.post("/orders", json=interval_order(runs=3), headers=alice.headers).json()
    token = api.post("/tokens", json={"scopes": ["results"], "order_id": order["id"]}, headers=alice.headers).json()

    for method, path in [("GET", f"/orders/{order['id']}"), ("POST", f"/orders/{order['id']}/pause"),
                         ("POST", f"/orders/{order['id']}/resume"), ("POST", f"/orders/{order['id']}/cancel"),
                         ("DELETE", f"/tokens/{token['id']}")]:
        r = api.request(method, path, headers=bob.headers)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["detail"] in ("order not found", "token not found")

    assert api.get("/orders", headers=bob.headers).json()["items"] == []
    assert api.get("/tokens", headers=bob.headers).json() == []
    r = api.post("/tokens", json={"scopes": ["results"], "order_id": order["id"]}, headers=bob.headers)
    assert r.status_code == 404 and r.json()["detail"] == "order not found"

    # Alice's order, token and coins are untouched.
    mine = api.get(f"/orders/{order['id']}", headers=alice.headers).json()
    assert mine["status"] == "active" and mine["escrow_balance"] == 3
    assert [t["revoked_at"] for t in api.get("/tokens", headers=alice.headers).json()] == [None]
    assert api.balance(alice) == 7 and api.balance(bob) == 10

    # An API token is not a session: it opens none of the API's doors.
    r = api.get("/orders", headers={"Authorization": f"Bearer {token['token']}"})
    assert r.status_code == 401
