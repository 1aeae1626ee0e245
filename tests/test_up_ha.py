"""`crawlcoin up --ha`: the no-single-point-of-failure topology as processes on one machine, under fire.

Three Cassandra nodes (RF 3), Valkey with a replica and three Sentinels, two Prefect API servers, two of each
crawlcoin server behind HAProxy — all started by one `crawlcoin up --ha`. A customer orders a local page
2 × 15 times (every 2 s); a real `crawlcoin mine` and `crawlcoin results` work the orders through the public
ports. While they run, one Cassandra node, one Prefect API server and one API replica are SIGKILLed and the
Valkey primary hangs (SIGSTOP: a process the supervisor would restart within a second, as a machine that comes
back, so a hang is what makes the Sentinels fail over) until the Sentinels have promoted the replica. In the end
every repetition is a file on disk exactly once, the miner was paid once per result, coins are conserved and
both orders completed.
"""

import json
import os
import re
import shutil
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from tests.conftest import backend_unavailable, free_port
from tests.flows.conftest import wait_for
from tests.helpers import ApiClient, interrupt, place_page_orders
from tests.scale.test_scale_out import children_of
from tests.test_cli_up import start_up, stop, wait_for_table
from tests.test_e2e import Pages, ns_on_disk, start_clients

ORDERS, RUNS, EVERY = 2, 15, 2

# Three JVMs and ~20 processes: never beside the HA topology's containers or the other chaos tests.
pytestmark = pytest.mark.xdist_group("machine-wide-chaos")


@pytest.fixture
def ha_programs() -> None:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        backend_unavailable("cassandra", "`java` (17) is not installed, and --ha runs three Cassandra nodes")
    if shutil.which("haproxy", path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin") is None:
        backend_unavailable("haproxy", "the `haproxy` program is not installed (Debian: apt-get install haproxy)")


@pytest.mark.timeout(600)  # bringing up 3 JVMs and ~20 processes on a loaded 2-core machine takes minutes
def test_up_ha_rides_through_losing_one_of_each(tmp_path: Path, ha_programs: None) -> None:
    data = tmp_path / "data"
    ports = {name: free_port() for name in ("api", "valkey", "mining", "results", "prefect")}
    proc = start_up(data, ports["api"], ports["valkey"], "--ha", mining_port=ports["mining"],
                    CRAWLCOIN_RESULTS_PORT=str(ports["results"]), CRAWLCOIN_PREFECT_PORT=str(ports["prefect"]),
                    CRAWLCOIN_ALLOW_PRIVATE_TARGETS="true", CRAWLCOIN_LEASE_SECONDS="8",
                    CRAWLCOIN_DISPATCH_WINDOW_SECONDS="8", CRAWLCOIN_DISPATCH_LEAD_SECONDS="4",
                    CRAWLCOIN_DOMAIN_RATE_PER_SECOND="1000", CRAWLCOIN_ARGON2_TIME_COST="1",
                    CRAWLCOIN_ARGON2_MEMORY_KIB="8192")
    pages = Pages()
    api = ApiClient(f"http://127.0.0.1:{ports['api']}")
    clients: list[subprocess.Popen[bytes]] = []
    try:
        table = wait_for_table(proc, timeout=480)
        password = json.loads((data / "secrets.json").read_text())["valkey_password"]
        assert password not in table
        for public in ("api", "mining", "results"):
            assert f"http://127.0.0.1:{ports[public]}" in table
        customer = api.new_account(coins=ORDERS * RUNS)
        volunteer = api.new_account()
        start = datetime.now(UTC) + timedelta(seconds=10)
        order_ids = list(place_page_orders(api, customer, pages.server_port, ORDERS, RUNS, EVERY, start))
        granted = ORDERS * RUNS
        miner, results, out = start_clients(api, ports, volunteer, customer, order_ids, tmp_path)
        clients += [miner, results]

        def delivered() -> int:
            return sum(len(ns) for ns in ns_on_disk(out, order_ids).values())

        wait_for(lambda: delivered() >= 4, 180, "4 results on disk", poll=0.3)

        # Mid-run: a Cassandra node, a Prefect API server and an API replica are SIGKILLed, the Valkey primary hangs.
        with redis.Redis(port=ports["valkey"], password=password) as primary:
            valkey_pid = int(primary.info("server")["process_id"])
        cassandra_pid = int((data / "cassandra" / "node-2" / "cassandra.pid").read_text())
        prefect_port = re.search(r"prefect server 1 +│ http://127\.0\.0\.1:(\d+)", table).group(1)
        api_port = re.search(r"api 1 +│ http://127\.0\.0\.1:(\d+)", table).group(1)
        up_children = children_of(proc.pid)
        prefect_pid = next(pid for pid, argv, _ in up_children
                           if "server start" in argv and f"--port {prefect_port}" in argv)
        api_pid = next(pid for pid, argv, env in up_children
                       if "serve api" in argv and env.get("CRAWLCOIN_API_PORT") == api_port)
        before = delivered()
        nodes = json.loads((data / "ha-ports.json").read_text())
        os.kill(valkey_pid, signal.SIGSTOP)
        try:
            for pid in (cassandra_pid, prefect_pid, api_pid):
                os.kill(pid, signal.SIGKILL)
            assert before < granted, "the kills happened mid-run"

            def primary_port() -> int | None:
                try:
                    with redis.Redis(port=nodes["sentinels"][0], password=password, decode_responses=True) as s:
                        return int(s.sentinel_get_master_addr_by_name("crawlcoin")[1])
                except redis.RedisError:
                    return None

            wait_for(lambda: primary_port() == nodes["valkey_replica"], 60, "the Sentinels promote the replica",
                     poll=0.5)
        finally:
            os.kill(valkey_pid, signal.SIGCONT)  # back as a replica of the new primary

        def replica_again() -> bool:  # the old primary, demoted by the Sentinels
            try:
                with redis.Redis(port=ports["valkey"], password=password, decode_responses=True) as old:
                    return old.info("replication")["role"] == "slave"
            except redis.RedisError:
                return False

        wait_for(replica_again, 60, "the old primary turned into a replica", poll=0.5)
        wait_for(lambda: delivered() >= granted, 240, f"all {granted} results on disk", poll=1)
        assert proc.poll() is None, "crawlcoin up --ha carried on"
        for oid, ns in ns_on_disk(out, order_ids).items():
            assert ns == list(range(1, RUNS + 1)), f"order {oid}: each repetition written once"

        def settled() -> bool:
            orders = [api.get(f"/orders/{oid}", headers=customer.headers).json() for oid in order_ids]
            return all(o["status"] == "completed" and o["escrow_balance"] == 0 for o in orders)

        wait_for(settled, 90, "both orders completed with an empty escrow", poll=1)
        kinds = api.earned_by_kind(volunteer)
        assert kinds.get("reward", 0) == granted, f"each repetition paid exactly once: {kinds}"
        assert api.balance(volunteer) == granted and api.balance(customer) == 0, "coins are conserved"
    finally:
        interrupt(clients)
        stop(proc)
        api.close()
        pages.shutdown()
    for pidfile in (data / "cassandra").glob("node-*/cassandra.pid"):
        assert not Path(f"/proc/{pidfile.read_text().strip()}").exists(), f"{pidfile.parent.name} stopped too"
