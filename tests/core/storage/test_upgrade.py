"""A store made and used by crawlcoin of commit 3a4523b (before migrations) is upgraded with nothing lost.

The old code really runs: its tree is extracted with `git archive` and `old_code/fill_store.py` runs
in a subprocess with that tree first on sys.path. Then this code opens the same database (SQLite,
PostgreSQL) or keyspace (Cassandra), which migrates it, and every balance, order, result, token and
cursor must be there and keep working.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from core import ledger, schedules
from core.errors import Conflict, InsufficientFunds
from core.storage import Order, Result, Store, User, open_store
from core.storage.cassandra.migrations import LEGACY_OWNER
from core.storage.cassandra.migrations import head as cassandra_head
from core.storage.sql.migrate import LEGACY_REVISION, alembic_config, head
from tests.conftest import fresh_postgres_db
from tests.core.storage.test_cassandra_migrations import cql

OLD_COMMIT = "3a4523b"
REPO = Path(__file__).resolve().parents[3]
FILL = Path(__file__).with_name("old_code") / "fill_store.py"
CUSTOMER, MINER = "00000000-0000-4000-8000-00000000c001", "00000000-0000-4000-8000-00000000a001"
LIVE, CANCELLED = "00000000-0000-4000-8000-0000000000a1", "00000000-0000-4000-8000-0000000000b2"


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", OLD_COMMIT], capture_output=True)
    if archive.returncode != 0:
        pytest.fail(f"cannot read commit {OLD_COMMIT} from the git repository at {REPO}: the upgrade test needs "
                    f"the project's history (a full clone): {archive.stderr.decode(errors='replace').strip()}")
    tree = tmp_path_factory.mktemp(f"crawlcoin-{OLD_COMMIT}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(tree, filter="data")
        else:  # Debian 12's 3.11.2; the archive is this project's own history
            tar.extractall(tree)  # noqa: S202
    return tree


def run_old(old_tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run python with the old tree as the working directory and first on sys.path (same interpreter)."""
    env = {**os.environ, "PYTHONPATH": str(old_tree)}
    return subprocess.run([sys.executable, *args], cwd=old_tree, env=env, capture_output=True, text=True,
                          timeout=180)


def fill_with_old_code(old_tree: Path, url: str) -> dict[str, Any]:
    done = run_old(old_tree, str(FILL), str(old_tree), url)
    assert done.returncode == 0, f"the old code failed to fill the store:\n{done.stderr[-3000:]}"
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(state["core_file"]).is_relative_to(old_tree), state["core_file"]
    return state


@pytest.fixture
def other_sql_url(sql_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if sql_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'other.db'}"
    return fresh_postgres_db(request.getfixturevalue("postgres_admin_url"))


