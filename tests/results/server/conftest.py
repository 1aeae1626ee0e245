"""Fixtures for result delivery: a real store with results, a real result server, real files."""

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis

from core import ledger, schedules
from core.protocol.notices import NOTICES_STREAM, ResultNotice
from core.security import new_api_token
from core.settings import Settings
from core.storage import ApiToken, Order, Result, Store, User, open_store
from results.server.app import ResultServer
from tests.conftest import ThreadedServer, make_settings


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """Result delivery runs on SQLite here; the store contract suite covers every backend."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def settings(tmp_path: Path, store_url: str, valkey_url: str, redis: Redis) -> Settings:
    return make_settings(tmp_path, store_url, valkey_url)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = open_store(settings.resolved_store_url)
    yield s
    s.close()


@pytest.fixture
def result_server(settings: Settings) -> Iterator[str]:
    with ThreadedServer(ResultServer(settings).app) as server:
        yield server.url


def page(order_id: str, n: int) -> bytes:
    return f"<html><body>order {order_id} repetition {n} {'x' * (n * 37 % 500)}</body></html>".encode()


@dataclass
class Customer:
    user: User
    store: Store
    redis: Redis

    def token(self, order_id: str | None = None, scopes: tuple[str, ...] = ("results",)) -> str:
        token_id, raw, secret_hash = new_api_token()
        self.store.create_api_token(ApiToken(id=token_id, owner_id=self.user.id, name="t", secret_hash=secret_hash,
                                             scopes=list(scopes), order_id=order_id, created_at=datetime.now(UTC)))
        return raw

    def new_order(self, runs: int, every: int = 1) -> Order:
        """An order starting now, paid into escrow, nothing claimed yet."""
        now = datetime.now(UTC)
        order = Order(id=str(uuid.uuid4()), owner_id=self.user.id, url="https://example.com/", method="GET",
                      schedule_kind="interval", every_seconds=every, start_at=now, max_runs=runs, price_per_run=1,
                      request_hash="h", created_at=now, updated_at=now)
        order.next_due_at = schedules.first_due(order)
        self.store.create_order(order)
        return order

    def order(self, runs: int) -> Order:
        """An order every second with every repetition claimed."""
        order = self.new_order(runs)
        now = datetime.now(UTC)
        self.store.claim_repetitions(order.id, f"run-{order.id}", now + timedelta(seconds=runs + 5), now, 600)
        return order

    def deliver(self, order: Order, ns: list[int], miner_id: str = "miner") -> list[str]:
        """Record results as a mining server does, and announce them on the notification stream."""
        results = [Result.with_body(page(order.id, n), 2 * 1024 * 1024, job_key=f"{order.id}:{n}", order_id=order.id,
                                    n=n, miner_id=miner_id, fetched_at=datetime.now(UTC), status=200,
                                    final_url=order.url, headers={"content-type": "text/html; charset=utf-8"},
                                    elapsed_ms=12, stored_at=datetime.now(UTC)) for n in ns]
        self.store.record_results(results)
        pipe = self.redis.pipeline()
        for r in results:
            pipe.xadd(NOTICES_STREAM, ResultNotice(key=r.job_key, order_id=r.order_id, n=r.n, outcome="paid").encode())
        pipe.execute()
        return [hashlib.sha256(page(order.id, n)).hexdigest() for n in ns]


@pytest.fixture
def customer(store: Store, redis: Redis) -> Customer:
    user = User(id=str(uuid.uuid4()), username=f"c{uuid.uuid4().hex[:8]}", password_hash="x",
                created_at=datetime.now(UTC))
    store.create_user(user)
    store.transfer(f"grant-{user.id}", ledger.MINT, ledger.user_account(user.id), 10_000, "grant")
    return Customer(user, store, redis)


@pytest.fixture
def other_customer(store: Store, redis: Redis) -> Customer:
    user = User(id=str(uuid.uuid4()), username=f"o{uuid.uuid4().hex[:8]}", password_hash="x",
                created_at=datetime.now(UTC))
    store.create_user(user)
    return Customer(user, store, redis)
