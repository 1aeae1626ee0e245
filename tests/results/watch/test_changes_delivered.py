"""Extracted values and changes reach the customer: next to each page, and alone with `crawlcoin results --changes`."""

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core import schedules
from core.protocol.notices import NOTICES_STREAM, ResultNotice
from core.schemas import Extraction
from core.storage import Order, Result
from tests.results.server.conftest import Customer
from tests.results.server.test_delivery import run_client
from tests.results.watch.test_observer import price_page


def order_with_pages(customer: Customer, runs: int, extraction: Extraction | None, order_id: str | None = None) -> str:
    now = datetime.now(UTC)
    order = Order(id=order_id or str(uuid.uuid4()), owner_id=customer.user.id, url="https://example.com/", method="GET",
                  schedule_kind="interval", every_seconds=1, start_at=now, max_runs=runs, extraction=extraction,
                  price_per_run=1, request_hash="h", created_at=now, updated_at=now)
    order.next_due_at = schedules.first_due(order)
    customer.store.create_order(order)
    customer.store.claim_repetitions(order.id, f"run-{order.id}", now + timedelta(seconds=runs + 5), now, 600)
    results = [Result.with_body(price_page(n), 1 << 20, job_key=f"{order.id}:{n}", order_id=order.id, n=n,
                                miner_id="miner", fetched_at=now, status=200, final_url=order.url,
                                headers={"content-type": "text/html"}, stored_at=now) for n in range(1, runs + 1)]
    customer.store.record_results(results)
    for r in results:
        customer.redis.xadd(NOTICES_STREAM, ResultNotice(key=r.job_key, order_id=order.id, n=r.n,
                                                         outcome="paid").encode())
    return order.id


def test_changes_only_writes_the_two_changed_repetitions_with_their_diffs(result_server, customer,
                                                                          tmp_path: Path) -> None:
    order_id = order_with_pages(customer, 8, Extraction(kind="css", selector="h1, .price"))
    out = tmp_path / "changes"
    done = run_client(result_server, customer.token(), [order_id], out, changes=True)
    assert done.returncode == 0, done.stdout + done.stderr
    metas = [json.loads(p.read_text()) for p in sorted((out / order_id).glob("*.meta.json"))]
    assert [(m["n"], m["changed"], m["previous_n"]) for m in metas] == [(3, True, 2), (6, True, 5)]
    diffs = [(out / order_id / m["diff"]).read_text() for m in metas]
    assert diffs[0].endswith(" Widget\n-10 coins\n+12 coins") and diffs[1].endswith(" Widget\n-12 coins\n+9 coins")
    assert [(out / order_id / m["extract"]).read_text() for m in metas] == ["Widget\n12 coins", "Widget\n9 coins"]
    assert "written" in done.stdout and "unchanged (skipped)" in done.stdout
    again = run_client(result_server, customer.token(), [order_id], out, changes=True)
    assert again.returncode == 0 and len(list((out / order_id).iterdir())) == 8, "nothing written twice"


def test_every_page_comes_with_its_extracted_value(result_server, customer, tmp_path: Path) -> None:
    order_id = order_with_pages(customer, 4, Extraction(kind="xpath", selector="//p[@class='price']/text()"))
    out = tmp_path / "all"
    done = run_client(result_server, customer.token(), [order_id], out)
    assert done.returncode == 0, done.stdout + done.stderr
    folder = out / order_id
    assert [p.read_text() for p in sorted(folder.glob("*.extract.txt"))] == ["10 coins", "10 coins", "12 coins",
                                                                            "12 coins"]
    metas = [json.loads(p.read_text()) for p in sorted(folder.glob("*.meta.json"))]
    assert [m["changed"] for m in metas] == [False, False, True, False]
    assert len(list(folder.glob("*.html"))) == 4 and not list(folder.glob("*.diff"))


def test_the_watcher_observes_results_no_client_asked_for(result_server, customer) -> None:
    order_id = order_with_pages(customer, 8, Extraction(kind="css", selector=".price"))
    deadline = time.monotonic() + 30
    while customer.store.get_watch_cursor(order_id).last_n < 8:
        assert time.monotonic() < deadline, "the result server's watcher did not observe the order"
        time.sleep(0.2)
    assert [c.n for c in customer.store.list_observations(order_id, changes_only=True)] == [3, 6]


def test_without_an_extraction_changes_compare_whole_pages_and_only_changes_clients_wait_for_them(
        result_server, customer, tmp_path: Path) -> None:
    order_id = order_with_pages(customer, 8, None)
    out = tmp_path / "changes"
    done = run_client(result_server, customer.token(), [order_id], out, changes=True)
    assert done.returncode == 0, done.stdout + done.stderr
    metas = [json.loads(p.read_text()) for p in sorted((out / order_id).glob("*.meta.json"))]
    # The whole page: its clock changes every time, so every page after the first is a change.
    assert [(m["n"], m["changed"], m["previous_n"]) for m in metas] == [(n, True, n - 1) for n in range(2, 9)]
    assert "+<p class=price>12 coins</p>" in (out / order_id / metas[1]["diff"]).read_text()
    assert not list((out / order_id).glob("*.extract.txt")), "no extraction, no extracted value"
    everything = tmp_path / "all"
    done = run_client(result_server, customer.token(), [order_id], everything)
    assert done.returncode == 0, done.stdout + done.stderr
    metas = [json.loads(p.read_text()) for p in sorted((everything / order_id).glob("*.meta.json"))]
    assert len(metas) == 8 and not list((everything / order_id).glob("*.diff"))
