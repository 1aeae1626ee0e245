"""The retention pass against a real Prefect server and real Valkey."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prefect import flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.states import Completed, Failed, Running, Scheduled
from redis.asyncio import Redis as AsyncRedis

from flows import retention


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

