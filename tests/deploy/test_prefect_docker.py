"""`prefect deploy` builds crawlcoin's image with prefect-docker, and a Docker work pool runs the system flows in it.

Needs a Docker engine (the `docker` backend): the base image comes from debootstrap (scripts/docker/base-image.sh,
run by the deploy's first build step when the image is missing), so nothing is pulled from a registry. Valkey and the
Prefect server listen on 127.0.0.1, which the containers reach on the host's network; the store is a SQLite file in a
directory the test's runs also mount, and they run as the user who owns it (`docker run --user`), as an operator
with a SQLite store would run them.
"""

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import yaml
from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound
from redis import Redis

from api.app import create_app
from flows.prefect_objects import deployment_name
from tests.conftest import ThreadedServer, backend_unavailable, make_settings
from tests.flows.conftest import wait_for
from tests.helpers import ApiClient, interval_order
from tests.prefect_server import prefect_env

# Its `prefect deploy` tags the image it builds `crawlcoin:latest`, the image of the HA topology's containers:
# never while that topology starts (docker-compose recreates containers whose image moved).
pytestmark = pytest.mark.xdist_group("machine-wide-chaos")

ROOT = Path(__file__).resolve().parents[2]
PROJECT = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DOCKER_DEPLOYMENTS = [d for d in PROJECT["deployments"] if d["name"].endswith("-docker")]
POOL = DOCKER_DEPLOYMENTS[0]["work_pool"]["name"]
BASE_IMAGE = "crawlcoin-base:bookworm"
PREFECT = str(Path(sys.executable).parent / "prefect")
SUMMARY = {"reconcile-docker": r"synced [1-9]\d* order\(s\)", "retention-docker": r"deleted \d+ finished flow run"}


