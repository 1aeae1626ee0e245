"""Versioned CQL steps of the Cassandra store, each applied once per keyspace.

`STEPS` is an ordered list of (version, statements); `{ks}` in a statement is the keyspace. The
table `schema_migrations` records the versions applied. Opening a store applies the missing ones:

- a new keyspace gets every step from 1;
- a keyspace made by crawlcoin before versioned steps (its tables and `schema_version` = 1, no
  `schema_migrations`) is recorded at version 1 and gets the steps after it;
- a keyspace with a version this code does not know stops with an error naming that version.

Several processes start together, so whoever applies steps first takes a lease: the row of version 0
in `schema_migrations`, inserted with a lightweight transaction (IF NOT EXISTS) and a TTL, so a
process that dies holding it delays the others by the TTL at most. The others wait for the lease,
then find the steps applied. Each version is recorded with IF NOT EXISTS as well, every DDL
statement is IF NOT EXISTS (safe to run twice should a lease expire mid-step), and after each step
the cluster must agree on the schema before the next one runs. Only `schema_migrations` itself is
created without the lease, with IF NOT EXISTS.
"""

import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from cassandra import InvalidRequest
from cassandra.cluster import ResultSet, Session

from core.errors import ServiceUnavailable
from core.storage.cassandra.schema import CassandraUrl, us
from core.storage.migration_errors import SchemaTooNew, UnrecognisedSchema

LEASE_TTL = 120
"""Seconds a migrating process holds the lease; longer than any step takes."""
WAIT = 300.0
"""Seconds a process waits for another one's lease before giving up."""
SCHEMA_AGREEMENT_WAIT = 60.0
BOOKKEEPING = "schema_migrations (version int PRIMARY KEY, owner text, applied_at bigint)"

TABLES_V1 = [
    """schema_version (id int PRIMARY KEY, version int)""",
    """users (id text PRIMARY KEY, username text, password_hash text, totp_secret text, totp_enabled boolean,
              totp_last_step bigint, created_at bigint)""",
    """usernames (username text PRIMARY KEY, user_id text)""",
    """login_sessions (id text PRIMARY KEY, user_id text, created_at bigint, expires_at bigint, revoked_at bigint)""",
    """api_tokens (id text PRIMARY KEY, owner_id text, name text, secret_hash text, scopes list<text>,
                   order_id text, created_at bigint, revoked_at bigint)""",
    """api_tokens_by_owner (owner_id text, created_at bigint, id text, PRIMARY KEY (owner_id, created_at, id))
       WITH CLUSTERING ORDER BY (created_at DESC, id DESC)""",
    """transfers (key text PRIMARY KEY, from_account text, to_account text, amount bigint, kind text,
                  reference text, created_at bigint, state text, src_seq0 bigint, dst_seq0 bigint)""",
    """account_log (account text, seq bigint, txn_key text, delta bigint, balance_after bigint, kind text,
                    reference text, created_at bigint, PRIMARY KEY (account, seq))
       WITH CLUSTERING ORDER BY (seq DESC)""",
    """pending_ops (bucket int, key text, created_at bigint, PRIMARY KEY (bucket, key))""",
    """orders (id text PRIMARY KEY, owner_id text, spec text, phase text, status text, runs_claimed int,
               next_due_at bigint, deployment_id text, updated_at bigint,
               claim_run text, claim_first int, claim_due bigint, claim_missed int)""",
    """orders_by_owner (owner_id text, created_at bigint, id text, PRIMARY KEY (owner_id, created_at, id))
       WITH CLUSTERING ORDER BY (created_at DESC, id DESC)""",
    """jobs (order_id text, bucket int, n int, flow_run_id text, due_at bigint, state text, attempts int,
             created_at bigint, result text, body blob, PRIMARY KEY ((order_id, bucket), n))""",
    """dispatch_claims (flow_run_id text PRIMARY KEY, order_id text, first_n int, last_n int, created_at bigint)""",
    """delivery_cursors (token_id text, order_id text, last_n int, PRIMARY KEY ((token_id, order_id)))""",
    """sync_requests (bucket int, order_id text, requested_at bigint, PRIMARY KEY (bucket, order_id))""",
]
"""The tables crawlcoin created before versioned steps (commit 3a4523b). Frozen: change them by a new step."""

