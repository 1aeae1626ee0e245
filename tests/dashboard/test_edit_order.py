"""Changing an order from the dashboard's Orders page: fewer repetitions refunded, a new interval, bad input named."""

from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import alerts, button, texts
from tests.helpers import ApiClient, interval_order

ORDERS = "views/orders.py"


def test_an_order_is_changed_from_its_card(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    account = api.new_account(coins=20)
    order = api.post("/orders", json=interval_order(every=60, runs=10), headers=account.headers).json()
    at = dashboard(account, ORDERS)
    runs = at.number_input(key=f"change_runs_{order['id']}")
    every = at.number_input(key=f"change_every_{order['id']}")
    runs.set_value(6)
    every.set_value(30)
    button(at, "Save changes").click().run()
    assert not at.exception, at.exception
    assert any("4 coins refunded to your wallet" in a for a in alerts(at, "success")), texts(at)
    changed = api.get(f"/orders/{order['id']}", headers=account.headers).json()
    assert (changed["max_runs"], changed["schedule"]["every_seconds"]) == (6, 30)
    assert api.balance(account) == 14
    at.text_input(key=f"change_url_{order['id']}").input("http://127.0.0.1/admin")
    button(at, "Save changes").click().run()
    assert any("127.0.0.1 is a loopback address" in e for e in alerts(at, "error")), texts(at)
    assert api.get(f"/orders/{order['id']}", headers=account.headers).json()["url"] == order["url"]
