"""Orders scheduled through a real Prefect server, dispatched by real crawlcoin workers."""

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, LogFilter, LogFilterFlowRunId
from prefect.exceptions import ObjectNotFound
from redis import Redis

from core.settings import Settings
from core.storage import Store
from flows.prefect_objects import deployment_name
from tests.flows.conftest import released, wait_for
from tests.helpers import interval_order


def deployment_exists(settings: Settings, order_id: str) -> bool:
    async def check() -> bool:
        async with PrefectClient(api=settings.prefect_api_url) as client:
            try:
                await client.read_deployment_by_name(f"dispatch/{deployment_name(order_id)}")
                return True
            except ObjectNotFound:
                return False

    return asyncio.run(check())


def deployment_paused(settings: Settings, order_id: str) -> bool:
    async def check() -> bool:
        async with PrefectClient(api=settings.prefect_api_url) as client:
            return (await client.read_deployment_by_name(f"dispatch/{deployment_name(order_id)}")).paused

    return asyncio.run(check())


def seed_order(store: Store, suffix: str, every: int, runs: int, now: datetime) -> None:
    """User `u<suffix>` with 10 coins and interval order `o<suffix>` starting now, straight in the store."""
    from core import ledger, schedules
    from core.storage import Order, User

    store.create_user(User(id=f"u{suffix}", username=f"u{suffix}", password_hash="x", created_at=now))
    store.transfer(f"grant{suffix}", ledger.MINT, ledger.user_account(f"u{suffix}"), 10, "grant")
    order = Order(id=f"o{suffix}", owner_id=f"u{suffix}", url="https://example.com/", method="GET",
                  schedule_kind="interval", every_seconds=every, start_at=now, max_runs=runs, price_per_run=1,
                  request_hash="h", created_at=now, updated_at=now)
    order.next_due_at = schedules.first_due(order)
    store.create_order(order)


def settle(settings: Settings, order_id: str, ns: list[int]) -> None:
    """Record a page for each repetition, as a mining server does once a miner delivers it."""
    from core.storage import Result, open_store

    store = open_store(settings.resolved_store_url)
    try:
        store.record_results([Result.with_body(b"page", 1024, job_key=f"{order_id}:{n}", order_id=order_id, n=n,
                                               miner_id="miner", fetched_at=datetime.now(UTC), status=200,
                                               final_url="https://example.com/", stored_at=datetime.now(UTC))
                              for n in ns])
    finally:
        store.close()


def deployment_story(settings: Settings, order_id: str) -> tuple[str, list[str]]:
    """The order's deployment description and the log lines of its flow runs, as the Prefect UI shows them."""
    async def read() -> tuple[str, list[str]]:
        async with PrefectClient(api=settings.prefect_api_url) as client:
            deployment = await client.read_deployment_by_name(f"dispatch/{deployment_name(order_id)}")
            runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(
                any_=[deployment.id])))
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs])))
            return deployment.description or "", [entry.message for entry in logs]

    return asyncio.run(read())


def start_in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def test_interval_order_runs_exactly_its_repetitions_from_its_start(sched_settings, api_for, start_worker,
                                                                     redis: Redis) -> None:
    start_worker(sched_settings)
    api = api_for(sched_settings)
    alice = api.new_account(coins=10)
    start = datetime.now(UTC) + timedelta(seconds=5)
    r = api.post("/orders", json=interval_order(every=2, runs=3, start_at=start.isoformat()), headers=alice.headers)
    assert r.status_code == 201, r.text
    order = r.json()
    wait_for(lambda: len(released(redis, order["id"])) >= 3, 60, "3 released jobs")
    time.sleep(4)  # room for a fourth job, which must not come
    jobs = released(redis, order["id"])
    assert [n for n, _ in jobs] == [1, 2, 3]
    for n, at in jobs:
        due = start.timestamp() + 2 * (n - 1)
        assert at >= due - 0.01, f"job {n} released {due - at:.2f} s before it was due"
    waiting = api.get(f"/orders/{order['id']}", headers=alice.headers).json()
    assert waiting["runs_claimed"] == 3 and waiting["escrow_balance"] == 3
    assert waiting["status"] == "active", "not completed while its jobs are out, unpaid: coins are in escrow"
    wait_for(lambda: deployment_exists(sched_settings, order["id"]), 20, "the active order's deployment")
    description, logs = deployment_story(sched_settings, order["id"])
    assert "every 2 seconds" in description and "3 times" in description, description
    assert any("queued #1–#3" in line for line in logs), logs
    settle(sched_settings, order["id"], [1, 2, 3])  # what the miners deliver
    wait_for(lambda: api.get(f"/orders/{order['id']}", headers=alice.headers).json()["status"] == "completed", 20,
             "the order to complete")
    done = api.get(f"/orders/{order['id']}", headers=alice.headers).json()
    assert done["runs_claimed"] == 3 and done["escrow_balance"] == 0
    assert api.balance(alice) == 7
    wait_for(lambda: not deployment_exists(sched_settings, order["id"]), 20, "the completed order's deployment to go")


