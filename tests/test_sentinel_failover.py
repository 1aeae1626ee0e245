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

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis

from tests.conftest import free_port
from tests.flows.conftest import wait_for
from tests.helpers import ApiClient, interrupt, place_page_orders
from tests.test_cli_up import ConsoleLines, start_up, stop, wait_for_table
from tests.test_e2e import Pages, ns_on_disk, start_clients
from tests.valkey_sentinel import SentinelTopology

ORDERS, RUNS, EVERY = 4, 6, 3
LOST_WINDOW_SECONDS = 1.5


@pytest.mark.timeout(900)  # `crawlcoin up` alone takes minutes on a loaded 2-core machine
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
        order_ids = list(place_page_orders(api, customer, pages.server_port, ORDERS, RUNS, EVERY, start))

        def orders() -> list[dict]:
            return [api.get(f"/orders/{oid}", headers=customer.headers).json() for oid in order_ids]

        granted = ORDERS * RUNS
        miner, results, out = start_clients(api, ports, volunteer, customer, order_ids, tmp_path)
        clients += [miner, results]

        def on_disk() -> dict[str, list[int]]:
            return ns_on_disk(out, order_ids)

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


def test_jobs_queued_on_a_primary_that_dies_before_replicating_are_queued_again_by_the_store(tmp_path: Path) -> None:
    """The failover loses a dispatch's enqueue; the requeue pass, comparing the store's claims with
    the new primary, queues those jobs again, once, through the same Sentinel URL."""
    import asyncio

    from core.queue import JobQueue
    from core.storage import open_store
    from core.valkey import valkey
    from flows.dispatch import dispatch_order
    from flows.requeue import GRACE, requeue_lost
    from tests.conftest import make_settings
    from tests.flows.test_dispatch import seed_order
    from tests.flows.test_lost_jobs import released_keys

    topology = SentinelTopology(tmp_path / "valkey", down_after_ms=1000)
    topology.start()
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", topology.url)
    store = open_store(settings.resolved_store_url)
    try:
        t0 = datetime.now(UTC) - timedelta(minutes=5)
        seed_order(store, "f", every=1, runs=3, now=t0)

        async def scenario() -> tuple[list[bool], int, int]:
            redis = valkey(settings.resolved_redis_url)
            queue = JobQueue(redis)
            try:
                topology.cut_replication()
                await dispatch_order(store, queue, settings, "of", "run-f", t0)  # on the primary only
                assert await queue.held(["of:1", "of:2", "of:3"]) == [True] * 3
                topology.kill("primary")
                await asyncio.to_thread(topology.wait_until, lambda: topology.primary_port() ==
                                        topology.ports["replica"], 60, "the Sentinels promote the replica")
                held = await _retrying(lambda: queue.held(["of:1", "of:2", "of:3"]))
                later = datetime.now(UTC) + GRACE
                first = (await requeue_lost(store, queue, redis, later)).queued
                await queue.release_due(time.time() + 3600)
                second = (await requeue_lost(store, queue, redis, later)).queued
                return held, first, second
            finally:
                await redis.aclose()

        held, first, second = asyncio.run(scenario())
        assert held == [False] * 3, "the promoted replica never saw the enqueue"
        assert (first, second) == (3, 0), "queued again once, then held by Valkey"
        with topology.client("replica") as new_primary:
            assert sorted(released_keys(new_primary, "of")) == ["of:1", "of:2", "of:3"]
    finally:
        store.close()
        topology.stop()


async def _retrying(call):  # type: ignore[no-untyped-def]
    """What every service loop does: retry a call while Valkey fails over."""
    import asyncio

    from core.outage import VALKEY_DOWN

    deadline = time.monotonic() + 30
    while True:
        try:
            return await call()
        except VALKEY_DOWN:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def test_a_malformed_sentinel_url_stops_start_up_with_a_message_naming_the_problem(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from core.settings import Settings

    for url, message in [("redis+sentinel://s1:26379,s2:26379", "ends with the primary's name"),
                         ("redis+sentinel:///crawlcoin", "names at least one Sentinel"),
                         ("redis+sentinel://:secret@s1:port/crawlcoin", "'s1:port' in the Valkey URL is not host")]:
        with pytest.raises(ValidationError, match=message) as error:
            Settings(redis_url=url, data_dir=tmp_path)
        assert "secret" not in str(error.value), "the password stays out of the message"
    parsed = Settings(redis_url="redis+sentinel://:p%40ss@s1,s2:26380/crawlcoin/2", data_dir=tmp_path)
    assert parsed.resolved_redis_url.endswith("/crawlcoin/2")
