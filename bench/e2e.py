"""The whole pipeline under load: `crawlcoin up`, N orders, M miners, result clients, real files.

Starts the one-command stack, a local page server (about 20 KB of text per page, and a line
that changes on every fetch: see `page_body`), N customers' orders (interval 60 s,
starts staggered over one interval), M `crawlcoin mine` processes and result clients
(`crawlcoin results`, up to 100 orders each), runs for a fixed time and prints:
repetitions due / enqueued / fetched / delivered to disk, scheduled time → file renamed
p50/p95/p99, jobs/s at the peak (best 10 s), CPU-seconds per repetition and peak RSS per
process kind. CPU counts from the moment the clients run until the window's end (+30 s), every
process (the stack, its PostgreSQL, miners and result clients), not the bench's own reading of the
orders after it.

    python bench/e2e.py [--orders 1000] [--miners 4] [--minutes 5] [--with-celery]

--with-celery then runs bench/celery_baseline.py (Celery beat + a prefork worker on Valkey, the
same orders as beat entries) with the same orders and minutes, prints its figures and the
ratios crawlcoin/Celery: on-time orders (every due repetition delivered at most --on-time
seconds after its slot), p99 scheduled → file and CPU-seconds per repetition. Needs
`pip install celery` (a benchmark-only dependency).
"""

import argparse
import bisect
import functools
import http.server
import json
import os
import random
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
         ("valkey", "valkey-server"), ("miner", " mine "), ("result client", " results "),
         ("prefect's postgres", "postgres")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_processes(procs: list[subprocess.Popen], sig: int = signal.SIGINT, timeout: float = 30) -> None:
    """Send `sig` to every process still running, then wait for each; kill one that outlasts `timeout`."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")


def kind_of(proc: psutil.Process, kinds: list[tuple[str, str]] = KINDS) -> str | None:
    try:
        cmd = " ".join(proc.cmdline()) + " "
    except psutil.Error:
        return None
    return next((k for k, marker in kinds if marker in cmd), None)


class Sampler(threading.Thread):
    """CPU seconds and peak RSS per process kind (kind: first marker found in the command line),
    sampled every second over the given processes and their descendants."""

    def __init__(self, roots: list[int], kinds: list[tuple[str, str]] = KINDS) -> None:
        super().__init__(daemon=True)
        self.roots, self.kinds, self.stop = roots, kinds, threading.Event()
        self.cpu: dict[int, tuple[str, float]] = {}
        self.since: dict[int, float] = {}  # CPU seconds per process when it was last marked (`mark`, `started`)
        self.rss: dict[str, int] = defaultdict(int)
        self._sampling = threading.Lock()

    def run(self) -> None:
        while not self.stop.wait(1):
            self.sample()

    def sample(self) -> None:
        with self._sampling:
            procs = []
            for pid in self.roots:
                try:
                    root = psutil.Process(pid)
                    procs += [root, *root.children(recursive=True)]
                except psutil.Error:
                    pass
            per_kind: dict[str, int] = defaultdict(int)
            for p in procs:
                kind = kind_of(p, self.kinds)
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

    def mark(self) -> None:
        """Count every process from now on (`per_kind`, `window`)."""
        self.sample()
        self.since = {pid: c for pid, (_, c) in self.cpu.items()}

    def started(self, pids: list[int]) -> None:
        """Count these processes from now on: they have started (imports, connecting) and wait for work."""
        self.sample()
        self.since.update({pid: self.cpu[pid][1] for pid in pids if pid in self.cpu})

    def window(self) -> float:
        """CPU seconds of every process since it was marked (from its start if it came later)."""
        return sum(c - self.since.get(pid, 0.0) for pid, (_, c) in self.cpu.items())

    def per_kind(self) -> dict[str, tuple[int, float]]:
        """kind → (peak RSS bytes, CPU seconds since the mark), in the order of `kinds`."""
        cpu: dict[str, float] = defaultdict(float)
        for pid, (kind, c) in self.cpu.items():
            cpu[kind] += c - self.since.get(pid, 0.0)
        return {kind: (self.rss[kind], cpu[kind]) for kind, _ in self.kinds if kind in self.rss}


PAGE_WORDS = ("market price report update season harvest supply demand trade index volume weekly region "
              "buyer seller offer quote delivery contract grade storage export import forecast average").split()


def page_body(path: str, volatile: bool = False) -> bytes:
    """The page at `path`: about 20 KB of article text fixed per path, and a line that changes on every fetch
    (the time), as a news or price page has. `volatile`: the earlier bench page instead, about 1 KB made mostly
    of the time, so that two fetches of it share almost no text and every check of it stays disputed."""
    if volatile:
        return f"<html><body>{path} {time.time()}</body></html>".encode() * 20
    return _article(path) + f"<p>Updated {time.time():.6f}</p></body></html>".encode()


@functools.cache
def _article(path: str) -> bytes:
    rng = random.Random(path)
    paragraphs = []
    size = 0
    while size < 20_000:
        text = " ".join(rng.choice(PAGE_WORDS) for _ in range(60))
        paragraphs.append(f"<p>{text}.</p>")
        size += len(text) + 8
    return f"<html><head><title>{path}</title></head><body><h1>{path}</h1>{''.join(paragraphs)}".encode()


def page_server(volatile: bool = False) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = page_body(self.path, volatile)
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


def slot(first: datetime, orders: int, index: int, n: int) -> datetime:
    """Scheduled time of repetition n (1-based) of order `index`: starts staggered over one minute."""
    return first + timedelta(seconds=60 * index / orders + 60 * (n - 1))


def delivery(files: list[tuple[int, int, float]], first: datetime, orders: int, end: datetime,
             on_time_s: float) -> dict:
    """Figures from the files on disk, each (order index, n, time renamed into place): repetitions
    due by `end`, delivered (due ones), lateness, on-time orders, peak jobs/s (best 10 s)."""
    n_due = [sum(1 for n in range(1, int((end - first).total_seconds() // 60) + 3)
                 if slot(first, orders, i, n) <= end) for i in range(orders)]
    lat, late_by_order = [], defaultdict(list)
    for index, n, mtime in files:
        scheduled = slot(first, orders, index, n)
        if scheduled <= end:
            lat.append(mtime - scheduled.timestamp())
            late_by_order[index].append(lat[-1])
    arrivals = sorted(mtime for _, _, mtime in files)
    peak = max((bisect.bisect_left(arrivals, t + 10) - k for k, t in enumerate(arrivals)), default=0) / 10
    on_time = sum(1 for i in range(orders)
                  if len(late_by_order[i]) >= n_due[i] and all(x <= on_time_s for x in late_by_order[i]))
    return {"due": sum(n_due), "delivered": len(lat), "lat": lat, "on_time": on_time, "on_time_s": on_time_s,
            "peak": peak, "files": len(files)}


def report(fig: dict) -> None:
    """Print one run's figures (the same lines for crawlcoin and for the Celery baseline)."""
    lat = fig["lat"]
    print(f"cores: {os.cpu_count()}; {fig['orders']} orders × every 60 s, {fig['setup']}, "
          f"{fig['minutes']:.0f} min window (at {fig['at']:%H:%M:%S} UTC)")
    print(f"repetitions due {fig['due']}, enqueued {fig['enqueued']}, fetched {fig['fetched']}, "
          f"delivered to disk {fig['delivered']} (due ones)")
    print(f"scheduled → file renamed: p50 {pct(lat, 50):.2f} s, p95 {pct(lat, 95):.2f} s, p99 {pct(lat, 99):.2f} s")
    print(f"on-time orders (every due repetition on disk ≤ {fig['on_time_s']:g} s after its slot): "
          f"{fig['on_time']} of {fig['orders']}")
    print(f"peak delivery: {fig['peak']:.1f} jobs/s (best 10 s)")
    print(f"CPU-seconds per delivered repetition (all processes{fig.get('cpu_note', '')}): {fig['cpu_per_rep']:.3f}")
    for kind, (rss, cpu) in fig["kinds"].items():
        print(f"  {kind:14} peak RSS {rss / 2**20:7.0f} MiB   CPU {cpu:7.1f} s")
    for line in fig.get("notes", ()):
        print(line)