def test_cron_due_times_follow_the_timezone_across_daylight_saving(sched_settings, api_for, start_worker) -> None:
    api = api_for(sched_settings)
    alice = api.new_account(coins=10)
    body = {"url": "https://example.com/", "max_runs": 3, "start_at": "2027-03-26T00:00:00+01:00",
            "schedule": {"kind": "cron", "cron": "30 9 * * *", "timezone": "Europe/Berlin"}}
    r = api.post("/orders", json=body, headers=alice.headers)
    assert r.status_code == 201, r.text
    order = r.json()
    assert order["next_due_at"] == "2027-03-26T08:30:00Z"
    from core import schedules
    from core.storage import open_store

    store = open_store(sched_settings.resolved_store_url)
    stored = store.get_order(order["id"])
    store.close()
    assert stored is not None
    dues = [schedules.first_due(stored)]
    for _ in range(2):
        dues.append(schedules.next_due(stored, dues[-1]))
    # 09:30 in Berlin is 08:30 UTC before the switch to summer time on 28 March, 07:30 after.
    assert [d.isoformat() for d in dues] == [
        "2027-03-26T08:30:00+00:00", "2027-03-27T08:30:00+00:00", "2027-03-28T07:30:00+00:00"]
    start_worker(sched_settings)
    wait_for(lambda: deployment_exists(sched_settings, order["id"]), 60, "the cron order's deployment")
    assert api.get(f"/orders/{order['id']}", headers=alice.headers).json()["runs_claimed"] == 0, (
        "nothing is claimed months ahead of the start")


def test_pause_resume_cancel(sched_settings, api_for, start_worker, redis: Redis) -> None:
    start_worker(sched_settings)
    api = api_for(sched_settings)
    alice = api.new_account(coins=40)
    r = api.post("/orders", json=interval_order(every=1, runs=30, start_at=start_in(3)), headers=alice.headers)
    oid = r.json()["id"]
    wait_for(lambda: len(released(redis, oid)) >= 2, 60, "the first jobs")
    assert api.post(f"/orders/{oid}/pause", headers=alice.headers).status_code == 200
    wait_for(lambda: api.get(f"/orders/{oid}", headers=alice.headers).json()["runs_claimed"]
             <= len(released(redis, oid)) + 1, 20, "queued jobs to be withdrawn")
    during = len(released(redis, oid))
    time.sleep(4)
    after_pause = len(released(redis, oid))
    assert after_pause <= during + 1, "nothing is released while paused"
    paused = api.get(f"/orders/{oid}", headers=alice.headers).json()
    assert paused["status"] == "paused" and paused["runs_claimed"] == after_pause

    assert api.post(f"/orders/{oid}/resume", headers=alice.headers).status_code == 200
    wait_for(lambda: len(released(redis, oid)) >= after_pause + 2, 60, "jobs after resuming")

    cancel = api.post(f"/orders/{oid}/cancel", headers=alice.headers)
    assert cancel.status_code == 200, cancel.text
    # the queued jobs are withdrawn by the sync path, a moment after the answer
    wait_for(lambda: api.get(f"/orders/{oid}", headers=alice.headers).json()["escrow_balance"]
             == len(released(redis, oid)), 30, "queued jobs to be withdrawn and refunded")
    final = len(released(redis, oid))
    time.sleep(3)
    assert len(released(redis, oid)) == final, "nothing is released after cancelling"
    ns = [n for n, _ in released(redis, oid)]
    assert ns == sorted(set(ns)), "each repetition released once, in order"
    wait_for(lambda: not deployment_exists(sched_settings, oid), 20, "the deployment to be deleted")
    wait_for(lambda: api.get(f"/orders/{oid}", headers=alice.headers).json()["escrow_balance"] == final, 20,
             "withdrawn jobs to be refunded")
    assert api.balance(alice) == 40 - final, "every repetition not released was refunded"


