"""Chaos on the HA topology (deploy/ha/compose.yaml), one container per node: 400 repetitions while one node
of each kind is killed with `docker kill`, at different moments.

Killed in turn, 28 s apart while repetitions fall due, each brought back 12 s later (its machine comes back):
a mining server, the Valkey primary (the Sentinels promote the replica), a Cassandra node, a Prefect API server,
an API replica and a result server. Public interfaces only: the HTTP API through HAProxy, a real `crawlcoin mine`
and `crawlcoin results` on this machine, a local page server. In the end every repetition is on disk exactly
once, the miner was paid once per result, coins are conserved and every order completed. Printed for each
kill: how long until a page was fetched again, and the lateness (fetched - due) of the repetitions due until
the next kill.
"""

import json
import statistics
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.deploy.ha_topology import Topology, build_images, docker_compose
from tests.flows.conftest import wait_for
from tests.helpers import ApiClient, interrupt, place_page_orders
from tests.test_e2e import Pages, ns_on_disk, start_clients

# The topology is 21 containers on this machine's two cores: the tests that kill and wait on processes of their
# own run in the same xdist group (one after the other on one test worker), never beside it.
pytestmark = pytest.mark.xdist_group("machine-wide-chaos")

# 400 repetitions over 200 s (2/s). The whole topology shares this machine's two cores, three Cassandra nodes
# among them: it mined 2.4 jobs/s on an idle machine and about half that beside the other tests, so 5/s would
# only measure how far it falls behind, not what a kill costs.
ORDERS, RUNS, EVERY = 10, 40, 5
KILLS = ["mining-1", "valkey-primary", "cassandra-2", "prefect-api-1", "api-1", "results-1"]
DOWN_SECONDS = 12
KILL_EVERY = 28  # seconds; the last kill is 168 s into the 200 s of repetitions
SETTINGS = {
    "CRAWLCOIN_ALLOW_PRIVATE_TARGETS": "true",  # the page server is on this machine
    "CRAWLCOIN_LEASE_SECONDS": "8", "CRAWLCOIN_DISPATCH_WINDOW_SECONDS": "10", "CRAWLCOIN_DISPATCH_LEAD_SECONDS": "5",
    "CRAWLCOIN_DOMAIN_RATE_PER_SECOND": "1000", "CRAWLCOIN_CHECK_SHARE_UNTRUSTED": "0",
    "CRAWLCOIN_CHECK_SHARE_TRUSTED": "0", "CRAWLCOIN_ARGON2_TIME_COST": "1", "CRAWLCOIN_ARGON2_MEMORY_KIB": "8192",
}


def _results(out: Path) -> list[dict]:
    metas = []
    for path in out.glob("*/[0-9]*.meta.json"):
        try:
            metas.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass  # being renamed into place
    return metas


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


@pytest.mark.timeout(1800)
def test_every_repetition_once_while_one_node_of_each_kind_is_killed(tmp_path: Path) -> None:
    compose = docker_compose()
    print(f"\nimages (deploy/ha/build-images.sh): {build_images():.0f} s")
    topology = Topology(compose, tmp_path, SETTINGS)
    pages = Pages()
    clients: list[subprocess.Popen[bytes]] = []
    try:
        print(f"topology up, API healthy through HAProxy: {topology.up():.0f} s")
        topology.wait_healthy("prefect", "/api/health", 120)
        api = ApiClient(topology.url("api"))
        customer = api.new_account(coins=ORDERS * RUNS)
        volunteer = api.new_account()
        start = datetime.now(UTC) + timedelta(seconds=20)
        placed = place_page_orders(api, customer, pages.server_port, ORDERS, RUNS, EVERY, start, EVERY / ORDERS)
        order_ids, starts = list(placed), {oid: at.timestamp() for oid, at in placed.items()}
        granted = ORDERS * RUNS
        ports = {"mining": topology.ports["mining"], "results": topology.ports["results"]}
        miner, results, out = start_clients(api, ports, volunteer, customer, order_ids, tmp_path)
        clients += [miner, results]

        def delivered() -> int:
            return sum(len(ns) for ns in ns_on_disk(out, order_ids).values())

        # One kill every KILL_EVERY s while the repetitions fall due, from KILL_EVERY s after the first; each node
        # comes back DOWN_SECONDS later.
        kills: list[tuple[str, float]] = []
        for k, service in enumerate(KILLS):
            time.sleep(max(0.0, start.timestamp() + KILL_EVERY * (k + 1) - time.time()))
            if service == "valkey-primary":
                service = topology.valkey_primary()
                assert service in ("valkey-primary", "valkey-replica"), service
            topology.kill(service)
            kills.append((service, time.time()))
            time.sleep(DOWN_SECONDS)
            topology.start(service)
        assert delivered() < granted, "every kill happened while orders were running"

        def orders() -> list[dict]:
            return [api.get(f"/orders/{oid}", headers=customer.headers).json() for oid in order_ids]

        deadline = time.monotonic() + 400
        while not all(o["status"] == "completed" for o in orders()) and time.monotonic() < deadline:
            time.sleep(2)
        files, state = ns_on_disk(out, order_ids), orders()
        report = "\n".join(f"order {o['id']}: {o['status']}, escrow {o['escrow_balance']}, claimed "
                           f"{o['runs_claimed']}/{RUNS}, on disk {len(files[o['id']])}" for o in state)
        assert all(o["status"] == "completed" for o in state), f"every order completed within 400 s:\n{report}"
        wait_for(lambda: delivered() == granted, 60, "every result on disk")  # the last ones are on their way
        files = ns_on_disk(out, order_ids)
        for o in state:
            ns = files[o["id"]]
            assert len(ns) == len(set(ns)) and set(ns) <= set(range(1, RUNS + 1)), f"once each:\n{report}"
        paid = delivered()
        assert api.balance(volunteer) == paid, f"the miner was paid once per result on disk:\n{report}"
        escrows = sum(o["escrow_balance"] for o in state)
        assert api.balance(customer) + api.balance(volunteer) + escrows == granted, f"coins conserved:\n{report}"
        assert paid == granted, f"every repetition on disk (none refunded):\n{report}"

        _print_costs(_results(out), starts, kills)
    finally:
        interrupt(clients)
        pages.shutdown()
        topology.down()


def _print_costs(metas: list[dict], starts: dict[str, float], kills: list[tuple[str, float]]) -> None:
    """Per kill: seconds from the kill to the next page fetched, and lateness of what fell due after it."""
    fetched = sorted(_ts(m["fetched_at"]) for m in metas)
    late = [(due, _ts(m["fetched_at"]) - due) for m in metas
            for due in [starts[m["order_id"]] + (m["n"] - 1) * EVERY]]
    before = [x for due, x in late if due < kills[0][1]]
    print(f"lateness before the first kill: median {statistics.median(before):.1f} s, max {max(before):.1f} s")
    for service, at in kills:
        after = next((t for t in fetched if t > at), None)
        window = [x for due, x in late if at <= due < at + KILL_EVERY]
        gap = f"{after - at:.1f} s" if after else "never"
        print(f"kill {service:15} next page fetched after {gap}; repetitions due in the next {KILL_EVERY} s: "
              f"{len(window)}, lateness median {statistics.median(window) if window else 0:.1f} s, "
              f"max {max(window, default=0):.1f} s")
