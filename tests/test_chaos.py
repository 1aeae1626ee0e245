"""Chaos on `crawlcoin up`: Valkey is SIGKILLed while orders are being dispatched, twice.

Public interfaces only: the HTTP API (register + TOTP), `crawlcoin mine --allow-private-targets`,
`crawlcoin results` and a local page server. The supervisor must restart Valkey on the same port
and data (AOF) and say so on the console; in the end every repetition of every order is on disk
exactly once or refunded, no order completes with coins left in escrow, and every coin granted is
in the customer's balance, the miner's or an escrow.
"""

import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.flows.conftest import wait_for
from tests.helpers import ApiClient, interrupt, place_page_orders
from tests.test_cli_up import ConsoleLines, children_of, start_up, stop, wait_for_table
from tests.test_e2e import Pages, ns_on_disk, start_clients

ORDERS, RUNS, EVERY = 4, 6, 3

# Its waits are bounded in seconds: never beside the HA topology's 21 containers (tests/deploy/test_ha_topology.py).
pytestmark = pytest.mark.xdist_group("machine-wide-chaos")


def test_orders_survive_valkey_being_killed_during_dispatch(tmp_path: Path) -> None:
    pages = Pages()
    ports = {name: free_port() for name in ("api", "valkey", "mining", "results")}
    proc = start_up(tmp_path / "data", ports["api"], ports["valkey"], mining_port=ports["mining"],
                    CRAWLCOIN_RESULTS_PORT=str(ports["results"]), CRAWLCOIN_ALLOW_PRIVATE_TARGETS="true",
                    CRAWLCOIN_LEASE_SECONDS="8", CRAWLCOIN_DISPATCH_WINDOW_SECONDS="8",
                    CRAWLCOIN_DISPATCH_LEAD_SECONDS="4", CRAWLCOIN_DOMAIN_RATE_PER_SECOND="1000",
                    CRAWLCOIN_ARGON2_TIME_COST="1", CRAWLCOIN_ARGON2_MEMORY_KIB="8192")
    api = ApiClient(f"http://127.0.0.1:{ports['api']}")
    clients: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_table(proc)
        console = ConsoleLines(proc)
        customer = api.new_account(coins=ORDERS * RUNS)
        volunteer = api.new_account()
        start = datetime.now(UTC) + timedelta(seconds=12)
        order_ids = list(place_page_orders(api, customer, pages.server_port, ORDERS, RUNS, EVERY, start))

        def orders() -> list[dict]:
            return [api.get(f"/orders/{oid}", headers=customer.headers).json() for oid in order_ids]

        granted = ORDERS * RUNS
        assert api.balance(customer) + api.balance(volunteer) + sum(o["escrow_balance"] for o in orders()) == granted

        miner, results, out = start_clients(api, ports, volunteer, customer, order_ids, tmp_path)
        clients += [miner, results]

        def on_disk() -> dict[str, list[int]]:
            return ns_on_disk(out, order_ids)

        def delivered() -> int:
            return sum(len(ns) for ns in on_disk().values())

        # Two kills of Valkey while repetitions are being claimed, queued and fetched.
        for kill, after in enumerate((2, 2 + ORDERS * RUNS // 3), 1):
            wait_for(lambda after=after: delivered() >= after, 120, f"{after} results on disk", poll=0.3)
            assert delivered() < granted, "the kill happens during dispatch"
            [valkey_pid] = [pid for pid, argv in children_of(proc.pid) if "valkey" in argv.split()[0]]
            os.kill(valkey_pid, signal.SIGKILL)
            console.wait_for(r"^valkey died \(killed by SIGKILL\); restarting in \d+ s$", 10)
            wait_for(lambda kill=kill: sum("valkey is back" in x for x in console.lines) == kill, 30,
                     f"valkey back after kill {kill}", poll=0.3)
        assert proc.poll() is None, "crawlcoin up carried on"

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
        assert not [o for o in state if o["status"] == "completed" and o["escrow_balance"] > 0], \
            f"no order completes with coins in escrow:\n{report}"
        assert settled(), f"every order completes (each repetition delivered or refunded):\n{report}"
        assert api.balance(customer) == granted - paid, f"what was not delivered was refunded:\n{report}"
        assert results.wait(timeout=60) == 0, "the result client finished with all orders"
        assert "Traceback" not in "\n".join(console.lines)
    finally:
        interrupt(clients)
        stop(proc)
        api.close()
        pages.shutdown()