def test_prefect_down_at_order_time(sched_settings, api_for, start_worker, redis: Redis, tmp_path) -> None:
    from tests.conftest import free_port

    down = sched_settings.model_copy(update={"prefect_api_url": f"http://127.0.0.1:{free_port()}/api",
                                             "catchup_seconds": 5})
    api = api_for(down)
    alice = api.new_account(coins=10)
    started = time.monotonic()
    r = api.post("/orders", json=interval_order(every=3, runs=5, start_at=start_in(1)), headers=alice.headers)
    assert r.status_code == 201 and time.monotonic() - started < 5, "ordering does not wait on Prefect"
    oid = r.json()["id"]
    assert api.balance(alice) == 5 and r.json()["escrow_balance"] == 5
    time.sleep(10)  # Prefect stays unreachable while the first repetitions fall due
    assert r.json()["deployment_id"] is None and not deployment_exists(sched_settings, oid)

    start_worker(sched_settings.model_copy(update={"catchup_seconds": 5}))  # Prefect is back
    wait_for(lambda: api.get(f"/orders/{oid}", headers=alice.headers).json()["runs_claimed"] == 5, 60,
             "the order to be dispatched")
    wait_for(lambda: api.get(f"/orders/{oid}", headers=alice.headers).json()["escrow_balance"]
             == len(released(redis, oid)), 30, "every repetition released or refunded")
    ns = [n for n, _ in released(redis, oid)]
    if ns:
        assert api.get(f"/orders/{oid}", headers=alice.headers).json()["status"] == "active", (
            "not completed while released jobs are unpaid: coins are in escrow")
    settle(sched_settings, oid, ns)  # what the miners deliver
    wait_for(lambda: api.get(f"/orders/{oid}", headers=alice.headers).json()["status"] == "completed", 30,
             "the order to complete")
    assert api.get(f"/orders/{oid}", headers=alice.headers).json()["escrow_balance"] == 0
    assert ns == sorted(set(ns)), "nothing enqueued twice"
    refunded = 5 - len(ns)
    assert refunded >= 1, "repetitions missed by more than the catch-up limit are refunded"
    assert set(ns) == set(range(refunded + 1, 6)), "the rest ran, oldest missed ones first refunded"
    assert api.balance(alice) == 5 + refunded
    wait_for(lambda: not deployment_exists(sched_settings, oid), 20, "the deployment to be removed")


@pytest.mark.parametrize("released_first", [False, True])
def test_the_same_flow_run_twice_enqueues_once(sched_settings, redis: Redis, released_first: bool) -> None:
    from redis.asyncio import Redis as AsyncRedis

    from core.queue import JobQueue
    from core.storage import open_store
    from flows.dispatch import dispatch_order

    store = open_store(sched_settings.resolved_store_url)
    seed_order(store, "1", every=1, runs=4, now=datetime.now(UTC))

    async def twice() -> tuple[int, int]:
        aredis = AsyncRedis.from_url(sched_settings.resolved_redis_url)
        queue = JobQueue(aredis)
        first = await dispatch_order(store, queue, sched_settings, "o1", "flow-run-1")
        if released_first:
            await queue.release_due(time.time() + 60)
        second = await dispatch_order(store, queue, sched_settings, "o1", "flow-run-1")
        await queue.release_due(time.time() + 60)
        await aredis.aclose()
        return first.newly_queued, second.newly_queued

    assert asyncio.run(twice()) == (4, 0)
    assert [n for n, _ in released(redis, "o1")] == [1, 2, 3, 4]
    store.close()


