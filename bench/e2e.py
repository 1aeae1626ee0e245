"""The whole pipeline under load: `crawlcoin up`, N orders, M miners, result clients, real files.

Starts the one-command stack, a local page server, N customers' orders (interval 60 s,
starts staggered over one interval), M `crawlcoin mine` processes and result clients
(`crawlcoin results`, up to 100 orders each), runs for a fixed time and prints:
repetitions due / enqueued / fetched / delivered to disk, scheduled time → file renamed
p50/p95/p99, jobs/s at the peak (best 10 s), CPU-seconds per repetition and peak RSS per
process kind.

    python bench/e2e.py [--orders 1000] [--miners 4] [--minutes 5]
"""

import argparse
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pyotp

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KINDS = [("prefect server", "prefect server start"), ("worker", " worker"), ("api", "serve api"),
         ("mining server", "serve mining"), ("result server", "serve results"), ("dashboard", "streamlit"),
         ("valkey", "valkey-server"), ("miner", " mine "), ("result client", " results ")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")


def kind_of(proc: psutil.Process) -> str | None:
    try:
        cmd = " ".join(proc.cmdline()) + " "
    except psutil.Error:
        return None
    return next((k for k, marker in KINDS if marker in cmd), None)


class Sampler(threading.Thread):
    """CPU seconds and peak RSS per process kind, sampled every second."""

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True)
        self.roots, self.stop = roots, threading.Event()
        self.cpu: dict[int, tuple[str, float]] = {}
        self.rss: dict[str, int] = defaultdict(int)

    def run(self) -> None:
        while not self.stop.wait(1):
            procs = []
            for pid in self.roots:
                try:
                    root = psutil.Process(pid)
                    procs += [root, *root.children(recursive=True)]
                except psutil.Error:
                    pass
            per_kind: dict[str, int] = defaultdict(int)
            for p in procs:
                kind = kind_of(p)
                if kind is None:
                    continue
                try:
                    t = p.cpu_times()
                    self.cpu[p.pid] = (kind, t.user + t.system)
                    per_kind[kind] += p.memory_info().rss
                except psutil.Error:
                    pass
            for kind, rss in per_kind.items():
                self.rss[kind] = max(self.rss[kind], rss)


