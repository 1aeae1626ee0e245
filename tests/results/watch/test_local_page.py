"""The whole path on a local page that changes at its third and sixth fetch: a real miner fetches it, the
mining server records each result, the watcher in the result server observes them, and `crawlcoin results
--changes` writes exactly the two changes with their diffs."""

import asyncio
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis as AsyncRedis

from core import schedules
from core.protocol.jobs import Job
from core.queue import JobQueue
from core.schemas import Extraction
from core.settings import Settings
from core.storage import Order
from results.server.app import ResultServer
from tests.conftest import ThreadedServer
from tests.miners.server.conftest import Market, Processes, wait_for
from tests.results.server.test_delivery import run_client


class ChangingPage(http.server.ThreadingHTTPServer):
    """A shop page whose price changes at the 3rd and the 6th fetch; its clock line changes on every fetch."""

    def __init__(self) -> None:
        self.fetches = 0
        page = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/robots.txt":
                    self.send_response(404)
                    self.end_headers()
                    return
                page.fetches += 1
                price = 10 if page.fetches < 3 else 12 if page.fetches < 6 else 9
                body = (f"<html><body><p>served at {time.time()}</p>\n<h1>Widget</h1>\n"
                        f"<p class=price>{price} coins</p></body></html>").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def page() -> Iterator[ChangingPage]:
    server = ChangingPage()
    yield server
    server.shutdown()


def place(market: Market, settings: Settings, url: str, runs: int) -> Order:
    """An order watching `h1, .price`, its repetitions claimed and queued one a second, as dispatch does."""
    customer = market.user(coins=runs)
    now = datetime.now(UTC)
    order = Order(id=str(uuid.uuid4()), owner_id=customer.id, url=url, method="GET", schedule_kind="interval",
                  every_seconds=1, start_at=now, max_runs=runs, price_per_run=settings.price_per_run,
                  extraction=Extraction(kind="css", selector="h1, .price"), request_hash="h", created_at=now,
                  updated_at=now)
    order.next_due_at = schedules.first_due(order)
    market.store.create_order(order)
    claim = market.store.claim_repetitions(order.id, f"run-{order.id}", now + timedelta(seconds=runs + 5), now, 600)

    async def enqueue() -> None:
        redis = AsyncRedis.from_url(settings.resolved_redis_url)
        await JobQueue(redis).enqueue([Job(key=r.key, order_id=order.id, n=r.n, url=url, method="GET",
                                           due_at=r.due_at) for r in claim.queued])
        await redis.aclose()

    asyncio.run(enqueue())
    return order


def test_a_local_page_changing_at_3_and_6_gives_two_changes(page: ChangingPage, market: Market, mining_server: str,
                                                            mining_settings: Settings, processes: Processes,
                                                            tmp_path: Path) -> None:
    order = place(market, mining_settings, f"http://127.0.0.1:{page.server_port}/shop", runs=8)
    _, mining_token = market.miner()
    processes.miner(mining_server, mining_token, "--concurrency", "1")
    with ThreadedServer(ResultServer(mining_settings).app) as results:
        release = asyncio.run(_release_until_done(mining_settings, market, order))
        assert release == list(range(1, 9))
        wait_for(lambda: market.store.get_watch_cursor(order.id).last_n == 8, 30, "the watcher to observe all 8")
        token = market.token(market.store.get_user(order.owner_id), ("results",))  # type: ignore[arg-type]
        done = run_client(results.url, token, [order.id], tmp_path / "out", changes=True)
    assert done.returncode == 0, done.stdout + done.stderr
    changes = market.store.list_observations(order.id, changes_only=True)
    assert [(c.n, c.previous_n) for c in changes] == [(3, 2), (6, 5)]
    metas = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / order.id).glob("*.meta.json"))]
    assert [m["n"] for m in metas] == [3, 6]
    diffs = [(tmp_path / "out" / order.id / m["diff"]).read_text() for m in metas]
    assert diffs == ["--- repetition 2\n+++ repetition 3\n@@ -1,2 +1,2 @@\n Widget\n-10 coins\n+12 coins",
                     "--- repetition 5\n+++ repetition 6\n@@ -1,2 +1,2 @@\n Widget\n-12 coins\n+9 coins"]


async def _release_until_done(settings: Settings, market: Market, order: Order) -> list[int]:
    """Release the jobs onto the stream as they fall due (the workers' job) until all 8 are stored."""
    redis = AsyncRedis.from_url(settings.resolved_redis_url)
    queue = JobQueue(redis)
    deadline = time.monotonic() + 60
    while len(market.stored(order)) < order.max_runs and time.monotonic() < deadline:
        await queue.release_due(time.time())
        await asyncio.sleep(0.2)
    await redis.aclose()
    return market.stored(order)
