"""The reconcile flow, run by a crawlcoin worker with no API anywhere, finishes what a killed process left half done."""

import asyncio
import multiprocessing
import os
import signal
from collections.abc import Callable

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound

from core import ledger
from core.settings import Settings
from core.storage import open_store
from flows.prefect_sync import PROJECT_ROOT, RECONCILE_ENTRYPOINT
from tests.core.storage.test_contract import new_user
from tests.flows.conftest import wait_for


@pytest.fixture
def store_url(cassandra_url: str, empty_cassandra: Callable[[], None]) -> str:
    """Cassandra: the backend whose operations span partitions and so can be left half done."""
    empty_cassandra()
    return cassandra_url


def _transfer_killed_between_halves(store_url: str, src: str, dst: str) -> None:
    store = open_store(store_url)
    store.ledger.crash_at = {"transfer:first-half"}  # the store's crash hook: stop after the debit
    try:
        store.transfer("half-done", src, dst, 4, "t")
    finally:
        os.kill(os.getpid(), signal.SIGKILL)  # and die there, no cleanup, as a killed process does


def _run_reconcile_on(settings: Settings) -> tuple[str, str]:
    """Deploy the reconcile flow on the worker's pool, run it once; its final state and message."""

    async def run() -> tuple[str, str]:
        async with PrefectClient(api=settings.prefect_api_url) as client:
            flow_id = await client.create_flow_from_name("reconcile")
            deployment_id = await client.create_deployment(
                flow_id=flow_id, name="reconcile", entrypoint=RECONCILE_ENTRYPOINT, path=str(PROJECT_ROOT),
                work_pool_name=settings.work_pool)
            run_id = (await client.create_flow_run_from_deployment(deployment_id)).id
            for _ in range(240):
                state = (await client.read_flow_run(run_id)).state
                if state is not None and state.is_final():
                    return state.type.value, state.message or ""
                await asyncio.sleep(0.5)
            raise AssertionError("the reconcile run did not finish in 120 s")

    return asyncio.run(run())


def test_a_transfer_left_half_done_by_a_killed_process_is_finished_by_the_reconcile_flow(
        sched_settings: Settings, start_worker, store_url: str) -> None:
    # Only the reconcile run may finish it: the worker's own periodic sweep is pushed out of the test.
    start_worker(sched_settings, CRAWLCOIN_RECOVER_INTERVAL_SECONDS="3600")

    async def pool_exists() -> bool:
        async with PrefectClient(api=sched_settings.prefect_api_url) as client:
            try:
                await client.read_work_pool(sched_settings.work_pool)
                return True
            except ObjectNotFound:
                return False

    wait_for(lambda: asyncio.run(pool_exists()), 60, "the worker to create its pool", poll=0.5)

    store = open_store(store_url)
    try:
        payer, payee = new_user(store, coins=10), new_user(store)
        src, dst = ledger.user_account(payer.id), ledger.user_account(payee.id)
        killed = multiprocessing.get_context("spawn").Process(target=_transfer_killed_between_halves,
                                                               args=(store_url, src, dst))
        killed.start()
        killed.join(timeout=120)
        assert killed.exitcode == -signal.SIGKILL
        assert (store.get_balance(src), store.get_balance(dst)) == (6, 0), "the debit is in, the credit is not"

        kind, message = _run_reconcile_on(sched_settings)
        assert kind == "COMPLETED", (kind, message)
        assert (store.get_balance(src), store.get_balance(dst)) == (6, 4), "the transfer is done"
        assert "finished 1 interrupted store operation(s)" in message, "by the reconcile run"
        assert store.get_transfer("half-done") is not None
    finally:
        store.close()
