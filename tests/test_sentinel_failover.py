"""Valkey fails over under a running marketplace: primary + replica + three Sentinels, the primary killed.

`crawlcoin up` runs every service (API, worker, mining and result servers) against
`CRAWLCOIN_REDIS_URL=redis+sentinel://…`; a real `crawlcoin mine` and `crawlcoin results` work the
orders. Mid-run the replica is cut off from the primary for a moment (so the writes of that moment
exist on the primary only: released jobs, leases, acks, notices, throttles — what asynchronous
replication can lose) and then the primary is SIGKILLed. The Sentinels promote the replica and
every process follows it. In the end every repetition is on disk exactly once or refunded, the
miner is paid once per result, coins are conserved and every order completes; the dead primary,
started again, comes back as a replica of the new one.
"""

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis import Redis

from tests.conftest import free_port
from tests.flows.conftest import wait_for
from tests.helpers import ApiClient, interrupt
from tests.test_cli_up import CRAWLCOIN, ConsoleLines, start_up, stop, wait_for_table
from tests.test_e2e import Pages, client_env
from tests.valkey_sentinel import SentinelTopology

ORDERS, RUNS, EVERY = 4, 6, 3
LOST_WINDOW_SECONDS = 1.5


def test_orders_ride_through_a_sentinel_failover_that_loses_writes(tmp_path: Path) -> None:
    topology = SentinelTopology(tmp_path / "valkey")
    topology.start()
    pages = Pages()
    ports = {name: free_port() for name in ("api", "valkey", "mining", "results")}
    proc = start_up(tmp_path / "data", ports["api"], ports["valkey"], mining_port=ports["mining"],
                    CRAWLCOIN_REDIS_URL=topology.url,
                    CRAWLCOIN_RESULTS_PORT=str(ports["results"]), CRAWLCOIN_ALLOW_PRIVATE_TARGETS="true",
                    CRAWLCOIN_LEASE_SECONDS="8", CRAWLCOIN_DISPATCH_WINDOW_SECONDS="8",
                    CRAWLCOIN_DISPATCH_LEAD_SECONDS="4", CRAWLCOIN_DOMAIN_RATE_PER_SECOND="1000",
                    CRAWLCOIN_ARGON2_TIME_COST="1", CRAWLCOIN_ARGON2_MEMORY_KIB="8192")
    api = ApiClient(f"http://127.0.0.1:{ports['api']}")
    clients: list[subprocess.Popen[bytes]] = []
    try:
        table = wait_for_table(proc)
        assert "valkey (external)" in table and topology.password not in table
        console = ConsoleLines(proc)
        customer = api.new_account(coins=ORDERS * RUNS)
        volunteer = api.new_account()
        start = datetime.now(UTC) + timedelta(seconds=12)
        order_ids = []
        for i in range(ORDERS):
            r = api.post("/orders", headers=customer.headers, json={
                "url": f"http://127.0.0.1:{pages.server_port}/page/o{i}", "max_runs": RUNS,
                "schedule": {"kind": "interval", "every_seconds": EVERY},
                "start_at": (start + timedelta(seconds=i)).isoformat()})
            assert r.status_code == 201, r.text
            order_ids.append(r.json()["id"])

        def orders() -> list[dict]:
            return [api.get(f"/orders/{oid}", headers=customer.headers).json() for oid in order_ids]

        granted = ORDERS * RUNS
        mine_token = api.post("/tokens", json={"scopes": ["mine"]}, headers=volunteer.headers).json()["token"]
        clients.append(subprocess.Popen(
            [CRAWLCOIN, "mine", "--server", f"http://127.0.0.1:{ports['mining']}", "--token", mine_token,
             "--allow-private-targets"], env=client_env(), stdout=open(tmp_path / "miner.log", "wb"),
            stderr=subprocess.STDOUT))
        results_token = api.post("/tokens", json={"scopes": ["results"]}, headers=customer.headers).json()["token"]
        out = tmp_path / "results"
        results = subprocess.Popen(
            [CRAWLCOIN, "results", "--server", f"http://127.0.0.1:{ports['results']}", "--token", results_token,
             "--out", str(out), *[x for oid in order_ids for x in ("--order", oid)]], env=client_env(),
            stdout=open(tmp_path / "results.log", "wb"), stderr=subprocess.STDOUT)
        clients.append(results)

        def on_disk() -> dict[str, list[int]]:
            return {oid: sorted(json.loads(p.read_text())["n"] for p in (out / oid).glob("[0-9]*.meta.json"))
                    for oid in order_ids}

        def delivered() -> int:
            return sum(len(ns) for ns in on_disk().values())

        wait_for(lambda: delivered() >= 4, 120, "4 results on disk", poll=0.3)
        # The replica stops receiving; what the services write meanwhile lives on the primary only.
        topology.cut_replication()
        with Redis(port=topology.ports["replica"], password=topology.password) as replica:
            replica_offset = int(replica.info("replication")["slave_repl_offset"])
        time.sleep(LOST_WINDOW_SECONDS)
        with Redis(port=topology.ports["primary"], password=topology.password) as primary:
            primary_offset = int(primary.info("replication")["master_repl_offset"])
        assert delivered() < granted, "the kill happens while orders are being worked"
        killed_at = time.monotonic()
        topology.kill("primary")
        topology.wait_until(lambda: topology.primary_port() == topology.ports["replica"], 60,
                            "the Sentinels promote the replica")
        promoted_after = time.monotonic() - killed_at
        topology.restore_replica_auth()
        at_kill = delivered()
        wait_for(lambda: delivered() > at_kill, 120, "a result on disk after the failover", poll=0.2)
        delivering_after = time.monotonic() - killed_at
        print(f"\nfailover: {primary_offset - replica_offset} bytes of replication stream lost; replica promoted "
              f"{promoted_after:.1f} s after the kill; first result on disk after it {delivering_after:.1f} s "
              f"after the kill")
        assert primary_offset > replica_offset, "writes were lost with the primary"

        topology.restart("primary")  # the dead machine comes back: as a replica of the new primary
        topology.wait_until(lambda: _role(topology, "primary") == "slave", 60, "the old primary rejoins as replica")

        def settled() -> bool:
            return all(o["status"] == "completed" for o in orders())

        deadline = time.monotonic() + 150
        while not settled() and time.monotonic() < deadline:
            time.sleep(1)
        files, state = on_disk(), orders()
        report = "\n".join(f"order {o['id']}: {o['status']}, escrow {o['escrow_balance']}, claimed "
                           f"{o['runs_claimed']}/{RUNS}, on disk {files[o['id']]}" for o in state)
        for o in state:
            ns = files[o["id"]]
            assert len(ns) == len(set(ns)) and set(ns) <= set(range(1, RUNS + 1)), \
                f"each repetition on disk at most once:\n{report}"
        paid = delivered()
        assert api.balance(volunteer) == paid, f"the miner was paid once per result on disk:\n{report}"
        escrows = sum(o["escrow_balance"] for o in state)
        assert api.balance(customer) + api.balance(volunteer) + escrows == granted, f"coins conserved:\n{report}"
        assert settled(), f"every order completes (each repetition delivered or refunded):\n{report}"
        assert api.balance(customer) == granted - paid, f"what was not delivered was refunded:\n{report}"
        logs = "".join(p.read_text() for p in (tmp_path / "data" / "logs").glob("*.log"))
        print(f"delivered {paid} of {granted} repetitions, refunded {granted - paid}; the requeue pass queued jobs "
              f"again for {logs.count('queued again')} order(s)")
        assert results.wait(timeout=60) == 0, "the result client finished with all orders"
        assert proc.poll() is None, "crawlcoin up carried on"
        assert "Traceback" not in "\n".join(console.lines)
    finally:
        interrupt(clients)
        stop(proc)
        api.close()
        pages.shutdown()
        topology.stop()


def _role(topology: SentinelTopology, name: str) -> str:
    try:
        with Redis(port=topology.ports[name], password=topology.password, socket_timeout=2) as r:
            return str(r.info("replication")["role"])
    except Exception:  # noqa: S110 - not up yet
        return "down"
