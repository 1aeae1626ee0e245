"""Smoke test for the test Cassandra node: schema, write/read and lightweight transactions.

    python scripts/cassandra/smoke.py [HOST:PORT]      (default 127.0.0.1:9042; needs cassandra-driver)
"""
import sys
import time
import uuid

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy

try:  # the driver's C extension reactor; asyncio is the pure-Python fallback
    from cassandra.io.libevreactor import LibevConnection as Connection
except ImportError:
    from cassandra.io.asyncioreactor import AsyncioConnection as Connection


def main(contact: str) -> None:
    host, _, port = contact.rpartition(":")
    profile = ExecutionProfile(load_balancing_policy=DCAwareRoundRobinPolicy(local_dc="datacenter1"))
    t0 = time.monotonic()
    cluster = Cluster([host], port=int(port), connection_class=Connection, protocol_version=5,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    session = cluster.connect()
    version = session.execute("SELECT release_version FROM system.local").one().release_version
    print(f"connected to Cassandra {version} via {Connection.__name__} in {time.monotonic() - t0:.2f}s")

    session.execute("CREATE KEYSPACE IF NOT EXISTS smoke WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    session.execute("CREATE TABLE IF NOT EXISTS smoke.kv (k text PRIMARY KEY, v int, owner text)")

    session.execute("INSERT INTO smoke.kv (k, v) VALUES (%s, %s)", ("plain", 1))
    assert session.execute("SELECT v FROM smoke.kv WHERE k = %s", ("plain",)).one().v == 1

    key = "lwt-" + uuid.uuid4().hex[:8]
    insert = session.prepare("INSERT INTO smoke.kv (k, v, owner) VALUES (?, ?, ?) IF NOT EXISTS")
    update = session.prepare("UPDATE smoke.kv SET v = ?, owner = ? WHERE k = ? IF owner = ?")
    assert session.execute(insert, (key, 1, "a")).was_applied
    assert not session.execute(insert, (key, 2, "b")).was_applied
    assert session.execute(update, (10, "c", key, "a")).was_applied
    assert not session.execute(update, (20, "d", key, "a")).was_applied
    row = session.execute("SELECT v, owner FROM smoke.kv WHERE k = %s", (key,)).one()
    assert (row.v, row.owner) == (10, "c"), row
    print("write/read OK; LWT (INSERT IF NOT EXISTS, UPDATE IF) OK")
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9042")
