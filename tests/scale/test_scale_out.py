"""Scale-out on one machine: `crawlcoin up --mining-servers 2 --result-servers 2 --workers 2`.

Two mining servers and two result servers behind the project's HAProxy, two Prefect workers.
A customer orders a local page 20 × 25 times (500 repetitions, every second); two volunteers
run `crawlcoin mine` and the customer runs `crawlcoin results` — all through the public ports.
Mid-run one mining server, the result server holding the result client and one worker are
SIGKILLed. In the end every repetition is a file on disk exactly once, the miners earned
exactly one coin per repetition, every escrow is empty and no coin appeared or vanished.
"""

import csv
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import backend_unavailable, free_port
from tests.flows.conftest import wait_for
from tests.helpers import ApiClient, interrupt
from tests.miners.server.conftest import PageServer
from tests.test_cli_up import CRAWLCOIN, start_up, stop, wait_for_table

ORDERS, RUNS = 20, 25

# Timing-bound (default test timeout) and CPU-bound: never beside the HA topology's 21 containers.
pytestmark = pytest.mark.xdist_group("machine-wide-chaos")


def client_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CRAWLCOIN_", "PREFECT_"))} | {"COLUMNS": "120"}


def children_of(pid: int) -> list[tuple[int, str, dict[str, str]]]:
    """(pid, command line, environment) of every child process of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            env = dict(x.split("=", 1) for x in (entry / "environ").read_bytes().decode().split("\0") if "=" in x)
        except (OSError, IndexError, ValueError):
            continue
        found.append((int(entry.name), argv, env))
    return found


def haproxy_servers(stats_url: str) -> dict[str, dict[str, str]]:
    """HAProxy's own view, per server: current and total sessions, status, address."""
    text = httpx.get(f"{stats_url};csv", timeout=5).text.lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {row["svname"]: row for row in rows if row["svname"] not in ("FRONTEND", "BACKEND")}


