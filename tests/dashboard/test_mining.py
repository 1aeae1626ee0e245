"""Mining page: mining tokens with the command to run, and earnings from reward ledger entries."""

from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from core import ledger
from core.storage import Store
from tests.dashboard.conftest import alerts, button, metric, widget
from tests.helpers import ApiClient, interval_order

MINING = "views/mining.py"


def test_create_and_revoke_a_mining_token(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    account = api.new_account()
    at = dashboard(account, MINING)
    assert at.code[0].value == "crawlcoin mine --server http://127.0.0.1:8601 --token '<TOKEN>'"
    assert any("No earnings yet" in i for i in alerts(at, "info"))

    widget(at.text_input, "Name of the computer that will mine").input("attic pc")
    button(at, "Create mining token").click()
    at.run()
    assert any("Mining token “attic pc” created" in s for s in alerts(at, "success"))
    [token] = api.get("/tokens", headers=account.headers).json()
    assert token["name"] == "attic pc" and token["scopes"] == ["mine"] and token["order_id"] is None
    command = at.code[0].value
    assert command.startswith("crawlcoin mine --server http://127.0.0.1:8601 --token ")
    secret = command.rsplit(" ", 1)[1]
    assert len(secret) > 20 and "<" not in secret

    button(at, "Done, I copied it").click()
    at.run()
    assert "<TOKEN>" in at.code[0].value, "the secret is not shown again"
    assert "**attic pc**" in "\n".join(m.value for m in at.markdown)
    button(at, "Revoke").click()
    at.run()
    assert "Token “attic pc” revoked: a miner using it is disconnected and refused." in alerts(at, "success")
    assert api.get("/tokens", headers=account.headers).json()[0]["revoked_at"] is not None
    assert "Revoke" not in [b.label for b in at.button]


def test_earnings_from_rewards_and_checks(dashboard: Callable[..., AppTest], api: ApiClient, store: Store) -> None:
    customer = api.new_account(coins=10)
    miner = api.new_account()
    order = api.post("/orders", json=interval_order(runs=5), headers=customer.headers).json()
    for n in (1, 2, 3):  # what the mining server books for each delivered page
        job = f"{order['id']}:{n}"
        store.transfer(ledger.reward_key(job), ledger.escrow_account(order["id"]), ledger.user_account(miner.id),
                       1, "reward", job)
    checked = f"{order['id']}:4"  # what the platform pays for checking another miner's page
    store.transfer(ledger.validation_key(checked, miner.id), ledger.MINT, ledger.user_account(miner.id), 1,
                   "validation", checked)
    at = dashboard(miner, MINING)
    assert metric(at, "Earned in total") == "4 coins"
    assert metric(at, "Pages delivered") == "3"
    assert metric(at, "Earned in the last 24 hours") == "4 coins"
    table = at.dataframe[0].value
    assert list(table["For"]) == [f"checking {checked}"] + [f"{order['id']}:{n}" for n in (3, 2, 1)]
    assert list(table["Earned"]) == ["+1", "+1", "+1", "+1"]
    assert len(at.get("vega_lite_chart")) == 2
    assert metric(at, "Balance") == "4 coins"
    assert metric(at, "Reputation") == "0.50" and metric(at, "Results checked") == "100%"
    assert any(i.startswith("New: every result is checked") for i in alerts(at, "info"))


class TestDevMode:
    """On a local stack (dev mode only) the command shown works for pages on this machine."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"mode": "dev"}

    def test_the_command_allows_private_targets(self, dashboard: Callable[..., AppTest], api: ApiClient) -> None:
        at = dashboard(api.new_account(), MINING)
        assert at.code[0].value == ("crawlcoin mine --server http://127.0.0.1:8601 --token '<TOKEN>' "
                                    "--allow-private-targets")
        assert any("dev mode" in c.value and "--allow-private-targets" in c.value for c in at.caption)