def compare(ours: dict, celery: dict) -> None:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "n/a"

    p99 = pct(ours["lat"], 99), pct(celery["lat"], 99)
    print(f"crawlcoin / Celery ({ours['orders']} orders × every 60 s, {ours['minutes']:g} min window):")
    print(f"  {'':22} {'crawlcoin':>10} {'Celery':>10} {'ratio':>9}")
    print(f"  {'on-time orders':22} {ours['on_time']:>10} {celery['on_time']:>10} "
          f"{ratio(ours['on_time'], celery['on_time']):>9}   (higher is better)")
    print(f"  {'p99 scheduled → file':22} {p99[0]:>9.3f}s {p99[1]:>9.3f}s {ratio(*p99):>9}   (lower is better)")
    print(f"  {'CPU-s per repetition':22} {ours['cpu_per_rep']:>10.3f} {celery['cpu_per_rep']:>10.3f} "
          f"{ratio(ours['cpu_per_rep'], celery['cpu_per_rep']):>9}   (lower is better)")


def prefect_runs(api_url: str, data_dir: Path) -> str:
    """How late Prefect started the dispatch flow runs: start time − scheduled start time (the embedded
    server asks for the credentials `crawlcoin up` keeps in the data directory)."""
    late, offset, activations = [], 0, 0
    user, _, password = json.loads((data_dir / "secrets.json").read_text())["prefect_auth_string"].partition(":")
    with httpx.Client(base_url=api_url, timeout=60, auth=(user, password)) as prefect:
        while True:
            r = prefect.post("/flow_runs/filter", json={
                "flow_runs": {"start_time": {"is_null_": False}}, "flows": {"name": {"any_": ["dispatch"]}},
                "limit": 200, "offset": offset})
            r.raise_for_status()
            page = r.json()
            for run in page:
                start, expected = run.get("start_time"), run.get("expected_start_time")
                if run.get("name") == "activation":  # created Completed: what an activation queued, not a run
                    activations += 1
                elif start and expected:
                    late.append((datetime.fromisoformat(start) - datetime.fromisoformat(expected)).total_seconds())
            if len(page) < 200:
                break
            offset += 200
    return (f"Prefect dispatch runs started: {len(late)}; start − scheduled start p50 {pct(late, 50):.2f} s, "
            f"p95 {pct(late, 95):.2f} s, p99 {pct(late, 99):.2f} s, max {max(late, default=float('nan')):.2f} s; "
            f"runs recording an activation that claimed every repetition of the order (no dispatch run to come): "
            f"{activations}")


