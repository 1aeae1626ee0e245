"""The SQL store's Alembic migrations: the models match the migrated schema, concurrent opens, newer stores."""

import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, text
from sqlmodel import SQLModel

from core.storage import open_store
from core.storage.migration_errors import SchemaTooNew
from core.storage.sql.migrate import head


@pytest.fixture
def engine(sql_url: str) -> Iterator[Engine]:
    engine = create_engine(sql_url)
    yield engine
    engine.dispose()


def revisions(engine: Engine) -> tuple[list[str], list[tuple[int, int]]]:
    with engine.connect() as conn:
        return ([r for (r,) in conn.execute(text("SELECT version_num FROM alembic_version"))],
                [tuple(r) for r in conn.execute(text("SELECT id, version FROM schema_version"))])


def test_the_models_match_the_migrated_schema(sql_url: str, engine: Engine) -> None:
    open_store(sql_url).close()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == [], ("the models differ from the migrated schema; "
                        f"add a revision in core/storage/sql/migrations/versions: {diff}")
    assert revisions(engine) == ([head()], [(1, 2)])


def _open_together(url: str, barrier: Any, outcomes: Any) -> None:
    barrier.wait(timeout=120)  # every process is imported and ready: they open the store at once
    try:
        open_store(url).close()
        outcomes.put("opened")
    except Exception as e:
        outcomes.put(repr(e))


def test_processes_opening_a_new_store_together_migrate_it_once(sql_url: str, engine: Engine) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, outcomes = ctx.Barrier(4), ctx.Queue()
    processes = [ctx.Process(target=_open_together, args=(sql_url, barrier, outcomes)) for _ in range(4)]
    for process in processes:
        process.start()
    got = sorted(outcomes.get(timeout=180) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    assert got == ["opened"] * 4
    assert revisions(engine) == ([head()], [(1, 2)])
    store = open_store(sql_url)
    store.ping()
    store.close()


def test_a_store_migrated_by_a_newer_crawlcoin_is_refused_naming_its_revision(sql_url: str, engine: Engine) -> None:
    open_store(sql_url).close()
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0042_from_the_future'"))
    with pytest.raises(SchemaTooNew, match="'0042_from_the_future'.*upgrade crawlcoin"):
        open_store(sql_url)
