"""deploy/ha/compose.yaml run for real by Debian's docker-compose, one container per node, for the chaos test.

The images come from deploy/ha/build-images.sh (the local debootstrap base, Docker's layer cache between runs).
The topology runs as its own Compose project with its own volumes and network, its HAProxy published on
127.0.0.1 ports of this run; it is taken down (volumes included) however the test ends, and its logs are kept
in the test's folder.
"""

import os
import secrets
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from cryptography.fernet import Fernet

from cli.haproxy import wait_all_up
from tests.conftest import backend_unavailable, free_port

ROOT = Path(__file__).resolve().parents[2]
HA = ROOT / "deploy" / "ha"
CRAWLCOIN_ROLES = ["api-1", "api-2", "mining-1", "mining-2", "results-1", "results-2", "worker-1", "worker-2",
                   "prefect-deploy", "store-migrate"]


def docker_compose() -> str:
    """Debian's docker-compose with a running Docker engine, else skip (or fail when `docker` is required)."""
    compose = shutil.which("docker-compose")
    if compose is None:
        backend_unavailable("docker", "docker-compose is not installed (apt-get install docker-compose)")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        backend_unavailable("docker", "no Docker engine answers `docker info`")
    if os.geteuid() != 0:
        backend_unavailable("docker", "building the images needs root (debootstrap, docker build)")
    return str(compose)


def build_images() -> float:
    """Seconds taken by deploy/ha/build-images.sh (nothing to do but checks when the images are current)."""
    started = time.monotonic()
    done = subprocess.run([str(HA / "build-images.sh")], capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return time.monotonic() - started


@dataclass
class Topology:
    compose: str
    folder: Path
    settings: dict[str, str]
    project: str = field(default_factory=lambda: f"crawlcoin-ha-{uuid.uuid4().hex[:8]}")
    ports: dict[str, int] = field(default_factory=lambda: {k: free_port() for k in
                                                           ("api", "mining", "results", "prefect", "stats")})

    def __post_init__(self) -> None:
        # Settings of this run for every crawlcoin role, in an override file as an operator would add one.
        override = {"services": {role: {"environment": self.settings} for role in CRAWLCOIN_ROLES}}
        self.override = self.folder / "compose.override.yaml"
        self.override.write_text(yaml.safe_dump(override))
        self.env = {**os.environ,
                    "CRAWLCOIN_MODE": "test", "CRAWLCOIN_SECRET_KEY": secrets.token_hex(32),
                    "CRAWLCOIN_TOTP_KEYS": Fernet.generate_key().decode(), "VALKEY_PASSWORD": secrets.token_hex(16),
                    "POSTGRES_PASSWORD": secrets.token_hex(16), "PUBLIC_HOST": "127.0.0.1",
                    "CRAWLCOIN_HA_BIND": "127.0.0.1", "CASSANDRA_HEAP": "384M",
                    "CASSANDRA_JVM_OPTS": "-XX:TieredStopAtLevel=1",  # less compiling at boot, on 2 cores
                    **{f"CRAWLCOIN_HA_{k.upper()}_PORT": str(v) for k, v in self.ports.items()}}

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.compose, "-p", self.project, "-f", str(HA / "compose.yaml"), "-f",
                               str(self.override), *args], env=self.env, cwd=HA, capture_output=True, text=True,
                              timeout=timeout)
        assert not check or done.returncode == 0, f"docker-compose {' '.join(args)}:\n{done.stderr[-4000:]}"
        return done

    def up(self) -> float:
        started = time.monotonic()
        self.run("up", "-d", timeout=900)
        self.wait_healthy("api", "/health", 300)
        wait_all_up("127.0.0.1", self.ports["stats"], 120)  # every replica, not the first to answer
        return time.monotonic() - started

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def wait_healthy(self, name: str, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url(name) + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not healthy through HAProxy after {timeout:.0f} s:\n"
                                     + self.run("ps", check=False).stdout)
            time.sleep(1)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def kill(self, service: str) -> None:
        done = subprocess.run(["docker", "kill", self.container(service)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    def start(self, service: str) -> None:
        done = subprocess.run(["docker", "start", self.container(service)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    def running(self, service: str) -> bool:
        done = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", self.container(service)],
                              capture_output=True, text=True)
        return done.stdout.strip() == "true"

    def valkey_primary(self) -> str:
        """The primary's name as the first Sentinel names it now."""
        done = subprocess.run(
            ["docker", "exec", self.container("valkey-sentinel-1"), "python", "-c",
             "import os, redis; print(redis.Redis(port=26379, password=os.environ['VALKEY_PASSWORD'])"
             ".sentinel_get_master_addr_by_name('crawlcoin')[0].decode())"], capture_output=True, text=True)
        return done.stdout.strip()

    def down(self) -> None:
        """Keep every container's log in the test's folder, then remove containers, network and volumes."""
        logs = self.run("logs", "--no-color", "-t", timeout=120, check=False)
        (self.folder / "compose.log").write_text(logs.stdout + logs.stderr)
        self.run("down", "-v", "--remove-orphans", "-t", "5", timeout=300, check=False)