def sql_schema(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """What an operator's database tools show of the schema (the alembic_version table left out)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            def rows(sql: str) -> list[tuple[Any, ...]]:
                return sorted(tuple(r) for r in conn.execute(text(sql)))

            if engine.dialect.name == "sqlite":
                schema = {"sqlite_master": rows("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                                "WHERE tbl_name != 'alembic_version'")}
            else:
                schema = {
                    "columns": rows("SELECT table_name, column_name, ordinal_position, data_type, "
                                    "character_maximum_length, is_nullable, column_default "
                                    "FROM information_schema.columns "
                                    "WHERE table_schema = 'public' AND table_name != 'alembic_version'"),
                    "indexes": rows("SELECT tablename, indexname, indexdef FROM pg_indexes "
                                    "WHERE schemaname = 'public' AND tablename != 'alembic_version'"),
                    "constraints": rows("SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) "
                                        "FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
                                        "AND conrelid::regclass::text != 'alembic_version'"),
                }
            schema["schema_version"] = rows("SELECT id, version FROM schema_version")
            return schema
    finally:
        engine.dispose()


def test_revision_0001_creates_exactly_the_schema_of_the_old_code(old_tree: Path, sql_url: str,
                                                                  other_sql_url: str) -> None:
    made = run_old(old_tree, "-c", "import sys, core; from core.storage import open_store; "
                   "open_store(sys.argv[1]).close(); print(core.__file__)", sql_url)
    assert made.returncode == 0, made.stderr[-3000:]
    assert Path(made.stdout.strip()).is_relative_to(old_tree)
    engine = create_engine(other_sql_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), LEGACY_REVISION)
    engine.dispose()
    old, migrated = sql_schema(sql_url), sql_schema(other_sql_url)
    for part in old:
        assert set(migrated[part]) ^ set(old[part]) == set(), part
    assert migrated == old
    assert len(old["sqlite_master" if "sqlite_master" in old else "columns"]) > 20


@pytest.fixture
def upgraded(old_tree: Path, sql_url: str) -> Iterator[tuple[Store, dict[str, Any]]]:
    state = fill_with_old_code(old_tree, sql_url)
    store = open_store(sql_url)  # this code: stamps 0001, upgrades to head
    yield store, state
    store.close()


def test_an_old_sql_store_is_migrated_with_everything_in_it(upgraded: tuple[Store, dict[str, Any]],
                                                            sql_url: str) -> None:
    store, state = upgraded
    engine = create_engine(sql_url)
    with engine.connect() as conn:
        assert [r for (r,) in conn.execute(text("SELECT version_num FROM alembic_version"))] == [head()]
    engine.dispose()
    check_everything_is_there(store, state)
    check_the_store_still_works(store)


def test_the_old_code_refuses_a_migrated_store(upgraded: tuple[Store, dict[str, Any]], old_tree: Path,
                                               sql_url: str) -> None:
    refused = run_old(old_tree, "-c", "import sys; from core.storage import open_store; open_store(sys.argv[1])",
                      sql_url)
    assert refused.returncode != 0
    assert "the store has schema version 2, newer than this crawlcoin (1); upgrade crawlcoin" in refused.stderr


def test_an_old_cassandra_keyspace_is_recognised_with_everything_in_it(old_tree: Path, new_keyspace_url: str) -> None:
    state = fill_with_old_code(old_tree, new_keyspace_url)
    store = open_store(new_keyspace_url)  # this code: recognises version 1, applies the later steps
    try:
        check_everything_is_there(store, state)
        check_the_store_still_works(store)
    finally:
        store.close()
    versions = cql(new_keyspace_url, "SELECT version, owner FROM schema_migrations")
    assert versions[0] == (1, LEGACY_OWNER) and [v for v, _ in versions] == list(range(1, cassandra_head() + 1))
    refused = run_old(old_tree, "-c", "import sys; from core.storage import open_store; open_store(sys.argv[1])",
                      new_keyspace_url)
    assert refused.returncode != 0
    assert "the store has schema version 2, newer than this crawlcoin (1); upgrade crawlcoin" in refused.stderr


# --- what an operator checks after the upgrade -----------------------------------------------


def check_everything_is_there(store: Store, state: dict[str, Any]) -> None:
    for user_id, username in state["users"].items():
        user = store.get_user(user_id)
        assert user is not None and user.username == username
        assert store.get_user_by_username(username).id == user_id  # type: ignore[union-attr]
    customer = store.get_user(CUSTOMER)
    assert customer is not None and customer.totp_enabled and customer.totp_secret == "SEALEDSECRET"

    assert state["balances"] == {ledger.MINT: -1000, ledger.user_account(CUSTOMER): 965,
                                 ledger.user_account(MINER): 14, ledger.escrow_account(LIVE): 21,
                                 ledger.escrow_account(CANCELLED): 0}
    assert {a: store.get_balance(a) for a in state["balances"]} == state["balances"]
    assert {a: [[e.txn_key, e.delta, e.balance_after] for e in store.list_entries(a, 100)]
            for a in state["entries"]} == state["entries"]

    for order_id, expected in state["orders"].items():
        order = store.get_order(order_id)
        assert order is not None
        assert (str(order.status), order.runs_claimed, order.max_runs) == (
            expected["status"], expected["runs_claimed"], expected["max_runs"])
        assert (order.next_due_at.isoformat() if order.next_due_at else None) == expected["next_due_at"]
    assert [o.id for o in store.list_orders(CUSTOMER, 10)] == sorted([LIVE, CANCELLED], reverse=True)
    repetitions = store.get_repetitions(LIVE, [1, 2, 3])
    assert {r.key: [str(r.state), r.flow_run_id] for r in repetitions} == state["repetitions"]

    results = store.list_results(LIVE)
    assert [r.job_key for r in results] == list(state["results"]) == [f"{LIVE}:1", f"{LIVE}:2"]
    for result in results:
        expected = state["results"][result.job_key]
        assert result.body == bytes.fromhex(expected["body_hex"])
        assert result.sha256 == hashlib.sha256(result.body).hexdigest() == expected["sha256"]
        assert (result.body_size, result.fetched_at.isoformat()) == (expected["body_size"], expected["fetched_at"])
        assert result.body_zlib.hex() == expected["compressed_hex"]

    for token_id, expected in state["tokens"].items():
        token = store.get_api_token(token_id)
        assert token is not None and token.revoked_at is None
        assert (token.owner_id, token.scopes, token.order_id, token.secret_hash) == (
            expected["owner_id"], expected["scopes"], expected["order_id"], expected["secret_hash"])
    assert [t.id for t in store.list_api_tokens(CUSTOMER)] == ["tok-results-0001"]
    assert store.get_delivery_cursor("tok-results-0001", LIVE) == state["cursor"] == 1


def check_the_store_still_works(store: Store) -> None:
    now = datetime.now(UTC)

    def deliver(order_id: str, n: int, body: bytes) -> str:
        return store.record_result(Result.with_body(
            body, 2 * 1024 * 1024, job_key=f"{order_id}:{n}", order_id=order_id, n=n, miner_id=MINER,
            fetched_at=now, status=200, final_url="https://example.com/", stored_at=now)).outcome

    # the repetition the old code claimed is delivered and paid by the new code
    assert deliver(LIVE, 3, b"third page") == "paid"
    assert store.get_result(f"{LIVE}:3").body == b"third page"  # type: ignore[union-attr]
    assert deliver(LIVE, 3, b"third page again") == "duplicate"
    store.advance_delivery_cursor("tok-results-0001", LIVE, 3)
    assert store.get_delivery_cursor("tok-results-0001", LIVE) == 3

    # a new order: escrow, claim, result, pay
    order = Order(id="00000000-0000-4000-8000-0000000000c3", owner_id=CUSTOMER, url="https://example.com/new",
                  method="GET", schedule_kind="interval", every_seconds=60, start_at=now, max_runs=2,
                  price_per_run=4, request_hash="new", created_at=now, updated_at=now)
    order.next_due_at = schedules.first_due(order)
    assert store.create_order(order)[1]
    claim = store.claim_repetitions(order.id, "flow-run-new", now + timedelta(seconds=90), now, catchup_seconds=3600)
    assert [r.n for r in claim.queued] == [1, 2]
    assert deliver(order.id, 1, b"new page") == "paid"

    assert store.get_balance(ledger.user_account(CUSTOMER)) == 965 - 8
    assert store.get_balance(ledger.user_account(MINER)) == 14 + 7 + 4
    assert store.get_balance(ledger.escrow_account(LIVE)) == 21 - 7
    assert store.get_balance(ledger.escrow_account(order.id)) == 8 - 4
    accounts = [ledger.MINT, *(ledger.user_account(u) for u in (CUSTOMER, MINER)),
                *(ledger.escrow_account(o) for o in (LIVE, CANCELLED, order.id))]
    assert sum(store.get_balance(a) for a in accounts) == 0, "coins are conserved"

    # the constraints came through: unique usernames, no overdraft
    with pytest.raises(Conflict):
        store.create_user(User(id="00000000-0000-4000-8000-0000000000d4", username="customer", password_hash="x",
                               created_at=now))
    with pytest.raises(InsufficientFunds):
        store.transfer("too-much", ledger.user_account(MINER), ledger.user_account(CUSTOMER), 10_000, "test")
