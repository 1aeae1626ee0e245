"""The watcher's cost per result: observing orders one at a time against a batch of orders at once.

A result server's watcher reads the result-notice stream in batches and observes the orders they
name (extracted value, change, diff, webhook deliveries). This bench measures the store work of
that step, in this process's CPU time, on a fresh store (SQLite by default, or `--store URL`):
N orders (`--orders`, each with an account webhook on change, as a customer with a receiver
has), then rounds in which every order gets one more result — a page of about 20 KB (bench/e2e.py's)
that changes on every fetch, so every observation is a change with a diff — and is observed
either one order at a time (`observer.observe_order_from`, what the watcher did before) or all of
the round's orders at once (`observer.observe_orders`), the two ways alternating round by round.
Prints CPU milliseconds per observed result for each, and the ratio; checks that both wrote the same
observations.

    python bench/watcher.py [--orders 200] [--rounds 6] [--store sqlite:///…]
"""

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import page_body  # noqa: E402
from core import ledger, schedules  # noqa: E402
from core.storage import Order, Result, Store, User, Webhook, WebhookEvent, job_key, open_store  # noqa: E402
from results.watch.observer import observe_order_from, observe_orders  # noqa: E402


def place(store: Store, runs: int) -> Order:
    now = datetime.now(UTC)
    user = User(id=str(uuid.uuid4()), username=f"w{uuid.uuid4().hex[:10]}", password_hash="x", created_at=now)
    store.create_user(user)
    store.transfer(f"grant-{user.id}", ledger.MINT, ledger.user_account(user.id), runs, "grant")
    store.create_webhook(Webhook(id=str(uuid.uuid4()), owner_id=user.id, url="https://hooks.example.com/",
                                 secret="s", event=WebhookEvent.change, created_at=now))
    order = Order(id=str(uuid.uuid4()), owner_id=user.id, url=f"http://pages.example.com/{uuid.uuid4().hex[:8]}",
                  method="GET", schedule_kind="interval", every_seconds=1, start_at=now, max_runs=runs,
                  price_per_run=1, request_hash="h", created_at=now, updated_at=now)
    order.next_due_at = schedules.first_due(order)
    store.create_order(order)
    store.claim_repetitions(order.id, f"run-{order.id}", now + timedelta(seconds=runs + 5), now, 600)
    return order


def deliver(store: Store, orders: list[Order], n: int) -> None:
    now = datetime.now(UTC)
    store.record_results([Result.with_body(page_body(o.url), 1 << 20, job_key=job_key(o.id, n), order_id=o.id, n=n,
                                           miner_id="miner", fetched_at=now, status=200, final_url=o.url,
                                           headers={"content-type": "text/html"}, stored_at=now) for o in orders])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=200)
    p.add_argument("--rounds", type=int, default=6, help="results per order (the first is each order's baseline)")
    p.add_argument("--store", help="a store URL (default: SQLite in a temporary folder)")
    args = p.parse_args()
    store = open_store(args.store or f"sqlite:///{Path(tempfile.mkdtemp(prefix='crawlcoin-bench-watch-')) / 's.db'}")
    # Two sets of orders alike: one observed one order at a time, one in batches.
    single = [place(store, args.rounds) for _ in range(args.orders)]
    batched = [place(store, args.rounds) for _ in range(args.orders)]
    cpu = {"one order at a time": 0.0, "a batch of orders": 0.0}
    for n in range(1, args.rounds + 1):
        deliver(store, single + batched, n)
        for name in (list(cpu) if n % 2 else list(cpu)[::-1]):
            start = time.process_time()
            if name == "one order at a time":
                for o in single:
                    observe_order_from(store, o.id)
            else:
                observe_orders(store, [o.id for o in batched])
            cpu[name] += time.process_time() - start
    for orders in (single, batched):
        for o in orders:
            observed = store.list_observations(o.id)
            assert [(x.n, x.changed) for x in observed] == [(n, n > 1) for n in range(1, args.rounds + 1)], o.id
    results = args.orders * args.rounds
    per = {name: 1000 * c / results for name, c in cpu.items()}
    print(f"{args.orders} orders × {args.rounds} results each, every one a change with a diff and a webhook delivery")
    for name, ms in per.items():
        print(f"  {name:22s} {ms:6.2f} ms CPU per observed result")
    print(f"  batch / one at a time: {per['a batch of orders'] / per['one order at a time']:.2f}")
    store.close()


if __name__ == "__main__":
    main()
