"""Wallet page: balance, test coins, the ledger history as a table and a chart."""

from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import alerts, button, metric, texts, widget
from tests.helpers import ApiClient, interval_order

WALLET = "views/wallet.py"


def test_test_coins_and_history(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    account = api.new_account()
    at = dashboard(account, WALLET)
    assert at.title[0].value == "Wallet"
    assert metric(at, "Balance") == "0 coins"
    assert any("No coin movements yet." in a for a in alerts(at, "info"))

    widget(at.number_input, "Amount").set_value(250)
    button(at, "Get test coins").click()
    at.run()
    assert "250 coins added. Your balance is now 250 coins." in alerts(at, "success")
    assert metric(at, "Balance") == "250 coins"
    assert api.balance(account) == 250

    r = api.post("/orders", json=interval_order(runs=12), headers=account.headers)
    assert r.status_code == 201, r.text
    at.run()
    assert metric(at, "Balance") == "238 coins"
    assert metric(at, "Held for your orders") == "12 coins"
    history = at.dataframe[0].value
    assert list(history["What"]) == ["Order placed (held in escrow)", "Test coins"]
    assert list(history["Amount"]) == ["-12", "+250"]
    assert list(history["Balance after"]) == [238, 250]
    assert len(at.get("vega_lite_chart")) == 1, "the balance chart is drawn"


def test_an_amount_above_the_limit_is_refused_with_the_reason(dashboard: Callable[..., AppTest],
                                                              api: ApiClient) -> None:
    """Typing 5000 must not silently grant the previous 100."""
    account = api.new_account()
    at = dashboard(account, WALLET)
    assert "This installation runs in test mode: take free coins to try ordering (at most 1,000 coins at a time)." \
        in [c.value for c in at.caption]
    widget(at.number_input, "Amount").set_value(5000)
    button(at, "Get test coins").click()
    at.run()
    assert alerts(at, "error") == ["No test coins: 5,000 is more than the 1,000 coins you can take at a time."]
    assert not alerts(at, "success") and api.balance(account) == 0


class TestProduction:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"mode": "production"}

    def test_no_faucet_where_the_api_has_none(self, dashboard: Callable[..., AppTest], api: ApiClient) -> None:
        account = api.new_account()
        at = dashboard(account, WALLET)
        assert metric(at, "Balance") == "0 coins"
        assert "Get test coins" not in [b.label for b in at.button]
        assert "Test coins" not in texts(at)