@pytest.fixture
def haproxy() -> None:
    if shutil.which("haproxy", path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin") is None:
        backend_unavailable("haproxy", "the `haproxy` program is not installed (Debian: apt-get install haproxy)")


def quiet_port() -> int:
    """A free port with free ports above it, below the ephemeral range (where outgoing connections
    take their local ports), so the servers behind HAProxy find their ports still free."""
    while True:
        port = random.randrange(20000, 30000)
        if all(_free(p) for p in range(port, port + 12)):
            return port


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_two_of_each_behind_haproxy_survive_sigkills(tmp_path: Path, haproxy: None) -> None:
    base = quiet_port()
    ports = {"api": free_port(), "valkey": free_port(), "mining": base, "results": base + 1}
    proc = start_up(tmp_path / "data", ports["api"], ports["valkey"], "--mining-servers", "2", "--result-servers",
                    "2", "--workers", "2", mining_port=ports["mining"], CRAWLCOIN_RESULTS_PORT=str(ports["results"]),
                    CRAWLCOIN_ALLOW_PRIVATE_TARGETS="true", CRAWLCOIN_DOMAIN_RATE_PER_SECOND="1000",
                    CRAWLCOIN_LEASE_SECONDS="8", CRAWLCOIN_DISPATCH_WINDOW_SECONDS="8",
                    CRAWLCOIN_DISPATCH_LEAD_SECONDS="4", CRAWLCOIN_ARGON2_TIME_COST="1",
                    CRAWLCOIN_ARGON2_MEMORY_KIB="8192")
    clients: list[subprocess.Popen[bytes]] = []
    pages = PageServer().__enter__()
    api = ApiClient(f"http://127.0.0.1:{ports['api']}")
    try:
        table = wait_for_table(proc)
        stats_url = re.search(r"(http://127\.0\.0\.1:\d+/) \(stats\)", table).group(1)
        mining_url, results_url = (f"http://127.0.0.1:{ports['mining']}", f"http://127.0.0.1:{ports['results']}")
        assert f"{mining_url} (Socket.IO via HAProxy to 2 servers)" in table
        assert f"{results_url} (Socket.IO via HAProxy to 2 servers)" in table
        backends = {("mining" if kind == "mining" else "results") + f"-{i}": url for kind, i, url in
                    re.findall(r"(mining|result) server (\d) +│ (http://127\.0\.0\.1:\d+)", table)}
        assert sorted(backends) == sorted(haproxy_servers(stats_url)) == ["mining-1", "mining-2", "results-1",
                                                                           "results-2"]

        customer = api.new_account(coins=ORDERS * RUNS)
        volunteers = [api.new_account() for _ in range(2)]
        start = datetime.now(UTC) + timedelta(seconds=15)
        order_ids = []
        for i in range(ORDERS):
            r = api.post("/orders", headers=customer.headers, json={
                "url": pages.url(f"/page/o{i}"), "max_runs": RUNS, "schedule": {"kind": "interval", "every_seconds": 1},
                "start_at": (start + timedelta(seconds=i)).isoformat()})
            assert r.status_code == 201, r.text
            order_ids.append(r.json()["id"])
        total = api.balance(customer) + sum(api.balance(v) for v in volunteers) + sum(
            api.get(f"/orders/{oid}", headers=customer.headers).json()["escrow_balance"] for oid in order_ids)
        assert total == ORDERS * RUNS, "every coin granted is in a balance or an escrow"

        for v in volunteers:
            token = api.post("/tokens", json={"scopes": ["mine"]}, headers=v.headers).json()["token"]
            clients.append(subprocess.Popen(
                [CRAWLCOIN, "mine", "--server", mining_url, "--token", token, "--concurrency", "8",
                 "--allow-private-targets"], env=client_env(),
                stdout=open(tmp_path / f"miner-{len(clients)}.log", "wb"),
                stderr=subprocess.STDOUT))
        results_token = api.post("/tokens", json={"scopes": ["results"]}, headers=customer.headers).json()["token"]
        out = tmp_path / "results"
        clients.append(subprocess.Popen(
            [CRAWLCOIN, "results", "--server", results_url, "--token", results_token, "--out", str(out),
             *[x for oid in order_ids for x in ("--order", oid)]], env=client_env(),
            stdout=open(tmp_path / "results-client.log", "wb"), stderr=subprocess.STDOUT))

        def files() -> list[Path]:
            return list(out.glob("*/[0-9]*.meta.json"))

        def miners_on(name: str) -> int:
            return httpx.get(f"{backends[name]}/health", timeout=5).json()["miners"]

        # Round-robin put one volunteer on each mining server, and both servers hand out jobs.
        wait_for(lambda: miners_on("mining-1") == 1 and miners_on("mining-2") == 1, 60,
                 "one miner on each mining server", poll=0.5)
        wait_for(lambda: len(files()) >= RUNS * ORDERS // 5, 150, "a fifth of the results on disk", poll=0.5)
        assert all(api.balance(v) > 0 for v in volunteers), "miners on both mining servers were paid"

        # Mid-run: SIGKILL one mining server, the result server the result client is on, one worker.
        up_children = children_of(proc.pid)
        mining_pid = int(httpx.get(f"{backends['mining-1']}/health", timeout=5).json()["server_id"].split("-")[-2])
        stats = haproxy_servers(stats_url)
        busy = max(("results-1", "results-2"), key=lambda name: int(stats[name]["scur"]))
        assert int(stats[busy]["scur"]) >= 1, "the result client is connected through HAProxy"
        results_port = backends[busy].rsplit(":", 1)[1]
        results_pid = next(pid for pid, argv, env in up_children
                           if "serve results" in argv and env.get("CRAWLCOIN_RESULTS_PORT") == results_port)
        worker_pid = next(pid for pid, argv, _ in up_children if argv.rstrip().endswith(" worker"))
        before_kill = len(files())
        for pid in (mining_pid, results_pid, worker_pid):
            os.kill(pid, signal.SIGKILL)
        assert before_kill < ORDERS * RUNS, "the kills happened mid-run"

        wait_for(lambda: len(files()) >= ORDERS * RUNS, 200, "all 500 results on disk", poll=1)
        assert proc.poll() is None, "crawlcoin up restarts a killed replica and carries on"

        for oid in order_ids:
            ns = [json.loads(p.read_text())["n"] for p in (out / oid).glob("[0-9]*.meta.json")]
            assert sorted(ns) == list(range(1, RUNS + 1)), f"order {oid}: each repetition written once"

        def settled() -> bool:
            orders = [api.get(f"/orders/{oid}", headers=customer.headers).json() for oid in order_ids]
            return all(o["status"] == "completed" and o["escrow_balance"] == 0 for o in orders)

        wait_for(settled, 60, "every order completed with an empty escrow", poll=1)
        earned = [api.balance(v) for v in volunteers]
        # Miners that meet on one server check each other's results: the platform pays each check a fee.
        kinds = [api.earned_by_kind(v) for v in volunteers]
        rewards, fees = sum(k.get("reward", 0) for k in kinds), sum(k.get("validation", 0) for k in kinds)
        assert rewards == ORDERS * RUNS, f"each repetition paid exactly once: {kinds}"
        assert sum(earned) == rewards + fees
        assert api.balance(customer) == 0
        assert api.balance(customer) + sum(earned) == total + fees, "coins are conserved"
        wait_for(lambda: haproxy_servers(stats_url)["mining-1"]["status"] == "UP", 60,
                 "the killed mining server to be back in HAProxy")
    finally:
        interrupt(clients)
        stop(proc)
        api.close()
        pages.__exit__(None, None, None)