STEPS: list[tuple[int, list[str]]] = [
    (1, [f"CREATE TABLE IF NOT EXISTS {{ks}}.{table}" for table in TABLES_V1]
        + ["INSERT INTO {ks}.schema_version (id, version) VALUES (1, 1)"]),
    # crawlcoin before versioned steps refuses a schema_version above 1 ("newer than this crawlcoin")
    # instead of running against tables it does not know; later steps leave schema_version alone.
    (2, ["UPDATE {ks}.schema_version SET version = 2 WHERE id = 1"]),
    # Claims whose queued repetitions are not all settled, for the requeue pass (spread over a few
    # partitions by flow run id). Claims made before this step are not in it: the dispatch of their
    # order's next run still looks at its recent claims.
    (3, ["""CREATE TABLE IF NOT EXISTS {ks}.open_claims (bucket int, flow_run_id text, order_id text, first_n int,
            last_n int, created_at bigint, queued boolean, PRIMARY KEY (bucket, flow_run_id))"""]),
    # Retention of delivered bodies: when a job's body was deleted, and the stretches of results that
    # result clients acknowledged, by the minute they did (the minutes listed in one small partition).
    (4, ["ALTER TABLE {ks}.jobs ADD IF NOT EXISTS body_pruned_at bigint",
         """CREATE TABLE IF NOT EXISTS {ks}.deliveries (minute bigint, delivered_at bigint, order_id text,
            first_n int, last_n int, PRIMARY KEY (minute, delivered_at, order_id, first_n))""",
         """CREATE TABLE IF NOT EXISTS {ks}.delivery_minutes (shard int, minute bigint,
            PRIMARY KEY (shard, minute))"""]),
    # What the watcher made of each result (an `Observation` as JSON, partitioned like the jobs) and how far
    # it got per order. An order's extraction is part of its `spec`, which needs no step.
    (5, ["""CREATE TABLE IF NOT EXISTS {ks}.observations (order_id text, bucket int, n int, changed boolean,
            observation text, PRIMARY KEY ((order_id, bucket), n))""",
         """CREATE TABLE IF NOT EXISTS {ks}.watch_cursors (order_id text PRIMARY KEY, last_n int,
            last_valid_n int)"""]),
    # Webhooks (a `Webhook` as JSON) by id and by owner, and the outbox of their deliveries: one row per
    # delivery, listed per webhook newest first, and found when due through a few partitions by due time.
    (6, ["CREATE TABLE IF NOT EXISTS {ks}.webhooks (id text PRIMARY KEY, owner_id text, webhook text)",
         "CREATE TABLE IF NOT EXISTS {ks}.webhooks_by_owner (owner_id text, id text, PRIMARY KEY (owner_id, id))",
         """CREATE TABLE IF NOT EXISTS {ks}.webhook_deliveries (id text PRIMARY KEY, webhook_id text, order_id text,
            n int, event text, payload text, created_at bigint, state text, attempts int, next_attempt_at bigint,
            last_attempt_at bigint, last_status int, last_error text, delivered_at bigint)""",
         """CREATE TABLE IF NOT EXISTS {ks}.webhook_deliveries_by_webhook (webhook_id text, created_at bigint, id text,
            PRIMARY KEY (webhook_id, created_at, id)) WITH CLUSTERING ORDER BY (created_at DESC, id DESC)""",
         """CREATE TABLE IF NOT EXISTS {ks}.webhook_due (bucket int, due_at bigint, id text,
            PRIMARY KEY (bucket, due_at, id))"""]),
    # Editing a live order: the coins an edit moves (and the spec it replaced) are noted in the order's row
    # until they have moved; claims wait for it. Orders from before this step have none pending.
    (7, ["ALTER TABLE {ks}.orders ADD IF NOT EXISTS edit_pending text"]),
]
LEGACY_VERSION = 1
LEGACY_OWNER = "recognised: made by crawlcoin before versioned steps"


def head() -> int:
    return STEPS[-1][0]


