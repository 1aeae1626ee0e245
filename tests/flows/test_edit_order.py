"""Editing a live order through a real Prefect server and crawlcoin worker: the new schedule from the next
undispatched repetition on, each repetition released once, the deployment showing the new schedule."""

import asyncio
import time
from datetime import timedelta

from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound
from redis import Redis

from core.settings import Settings
from core.storage import open_store
from flows.prefect_objects import deployment_name
from tests.flows.conftest import released, wait_for
from tests.flows.test_dispatch import start_in
from tests.helpers import interval_order


def deployment_schedule(settings: Settings, order_id: str) -> tuple[str, list[timedelta]]:
    """The order's deployment description and schedule intervals, as the Prefect UI shows them."""
    async def read() -> tuple[str, list[timedelta]]:
        async with PrefectClient(api=settings.prefect_api_url) as client:
            try:
                deployment = await client.read_deployment_by_name(f"dispatch/{deployment_name(order_id)}")
            except ObjectNotFound:  # not written yet
                return "", []
            return deployment.description or "", [s.schedule.interval for s in deployment.schedules  # type: ignore
                                                   if hasattr(s.schedule, "interval")]

    return asyncio.run(read())


def test_a_new_interval_and_fewer_runs_take_effect_from_the_next_repetition(sched_settings, api_for, start_worker,
                                                                            redis: Redis) -> None:
    # Short windows: only the repetitions due within seconds are claimed ahead, the rest are open to the edit.
    sched_settings = sched_settings.model_copy(update={"activation_window_seconds": 4, "dispatch_window_seconds": 5,
                                                       "dispatch_lead_seconds": 2})
    start_worker(sched_settings)
    api = api_for(sched_settings)
    alice = api.new_account(coins=40)
    order = api.post("/orders", json=interval_order(every=5, runs=20, start_at=start_in(2)),
                     headers=alice.headers).json()
    oid = order["id"]
    wait_for(lambda: "every 5 seconds" in deployment_schedule(sched_settings, oid)[0], 30, "the deployment")
    wait_for(lambda: len(released(redis, oid)) >= 1, 60, "the first job")
    r = api.patch(f"/orders/{oid}", json={"schedule": {"kind": "interval", "every_seconds": 2}, "max_runs": 8},
                  headers=alice.headers)
    assert r.status_code == 200, r.text
    assert api.balance(alice) == 40 - 8, "12 repetitions fewer: 12 coins back"
    wait_for(lambda: "every 2 seconds" in deployment_schedule(sched_settings, oid)[0], 30,
             "the deployment to show the new schedule")
    description, intervals = deployment_schedule(sched_settings, oid)
    assert "8 times" in description and intervals == [timedelta(seconds=2)], (description, intervals)
    wait_for(lambda: len(released(redis, oid)) >= 8, 60, "all 8 jobs")
    time.sleep(3)  # room for a ninth, or a second release of one, which must not come
    assert [n for n, _ in released(redis, oid)] == list(range(1, 9)), "each repetition released once"
    store = open_store(sched_settings.resolved_store_url)
    try:
        reps = store.get_repetitions(oid, list(range(1, 9)))
    finally:
        store.close()
    first_new = next(i for i, r in enumerate(reps) if i and (r.due_at - reps[i - 1].due_at) != timedelta(seconds=5))
    gaps = [(b.due_at - a.due_at).total_seconds() for a, b in zip(reps[first_new:], reps[first_new + 1:], strict=False)]
    assert all(g == 2 for g in gaps) and gaps, [r.due_at for r in reps]
    assert api.get(f"/orders/{oid}", headers=alice.headers).json()["escrow_balance"] == 8
