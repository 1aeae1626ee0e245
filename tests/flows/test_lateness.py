"""The lateness check on its own, on every store backend: a real store, a real Valkey, apprise posting to a real HTTP
receiver on 127.0.0.1. Orders fall late by claiming repetitions whose due time has passed; they are on time again
once those are settled (refunded here, as a miner's error would)."""

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from core import ledger
from core.errors import CrawlcoinError
from core.settings import Settings
from core.storage import Order, Store, User, open_store
from flows.lateness import EPISODES, Alerts, Checked, check_lateness
from tests.conftest import fresh_postgres_db, make_settings
from tests.helpers import Receiver

LATE_AFTER = 3.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "cassandra"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The check reads open claims, repetitions and orders: every backend's, not only SQLite's."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    if request.param == "cassandra":
        request.getfixturevalue("empty_cassandra")()
        return str(request.getfixturevalue("cassandra_url"))
    return fresh_postgres_db(request.getfixturevalue("postgres_admin_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.shutdown()


@pytest.fixture
def settings(tmp_path: Path, store_url: str, valkey_url: str, redis: object) -> Settings:  # `redis`: empty Valkey
    return make_settings(tmp_path, store_url, valkey_url,
                         late_after_seconds=LATE_AFTER, lateness_interval_seconds=0.5)


def late_order(store: Store, runs: int = 10) -> Order:
    """An order of `runs` repetitions every second, started a minute ago, with its first half claimed (overdue)."""
    now = datetime.now(UTC)
    user = User(id=str(uuid.uuid4()), username=f"u{uuid.uuid4().hex[:12]}", password_hash="h", created_at=now)
    store.create_user(user)
    store.transfer(f"grant:{user.id}", ledger.MINT, ledger.user_account(user.id), runs, "grant")
    start = now - timedelta(seconds=60)
    order = Order(id=str(uuid.uuid4()), owner_id=user.id, url="https://example.com/prices", method="GET",
                  schedule_kind="interval", every_seconds=1, start_at=start, next_due_at=start, max_runs=runs,
                  price_per_run=1, request_hash="h", created_at=now, updated_at=now)
    store.create_order(order)
    claim(store, order, start + timedelta(seconds=runs // 2))
    return order


def claim(store: Store, order: Order, horizon: datetime) -> list[int]:
    claimed = store.claim_repetitions(order.id, f"run-{uuid.uuid4().hex[:8]}", horizon, datetime.now(UTC), 3600)
    return [r.n for r in claimed.queued]


def settle(store: Store, order: Order) -> None:
    """Every claimed repetition of the order is settled: it is on time again."""
    current = store.get_order(order.id)
    assert current is not None
    store.refund_repetitions(order.id, list(range(1, current.runs_claimed + 1)))


def passes(settings: Settings, alerts: Alerts, *, concurrent: int = 1) -> list[Checked]:
    """`concurrent` workers each run one pass at the same moment (each with its own Valkey connection)."""

    async def run() -> list[Checked]:
        workers = [(open_store(settings.resolved_store_url), Redis.from_url(settings.resolved_redis_url))
                   for _ in range(concurrent)]
        try:
            return list(await asyncio.gather(*(check_lateness(store, redis, alerts, settings)
                                               for store, redis in workers)))
        finally:
            for store, redis in workers:
                await redis.aclose()
                store.close()

    checked = asyncio.run(run())
    asyncio.run(asyncio.sleep(settings.lateness_interval_seconds))  # the lease a pass keeps runs out
    return checked


def test_one_alert_per_late_episode_and_one_notice_when_on_time_again(
        store: Store, settings: Settings, receiver: Receiver) -> None:
    alerts = Alerts(f"json://127.0.0.1:{receiver.server_port}/alerts")
    order = late_order(store)
    results = passes(settings, alerts, concurrent=4) + passes(settings, alerts, concurrent=4)
    assert sum(c.ran for c in results[:4]) == 1, "one pass at a time across workers"
    assert receiver.titles() == [f"crawlcoin: order {order.id} is late"]
    [alert] = receiver.notices
    assert alert["type"] == "warning" and alert["path"] == "/alerts"
    assert alert["message"].startswith(f"5 repetition(s) of order {order.id} (https://example.com/prices) are not "
                                       "delivered 3 s after their due time; the oldest was due at ")

    settle(store, order)
    passes(settings, alerts, concurrent=4)
    passes(settings, alerts, concurrent=4)
    assert receiver.titles() == [f"crawlcoin: order {order.id} is late",
                                 f"crawlcoin: order {order.id} is on time again"]
    assert receiver.notices[1]["type"] == "success"
    assert "It was late from " in receiver.notices[1]["message"]

    # Late again later on: a new episode, a new alert.
    assert claim(store, order, datetime.now(UTC) - timedelta(seconds=10)) == list(range(6, 11))
    passes(settings, alerts)
    passes(settings, alerts)
    assert receiver.titles()[2:] == [f"crawlcoin: order {order.id} is late"]
    assert receiver.notices[2]["message"].startswith(f"5 repetition(s) of order {order.id}")


def test_a_channel_that_is_down_gets_the_alert_once_it_is_back(
        store: Store, settings: Settings, receiver: Receiver) -> None:
    alerts = Alerts(f"json://127.0.0.1:{receiver.server_port}/alerts")
    order = late_order(store)
    receiver.status = 500
    [checked] = passes(settings, alerts)
    assert checked.late == 1 and checked.alerted == 0 and receiver.refused >= 1
    receiver.status = 200
    passes(settings, alerts)
    passes(settings, alerts)
    assert receiver.titles() == [f"crawlcoin: order {order.id} is late"]


def test_an_order_on_time_before_its_alert_got_through_is_forgotten_quietly(
        store: Store, settings: Settings, receiver: Receiver, valkey_url: str) -> None:
    alerts = Alerts(f"json://127.0.0.1:{receiver.server_port}/alerts")
    order = late_order(store)
    receiver.status = 500
    passes(settings, alerts)
    settle(store, order)
    receiver.status = 200
    passes(settings, alerts)
    passes(settings, alerts)
    assert receiver.notices == []

    async def episodes() -> int:
        redis = Redis.from_url(valkey_url)
        try:
            return int(await redis.hlen(EPISODES))
        finally:
            await redis.aclose()

    assert asyncio.run(episodes()) == 0


def test_without_a_channel_the_worker_log_says_it(store: Store, settings: Settings,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    order = late_order(store)
    passes(settings, Alerts(None))
    [checked] = passes(settings, Alerts(None))
    assert checked.ran and checked.alerted == 0, "told once, on the first pass"
    assert [r.getMessage().split(" — ")[0] for r in caplog.records if r.name == "crawlcoin.lateness"] == [
        f"crawlcoin: order {order.id} is late"]


@pytest.mark.parametrize("urls", ["nosuch://token@host", "json://127.0.0.1:9/ok, not a url"])
def test_alert_urls_apprise_cannot_use_are_refused_without_showing_them(urls: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(CrawlcoinError, match=r"CRAWLCOIN_ALERT_URLS: entry \d \((nosuch://…|no scheme)\) is not a "
                                             r"URL apprise can send to") as e:
        Alerts(urls)
    assert "token" not in e.value.message and "token" not in caplog.text
