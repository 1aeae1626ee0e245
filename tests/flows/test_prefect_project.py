"""prefect.yaml works for an operator, and the worker reports real outcomes to Prefect."""

import asyncio
import copy
import subprocess
import sys
from pathlib import Path

import yaml
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

from core.settings import Settings
from flows.prefect_sync import DISPATCH_ENTRYPOINT, RECONCILE_ENTRYPOINT
from flows.worker import CrawlcoinWorker
from tests.flows.conftest import wait_for
from tests.prefect_server import prefect_env

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_matches_the_code() -> None:
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    template = project["definitions"]["templates"]["dispatch"]
    assert template["entrypoint"] == DISPATCH_ENTRYPOINT
    assert template["work_pool"]["name"] == Settings.model_fields["work_pool"].default
    reconcile = next(d for d in project["deployments"] if d["name"] == "reconcile")
    assert reconcile["entrypoint"] == RECONCILE_ENTRYPOINT
    for deployment in project["deployments"]:
        path, _, func = deployment["entrypoint"].partition(":")
        assert (ROOT / path).exists() and f"def {func}(" in (ROOT / path).read_text()


async def pool_template(api_url: str, name: str) -> dict:
    async with PrefectClient(api=api_url) as client:
        return (await client.read_work_pool(name)).base_job_template


def test_a_worker_empties_its_pools_stock_job_template_and_keeps_a_customised_one(sched_settings,
                                                                                   start_worker) -> None:
    # An empty template spares Prefect's server validating every flow run against it. A pool made earlier with
    # the stock template (what Prefect's worker registers) is emptied; one an operator changed stays as it is.
    stock = CrawlcoinWorker.stock_template()
    custom = copy.deepcopy(stock)
    custom["variables"]["properties"]["name"]["default"] = "an operator's name"

    async def make_pools() -> None:
        async with PrefectClient(api=sched_settings.prefect_api_url) as client:
            for name, template in (("stock", stock), ("custom", custom)):
                await client.create_work_pool(WorkPoolCreate(name=f"{sched_settings.work_pool}-{name}",
                                                             type="crawlcoin", base_job_template=template))

    asyncio.run(make_pools())
    for name in ("stock", "custom"):
        start_worker(sched_settings.model_copy(update={"work_pool": f"{sched_settings.work_pool}-{name}"}))
    wait_for(lambda: asyncio.run(pool_template(sched_settings.prefect_api_url,
                                               f"{sched_settings.work_pool}-stock")) == {},
             60, "the worker to empty the stock template", poll=0.5)

    async def workers_of(pool: str) -> int:
        async with PrefectClient(api=sched_settings.prefect_api_url) as client:
            return len(await client.read_workers_for_work_pool(pool))

    wait_for(lambda: asyncio.run(workers_of(f"{sched_settings.work_pool}-custom")) > 0, 60,
             "the second worker to start", poll=0.5)
    assert asyncio.run(pool_template(sched_settings.prefect_api_url, f"{sched_settings.work_pool}-custom")) == custom


def test_prefect_deploy_and_a_worker_runs_reconcile(sched_settings, start_worker, tmp_path) -> None:
    # The operator's order: a worker first (it creates the `crawlcoin` pool), then `prefect deploy`.
    start_worker(sched_settings.model_copy(update={"work_pool": "crawlcoin"}))

    async def pool_exists() -> bool:
        async with PrefectClient(api=sched_settings.prefect_api_url) as client:
            try:
                await client.read_work_pool("crawlcoin")
                return True
            except ObjectNotFound:
                return False

    wait_for(lambda: asyncio.run(pool_exists()), 60, "the worker to create its pool", poll=0.5)
    assert asyncio.run(pool_template(sched_settings.prefect_api_url, "crawlcoin")) == {}
    env = prefect_env(tmp_path / "home", sched_settings.prefect_api_url)
    env["CRAWLCOIN_PROJECT_DIR"] = str(ROOT)
    prefect = str(Path(sys.executable).parent / "prefect")
    in_process = ["-n", "reconcile", "-n", "retention", "-n", "dispatch-manual"]  # the Docker ones: test_prefect_docker
    done = subprocess.run([prefect, "--no-prompt", "deploy", *in_process], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr

    async def deployed() -> tuple[int, str]:
        async with PrefectClient(api=sched_settings.prefect_api_url) as client:
            dep = await client.read_deployment_by_name("reconcile/reconcile")
            run = await client.create_flow_run_from_deployment(dep.id)
            return dep.schedules[0].schedule.interval.total_seconds(), str(run.id)

    interval, run_id = asyncio.run(deployed())
    assert interval == 30

    def state() -> tuple[str, str]:
        async def read() -> tuple[str, str]:
            async with PrefectClient(api=sched_settings.prefect_api_url) as client:
                run = await client.read_flow_run(run_id)
                return run.state.type.value, run.state.message or ""

        return asyncio.run(read())

    wait_for(lambda: state()[0] in ("COMPLETED", "FAILED", "CRASHED"), 60, "the reconcile run to finish", poll=0.5)
    kind, message = state()
    assert kind == "COMPLETED" and message.startswith("synced "), (kind, message)
