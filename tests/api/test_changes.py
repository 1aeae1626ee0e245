"""Extraction on an order and its change records over the API: placed, refused when wrong, listed."""

from datetime import UTC, datetime

from core.settings import Settings
from core.storage import Result, open_store
from results.watch.observer import observe_order
from tests.helpers import ApiClient, interval_order
from tests.results.watch.test_observer import price_page


def test_an_order_keeps_its_extraction_and_a_wrong_selector_is_refused(api: ApiClient) -> None:
    alice = api.new_account(coins=10)
    placed = api.post("/orders", json=interval_order(runs=2, extraction={"kind": "css", "selector": "h1 .price"}),
                      headers=alice.headers)
    assert placed.status_code == 201, placed.text
    assert placed.json()["extraction"] == {"kind": "css", "selector": "h1 .price"}
    got = api.get(f"/orders/{placed.json()['id']}", headers=alice.headers).json()
    assert got["extraction"] == {"kind": "css", "selector": "h1 .price"}
    plain = api.post("/orders", json=interval_order(runs=1), headers=alice.headers).json()
    assert plain["extraction"] is None
    for extraction, problem in (({"kind": "css", "selector": "h1[["}, "CSS selector is not valid"),
                                ({"kind": "xpath", "selector": "//p["}, "XPath expression is not valid"),
                                ({"kind": "css"}, "needs a selector"),
                                ({"kind": "text", "selector": "p"}, "takes no selector"),
                                ({"kind": "regex", "selector": "p"}, "kind")):
        r = api.post("/orders", json=interval_order(runs=1, extraction=extraction), headers=alice.headers)
        assert r.status_code == 422 and problem in r.text, (extraction, r.text)
    assert api.balance(alice) == 7, "refused orders cost nothing"


def test_changes_are_listed_oldest_first_with_their_diffs(api: ApiClient, api_settings: Settings) -> None:
    alice, bob = api.new_account(coins=10), api.new_account()
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
        observe_order(store, order["id"])  # what the result server's watcher does
    finally:
        store.close()
    path = f"/orders/{order['id']}/changes"
    page = api.get(path, headers=alice.headers).json()
    assert [(c["n"], c["previous_n"], c["extracted"]) for c in page["items"]] == [(3, 2, "12 coins"), (6, 5, "9 coins")]
    assert page["items"][1]["diff"] == "--- repetition 5\n+++ repetition 6\n@@ -1 +1 @@\n-12 coins\n+9 coins"
    assert page["next_cursor"] is None
    first = api.get(path, params={"limit": 1}, headers=alice.headers).json()
    assert [c["n"] for c in first["items"]] == [3] and first["next_cursor"] == "3"
    rest = api.get(path, params={"limit": 1, "after": 3}, headers=alice.headers).json()
    assert [c["n"] for c in rest["items"]] == [6]
    results = api.get(f"/orders/{order['id']}/results", params={"limit": 8}, headers=alice.headers).json()["items"]
    assert [(r["n"], r["extracted"], r["changed"]) for r in results][:3] == [(8, "9 coins", False),
                                                                             (7, "9 coins", False),
                                                                             (6, "9 coins", True)]
    r = api.get(path, headers=bob.headers)
    assert r.status_code == 404 and r.json()["detail"] == "order not found"
