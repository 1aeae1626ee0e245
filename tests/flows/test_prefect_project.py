"""prefect.yaml works for an operator, and the worker reports real outcomes to Prefect."""

import asyncio
import subprocess
import sys
from pathlib import Path

import yaml
from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound

from core.settings import Settings
from flows.prefect_sync import DISPATCH_ENTRYPOINT, RECONCILE_ENTRYPOINT
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
