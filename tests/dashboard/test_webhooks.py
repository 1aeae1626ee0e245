"""Webhooks on the dashboard's Results page: added with the secret shown once, the delivery log, deleted."""

from collections.abc import Callable
from datetime import UTC, datetime

from streamlit.testing.v1 import AppTest

from core.storage import Store
from tests.dashboard.conftest import button, texts, widget
from tests.dashboard.test_changes import RESULTS, watched_order
from tests.helpers import ApiClient


def test_a_webhook_is_added_its_log_shown_and_deleted(dashboard: Callable[..., AppTest], api: ApiClient,
                                                      store: Store) -> None:
    account = api.new_account(coins=10)
    hook = api.post("/webhooks", json={"url": "https://hooks.example.com/changes"}, headers=account.headers).json()
    order = watched_order(api, store, account)  # changes at 3 and 6: two notifications stored
    [d3] = [d for d in store.list_webhook_deliveries(hook["id"]) if d.n == 3]
    claimed = store.claim_webhook_deliveries(datetime.now(UTC), datetime.now(UTC), 10)
    for d in claimed:  # as a sender would log them: #3 answered 500, #6 delivered
        store.finish_webhook_attempt(d, datetime.now(UTC), 500 if d.id == d3.id else 200,
                                     "HTTP 500" if d.id == d3.id else None, d.id != d3.id,
                                     datetime.now(UTC) if d.id == d3.id else None)
    at = dashboard(account, RESULTS)
    assert "Webhooks" in texts(at)
    log = next(f.value for f in at.dataframe if "Last answer" in f.value.columns)
    assert sorted(log[["Repetition", "State", "Attempts", "Last answer"]].values.tolist()) == [
        ["#3", "pending", 1, "500 · HTTP 500"], ["#6", "delivered", 1, "200"]]

    widget(at.text_input, "Webhook URL").input("http://127.0.0.1:9/hook")
    button(at, "Add webhook").click().run()
    assert any("127.0.0.1 is a loopback address" in e for e in (str(x.value) for x in at.error)), texts(at)
    widget(at.text_input, "Webhook URL").input("https://hooks.example.com/every")
    widget(at.radio, "Notify").set_value("result")
    button(at, "Add webhook").click().run()
    assert not at.exception, at.exception
    [secret] = [c.value for c in at.code if c.value.startswith("whsec_")]
    added = [w for w in api.get("/webhooks", headers=account.headers).json() if w["url"].endswith("/every")]
    assert [(w["event"], w["order_id"]) for w in added] == [("result", order["id"])] and len(secret) > 40
    assert "shown only this once" in texts(at)

    button(at, "Delete webhook").click().run()  # the first listed: the account's webhook
    assert [w["url"] for w in api.get("/webhooks", headers=account.headers).json()] == [
        "https://hooks.example.com/every"]