@pytest.fixture(scope="session")  # set up before the session's Prefect server: no Docker, no server started for nothing
def engine() -> Iterator[docker.DockerClient]:
    """The local Docker engine, and what making the base image needs when it is missing."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as e:
        backend_unavailable("docker", f"no Docker engine: {e}")
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        if not shutil.which("debootstrap", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            backend_unavailable("docker", f"no {BASE_IMAGE} image and no debootstrap to make it")
        if os.geteuid() != 0:
            backend_unavailable("docker", f"no {BASE_IMAGE} image, and debootstrap needs root to make it")
    yield client
    client.close()


class DockerWorker:
    """`prefect worker start --type docker` as an operator starts it."""

    def __init__(self, api_url: str, home: Path, log: Path) -> None:
        env = prefect_env(home, api_url)
        env["PREFECT_WORKER_QUERY_SECONDS"] = "1"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL, "--type", "docker"], env=env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.timeout(1200)  # a first build on a new machine: debootstrap, then pip installs every dependency
def test_prefect_deploy_builds_the_image_and_a_docker_pool_runs_the_system_flows(
        engine: docker.DockerClient, prefect_api_url: str, valkey_url: str, redis: Redis, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    settings = make_settings(tmp_path, f"sqlite:///{store_dir / 'crawlcoin.db'}", valkey_url,
                             prefect_api_url=prefect_api_url, work_pool=f"pool-{uuid.uuid4().hex[:8]}")
    # What the containers read their settings from (passwords included): a file on this machine, never the deployment.
    env_file = tmp_path / "flows.env"
    env_file.write_text(f"CRAWLCOIN_MODE=test\nCRAWLCOIN_STORE_URL={settings.resolved_store_url}\n"
                        f"CRAWLCOIN_REDIS_URL={settings.resolved_redis_url}\nCRAWLCOIN_WORK_POOL={settings.work_pool}\n")

    # A customer places an order; with no crawlcoin worker running, only the reconcile flow brings it to Prefect.
    with ThreadedServer(create_app(settings)) as server, ApiClient(server.url) as api:
        alice = api.new_account(coins=10)
        r = api.post("/orders", json=interval_order(every=60, runs=3), headers=alice.headers)
        assert r.status_code == 201, r.text
        order_id = r.json()["id"]

        worker = DockerWorker(prefect_api_url, tmp_path / "worker-home", tmp_path / "worker.log")
        runs: dict[str, str] = {}
        image = ""
        try:
            wait_for(lambda: asyncio.run(_pool_type(prefect_api_url)) == "docker", 120,
                     "the Docker worker to create its pool", poll=0.5)

            env = prefect_env(tmp_path / "deploy-home", prefect_api_url)
            env["CRAWLCOIN_DOCKER_ENV_FILE"] = str(env_file)
            names = [arg for d in DOCKER_DEPLOYMENTS for arg in ("-n", d["name"])]
            started = time.monotonic()
            done = subprocess.run([PREFECT, "--no-prompt", "deploy", *names], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=1100)
            print(f"prefect deploy (base image and image build included): {time.monotonic() - started:.1f} s")
            assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]

            image, runs = asyncio.run(_run_deployments(prefect_api_url, store_dir))
            assert image.startswith("crawlcoin:")
            engine.images.get(image)  # built here by the deploy's build step, pushed nowhere

            states = asyncio.run(_final_states(prefect_api_url, runs))
            assert states == {name: "COMPLETED" for name in runs}, (states, _tail(tmp_path / "worker.log"))

            # Each run was a container of that image, which exited cleanly and printed what the flow did.
            for name, run_id in runs.items():
                [container] = _containers(engine, run_id)
                assert image in container.image.tags, (name, container.image.tags)
                assert container.wait(timeout=120)["StatusCode"] == 0, name  # the run ends before its container
                output = container.logs().decode(errors="replace")
                container.reload()
                print(f"{name}: container from {container.attrs['State']['StartedAt']} to "
                      f"{container.attrs['State']['FinishedAt']}")
                assert re.search(SUMMARY[name], output), (name, output[-3000:])

            # The reconcile run in the container wrote the order's deployment and activated the order.
            assert asyncio.run(_deployment_exists(prefect_api_url, order_id))
            placed = api.get(f"/orders/{order_id}", headers=alice.headers).json()
            assert placed["status"] == "active" and placed["runs_claimed"] >= 1, placed
        finally:
            worker.stop()
            # The session's Prefect server is shared: leave no schedule of these behind for the later tests.
            asyncio.run(_delete_deployments(prefect_api_url, [f"dispatch/{deployment_name(order_id)}"] + [
                f"{d['entrypoint'].rsplit(':', 1)[1]}/{d['name']}" for d in DOCKER_DEPLOYMENTS]))
            for run_id in runs.values():
                for container in _containers(engine, run_id):
                    container.remove(force=True)
            if image and not image.endswith(":latest"):
                try:
                    engine.images.remove(image)  # this deploy's tag; `crawlcoin:latest` stays for the next build
                except docker.errors.APIError:
                    pass


def _containers(engine: docker.DockerClient, run_id: str) -> list:
    """The containers of a flow run, as `docker ps -a --filter label=io.prefect.flow-run-id=…` lists them."""
    return engine.containers.list(all=True, filters={"label": f"io.prefect.flow-run-id={run_id}"})


async def _pool_type(api_url: str) -> str | None:
    async with PrefectClient(api=api_url) as client:
        try:
            return (await client.read_work_pool(POOL)).type
        except ObjectNotFound:
            return None


async def _run_deployments(api_url: str, store_dir: Path) -> tuple[str, dict[str, str]]:
    """The image the Docker deployments run, and one run of each: with the store's directory mounted too, as the
    directory's owner, and its container kept for the test to inspect."""
    runs = {}
    images = set()
    async with PrefectClient(api=api_url) as client:
        for d in DOCKER_DEPLOYMENTS:
            flow = d["entrypoint"].rsplit(":", 1)[1]
            deployment = await client.read_deployment_by_name(f"{flow}/{d['name']}")
            assert deployment.work_pool_name == POOL
            images.add(deployment.job_variables["image"])
            run = await client.create_flow_run_from_deployment(deployment.id, job_variables={
                "auto_remove": False,
                "volumes": [*deployment.job_variables["volumes"], f"{store_dir}:{store_dir}"],
                "container_create_kwargs": {"user": f"{os.getuid()}:{os.getgid()}"}})
            runs[d["name"]] = str(run.id)
    [image] = images
    return image, runs


async def _final_states(api_url: str, runs: dict[str, str], timeout: float = 300) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    async with PrefectClient(api=api_url) as client:
        while True:
            states = {name: (await client.read_flow_run(run_id)).state for name, run_id in runs.items()}
            if all(s is not None and s.is_final() for s in states.values()) or time.monotonic() > deadline:
                return {name: s.type.value if s else "NONE" for name, s in states.items()}
            await asyncio.sleep(1)


async def _deployment_exists(api_url: str, order_id: str) -> bool:
    async with PrefectClient(api=api_url) as client:
        try:
            await client.read_deployment_by_name(f"dispatch/{deployment_name(order_id)}")
            return True
        except ObjectNotFound:
            return False


async def _delete_deployments(api_url: str, names: list[str]) -> None:
    async with PrefectClient(api=api_url) as client:
        for name in names:
            try:
                await client.delete_deployment((await client.read_deployment_by_name(name)).id)
            except ObjectNotFound:
                pass


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""
