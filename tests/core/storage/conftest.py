"""Fixtures of the storage tests: empty databases and keyspaces of their own, for tests that make stores."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fresh_postgres_db


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty SQL database: no store was ever opened on it."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return fresh_postgres_db(request.getfixturevalue("postgres_admin_url"))


@pytest.fixture
def new_keyspace_url(cassandra_url: str) -> Iterator[str]:
    """A keyspace name no store was ever opened on, on the test node; dropped afterwards."""
    from cassandra.cluster import Cluster

    contact = cassandra_url.removeprefix("cassandra://").split("/")[0]
    keyspace = f"crawlcoin_mig_{uuid.uuid4().hex[:10]}"
    yield f"cassandra://{contact}/{keyspace}"
    host, _, port = contact.rpartition(":")
    with Cluster([host], port=int(port), protocol_version=4, connect_timeout=30,
                 control_connection_timeout=30) as cluster:  # a node busy after schema changes answers late
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