def migrate(session: Session, url: CassandraUrl) -> None:
    """Create the keyspace if missing and apply the steps it lacks (see the module docstring)."""
    ks = url.keyspace
    if not _bookkeeping(session, url):
        return
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # who applied a step, for operators
    deadline = time.monotonic() + WAIT
    while not _take_lease(session, ks, owner):
        if not _pending(session, ks):
            return
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"another process has been migrating keyspace {ks} for over {WAIT:.0f}s; "
                                     f"if it died, its lease ends within {LEASE_TTL}s")
        time.sleep(0.5)
    try:
        _apply(session, ks, owner)
    finally:
        session.execute(f"DELETE FROM {ks}.schema_migrations WHERE version = 0 IF owner = %s", (owner,))


def _bookkeeping(session: Session, url: CassandraUrl) -> list[tuple[int, list[str]]]:
    """Make sure the keyspace and `schema_migrations` exist; the steps not applied yet."""
    ks, deadline = url.keyspace, time.monotonic() + SCHEMA_AGREEMENT_WAIT
    options = ", ".join(f"'{k}': '{v}'" for k, v in url.replication.items())
    while True:
        try:
            _ddl(session, f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{{options}}}")
            if "schema_migrations" not in _tables(session, ks):
                _ddl(session, f"CREATE TABLE IF NOT EXISTS {ks}.{BOOKKEEPING}")
            return _pending(session, ks)
        except InvalidRequest as e:
            # Another process's CREATE is not applied yet: our IF NOT EXISTS returned at once, and
            # the keyspace or table is not there to use. It will be in a moment.
            if "does not exist" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _apply(session: Session, ks: str, owner: str) -> None:
    pending = _pending(session, ks)
    if pending and pending[0][0] == 1 and "schema_version" in _tables(session, ks):
        row = session.execute(f"SELECT version FROM {ks}.schema_version WHERE id = 1").one()
        if row is not None and row["version"] == LEGACY_VERSION:  # made by crawlcoin before versioned steps
            _record(session, ks, LEGACY_VERSION, LEGACY_OWNER)
            pending = pending[1:]
        elif row is not None:
            raise UnrecognisedSchema(
                f"keyspace {ks} says schema_version {row['version']} but has no record of the steps applied; "
                "crawlcoin cannot tell which ones it has had")
        # no row: an interrupted creation; step 1 (all IF NOT EXISTS) completes it
    for version, statements in pending:
        for statement in statements:
            _ddl(session, statement.format(ks=ks))
        _record(session, ks, version, owner)


def _pending(session: Session, ks: str) -> list[tuple[int, list[str]]]:
    applied = {row["version"] for row in session.execute(f"SELECT version FROM {ks}.schema_migrations")} - {0}
    unknown = sorted(applied - {version for version, _ in STEPS})
    if unknown:
        raise SchemaTooNew(f"keyspace {ks} is at schema version {unknown[-1]}, which this crawlcoin does not know "
                           f"(its newest is {head()}): it was migrated by a newer crawlcoin; upgrade crawlcoin")
    return [(version, statements) for version, statements in STEPS if version not in applied]


def _take_lease(session: Session, ks: str, owner: str) -> bool:
    row = session.execute(f"INSERT INTO {ks}.schema_migrations (version, owner, applied_at) VALUES (0, %s, %s) "
                          f"IF NOT EXISTS USING TTL {LEASE_TTL}", (owner, _now())).one()
    return bool(row["[applied]"])


def _record(session: Session, ks: str, version: int, owner: str) -> None:
    session.execute(f"INSERT INTO {ks}.schema_migrations (version, owner, applied_at) VALUES (%s, %s, %s) "
                    "IF NOT EXISTS", (version, owner, _now()))


def _tables(session: Session, ks: str) -> set[str]:
    rows = session.execute("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (ks,))
    return {row["table_name"] for row in rows}


def _ddl(session: Session, statement: str) -> ResultSet:
    """Run a statement; after a schema change, wait until every node has the same schema."""
    result: Any = session.execute(statement, timeout=SCHEMA_AGREEMENT_WAIT)
    if not result.response_future.is_schema_agreed and not session.cluster.control_connection.wait_for_schema_agreement(
            wait_time=SCHEMA_AGREEMENT_WAIT):
        raise ServiceUnavailable(f"the Cassandra nodes did not agree on the schema within {SCHEMA_AGREEMENT_WAIT:.0f}s "
                                 f"after: {statement.split('(')[0].strip()}")
    return result


def _now() -> int:
    return us(datetime.now(UTC))
