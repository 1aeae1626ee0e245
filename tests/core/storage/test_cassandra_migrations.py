"""The Cassandra store's versioned CQL steps: a new keyspace, processes starting together, a newer keyspace."""

import multiprocessing
from typing import Any

import pytest
from cassandra.cluster import Cluster

from core.storage import open_store
from core.storage.cassandra.migrations import STEPS, head
from core.storage.migration_errors import SchemaTooNew


def cql(url: str, query: str) -> list[tuple[Any, ...]]:
    contact, keyspace = url.removeprefix("cassandra://").split("/")
    host, _, port = contact.rpartition(":")
    with Cluster([host], port=int(port), protocol_version=4, connect_timeout=30,
                 control_connection_timeout=30) as cluster:  # a node busy after schema changes answers late
        return sorted(tuple(row) for row in cluster.connect(keyspace).execute(query))


def applied(url: str) -> list[int]:
    return [version for (version,) in cql(url, "SELECT version FROM schema_migrations")]


def test_a_new_keyspace_gets_every_step_once(new_keyspace_url: str) -> None:
    open_store(new_keyspace_url).close()
    open_store(new_keyspace_url).close()
    assert applied(new_keyspace_url) == [version for version, _ in STEPS] == list(range(1, head() + 1))
    assert cql(new_keyspace_url, "SELECT id, version FROM schema_version") == [(1, 2)]


def _open_together(url: str, barrier: Any, outcomes: Any) -> None:
    barrier.wait(timeout=120)
    try:
        open_store(url).close()
        outcomes.put("opened")
    except Exception as e:
        outcomes.put(repr(e))


def test_processes_opening_a_new_keyspace_together_all_get_a_working_store(new_keyspace_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, outcomes = ctx.Barrier(3), ctx.Queue()
    processes = [ctx.Process(target=_open_together, args=(new_keyspace_url, barrier, outcomes)) for _ in range(3)]
    for process in processes:
        process.start()
    got = sorted(outcomes.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    assert got == ["opened"] * 3
    assert applied(new_keyspace_url) == list(range(1, head() + 1)), (
        "each version recorded once, and no lease left behind")
    store = open_store(new_keyspace_url)
    try:
        store.transfer("grant", "system:mint", "user:x", 5, "grant")
        assert store.get_balance("user:x") == 5
    finally:
        store.close()


def test_a_keyspace_migrated_by_a_newer_crawlcoin_is_refused_naming_its_version(new_keyspace_url: str) -> None:
    open_store(new_keyspace_url).close()
    cql(new_keyspace_url, "INSERT INTO schema_migrations (version, owner, applied_at) VALUES (42, 'future', 0)")
    with pytest.raises(SchemaTooNew, match="schema version 42, .*upgrade crawlcoin"):
        open_store(new_keyspace_url)