def prefect_rows(data_dir: Path) -> dict[str, int] | None:
    """Rows per table of Prefect's embedded PostgreSQL (exact counts of every table that has any), or None when
    Prefect runs on SQLite."""
    pid_file = data_dir / "prefect-postgres" / "postmaster.pid"
    if not pid_file.exists():
        return None
    import psycopg

    lines = pid_file.read_text().splitlines()  # pid, data dir, start time, port, socket directory, ...
    with psycopg.connect(host=lines[4], port=int(lines[3]), user="postgres", dbname="prefect",
                         connect_timeout=10) as conn:
        tables = [t for (t,) in conn.execute("SELECT relname FROM pg_stat_user_tables ORDER BY relname")]
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}  # type: ignore[index]
    return {t: n for t, n in counts.items() if n}


class RowWatch(threading.Thread):
    """Prefect's database rows every minute: the largest total seen, and the counts at the end."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(daemon=True)
        self.data_dir, self.stop, self.peak, self.last = data_dir, threading.Event(), 0, {}

    def run(self) -> None:
        while not self.stop.wait(60):
            self.read()

    def read(self) -> None:
        try:
            rows = prefect_rows(self.data_dir) or {}
        except Exception as e:  # noqa: BLE001 — a bench reading; the run goes on
            print(f"could not count Prefect's rows: {e}")
            return
        self.last = rows
        self.peak = max(self.peak, sum(rows.values()))

    def note(self, orders: int, retention: float) -> str:
        top = ", ".join(f"{t} {n}" for t, n in sorted(self.last.items(), key=lambda kv: -kv[1])[:8])
        runs_bound = orders * (int((retention + 3 * min(300.0, retention / 2)) / 600) + 6)  # README, at defaults
        return (f"Prefect database rows: peak total {self.peak} (read every 60 s), at the end {sum(self.last.values())}"
                f" ({top}); flow runs {self.last.get('flow_run', 0)} against the README's bound {runs_bound} "
                f"({orders} active orders, retention {retention:g} s)")


def checks(metrics_url: str) -> str:
    """How the mining server's checks of miners' results came out (`crawlcoin_checks_decided_total`): a page
    whose fetches never agree has every job fetched twice and every result wait for its check."""
    decided: dict[str, float] = {}
    for line in httpx.get(metrics_url, timeout=30).text.splitlines():
        if line.startswith("crawlcoin_checks_decided_total{"):
            label, _, value = line.partition("} ")
            decided[label.split('validation="', 1)[1].rstrip('"')] = float(value)
    shown = ", ".join(f"{k} {v:.0f}" for k, v in sorted(decided.items())) or "none"
    return f"trust checks decided: {shown}"


def account(api: httpx.Client) -> dict[str, str]:
    name, pw = f"bench-{os.urandom(4).hex()}", "bench password 123"
    secret = api.post("/auth/register", json={"username": name, "password": pw}).json()["totp"]["secret"]
    r = api.post("/auth/totp/confirm", json={"username": name, "password": pw,
                                             "code": pyotp.TOTP(secret).now()})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def run(args: argparse.Namespace) -> dict:
    """crawlcoin's whole stack under the given load; returns the figures for `report`."""
    tmp = Path(tempfile.mkdtemp(prefix="crawlcoin-bench-e2e-"))
    ports = {k: free_port() for k in ("api", "valkey", "mining", "results", "dashboard", "prefect")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRAWLCOIN_", "PREFECT_"))}
    env.update({f"CRAWLCOIN_{k.upper()}_PORT": str(v) for k, v in ports.items()},
               CRAWLCOIN_DATA_DIR=str(tmp / "data"), CRAWLCOIN_ALLOW_PRIVATE_TARGETS="true",
               CRAWLCOIN_DOMAIN_RATE_PER_SECOND="1000", CRAWLCOIN_MAX_RUNS_CAP="100000",
               CRAWLCOIN_PREFECT_RETENTION_SECONDS=str(args.prefect_retention))
    pages = getattr(args, "pages", None) or page_server()
    up = subprocess.Popen([str(BIN / "crawlcoin"), "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=ROOT)
    assert up.stdout is not None
    for line in up.stdout:
        if line.lstrip().startswith("└"):
            break
    threading.Thread(target=lambda: [None for _ in up.stdout], daemon=True).start()
    clients: list[subprocess.Popen[bytes]] = []
    sampler = Sampler([up.pid])
    postmaster = tmp / "data" / "prefect-postgres" / "postmaster.pid"
    pg_pids = [int(postmaster.read_text().split()[0])] if postmaster.exists() else []
    sampler.roots += pg_pids  # the embedded PostgreSQL runs detached from `crawlcoin up`
    sampler.start()
    rows = RowWatch(tmp / "data")
    rows.start()
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
                    "start_at": slot(first, args.orders, i, 1).isoformat(),
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
        sampler.mark()
        # The miners' and result clients' start-up (imports, connecting) is not the work measured, as Celery's
        # worker start-up is not: once they wait for work, count them from there. Nothing is due for a while yet.
        time.sleep(5)
        sampler.started([c.pid for c in clients])
        end = first + timedelta(minutes=args.minutes)
        while datetime.now(UTC) < end + timedelta(seconds=30):
            time.sleep(5)
        now = datetime.now(UTC)
        sampler.sample()
        cpu, kinds = sampler.window(), sampler.per_kind()  # the window's work, not the reading below
        rows.stop.set()
        rows.read()
        orders = [api.get(f"/orders/{oid}", headers=customer).json() for oid in order_ids]
        enqueued = sum(o["runs_claimed"] for o in orders)
        fetched = sum(o["runs_claimed"] - o["escrow_balance"] for o in orders)
        index = {oid: i for i, oid in enumerate(order_ids)}
        files = []
        for path in out.glob("*/[0-9]*.meta.json"):
            meta = json.loads(path.read_text())
            files.append((index[meta["order_id"]], meta["n"], path.stat().st_mtime))
        fig = delivery(files, first, args.orders, end, args.on_time)
        fig["notes"] = [prefect_runs(f"http://127.0.0.1:{ports['prefect']}/api", tmp / "data"),
                        checks(f"http://127.0.0.1:{ports['mining']}/metrics"),
                        rows.note(args.orders, args.prefect_retention)]
        fig.update(orders=args.orders, minutes=args.minutes, at=now, setup=f"{args.miners} miners",
                   enqueued=enqueued, fetched=fetched, cpu_note=", incl. clients",
                   cpu_per_rep=cpu / max(fig["files"], 1), kinds=kinds)
        return fig
    finally:
        sampler.stop.set()
        stop_processes(clients)
        tree = []  # `crawlcoin up`'s children (and the detached PostgreSQL) must not outlive it into the next run
        for pid in [up.pid, *pg_pids]:
            try:
                root = psutil.Process(pid)
                tree += [root, *root.children(recursive=True)] if pid != up.pid else root.children(recursive=True)
            except psutil.Error:
                pass
        stop_processes([up], timeout=120)
        for proc in tree:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        for proc in psutil.wait_procs(tree, timeout=20)[1]:
            proc.kill()
        if getattr(args, "pages", None) is None:
            pages.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=1000)
    p.add_argument("--miners", type=int, default=4)
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("--lead", type=float, default=90, help="seconds before the first order starts")
    p.add_argument("--on-time", type=float, default=2.0, metavar="SECONDS",
                   help="an order is on time if every due repetition is on disk this soon after its slot")
    p.add_argument("--prefect-retention", type=float, default=3600, metavar="SECONDS",
                   help="CRAWLCOIN_PREFECT_RETENTION_SECONDS: how long Prefect keeps crawlcoin's finished runs")
    p.add_argument("--with-celery", action="store_true",
                   help="then run bench/celery_baseline.py with the same load and print the ratios")
    p.add_argument("--volatile-page", action="store_true",
                   help="serve pages made mostly of the time instead of 20 KB of text (every check disputed)")
    args = p.parse_args()
    args.pages = page_server(args.volatile_page)
    try:
        ours = run(args)
        print("== crawlcoin ==")
        report(ours)
        if args.with_celery:
            import celery_baseline

            theirs = celery_baseline.run(args.orders, args.minutes, args.on_time, pages=args.pages)
            print("== Celery baseline ==")
            report(theirs)
            compare(ours, theirs)
    finally:
        args.pages.shutdown()


if __name__ == "__main__":
    main()
