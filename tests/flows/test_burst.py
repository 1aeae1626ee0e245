"""A burst of orders against a real Prefect server and real crawlcoin workers, one of them killed half-way."""

import asyncio
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterTags
from redis import Redis

from core.protocol.jobs import JOBS_STREAM
from core.storage import open_store
from tests.conftest import new_prefect_server
from tests.flows.conftest import wait_for
from tests.helpers import interval_order


@pytest.fixture(scope="module")
def prefect_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server of this module's own: the burst's hundreds of deployments and runs would slow
    every later test's queries on a shared one."""
    yield from new_prefect_server(tmp_path_factory)


ORDERS = 300  # bench/e2e.py measures bursts of 1,000 and 5,000; here what matters is a worker killed in the middle
EVERY = 10
RUNS = 6  # activation claims the first ones; each deployment's one dispatch run claims the rest, after the takeover


def released_by_order(redis: Redis) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for _, fields in redis.xrange(JOBS_STREAM):
        order_id, n = fields[b"key"].decode().rsplit(":", 1)
        out.setdefault(order_id, []).append(int(n))
    return out


def activate_runs(api_url: str) -> list[tuple[str, list[str]]]:
    """(state, order ids) of every `activate` flow run."""
    async def read() -> list[tuple[str, list[str]]]:
        async with PrefectClient(api=api_url) as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["activate"])),
                                               flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["activate"])),
                                               limit=200)
            return [(r.state.type.value if r.state else "?", list(r.parameters["order_ids"])) for r in runs]

    return asyncio.run(read())


def order_deployments(api_url: str) -> set[str]:
    """Names of the dispatch flow's deployments in Prefect."""
    async def read() -> set[str]:
        async with PrefectClient(api=api_url) as client:
            names: set[str] = set()
            while True:
                page = await client.read_deployments(limit=200, offset=len(names))
                names.update(d.name for d in page)
                if len(page) < 200:
                    return names

    return asyncio.run(read())


@pytest.mark.timeout(1200)
def test_a_burst_of_orders_is_released_once_each_and_gets_its_deployments_with_a_worker_killed_half_way(
        sched_settings, api_for, start_worker, redis: Redis) -> None:
    # Windows as long as the orders (as the defaults are for real ones): one dispatch run per order, 300 in all —
    # a worker on a test machine runs one or two a second.
    settings = sched_settings.model_copy(update={"dispatch_lead_seconds": 2, "dispatch_window_seconds": 60,
                                                 "activation_window_seconds": 20})
    api = api_for(settings)
    alice = api.new_account(coins=0)
    for i in range(ORDERS * RUNS // 1000 + 1):
        assert api.post("/wallet/faucet", json={"amount": 1000},
                        headers={**alice.headers, "Idempotency-Key": f"f{i}"}).status_code == 200
    first = start_worker(settings)
    store = open_store(settings.resolved_store_url)
    ids: list[str] = []
    try:
        start = datetime.now(UTC) + timedelta(seconds=5)
        for _ in range(ORDERS):  # all at once: the orders' first repetitions fall due while they are placed
            r = api.post("/orders", json=interval_order(every=EVERY, runs=RUNS, start_at=start.isoformat()),
                         headers=alice.headers)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])

        def deployments() -> int:
            return sum(1 for o in ids if store.get_order(o).deployment_id)  # type: ignore[union-attr]

        # In the middle of writing the deployments: 60 of 300 written (the first repetitions are claimed by now).
        # (a liveness bound: beside the HA topology's containers on two cores, the first 60 took over 300 s)
        wait_for(lambda: deployments() >= 60, 600, "the first deployments")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        assert deployments() < ORDERS, "the worker was killed half-way"
        start_worker(settings)  # takes over once the dead worker's sync lock has expired

        def all_released() -> bool:
            got = released_by_order(redis)
            return all(len(got.get(o, [])) >= RUNS for o in ids)

        wait_for(all_released, 600, "every repetition of every order released", poll=1)
        time.sleep(2 * EVERY)  # room for a repetition released twice, which must not come
        got = released_by_order(redis)
        for o in ids:
            assert sorted(got[o]) == list(range(1, RUNS + 1)), f"order {o}: each repetition released once"
        assert all(store.get_order(o).runs_claimed == RUNS for o in ids)  # type: ignore[union-attr]

        # Every order had its deployment; each activation run covers distinct claims and finished.
        activations = activate_runs(settings.prefect_api_url)  # type: ignore[arg-type]
        assert activations, "the first repetitions were claimed by activate flow runs"
        activated = {o for state, orders in activations if state == "COMPLETED" for o in orders}
        assert activated & set(ids), "activate runs completed"
        # No miner delivered, so every order is still active (coins in escrow): each has its deployment.
        def missing() -> set[str]:
            return {f"order-{o}" for o in ids} - order_deployments(settings.prefect_api_url)  # type: ignore[arg-type]

        wait_for(lambda: not missing(), 600, "a deployment for every active order", poll=2)
    finally:
        store.close()

