"""The retention pass against a real Prefect server and real Valkey."""

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prefect import flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowFilter, FlowFilterName
from prefect.states import Completed, Failed, Running, Scheduled
from redis.asyncio import Redis as AsyncRedis

from core.storage import open_store
from flows import retention
from tests.conftest import new_prefect_server
from tests.flows.conftest import wait_for
from tests.helpers import interval_order


@pytest.fixture(scope="module")
def prefect_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server of this module's own: the bound is about this module's orders, and the
    rows that earlier tests left on a shared server would slow its runs."""
    yield from new_prefect_server(tmp_path_factory)


@flow(name="retention-test-flow")
def stand_in() -> None:
    """Only its name is used: the runs below are created through the API, never executed."""


def test_retention_deletes_only_crawlcoins_finished_runs_and_a_pass_cut_short_is_finished_by_the_next(
        prefect_api_url: str, valkey_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = f"crawlcoin-{uuid.uuid4().hex[:8]}"  # other tests' runs on the session's server are left alone

    async def go() -> None:
        redis = AsyncRedis.from_url(valkey_url)
        async with PrefectClient(api=prefect_api_url) as client:
            async def create(state, tags: list[str]) -> None:  # noqa: ANN001
                await client.create_flow_run(stand_in, state=state, tags=tags)

            for _ in range(120):
                await create(Completed(), [ours, "order"])
            for _ in range(5):
                await create(Failed(), [ours, "order"])
            for _ in range(5):
                await create(Completed(), ["someone-else"])  # not crawlcoin's
            await create(Running(), [ours, "order"])
            await create(Scheduled(scheduled_time=datetime.now(UTC) + timedelta(hours=1)), [ours, "order"])

            async def left() -> list[tuple[str, list[str]]]:
                runs = await client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=["retention-test-flow"])), limit=200)
                return sorted((r.state.type.value if r.state else "?", r.tags[0]) for r in runs)

            later = datetime.now(UTC) + timedelta(seconds=120)
            prune = retention.prune_finished_runs
            assert await prune(client, redis, 3600, now=later, tag=ours) == 0, "nothing old enough yet"

            # A pass cut short (a worker killed half-way deletes what it got to)...
            monkeypatch.setattr(retention, "MAX_PER_PASS", 50)
            assert await prune(client, redis, 60, now=later, tag=ours) == 50
            monkeypatch.undo()
            # ...is finished by the next one, and a third finds nothing: deleting is idempotent.
            assert await prune(client, redis, 60, now=later, tag=ours) == 75
            assert await prune(client, redis, 60, now=later, tag=ours) == 0
            assert await left() == sorted([("COMPLETED", "someone-else")] * 5
                                          + [("RUNNING", ours), ("SCHEDULED", ours)])

            # Another worker's pass in progress (its lock held): this one leaves the work to it.
            await create(Completed(), [ours, "order"])
            lock = redis.lock(retention.RETENTION_LOCK, timeout=30)
            assert await lock.acquire()
            assert await prune(client, redis, 60, now=later, tag=ours) == 0
            await lock.release()
            assert await prune(client, redis, 60, now=later, tag=ours) == 1
        await redis.aclose()

    asyncio.run(go())


@pytest.mark.timeout(900)
def test_prefect_holds_a_bounded_number_of_runs_per_active_order(sched_settings, api_for, start_worker) -> None:
    """The README's steady state: per active order about (retention + 3 × pass interval) / dispatch period + 6 flow
    runs — the finished ones not yet pruned, plus one scheduled, one running and its activation record. The test
    holds a running stack to that bound while every order makes twice as many runs as the bound, and checks
    that the pruned runs are gone and the deployments stay."""
    settings = sched_settings.model_copy(update={
        "dispatch_lead_seconds": 1, "dispatch_window_seconds": 2, "activation_window_seconds": 2,
        "prefect_retention_seconds": 4})
    period = 2
    bound = int((settings.prefect_retention_seconds + 3 * retention.retention_interval(settings)) / period) + 6
    orders, runs = 2, 500  # over 8 min of repetitions: no order completes during the test
    start_worker(settings)
    api = api_for(settings)
    alice = api.new_account(coins=orders * runs)
    start = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    body = interval_order(every=1, runs=runs, start_at=start)
    ids = [api.post("/orders", json=body, headers=alice.headers).json()["id"] for _ in range(orders)]
    store = open_store(settings.resolved_store_url)

    async def runs_by_order() -> dict[str, list[str]]:
        async with PrefectClient(api=settings.prefect_api_url) as client:
            out: dict[str, list[str]] = {}
            for oid in ids:
                deployment_id = store.get_order(oid).deployment_id  # type: ignore[union-attr]
                if deployment_id:
                    found = await client.read_flow_runs(deployment_filter=DeploymentFilter(
                        id=DeploymentFilterId(any_=[uuid.UUID(deployment_id)])), limit=200)
                    out[oid] = [str(r.id) for r in found]
            return out

    try:
        wait_for(lambda: all(store.get_order(o).deployment_id for o in ids), 180,  # type: ignore[union-attr]
                 "a deployment for every order")
        most, seen = 0, {oid: set[str]() for oid in ids}
        began = time.monotonic()

        def made_enough() -> bool:
            """Twice as many runs as the bound; or, on a machine too loaded to keep 2-s windows (late runs catch up
            with wider windows, so fewer runs), after 300 s at least 5 more than the bound: pruning was needed."""
            fewest = min(len(v) for v in seen.values())
            return fewest > 2 * bound or (time.monotonic() - began > 300 and fewest > bound + 5)

        while not made_enough():
            assert time.monotonic() - began < 600, f"only {sorted(len(v) for v in seen.values())} runs in 600 s"
            held = asyncio.run(runs_by_order())
            most = max([most, *(len(v) for v in held.values())])
            # Without retention an order would hold every run it made; with it, its rows stop growing.
            assert most <= bound, f"an order held {most} flow runs in Prefect, more than {bound}"
            for oid, found in held.items():
                seen[oid].update(found)
            time.sleep(1)
        final = asyncio.run(runs_by_order())
        assert all(seen[oid] - set(final.get(oid, [])) for oid in ids), "every order's finished runs were deleted"
        assert all(final.get(oid) for oid in ids), "every active order keeps its deployment and current runs"
    finally:
        store.close()
