"""Cassandra store plumbing: the store URL, the session, prepared statements (tables: see `migrations`).

`cassandra://[user:password@]host1,host2[:port]/keyspace[?replication=…&local_dc=…]`

- `replication`: `simple:N` (SimpleStrategy, replication factor N; the default is `simple:1`, for a
  single dev/test node) or `dc1:3,dc2:3` (NetworkTopologyStrategy with a factor per datacenter).
- `local_dc`: the datacenter whose replicas answer LOCAL_QUORUM/LOCAL_SERIAL requests; by
  default the datacenter of the first contact point that answers.
- `timeout`: request timeout in seconds (default 12).
- `serial`: `local` (LOCAL_SERIAL, the default) or `global` (SERIAL: Paxos over every
  datacenter, for clusters where several datacenters take writes for the same accounts).

Every datetime is stored as a bigint of microseconds since the epoch: Cassandra's `timestamp`
keeps milliseconds only, and records must read back exactly as they were written.
"""

import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cassandra import ConsistencyLevel, ProtocolVersion
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import PreparedStatement, dict_factory

from core.errors import InvalidInput

try:  # libev is the fast reactor; asyncio is the fallback (asyncore is gone from Python 3.12)
    from cassandra.io.libevreactor import LibevConnection as _Connection
except ImportError:  # pragma: no cover - depends on how the driver was built
    from cassandra.io.asyncioreactor import AsyncioConnection as _Connection

_TABLE = re.compile(r"\b(FROM|INTO|UPDATE)\s+(\w+)\b(?!\.)")
SERIAL = "serial"
"""Execution profile of linearizable reads (LOCAL_SERIAL): they also finish any in-flight Paxos round."""

def us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("naive datetime given to the store")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def dt(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def opt_us(moment: datetime | None) -> int | None:
    return None if moment is None else us(moment)


def opt_dt(micros: int | None) -> datetime | None:
    return None if micros is None else dt(micros)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class CassandraUrl:
    hosts: list[str]
    port: int
    keyspace: str
    replication: dict[str, str]
    local_dc: str | None = None
    username: str | None = None
    password: str | None = None
    timeout: float = 12.0
    serial_global: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> "CassandraUrl":
        parts = urlsplit(url)
        if parts.scheme != "cassandra":
            raise InvalidInput(f"not a cassandra:// URL: {url!r}")
        netloc = parts.netloc.rsplit("@", 1)
        creds = netloc[0] if len(netloc) == 2 else None
        hosts, ports = [], set()
        for item in netloc[-1].split(","):
            host, _, port = item.strip().partition(":")
            if not host:
                raise InvalidInput(f"empty host in store URL {url!r}")
            hosts.append(host)
            if port:
                ports.add(int(port))
        if len(ports) > 1:
            raise InvalidInput("every Cassandra contact point must use the same port")
        keyspace = parts.path.strip("/") or "crawlcoin"
        if not keyspace.replace("_", "").isalnum() or len(keyspace) > 48:
            raise InvalidInput(f"invalid keyspace name {keyspace!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        user = password = None
        if creds:
            user, _, password = creds.partition(":")
            user, password = unquote(user), unquote(password)
        return cls(hosts=hosts, port=ports.pop() if ports else 9042, keyspace=keyspace.lower(),
                   replication=replication_map(query.get("replication", "simple:1")),
                   local_dc=query.get("local_dc"), username=user, password=password,
                   timeout=float(query.get("timeout", 12)), serial_global=query.get("serial") == "global")


def replication_map(spec: str) -> dict[str, str]:
    """`simple:3` → SimpleStrategy RF 3; `dc1:3,dc2:3` → NetworkTopologyStrategy."""
    try:
        if spec.startswith("simple:"):
            return {"class": "SimpleStrategy", "replication_factor": str(int(spec.split(":", 1)[1]))}
        factors = dict(item.split(":", 1) for item in spec.split(","))
        return {"class": "NetworkTopologyStrategy", **{dc: str(int(rf)) for dc, rf in factors.items()}}
    except ValueError:
        raise InvalidInput(f"invalid replication {spec!r}: use simple:N or dc1:N,dc2:M") from None


def connect(url: CassandraUrl) -> tuple[Cluster, Session]:
    serial = ConsistencyLevel.SERIAL if url.serial_global else ConsistencyLevel.LOCAL_SERIAL

    def profile(consistency: int) -> ExecutionProfile:
        return ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=url.local_dc)),
            consistency_level=consistency, serial_consistency_level=serial,
            request_timeout=url.timeout, row_factory=dict_factory,
        )

    auth = PlainTextAuthProvider(url.username, url.password or "") if url.username else None
    cluster = Cluster(
        contact_points=url.hosts, port=url.port, auth_provider=auth, connection_class=_Connection,
        # v4 reports a Paxos round of unknown outcome as WriteTimeout(write_type=CAS), which the
        # ledger resolves by a serial read; v5's CasWriteUnknown has no exception class in the driver.
        protocol_version=ProtocolVersion.V4,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile(ConsistencyLevel.LOCAL_QUORUM),
                            SERIAL: profile(serial)},
        schema_metadata_enabled=False, connect_timeout=10,
    )
    try:
        return cluster, cluster.connect()
    except Exception:
        cluster.shutdown()
        raise


class Statements:
    """Prepared statements, prepared once per session on first use, with keyspace-qualified table names."""

    def __init__(self, session: Session, keyspace: str) -> None:
        self._session = session
        self._keyspace = keyspace
        self._cache: dict[str, PreparedStatement] = {}
        self._lock = threading.Lock()

    def __call__(self, cql: str) -> PreparedStatement:
        stmt = self._cache.get(cql)
        if stmt is None:
            with self._lock:
                qualified = _TABLE.sub(lambda m: f"{m[1]} {self._keyspace}.{m[2]}", cql)
                stmt = self._cache.get(cql) or self._session.prepare(qualified)
                self._cache[cql] = stmt
        return stmt
