"""Fixtures for scheduling tests: real crawlcoin worker processes (the Prefect server is in tests/conftest.py)."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis

from api.app import create_app
from core.protocol.jobs import JOBS_STREAM
from core.settings import Settings
from tests.conftest import ThreadedServer, make_settings
from tests.helpers import ApiClient
from tests.prefect_server import prefect_env


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """Scheduling tests run on SQLite; the store contract suite covers every backend."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def sched_settings(tmp_path: Path, store_url: str, valkey_url: str, prefect_api_url: str, redis: Redis) -> Settings:
    return make_settings(tmp_path, store_url, valkey_url, prefect_api_url=prefect_api_url,
                         work_pool=f"pool-{uuid.uuid4().hex[:8]}", sync_interval_seconds=1)


@pytest.fixture
def api_for(tmp_path: Path) -> Iterator[Callable[[Settings], ApiClient]]:
    servers: list[ThreadedServer] = []
    clients: list[ApiClient] = []

    def start(settings: Settings) -> ApiClient:
        server = ThreadedServer(create_app(settings)).__enter__()
        servers.append(server)
        clients.append(ApiClient(server.url))
        return clients[-1]

    yield start
    for c in clients:
        c.close()
    for s in servers:
        s.__exit__(None, None, None)


class Worker:
    """`crawlcoin worker` as an operator starts it, in its own process."""

    def __init__(self, settings: Settings, log: Path, **env: str) -> None:
        self.log = log
        environment = prefect_env(Path(settings.data_dir) / "prefect-home", settings.prefect_api_url)
        environment.update(
            PREFECT_WORKER_QUERY_SECONDS="1",
            CRAWLCOIN_MODE="test",
            CRAWLCOIN_STORE_URL=settings.resolved_store_url,
            CRAWLCOIN_REDIS_URL=settings.resolved_redis_url,
            CRAWLCOIN_WORK_POOL=settings.work_pool,
            CRAWLCOIN_SYNC_INTERVAL_SECONDS=str(settings.sync_interval_seconds),
            CRAWLCOIN_CATCHUP_SECONDS=str(settings.catchup_seconds),
            CRAWLCOIN_DISPATCH_WINDOW_SECONDS=str(settings.dispatch_window_seconds),
            CRAWLCOIN_DISPATCH_LEAD_SECONDS=str(settings.dispatch_lead_seconds),
            CRAWLCOIN_ACTIVATION_WINDOW_SECONDS=str(settings.activation_window_seconds),
            CRAWLCOIN_PREFECT_RETENTION_SECONDS=str(settings.prefect_retention_seconds),
            **env,
        )
        crawlcoin = str(Path(sys.executable).parent / "crawlcoin")
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([crawlcoin, "worker", "--limit", "4"], env=environment, stdout=out,
                                         stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(settings: Settings, **env: str) -> Worker:
        workers.append(Worker(settings, tmp_path / f"worker-{len(workers)}.log", **env))
        return workers[-1]

    yield start
    for w in workers:
        w.stop()


def released(redis: Redis, order_id: str) -> list[tuple[int, float]]:
    """(repetition n, release time) of each job of the order on the job stream, in stream order."""
    out = []
    for entry_id, fields in redis.xrange(JOBS_STREAM):
        key = fields[b"key"].decode()
        if key.startswith(order_id + ":"):
            out.append((int(key.rsplit(":", 1)[1]), int(entry_id.split(b"-")[0]) / 1000))
    return out


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