def test_repetitions_claimed_by_a_run_that_died_before_queueing_are_queued_by_the_next(sched_settings,
                                                                                       redis: Redis) -> None:
    from redis.asyncio import Redis as AsyncRedis

    from core.queue import JobQueue
    from core.storage import open_store
    from flows.dispatch import dispatch_order

    store = open_store(sched_settings.resolved_store_url)
    now = datetime.now(UTC)
    seed_order(store, "2", every=60, runs=6, now=now)
    # A worker claims repetitions 1-2 and is killed before it queues them.
    store.claim_repetitions("o2", "dead-run", now + timedelta(seconds=90), now, 600)

    async def next_run() -> list[int]:
        aredis = AsyncRedis.from_url(sched_settings.resolved_redis_url)
        queue = JobQueue(aredis)
        later = now + timedelta(seconds=120)
        await dispatch_order(store, queue, sched_settings.model_copy(update={"dispatch_window_seconds": 60}), "o2",
                             "next-run", later)
        await queue.release_due(time.time() + 10_000)
        await aredis.aclose()
        return [n for n, _ in released(redis, "o2")]

    assert asyncio.run(next_run()) == [1, 2, 3, 4], "the dead run's repetitions are queued, once, with the new ones"
    store.close()


def test_the_api_wakes_the_workers_so_a_burst_of_orders_gets_its_deployments_at_once(
        sched_settings, api_for, start_worker) -> None:
    slow = sched_settings.model_copy(update={"sync_interval_seconds": 600})  # only a wake-up can be in time
    start_worker(slow)
    api = api_for(slow)
    alice = api.new_account(coins=100)
    time.sleep(3)  # the worker's first sync pass is behind it: what follows must wake it
    ids = []
    for _ in range(5):
        r = api.post("/orders", json=interval_order(every=60, runs=2, start_at=start_in(3600)), headers=alice.headers)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    wait_for(lambda: all(deployment_exists(slow, oid) for oid in ids), 30, "a deployment for every order")
    paused = api.post(f"/orders/{ids[0]}/pause", headers=alice.headers)
    assert paused.status_code == 200
    wait_for(lambda: deployment_paused(slow, ids[0]), 30, "the paused order's deployment to be paused")


def test_orders_due_together_get_dispatch_runs_spread_over_half_a_period_each_claiming_a_whole_one(
        sched_settings, redis: Redis) -> None:
    from redis.asyncio import Redis as AsyncRedis

    from core.queue import JobQueue
    from core.storage import open_store
    from flows.dispatch import dispatch_order
    from flows.prefect_objects import first_run_at

    settings = sched_settings.model_copy(update={"dispatch_window_seconds": 600, "dispatch_lead_seconds": 30})
    store = open_store(settings.resolved_store_url)
    now = datetime.now(UTC)
    for i in range(40):
        seed_order(store, f"s{i}", every=60, runs=10, now=now + timedelta(seconds=900))
    orders = [store.get_order(f"os{i}") for i in range(40)]
    due = orders[0].next_due_at  # type: ignore[union-attr]
    starts = [(due - first_run_at(settings, o, due)).total_seconds() for o in orders]  # type: ignore[arg-type]
    assert all(30 <= s <= 30 + 300 for s in starts), "between the lead and the lead plus half a period ahead"
    assert max(starts) - min(starts) > 200, f"40 orders due at once start spread out, not together: {sorted(starts)}"
    assert starts == [(due - first_run_at(settings, o, due)).total_seconds() for o in orders], "fixed per order"

    async def run_early() -> list[int]:
        aredis = AsyncRedis.from_url(settings.resolved_redis_url)
        queue = JobQueue(aredis)
        earliest = orders[starts.index(max(starts))]
        assert earliest is not None
        await dispatch_order(store, queue, settings, earliest.id, "early-run", first_run_at(settings, earliest, due))
        await queue.release_due(time.time() + 10_000)
        await aredis.aclose()
        return [n for n, _ in released(redis, earliest.id)]

    assert asyncio.run(run_early()) == list(range(1, 11)), \
        "a run started early still claims one whole period (10 × 60 s) from the next due repetition"
    store.close()
