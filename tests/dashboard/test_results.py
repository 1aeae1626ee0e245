"""Results page: how far an order got, and the result client command with a fresh results token."""

from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import alerts, button, metric, widget
from tests.helpers import ApiClient, interval_order

RESULTS = "views/results.py"


def test_without_orders(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    at = dashboard(api.new_account(), RESULTS)
    assert any("You have no orders yet" in i for i in alerts(at, "info"))


def test_progress_command_and_results_token(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    account = api.new_account(coins=10)
    order = api.post("/orders", json=interval_order(url="https://example.com/feed", runs=4),
                     headers=account.headers).json()
    at = dashboard(account, RESULTS)
    assert metric(at, "Status") == "Active"
    assert metric(at, "Repetitions done") == "0 of 4"
    assert metric(at, "Repetitions left") == "4"
    reps = at.dataframe[0].value
    assert list(reps["State"]) == ["Next", "Waiting"]
    assert list(reps["Repetitions"]) == ["#1", "#2 – #4"]
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
    assert list(at.dataframe[0].value["State"]) == ["Refunded (order cancelled)"]