def page_server() -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = f"<html><body>{self.path} {time.time()}</body></html>".encode() * 20
            self.send_response(200 if self.path != "/robots.txt" else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def account(api: httpx.Client) -> dict[str, str]:
    name, pw = f"bench-{os.urandom(4).hex()}", "bench password 123"
    secret = api.post("/auth/register", json={"username": name, "password": pw}).json()["totp"]["secret"]
    r = api.post("/auth/totp/confirm", json={"username": name, "password": pw,
                                             "code": pyotp.TOTP(secret).at(time.time() - 30)})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=1000)
    p.add_argument("--miners", type=int, default=4)
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("--lead", type=float, default=90, help="seconds before the first order starts")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="crawlcoin-bench-e2e-"))
    ports = {k: free_port() for k in ("api", "valkey", "mining", "results", "dashboard", "prefect")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRAWLCOIN_", "PREFECT_"))}
    env.update({f"CRAWLCOIN_{k.upper()}_PORT": str(v) for k, v in ports.items()},
               CRAWLCOIN_DATA_DIR=str(tmp / "data"), CRAWLCOIN_ALLOW_PRIVATE_TARGETS="true",
               CRAWLCOIN_DOMAIN_RATE_PER_SECOND="1000", CRAWLCOIN_MAX_RUNS_CAP="100000")
    pages = page_server()
    up = subprocess.Popen([str(BIN / "crawlcoin"), "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=ROOT)
    assert up.stdout is not None
    for line in up.stdout:
        if line.lstrip().startswith("└"):
            break
    threading.Thread(target=lambda: [None for _ in up.stdout], daemon=True).start()
    clients: list[subprocess.Popen[bytes]] = []
    sampler = Sampler([up.pid])
    sampler.start()
    runs = int(args.minutes) + 2
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{ports['api']}", timeout=60)
        customer = account(api)
        for i in range(0, args.orders * runs, 1000):
            api.post("/wallet/faucet", json={"amount": 1000}, headers={**customer, "Idempotency-Key": f"f{i}"})
        first = datetime.now(UTC) + timedelta(seconds=args.lead)
        t_orders = time.time()
        order_ids = []
        for i in range(args.orders):
            body = {"url": f"http://127.0.0.1:{pages.server_port}/o{i}", "max_runs": runs,
                    "start_at": (first + timedelta(seconds=60 * i / args.orders)).isoformat(),
                    "schedule": {"kind": "interval", "every_seconds": 60}}
            r = api.post("/orders", json=body, headers=customer)
            r.raise_for_status()
            order_ids.append(r.json()["id"])
        print(f"{args.orders} orders placed in {time.time() - t_orders:.1f} s; first due at +{args.lead:.0f} s")
        out = tmp / "results"
        for start in range(0, len(order_ids), 100):
            token = api.post("/tokens", json={"scopes": ["results"]}, headers=customer).json()["token"]
            argv = [str(BIN / "crawlcoin"), "results", "--server", f"http://127.0.0.1:{ports['results']}",
                    "--token", token, "--out", str(out)]
            for oid in order_ids[start:start + 100]:
                argv += ["--order", oid]
            clients.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(args.miners):
            token = api.post("/tokens", json={"scopes": ["mine"]}, headers=account(api)).json()["token"]
            clients.append(subprocess.Popen(
                [str(BIN / "crawlcoin"), "mine", "--server", f"http://127.0.0.1:{ports['mining']}", "--token", token,
                 "--allow-private-targets", "--concurrency", "16"], env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        sampler.roots += [c.pid for c in clients]
        cpu_start = sum(c for _, c in sampler.cpu.values())
        end = first + timedelta(minutes=args.minutes)
        while datetime.now(UTC) < end + timedelta(seconds=30):
            time.sleep(5)
        now = datetime.now(UTC)
        due = sum(1 for i in range(args.orders) for n in range(runs)
                  if first + timedelta(seconds=60 * i / args.orders + 60 * n) <= end)
        orders = [api.get(f"/orders/{oid}", headers=customer).json() for oid in order_ids]
        enqueued = sum(o["runs_claimed"] for o in orders)
        fetched = sum(o["runs_claimed"] - o["escrow_balance"] for o in orders)
        lat, arrivals = [], []
        for path in out.glob("*/[0-9]*.meta.json"):
            meta = json.loads(path.read_text())
            order_index = order_ids.index(meta["order_id"])
            scheduled = first + timedelta(seconds=60 * order_index / args.orders + 60 * (meta["n"] - 1))
            if scheduled <= end:
                lat.append(path.stat().st_mtime - scheduled.timestamp())
            arrivals.append(path.stat().st_mtime)
        arrivals.sort()
        peak = max((sum(1 for a in arrivals if t <= a < t + 10) / 10 for t in arrivals), default=0.0)
        cpu_total = sum(c for _, c in sampler.cpu.values()) - cpu_start
        print(f"cores: {os.cpu_count()}; {args.orders} orders × every 60 s, {args.miners} miners, "
              f"{args.minutes:.0f} min window (at {now:%H:%M:%S} UTC)")
        print(f"repetitions due {due}, enqueued {enqueued}, fetched {fetched}, delivered to disk {len(lat)} (due ones)")
        print(f"scheduled → file renamed: p50 {pct(lat, 50):.2f} s, p95 {pct(lat, 95):.2f} s, p99 {pct(lat, 99):.2f} s")
        print(f"peak delivery: {peak:.1f} jobs/s (best 10 s)")
        print(f"CPU-seconds per delivered repetition (all processes, incl. clients): "
              f"{cpu_total / max(len(arrivals), 1):.3f}")
        cpu_kind: dict[str, float] = defaultdict(float)
        for kind, c in sampler.cpu.values():
            cpu_kind[kind] += c
        for kind, _ in KINDS:
            if kind in sampler.rss:
                print(f"  {kind:14} peak RSS {sampler.rss[kind] / 2**20:7.0f} MiB   CPU {cpu_kind[kind]:7.1f} s")
    finally:
        sampler.stop.set()
        for c in clients:
            c.send_signal(signal.SIGINT)
        for c in clients:
            try:
                c.wait(timeout=30)
            except subprocess.TimeoutExpired:
                c.kill()
        up.send_signal(signal.SIGINT)
        up.wait(timeout=120)
        pages.shutdown()


if __name__ == "__main__":
    main()
